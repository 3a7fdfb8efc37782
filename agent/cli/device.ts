// `edgewarden device …`: every verb goes through the running agent's admin
// socket, so it is validated, applied and audited exactly as a command is.
import { CRITICALITIES } from '../devices/device.ts'
import type { DeviceView } from '../observe/views.ts'
import { adminRequest, expectOk } from './admin-client.ts'
import { dataDirOf, out, table } from './common.ts'
import { parseVerbArgs } from './main.ts'
import { UsageError } from './usage.ts'

const STATE_VERBS = ['quarantine', 'release', 'revoke', 'retire', 'wipe', 'reenroll', 'renew'] as const

export async function runDevice(args: string[]): Promise<number> {
  const [sub, ...rest] = args
  if (sub === 'add') return add(rest)
  if (sub === 'ls' || sub === 'list') return list(rest)
  if (sub === 'show') return show(rest)
  if ((STATE_VERBS as readonly string[]).includes(sub ?? '')) return verb(sub!, rest)
  throw new UsageError(sub ? `unknown device verb "${sub}"` : 'device needs a verb: add, ls, show, quarantine, release, revoke, retire, wipe, reenroll, renew')
}

function oneId(positionals: string[], what: string): string {
  if (positionals.length !== 1) throw new UsageError(`device ${what} takes exactly one device id`)
  return positionals[0]!
}

/** HOST:PORT/UNIT, e.g. 10.0.0.7:502/1 or [fd00::7]:502/1 */
export function parseModbusTarget(s: string): { host: string; port: number; unitId: number } {
  const m = /^(\[[^\]]+\]|[^:/\s]+)(?::(\d{1,5}))?\/(\d{1,3})$/.exec(s)
  if (!m) throw new UsageError(`--modbus ${s}: expected HOST:PORT/UNIT, e.g. 10.0.0.7:502/1`)
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2] ?? 502), unitId: Number(m[3]) }
}

async function add(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, {
    'public-key': { type: 'string' },
    criticality: { type: 'string' },
    owner: { type: 'string' },
    modbus: { type: 'string' },
    'modbus-legacy': { type: 'boolean' },
    opcua: { type: 'string' },
    'opcua-cert-sha256': { type: 'string' },
    'opcua-tofu': { type: 'boolean' },
    ip: { type: 'string' },
    mac: { type: 'string' },
    'acl-publish': { type: 'string', multiple: true },
    'acl-subscribe': { type: 'string', multiple: true },
    reason: { type: 'string' },
    json: { type: 'boolean' },
  })
  const id = oneId(positionals, 'add')
  if (typeof values['public-key'] !== 'string') throw new UsageError('device add needs --public-key KEY (base64url, 32 bytes)')
  if (values.criticality !== undefined && !(CRITICALITIES as readonly string[]).includes(values.criticality as string)) {
    throw new UsageError(`--criticality must be one of ${CRITICALITIES.join(', ')}`)
  }
  // each qualifies a target: without it, it would be dropped without a word
  if (values['modbus-legacy'] && typeof values.modbus !== 'string') throw new UsageError('--modbus-legacy goes with --modbus HOST:PORT/UNIT')
  for (const f of ['opcua-cert-sha256', 'opcua-tofu'] as const) if (values[f] !== undefined && typeof values.opcua !== 'string') throw new UsageError(`--${f} goes with --opcua URL`)
  const device: Record<string, unknown> = { id, publicKey: values['public-key'] }
  if (values.criticality !== undefined) device.criticality = values.criticality
  if (values.owner !== undefined) device.owner = values.owner
  if (typeof values.modbus === 'string') device.modbus = { ...parseModbusTarget(values.modbus), ...(values['modbus-legacy'] ? { hookBase: null } : {}) }
  if (typeof values.opcua === 'string') {
    device.opcua = {
      endpoint: values.opcua,
      ...(typeof values['opcua-cert-sha256'] === 'string' ? { certificateSha256: values['opcua-cert-sha256'] } : {}),
      ...(values['opcua-tofu'] ? { trustOnFirstUse: true } : {}),
    }
  }
  if (values.ip !== undefined || values.mac !== undefined) {
    device.network = { ...(values.ip !== undefined ? { ip: values.ip } : {}), ...(values.mac !== undefined ? { mac: values.mac } : {}) }
  }
  // topic filters beyond the device's own namespace (PROTOCOL §5); the agent validates each
  const aclPublish = values['acl-publish'] as string[] | undefined
  const aclSubscribe = values['acl-subscribe'] as string[] | undefined
  if (aclPublish !== undefined || aclSubscribe !== undefined) {
    device.acl = { ...(aclPublish !== undefined ? { publish: aclPublish } : {}), ...(aclSubscribe !== undefined ? { subscribe: aclSubscribe } : {}) }
  }
  if (device.modbus === undefined && device.opcua === undefined) device.mqtt = {}
  const body = expectOk(await adminRequest(dataDirOf(values['data-dir']), 'POST', '/v1/devices', { device, ...(values.reason ? { reason: values.reason } : {}) }))
  const d = body.device as DeviceView
  out(values.json ? JSON.stringify(d) : `enrolled ${d.id} (${d.state})`)
  return 0
}

const fmtTime = (s: number | null): string => (s === null ? '-' : new Date(s * 1000).toISOString().replace('.000Z', 'Z'))

async function list(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, { json: { type: 'boolean' } })
  if (positionals.length) throw new UsageError('device ls takes no arguments')
  const body = expectOk(await adminRequest(dataDirOf(values['data-dir']), 'GET', '/v1/devices'))
  const devices = body.devices as DeviceView[]
  if (values.json) {
    out(JSON.stringify(devices))
    return 0
  }
  if (devices.length === 0) {
    out('no devices enrolled')
    return 0
  }
  const rows = [['ID', 'STATE', 'CRITICALITY', 'PROTOCOLS', 'PENDING', 'CREDENTIAL EXPIRES', 'LAST SEEN']]
  for (const d of devices) {
    rows.push([d.id, d.state, d.criticality, d.protocols.join(','), String(d.pendingActions.length), fmtTime(d.credentialExpiresAt), fmtTime(d.lastSeenAt)])
  }
  out(table(rows))
  return 0
}

async function show(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, { json: { type: 'boolean' } })
  const id = oneId(positionals, 'show')
  const body = expectOk(await adminRequest(dataDirOf(values['data-dir']), 'GET', `/v1/devices/${encodeURIComponent(id)}`))
  const d = body.device as DeviceView
  if (values.json) {
    out(JSON.stringify(d))
    return 0
  }
  const lines = [
    `id            ${d.id}`,
    `state         ${d.state}${d.stateReason ? ` (${d.stateReason})` : ''} since ${fmtTime(d.stateChangedAt)}`,
    `criticality   ${d.criticality}`,
    ...(d.owner ? [`owner         ${d.owner}`] : []),
    `protocols     ${d.protocols.join(', ')}`,
    ...(d.spec.acl?.publish?.length ? [`acl publish   ${d.spec.acl.publish.join(' ')}`] : []),
    ...(d.spec.acl?.subscribe?.length ? [`acl subscribe ${d.spec.acl.subscribe.join(' ')}`] : []),
    `public key    ${d.publicKey}`,
    `credential    expires ${fmtTime(d.credentialExpiresAt)}`,
    `last seen     ${fmtTime(d.lastSeenAt)}`,
    `pending       ${d.pendingActions.length ? d.pendingActions.map((a) => `${a.act} ${a.id}`).join(', ') : 'none'}`,
  ]
  out(lines.join('\n'))
  return 0
}

async function verb(name: string, args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, { reason: { type: 'string' }, json: { type: 'boolean' } })
  const id = oneId(positionals, name)
  const body = expectOk(
    await adminRequest(dataDirOf(values['data-dir']), 'POST', `/v1/devices/${encodeURIComponent(id)}/${name}`, values.reason ? { reason: values.reason } : {}),
  )
  const d = body.device as DeviceView
  if (values.json) out(JSON.stringify(body))
  else out(`${name} ${id}: ${d.state}${d.pendingActions.length ? `, ${d.pendingActions.length} action(s) pending` : ''}`)
  return 0
}
