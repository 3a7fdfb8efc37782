// `edgewarden quarantine show`: the network rules in force (read from the
// kernel) joined with the registry: which device, which addresses, which
// level, and why. Through the admin socket while the agent runs; straight
// from the store and the kernel when it is stopped (its rules stay in force).
import { existsSync } from 'node:fs'
import { isEdgewardenError } from '../runtime/errors.ts'
import { NftablesQuarantine } from '../quarantine/nftables.ts'
import { quarantineReport, type QuarantineReport } from '../quarantine/setup.ts'
import { Registry } from '../devices/registry.ts'
import { Store } from '../store/store.ts'
import { adminRequest, expectOk } from './admin-client.ts'
import { dataDirOf, out, table } from './common.ts'
import { parseVerbArgs } from './main.ts'
import { didYouMean } from './suggest.ts'
import { UsageError } from './usage.ts'

async function fromStore(dataDir: string): Promise<QuarantineReport & { agentRunning: false }> {
  const store = await Store.open(dataDir)
  try {
    const registry = await Registry.load(store)
    const source = () => Array.from(registry.values(), (d) => ({ id: d.spec.id, state: d.state, network: d.spec.network }))
    // Reading only: the ports are not used by show().
    const report = await quarantineReport(source, new NftablesQuarantine({ devices: source, wipePorts: [1883] }))
    return { ...report, agentRunning: false }
  } finally {
    await store.close()
  }
}

export async function runQuarantine(args: string[]): Promise<number> {
  const [sub, ...rest] = args
  if (sub !== 'show') throw new UsageError(sub ? `unknown quarantine verb "${sub}"${didYouMean(sub, ['show'])}` : 'quarantine needs a verb: show')
  const { values, positionals } = parseVerbArgs(rest, { json: { type: 'boolean' } })
  if (positionals.length) throw new UsageError('quarantine show takes no arguments')
  const dataDir = dataDirOf(values['data-dir'])
  let report: QuarantineReport & { agentRunning?: boolean }
  try {
    report = { ...(expectOk(await adminRequest(dataDir, 'GET', '/v1/quarantine')) as unknown as QuarantineReport), agentRunning: true }
  } catch (err) {
    if (!isEdgewardenError(err, 'ADMIN_UNAVAILABLE') || !existsSync(dataDir)) throw err
    report = await fromStore(dataDir)
  }
  if (values.json) {
    out(JSON.stringify(report))
    return 0
  }
  const notOpen = report.devices.filter((d) => d.level !== 'open').length
  const where = report.where ? ` (${report.where}${report.present ? '' : ': MISSING'})` : ''
  out(`backend ${report.backend}${where}${report.agentRunning ? '' : ' [agent not running: read from the store and the kernel]'}: ${report.devices.length} devices, ${notOpen} not open`)
  if (!report.enforces) out('nothing is enforced on the wire: start the agent with --quarantine nftables (root and nft needed)')
  const rows = [['DEVICE', 'STATE', 'LEVEL', 'IN FORCE', 'ADDRESSES', 'WHY']]
  for (const d of report.devices) rows.push([d.id, d.state, d.level, d.inForce ? 'yes' : 'no', d.addresses.join(',') || '-', d.why])
  out(table(rows))
  for (const s of report.strays) out(`stray: ${s.address} (${s.kind}) is ${s.level} in the kernel but no enrolled device has it${s.devices.length ? ` (recorded for ${s.devices.join(', ')})` : ''}`)
  if (report.dropped) out(`dropped since the rules were last declared: blocked ${report.dropped.blocked} packets, wipe-only ${report.dropped.wipeOnly} packets`)
  return 0
}
