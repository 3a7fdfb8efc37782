// `edgewarden device …`: every verb goes through the running agent's admin
// socket, so it is validated, applied and audited exactly as a command is.
import { createHash, randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { CRITICALITIES } from '../devices/device.ts'
import { b64urlEncode } from '../../wire/base64url.ts'
import { CREDENTIAL_LABEL, type DeviceView } from '../observe/views.ts'
import { adminRequest, expectOk } from './admin-client.ts'
import { dataDirOf, fmtTime, out, table, withStore } from './common.ts'
import { parseVerbArgs } from './main.ts'
import { hashPassword } from '../trust/password.ts'
import { deviceHistory, type HistoryItem } from '../observe/device-history.ts'
import { didYouMean } from './suggest.ts'
import { UsageError } from './usage.ts'

const STATE_VERBS = ['quarantine', 'release', 'revoke', 'retire', 'wipe', 'reenroll', 'renew'] as const
const DEVICE_VERBS = ['add', 'ls', 'show', 'history', 'action', 'remove', ...STATE_VERBS]

export async function runDevice(args: string[]): Promise<number> {
  const [sub, ...rest] = args
  if (sub === 'add') return add(rest)
  if (sub === 'ls' || sub === 'list') return list(rest)
  if (sub === 'show') return show(rest)
  if (sub === 'history') return history(rest)
  if (sub === 'action' || sub === 'actions') return action(rest)
  if (sub === 'remove') return remove(rest)
  if ((STATE_VERBS as readonly string[]).includes(sub ?? '')) return verb(sub!, rest)
  throw new UsageError(sub ? `unknown device verb "${sub}"${didYouMean(sub, DEVICE_VERBS)}` : `device needs a verb: ${DEVICE_VERBS.join(', ')}`)
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
    csr: { type: 'string' },
    'bootstrap-secret': { type: 'boolean' },
    'password-stdin': { type: 'boolean' },
    criticality: { type: 'string' },
    owner: { type: 'string' },
    modbus: { type: 'string' },
    'modbus-legacy': { type: 'boolean' },
    opcua: { type: 'string' },
    'opcua-cert-sha256': { type: 'string' },
    'opcua-tofu': { type: 'boolean' },
    'opcua-push': { type: 'boolean' },
    ip: { type: 'string' },
    mac: { type: 'string' },
    'acl-publish': { type: 'string', multiple: true },
    'acl-subscribe': { type: 'string', multiple: true },
    reason: { type: 'string' },
    replace: { type: 'boolean' },
    json: { type: 'boolean' },
  })
  const id = oneId(positionals, 'add')
  // PROTOCOL §3: exactly one credential
  const given = (['public-key', 'csr', 'bootstrap-secret', 'password-stdin'] as const).filter((f) => values[f] !== undefined && values[f] !== false)
  if (given.length !== 1) {
    throw new UsageError(
      `device add needs exactly one credential: --public-key KEY (base64url, 32 bytes), --csr FILE (PKCS#10, DER or PEM), --bootstrap-secret or --password-stdin${given.length ? ` (got ${given.map((f) => `--${f}`).join(' and ')})` : ''}`,
    )
  }
  if (values.criticality !== undefined && !(CRITICALITIES as readonly string[]).includes(values.criticality as string)) {
    throw new UsageError(`--criticality must be one of ${CRITICALITIES.join(', ')}`)
  }
  // each qualifies a target: without it, it would be dropped without a word
  if (values['modbus-legacy'] && typeof values.modbus !== 'string') throw new UsageError('--modbus-legacy goes with --modbus HOST:PORT/UNIT')
  for (const f of ['opcua-cert-sha256', 'opcua-tofu', 'opcua-push'] as const) if (values[f] !== undefined && typeof values.opcua !== 'string') throw new UsageError(`--${f} goes with --opcua URL`)
  // A bootstrap secret (PROTOCOL §9 EST simpleenroll) is made here and shown once: the agent keeps only its SHA-256.
  const secret = values['bootstrap-secret'] ? randomBytes(32).toString('base64url') : undefined
  const device: Record<string, unknown> = { id }
  if (typeof values['public-key'] === 'string') device.publicKey = values['public-key']
  else if (values['password-stdin']) {
    // PROTOCOL §3 password: hashed here, where it is typed; only the scrypt hash goes to the agent, nothing keeps or logs the password
    const password = readFileSync(0, 'utf8').replace(/\r?\n$/, '')
    if (password.length === 0) throw new UsageError('--password-stdin: no password on standard input')
    if (password.length > 1024) throw new UsageError('--password-stdin: a password of at most 1024 characters')
    device.password = await hashPassword(password)
  } else if (typeof values.csr === 'string') device.x509 = { csr: b64urlEncode(readCsr(values.csr)) }
  else device.x509 = { bootstrapSecretSha256: createHash('sha256').update(secret!, 'utf8').digest('hex') }
  if (values.criticality !== undefined) device.criticality = values.criticality
  if (values.owner !== undefined) device.owner = values.owner
  if (typeof values.modbus === 'string') device.modbus = { ...parseModbusTarget(values.modbus), ...(values['modbus-legacy'] ? { hookBase: null } : {}) }
  if (typeof values.opcua === 'string') {
    device.opcua = {
      endpoint: values.opcua,
      ...(typeof values['opcua-cert-sha256'] === 'string' ? { certificateSha256: values['opcua-cert-sha256'] } : {}),
      ...(values['opcua-tofu'] ? { trustOnFirstUse: true } : {}),
      ...(values['opcua-push'] ? { pushManagement: true } : {}),
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
  const body = expectOk(await adminRequest(dataDirOf(values['data-dir']), 'POST', '/v1/devices', { device, ...(values.reason ? { reason: values.reason } : {}), ...(values.replace ? { replace: true } : {}) }))
  const d = body.device as DeviceView
  const certificatePem = (body.result as { certificate?: string } | undefined)?.certificate
  const changes = (body.result as { changes?: string[] } | undefined)?.changes
  if (changes !== undefined && !values.json) {
    // what a replacement did, before anything a script keeps (on stderr when stdout carries a chain or a secret)
    const said = `replaced ${d.id} (${d.state}): ${changes.length ? `\n  ${changes.join('\n  ')}` : 'nothing changed'}\n`
    if (certificatePem !== undefined || secret !== undefined) process.stderr.write(said)
    else {
      process.stdout.write(said)
      return 0
    }
  }
  if (values.json) out(JSON.stringify({ ...d, ...(certificatePem !== undefined ? { certificatePem } : {}), ...(secret !== undefined ? { bootstrapSecret: secret } : {}) }))
  else if (certificatePem !== undefined || secret !== undefined) {
    // stdout holds only what a script keeps (the chain, or the secret); the words go to stderr
    process.stderr.write(
      certificatePem !== undefined
        ? `enrolled ${d.id} (${d.state}): its certificate and the CA chain follow\n`
        : `enrolled ${d.id} (${d.state}): its EST bootstrap secret follows; it is shown this once and never stored (the agent keeps its SHA-256)\n`,
    )
    out(certificatePem ?? secret!)
  } else out(`enrolled ${d.id} (${d.state})`)
  return 0
}

/** A PKCS#10 request file as DER: PEM (`CERTIFICATE REQUEST`, or `NEW CERTIFICATE REQUEST`) or DER as openssl writes them. */
export function readCsr(file: string): Buffer {
  let bytes: Buffer
  try {
    bytes = readFileSync(file)
  } catch (err) {
    throw new UsageError(`--csr ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`)
  }
  const text = bytes.toString('latin1')
  if (text.includes('-----BEGIN')) {
    const m = /-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----([\s\S]*?)-----END (?:NEW )?CERTIFICATE REQUEST-----/.exec(text)
    if (!m) throw new UsageError(`--csr ${file}: a PEM file without a CERTIFICATE REQUEST block`)
    bytes = Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64')
  }
  // a DER SEQUENCE; the agent checks the rest (signature, key type)
  if (bytes.length < 16 || bytes[0] !== 0x30) throw new UsageError(`--csr ${file}: not a PKCS#10 request (DER or PEM)`)
  return bytes
}

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
  const rows = [['ID', 'STATE', 'CRITICALITY', 'PROTOCOLS', 'CREDENTIAL', 'PENDING', 'CREDENTIAL EXPIRES', 'LAST SEEN', 'OFFBOARDING']]
  for (const d of devices) {
    const exceptions = d.exceptions.map((x) => x.code).join(',')
    rows.push([d.id, d.state, d.criticality, d.protocols.join(','), CREDENTIAL_LABEL[d.credentialKind], String(d.pendingActions.length), fmtTime(d.credentialExpiresAt), fmtTime(d.lastSeenAt), exceptions ? `! ${exceptions}` : 'provable'])
  }
  out(table(rows))
  const flagged = devices.filter((d) => d.exceptions.length).length
  if (flagged) out(`\n${flagged} device(s) whose offboarding cannot be proven end to end (they rely on containment, not erasure): see device show ID`)
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
    ...(d.publicKey !== undefined ? [`public key    ${d.publicKey}`] : []),
    `credential    ${CREDENTIAL_LABEL[d.credentialKind]}, expires ${fmtTime(d.credentialExpiresAt)}`,
    ...(d.certificate
      ? [
          `certificate   serial ${d.certificate.serial || '(not yet seen)'}, ${d.certificate.issuer === 'site' ? 'site CA' : 'external CA'}, not after ${fmtTime(d.certificate.notAfter || null)} (${d.certificate.daysLeft} days left)${d.certificate.overlap ? ', the one it replaces still valid (overlap)' : ''}${d.certificate.renewal ? `, ${d.certificate.renewal}` : ''}`,
        ]
      : []),
    ...(d.exceptions.length ? d.exceptions.map((x, i) => `${i === 0 ? 'offboarding ' : '            '}  ! ${x.code}: ${x.reason}`) : ['offboarding   provable end to end (a signed wipe ack, every credential revocable here)']),
    `sessions      ${d.sessions ? Object.entries(d.sessions).map(([p, n]) => `${p} ${n}`).join(', ') : '-'}`,
    `last seen     ${fmtTime(d.lastSeenAt)}`,
    ...Object.entries(d.identification ?? {}).map(([p, inv]) => `identified    ${p}: ${Object.entries(inv).filter(([k]) => k !== 'identifiedAt').map(([k, v]) => `${k} ${String(v)}`).join(', ')}`),
    `last refusal  ${d.lastRefusal ? `${fmtTime(d.lastRefusal.at)} over ${d.lastRefusal.protocol}${d.lastRefusal.remote ? ` from ${d.lastRefusal.remote}` : ''}: ${d.lastRefusal.reason} (${d.lastRefusal.detail})` : 'none known (since the agent started, and in its recent alerts)'}`,
    `pending       ${d.pendingActions.length ? d.pendingActions.map((a) => `${a.act} ${a.id}`).join(', ') : 'none'}`,
  ]
  out(lines.join('\n'))
  return 0
}

/** 90, 90s, 36h, 7d, 2w: seconds. */
export function parseDuration(flag: string, v: string): number {
  const m = /^(\d{1,10})([smhdw]?)$/.exec(v.trim())
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86400, w: 7 * 86400 } as const
  const n = m ? Number(m[1]) * unit[m[2] as keyof typeof unit] : NaN
  if (!Number.isSafeInteger(n) || n < 1 || n > 10 * 365 * 86400) throw new UsageError(`${flag} ${v}: a duration such as 3600, 36h, 7d or 2w (at most 10 years)`)
  return n
}

async function history(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, { json: { type: 'boolean' } })
  const id = oneId(positionals, 'history')
  const dataDir = dataDirOf(values['data-dir'])
  // the store of a stopped agent directly, else through the agent that holds it
  let items = await withStore(dataDir, (store) => deviceHistory(store, id))
  let device: DeviceView | undefined
  if (items === null) {
    const body = expectOk(await adminRequest(dataDir, 'GET', `/v1/devices/${encodeURIComponent(id)}/history`)) as { items: HistoryItem[]; device?: DeviceView }
    items = body.items
    device = body.device
  } else if (items.length === 0) throw new UsageError(`no device ${id} in the audit log of ${dataDir}`)
  if (values.json) {
    out(JSON.stringify({ deviceId: id, ...(device ? { state: device.state, lastRefusal: device.lastRefusal } : {}), items }))
    return 0
  }
  const rows = [['SEQ', 'TIME', 'ACTOR', 'WHAT', 'REASON']]
  for (const h of items) rows.push([String(h.seq), fmtTime(Math.floor(h.at / 1000)), h.actor, h.summary, h.reason ?? ''])
  out(table(rows))
  if (device?.lastRefusal) {
    const r = device.lastRefusal
    out(`\nlast refusal (not in the audit log unless the device was cut): ${fmtTime(r.at)} over ${r.protocol}: ${r.reason} (${r.detail})`)
  }
  return 0
}

async function action(args: string[]): Promise<number> {
  const [sub, ...rest] = args
  const dataDir = (v: { 'data-dir'?: unknown }) => dataDirOf(v['data-dir'])
  if (sub === 'ls' || sub === 'list') {
    const { values, positionals } = parseVerbArgs(rest, { json: { type: 'boolean' } })
    const id = oneId(positionals, 'action ls')
    const body = expectOk(await adminRequest(dataDir(values), 'GET', `/v1/devices/${encodeURIComponent(id)}/actions`)) as { actions: { id: string; act: string; seq: number; queuedAt: number; deadline: number; reachable: boolean }[] }
    if (values.json) {
      out(JSON.stringify(body.actions))
      return 0
    }
    if (body.actions.length === 0) {
      out(`no action pending for ${id}`)
      return 0
    }
    const rows = [['ACTION', 'ACT', 'QUEUED', 'DEADLINE']]
    for (const a of body.actions) rows.push([a.id, a.act, fmtTime(a.queuedAt), fmtTime(a.deadline)])
    out(table(rows))
    out(`\n${id} is ${body.actions[0]!.reachable ? 'reachable: they are being delivered' : 'not reachable now: they go out when it is'}`)
    return 0
  }
  if (sub === 'cancel') {
    const { values, positionals } = parseVerbArgs(rest, { reason: { type: 'string' }, json: { type: 'boolean' } })
    if (positionals.length !== 2) throw new UsageError('device action cancel takes a device id and an action id (device action ls ID lists them)')
    const [id, actionId] = positionals as [string, string]
    const body = expectOk(
      await adminRequest(dataDir(values), 'POST', `/v1/devices/${encodeURIComponent(id)}/actions/${encodeURIComponent(actionId)}/cancel`, values.reason ? { reason: values.reason } : {}),
    )
    const c = (body.result as { cancelled: { id: string; act: string } }).cancelled
    if (values.json) out(JSON.stringify(body))
    else out(`cancelled ${c.act} ${c.id} of ${id}`)
    return 0
  }
  throw new UsageError(sub ? `unknown device action verb "${sub}"${didYouMean(sub, ['ls', 'cancel'])}` : 'device action needs a verb: ls ID, or cancel ID ACTION')
}

async function remove(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, { reason: { type: 'string' }, json: { type: 'boolean' } })
  const id = oneId(positionals, 'remove')
  const body = expectOk(await adminRequest(dataDirOf(values['data-dir']), 'DELETE', `/v1/devices/${encodeURIComponent(id)}`, values.reason ? { reason: values.reason } : {}))
  if (values.json) out(JSON.stringify(body))
  else out(`removed ${id}: revoked first, then taken out of the registry (its history stays in the audit log)`)
  return 0
}

async function verb(name: string, args: string[]): Promise<number> {
  const retire = name === 'retire'
  const { values, positionals } = parseVerbArgs(args, {
    reason: { type: 'string' },
    json: { type: 'boolean' },
    ...(retire ? { 'no-wipe': { type: 'boolean' as const }, deadline: { type: 'string' as const } } : {}),
  })
  const id = oneId(positionals, name)
  const body: Record<string, unknown> = values.reason ? { reason: values.reason } : {}
  if (retire) {
    const v = values as { 'no-wipe'?: boolean; deadline?: string; reason?: string }
    // PROTOCOL §6 "wipe": false: the retirement ends now, without a wipe; the reason is what the evidence says instead
    if (v['no-wipe']) {
      if (!v.reason) throw new UsageError('--no-wipe needs --reason TEXT: the evidence says why the device was not wiped (e.g. "destroyed in the fire of line 3")')
      if (v.deadline !== undefined) throw new UsageError('--no-wipe closes the retirement now: it takes no --deadline')
      body.wipe = false
    }
    if (v.deadline !== undefined) body.deadlineS = parseDuration('--deadline', v.deadline)
  }
  const r = expectOk(await adminRequest(dataDirOf(values['data-dir']), 'POST', `/v1/devices/${encodeURIComponent(id)}/${name}`, body))
  const d = r.device as DeviceView
  if (values.json) out(JSON.stringify(r))
  else {
    const wipe = (r.result as { evidence?: { wipe?: { status: string } } } | undefined)?.evidence?.wipe
    out(`${name} ${id}: ${d.state}${wipe ? ` (wipe ${wipe.status})` : ''}${d.pendingActions.length ? `, ${d.pendingActions.length} action(s) pending` : ''}`)
  }
  return 0
}
