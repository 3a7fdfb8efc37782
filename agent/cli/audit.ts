// `edgewarden audit verify|export`: straight from the store when the agent
// is stopped, through the admin socket when it holds the store.
import { join } from 'node:path'
import { exportAuditLog, verifyAuditLog, type AuditVerdict } from '../audit.ts'
import { isEdgewardenError } from '../errors.ts'
import { readKeyFile } from '../keys.ts'
import { Store } from '../store.ts'
import { adminRequest, expectOk } from './admin-client.ts'
import { dataDirOf, out } from './common.ts'
import { parseVerbArgs } from './main.ts'
import { UsageError } from './usage.ts'

async function withStore<T>(dataDir: string, fn: (s: Store) => Promise<T>): Promise<T | null> {
  let store: Store
  try {
    store = await Store.open(dataDir)
  } catch (err) {
    if (isEdgewardenError(err, 'STORE_LOCKED')) return null
    throw err
  }
  try {
    return await fn(store)
  } finally {
    await store.close()
  }
}

export async function runAudit(args: string[]): Promise<number> {
  const [sub, ...rest] = args
  const { values, positionals } = parseVerbArgs(rest, { key: { type: 'string' }, 'trust-key': { type: 'string', multiple: true }, json: { type: 'boolean' } })
  if (positionals.length) throw new UsageError(`audit ${sub} takes no arguments`)
  const dataDir = dataDirOf(values['data-dir'])
  const trust = (values['trust-key'] as string[] | undefined) ?? []
  if (sub === 'verify') {
    let verdict = await withStore(dataDir, (s) => {
      const key = readKeyFile(typeof values.key === 'string' ? values.key : join(dataDir, 'gateway.key'))
      return verifyAuditLog(s, [key.publicKeyB64, ...trust])
    })
    if (verdict === null) {
      const q = trust.map((k) => `trust=${encodeURIComponent(k)}`).join('&')
      verdict = expectOk(await adminRequest(dataDir, 'GET', `/v1/audit/verify${q ? `?${q}` : ''}`)) as unknown as AuditVerdict
    }
    if (values.json) out(JSON.stringify(verdict))
    else if (verdict.ok) out(`audit log verifies: ${verdict.entries} entries, head ${verdict.head}`)
    else out(`audit log BROKEN at entry ${verdict.seq}: ${verdict.problem} (${verdict.entries} entries verified before it)`)
    return verdict.ok ? 0 : 1
  }
  if (sub === 'export') {
    const done = await withStore(dataDir, async (s) => {
      for await (const e of exportAuditLog(s)) process.stdout.write(`${JSON.stringify(e)}\n`)
      return true
    })
    if (done === null) {
      const r = await adminRequest(dataDir, 'GET', '/v1/audit/export')
      if (r.status !== 200) expectOk(r)
      process.stdout.write(r.text)
    }
    return 0
  }
  throw new UsageError(sub ? `unknown audit verb "${sub}"` : 'audit needs a verb: verify or export')
}
