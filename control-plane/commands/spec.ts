// What an API request asks for, checked and turned into one command per
// device, each addressed to the gateway where the device lives (the control
// plane knows it from enrollments and the gateways' events). Validation is
// complete before anything is stored: a request with one bad part changes
// nothing. The gateway checks everything again (PROTOCOL §3 invalid-args);
// these checks are there to give the caller a clear answer now.
import { isId } from '../../wire/ids.ts'
import { MAX_JWS_BYTES } from '../../wire/jws.ts'
import { badRequest, CpError } from '../runtime/errors.ts'
import { publicKeyFromB64 } from '../runtime/keys.ts'
import type { Sql } from '../storage/database.ts'

/** PROTOCOL §3 ops, and which of them change a device. */
export const OPS = ['device.enroll', 'device.revoke', 'device.quarantine', 'device.release', 'device.wipe', 'device.reenroll', 'device.renew', 'device.retire', 'inventory.report'] as const
export type Op = (typeof OPS)[number]
export const isOp = (v: unknown): v is Op => typeof v === 'string' && (OPS as readonly string[]).includes(v)
/** The short names of POST /v1/devices/{id}/{action}. */
export const DEVICE_ACTIONS: Record<string, Op> = {
  revoke: 'device.revoke',
  quarantine: 'device.quarantine',
  release: 'device.release',
  wipe: 'device.wipe',
  reenroll: 'device.reenroll',
  renew: 'device.renew',
  retire: 'device.retire',
}

export interface CommandSpec {
  site: string
  gateway: string
  deviceId: string | null
  op: Op
  args: Record<string, unknown>
}

/** Devices in one request at most. */
export const MAX_DEVICES_PER_REQUEST = 10_000
const MAX_ARGS_BYTES = MAX_JWS_BYTES - 2048 // header, claims and base64url growth stay under 16 KiB
const REQUEST_FIELDS = new Set(['op', 'deviceId', 'deviceIds', 'device', 'devices', 'args', 'site', 'gateway'])
const CRITICALITIES = new Set(['low', 'medium', 'high', 'safety'])
const MAX_DEADLINE_S = 365 * 86_400

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

function checkReason(args: Record<string, unknown>, where: string): void {
  if (args.reason !== undefined && (typeof args.reason !== 'string' || args.reason.length === 0 || args.reason.length > 500)) throw badRequest(`${where}: reason must be a string of 1 to 500 characters`)
}

/** The args of one op, checked; unknown fields refused. */
export function checkArgs(op: Op, args: Record<string, unknown>): Record<string, unknown> {
  const allowed: Record<Op, string[]> = {
    'device.enroll': [],
    'device.revoke': ['reason'],
    'device.quarantine': ['reason'],
    'device.release': [],
    'device.wipe': [],
    'device.reenroll': [],
    'device.renew': [],
    'device.retire': ['reason', 'wipe', 'deadlineS'],
    'inventory.report': [],
  }
  for (const k of Object.keys(args)) if (!allowed[op].includes(k)) throw badRequest(`${op} takes no argument "${k}"${allowed[op].length ? ` (it takes ${allowed[op].join(', ')})` : ''}`)
  checkReason(args, op)
  if (op === 'device.retire') {
    if (args.wipe !== undefined && typeof args.wipe !== 'boolean') throw badRequest('device.retire: wipe must be true or false (false: the device was destroyed or taken away, PROTOCOL §6)')
    if (args.deadlineS !== undefined && !(Number.isSafeInteger(args.deadlineS) && (args.deadlineS as number) >= 60 && (args.deadlineS as number) <= MAX_DEADLINE_S)) {
      throw badRequest(`device.retire: deadlineS must be a whole number of seconds from 60 to ${MAX_DEADLINE_S}`)
    }
  }
  return args
}

/** PROTOCOL §3 Device, as far as the control plane can tell: an id and exactly one credential kind. */
export function checkDevice(d: unknown, where: string): Record<string, unknown> {
  if (!isObject(d)) throw badRequest(`${where}: a device must be a JSON object`)
  if (!isId(d.id)) throw badRequest(`${where}: device id ${JSON.stringify(d.id ?? null)} is not an identifier (PROTOCOL §1)`)
  const kinds = ['publicKey', 'x509', 'password'].filter((k) => d[k] !== undefined)
  if (kinds.length !== 1) throw badRequest(`${where} ${d.id}: exactly one credential (publicKey, x509 or password) is needed, got ${kinds.length ? kinds.join(' and ') : 'none'}`)
  if (d.publicKey !== undefined && !publicKeyFromB64(d.publicKey)) throw badRequest(`${where} ${d.id}: publicKey is not base64url of a raw 32-byte Ed25519 key`)
  if (d.x509 !== undefined) {
    const x = d.x509
    const forms = isObject(x) ? ['csr', 'bootstrapSecretSha256', 'certificateSha256'].filter((k) => x[k] !== undefined) : []
    if (!isObject(x) || forms.length !== 1) throw badRequest(`${where} ${d.id}: x509 must be {"csr"}, {"bootstrapSecretSha256"} or {"certificateSha256"} (PROTOCOL §3)`)
    for (const k of ['bootstrapSecretSha256', 'certificateSha256']) if (x[k] !== undefined && !/^[0-9a-f]{64}$/.test(String(x[k]))) throw badRequest(`${where} ${d.id}: x509.${k} must be 64 lowercase hex characters`)
    if (x.csr !== undefined && (typeof x.csr !== 'string' || !/^[A-Za-z0-9_-]+$/.test(x.csr))) throw badRequest(`${where} ${d.id}: x509.csr must be base64url DER of a PKCS#10 request`)
  }
  if (d.password !== undefined && (typeof d.password !== 'string' || !d.password.startsWith('$scrypt$'))) {
    throw badRequest(`${where} ${d.id}: password must be a PHC scrypt hash ($scrypt$ln=…): the control plane never takes a device's password itself`)
  }
  if (d.criticality !== undefined && !CRITICALITIES.has(d.criticality as string)) throw badRequest(`${where} ${d.id}: criticality must be low, medium, high or safety`)
  if (d.owner !== undefined && (typeof d.owner !== 'string' || d.owner.length > 200)) throw badRequest(`${where} ${d.id}: owner must be a string of at most 200 characters`)
  if (d.credentialExpiresAt !== undefined && !Number.isSafeInteger(d.credentialExpiresAt)) throw badRequest(`${where} ${d.id}: credentialExpiresAt must be seconds since the epoch`)
  for (const k of ['mqtt', 'modbus', 'opcua', 'network', 'acl']) if (d[k] !== undefined && !isObject(d[k])) throw badRequest(`${where} ${d.id}: ${k} must be an object`)
  return d
}

function idsOf(body: Record<string, unknown>): string[] {
  if (body.deviceId !== undefined && body.deviceIds !== undefined) throw badRequest('give deviceId or deviceIds, not both')
  const list = body.deviceIds !== undefined ? body.deviceIds : body.deviceId !== undefined ? [body.deviceId] : undefined
  if (list === undefined) throw badRequest('deviceId (one device) or deviceIds (many) is required')
  if (!Array.isArray(list) || list.length === 0) throw badRequest('deviceIds must be a non-empty array of device ids')
  if (list.length > MAX_DEVICES_PER_REQUEST) throw badRequest(`at most ${MAX_DEVICES_PER_REQUEST} devices per request, got ${list.length}`)
  const bad = list.filter((id) => !isId(id))
  if (bad.length) throw badRequest(`not device ids: ${bad.slice(0, 5).map((b) => JSON.stringify(b)).join(', ')}${bad.length > 5 ? ` and ${bad.length - 5} more` : ''}`)
  const ids = list as string[]
  if (new Set(ids).size !== ids.length) throw badRequest('a device id appears twice in deviceIds')
  return ids
}

async function gatewayExists(q: Sql, site: string, gateway: string): Promise<boolean> {
  return (await q.query('SELECT 1 FROM gateways WHERE site = $1 AND id = $2', [site, gateway])).length === 1
}

/** The commands a POST /v1/commands body asks for, every device located; throws CpError and changes nothing otherwise. */
export async function buildSpecs(q: Sql, body: unknown): Promise<CommandSpec[]> {
  if (!isObject(body)) throw badRequest('the body must be a JSON object')
  for (const k of Object.keys(body)) if (!REQUEST_FIELDS.has(k)) throw badRequest(`unknown field "${k}" (a command takes ${[...REQUEST_FIELDS].join(', ')})`)
  const op = body.op
  if (!isOp(op)) throw badRequest(`op ${JSON.stringify(op ?? null)} is not one of ${OPS.join(', ')}`)
  const args = body.args === undefined ? {} : body.args
  if (!isObject(args)) throw badRequest('args must be a JSON object')
  checkArgs(op, args)
  if ((body.site === undefined) !== (body.gateway === undefined)) throw badRequest('site and gateway go together')
  if (body.site !== undefined && (!isId(body.site) || !isId(body.gateway))) throw badRequest('site and gateway must be identifiers')
  const site = body.site as string | undefined
  const gateway = body.gateway as string | undefined
  if (site !== undefined && !(await gatewayExists(q, site, gateway!))) throw new CpError('CP_UNKNOWN_GATEWAY', `gateway ${site}/${gateway} is not registered (POST /v1/gateways)`)
  const tooBig = (a: unknown): boolean => Buffer.byteLength(JSON.stringify(a)) > MAX_ARGS_BYTES

  if (op === 'inventory.report') {
    if (body.deviceId !== undefined || body.deviceIds !== undefined || body.device !== undefined || body.devices !== undefined) throw badRequest('inventory.report is for a gateway: give site and gateway, no devices')
    if (site === undefined) throw badRequest('inventory.report needs site and gateway')
    return [{ site, gateway: gateway!, deviceId: null, op, args: {} }]
  }

  if (op === 'device.enroll') {
    if (body.deviceId !== undefined || body.deviceIds !== undefined) throw badRequest('device.enroll takes the device record: device (one) or devices (many)')
    if (Object.keys(args).length) throw badRequest('device.enroll takes the record in device/devices, not args')
    if (body.device !== undefined && body.devices !== undefined) throw badRequest('give device or devices, not both')
    const list = body.devices !== undefined ? body.devices : body.device !== undefined ? [body.device] : undefined
    if (!Array.isArray(list) || list.length === 0) throw badRequest('device.enroll needs device (a record) or devices (a non-empty array of records)')
    if (list.length > MAX_DEVICES_PER_REQUEST) throw badRequest(`at most ${MAX_DEVICES_PER_REQUEST} devices per request, got ${list.length}`)
    const records = list.map((d, i) => checkDevice(d, list.length === 1 ? 'device' : `devices[${i}]`))
    const ids = records.map((d) => d.id as string)
    if (new Set(ids).size !== ids.length) throw badRequest('a device id appears twice in devices')
    const known = site === undefined ? await locate(q, ids) : new Map<string, { site: string; gateway: string }>()
    const missing = site === undefined ? ids.filter((id) => !known.has(id)) : []
    if (missing.length) throw new CpError('CP_UNKNOWN_DEVICE', `${missing.length} device(s) are new: give site and gateway to enroll them (${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''})`, { detail: { unknown: missing } })
    return records.map((d) => {
      if (tooBig({ device: d })) throw badRequest(`device ${d.id}: the record is over ${MAX_ARGS_BYTES} bytes (one command is at most 16 KiB)`)
      const loc = site !== undefined ? { site, gateway: gateway! } : known.get(d.id as string)!
      return { site: loc.site, gateway: loc.gateway, deviceId: d.id as string, op, args: { device: d } }
    })
  }

  if (body.device !== undefined || body.devices !== undefined) throw badRequest(`${op} takes deviceId or deviceIds, not device records`)
  const ids = idsOf(body)
  const known = await locate(q, ids)
  const missing = ids.filter((id) => !known.has(id))
  if (missing.length && site === undefined) {
    throw new CpError('CP_UNKNOWN_DEVICE', `${missing.length} device(s) are not known on any gateway: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''}`, { detail: { unknown: missing } })
  }
  return ids.map((id) => {
    const loc = site !== undefined ? { site, gateway: gateway! } : known.get(id)!
    return { site: loc.site, gateway: loc.gateway, deviceId: id, op, args: { deviceId: id, ...args } }
  })
}

/** Where each device lives, as far as the control plane knows. */
export async function locate(q: Sql, ids: readonly string[]): Promise<Map<string, { site: string; gateway: string }>> {
  const out = new Map<string, { site: string; gateway: string }>()
  for (let i = 0; i < ids.length; i += 1000) {
    const rows = await q.query<{ id: string; site: string; gateway: string }>('SELECT id, site, gateway FROM devices WHERE id = ANY($1::text[])', [ids.slice(i, i + 1000)])
    for (const r of rows) out.set(r.id, { site: r.site, gateway: r.gateway })
  }
  return out
}
