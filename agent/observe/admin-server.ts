// Local admin API: HTTP over a unix socket, mode 0600, so only the agent's
// own user (and root) can reach it. The CLI's device verbs go through here,
// audited with the local operator as actor.
import { chmodSync, rmSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { userInfo } from 'node:os'
import { join } from 'node:path'
import { opArgs, type Op, type OpRequest, type OpRunner } from '../commands/ops.ts'
import { exportAuditLog, verifyAuditLog } from '../store/audit.ts'
import { EdgewardenError, isEdgewardenError, type ErrorCode } from '../runtime/errors.ts'
import type { Gateway } from '../gateway.ts'
import { parseDeviceSpec } from '../devices/device.ts'
import { naturalCompare } from './natural-sort.ts'
import type { SitePki } from '../pki/site-pki.ts'
import type { Logger } from './logger.ts'
import { describeDevice, type LiveSources } from './views.ts'
import { deviceAuditEntries, deviceHistory } from './device-history.ts'
import { recordChanges } from '../devices/record-changes.ts'
import type { DeviceActions } from '../actions/device-actions.ts'
import type { Retirements } from '../actions/retirement.ts'

export const ADMIN_SOCKET = 'admin.sock'
const MAX_BODY = 64 * 1024

const STATUS: Partial<Record<ErrorCode, number>> = {
  UNKNOWN_DEVICE: 404,
  UNKNOWN_ACTION: 404,
  ILLEGAL_TRANSITION: 409,
  DEVICE_EXISTS: 409,
  DUPLICATE_CREDENTIAL: 409,
  INVALID_DEVICE: 400,
  ADMIN_REQUEST: 400,
}

/** The device verbs of the admin socket: `POST /v1/devices/<id>/<verb>` runs op `device.<verb>` of the one op table. */
export const ADMIN_VERBS = ['quarantine', 'release', 'revoke', 'retire', 'wipe', 'reenroll', 'renew'] as const
export type AdminVerb = (typeof ADMIN_VERBS)[number]

export interface AdminHooks {
  /** the op table (agent/commands/ops.ts), shared with the control plane */
  ops: Record<Op, OpRunner>
  /** `GET /v1/quarantine`: the network rules in force joined with the registry */
  quarantine?(gw: Gateway): Promise<unknown>
  /** `GET /v1/pki`: the site CA and its CRL (PROTOCOL §9, `edgewarden ca show`) */
  pki?: SitePki
  /** live sessions and last refusals in device views */
  live?: LiveSources
  /** `…/actions/<id>/cancel` */
  actions?: DeviceActions
  /** a wipe a retirement waits for is not cancelled, but closed by retire --no-wipe */
  retirements?: Retirements
  /** `GET /v1/identity` says where devices connect (`edgewarden simulate` dials it) */
  listeners?: () => { mqtt: { host: string; port: number | null; tlsPort: number | null } }
}

/** What `GET /v1/pki` answers: the CA as it signs now, and the CRL's facts (`edgewarden ca show` formats them). */
export interface PkiFacts {
  origin: 'created' | 'loaded' | 'enterprise'
  /** the signing CA first, then the rest of its chain */
  chain: string[]
  /** CAs still trusted beside it (a rollover: <data-dir>/pki/previous-ca.pem) */
  previous: string[]
  crl: { number: number; thisUpdate: number; nextUpdate: number } | null
}

class RequestError extends EdgewardenError {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super('ADMIN_REQUEST', message)
    this.name = 'RequestError'
  }
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  let size = 0
  const chunks: Buffer[] = []
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length
    if (size > MAX_BODY) throw new RequestError(413, `request body over ${MAX_BODY} bytes`)
    chunks.push(c)
  }
  if (size === 0) return {}
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>
  } catch {}
  throw new RequestError(400, 'request body is not a JSON object')
}

/** The `reason` of a request body, at most 1024 characters (what the audit entry keeps). */
const reasonOf = (body: Record<string, unknown>): string | undefined => (typeof body.reason === 'string' ? body.reason.slice(0, 1024) : undefined)

/** The name of the user the agent runs as: the owner of the socket it creates. */
function ownerName(): string {
  try {
    return userInfo().username
  } catch {
    return `uid-${process.getuid?.() ?? 'unknown'}`
  }
}

const send = (res: ServerResponse, status: number, body: unknown): void => {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify(body))
}

export async function startAdminServer(gw: Gateway, hooks: AdminHooks, log: Logger): Promise<{ server: Server; path: string; close(): Promise<void> }> {
  const path = join(gw.config.dataDir, ADMIN_SOCKET)
  // The store lock proves no other agent owns this dir: a socket file left
  // here is stale (kill -9) and safe to replace.
  rmSync(path, { force: true })
  const owner = ownerName()
  const actor = `local:${owner}`
  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (err instanceof RequestError) return send(res, err.status, { error: { code: 'ADMIN_REQUEST', message: err.message } })
      if (isEdgewardenError(err)) return send(res, STATUS[err.code] ?? 500, { error: { code: err.code, message: err.message } })
      log.error({ err }, 'admin request failed')
      send(res, 500, { error: { code: 'INTERNAL', message: (err as Error).message } })
    })
  })

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin')
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent)
    // The actor is who can reach the socket, not what the client says: the
    // socket is mode 0600, so only its owner (or root) connects. Node has no
    // SO_PEERCRED, so the owner is recorded; a name the client sends that
    // differs is kept beside it as a claim, never as the actor.
    const claim = req.headers['x-edgewarden-actor']
    const claimedBy = typeof claim === 'string' && /^[\w.@-]{1,64}$/.test(claim) && claim !== owner ? claim : undefined
    const who = { actor, ...(claimedBy !== undefined ? { claimedBy } : {}) }
    const route = `${req.method} /${parts.slice(0, 2).join('/')}`
    const view = (id: string) => describeDevice(gw, gw.requireDevice(id), hooks.live)
    if (route === 'GET /v1/identity') {
      return send(res, 200, { site: gw.site, gateway: gw.id, publicKey: gw.key.publicKeyB64, ...(hooks.listeners ? { listeners: hooks.listeners() } : {}) })
    }
    if (route === 'GET /v1/devices' && parts.length === 2) {
      const list = [...gw.registry.values()].sort((a, b) => naturalCompare(a.spec.id, b.spec.id)).map((d) => describeDevice(gw, d, hooks.live))
      return send(res, 200, { devices: list })
    }
    if (route === 'GET /v1/devices' && parts.length === 3) {
      return send(res, 200, { device: view(parts[2]!) })
    }
    if (route === 'GET /v1/devices' && parts.length === 4 && parts[3] === 'history') {
      // a removed device still has its history: only an id the log never named is unknown
      const id = parts[2]!
      const items = await deviceHistory(gw.store, id)
      if (items.length === 0) gw.requireDevice(id)
      const d = gw.getDevice(id)
      return send(res, 200, { deviceId: id, ...(d ? { device: describeDevice(gw, d, hooks.live) } : {}), items })
    }
    if (route === 'GET /v1/devices' && parts.length === 4 && parts[3] === 'actions') {
      const id = parts[2]!
      gw.requireDevice(id)
      return send(res, 200, { deviceId: id, actions: gw.actions.pending(id).map((a) => ({ id: a.id, act: a.act, seq: a.seq, queuedAt: a.queuedAt, deadline: a.deadline, reachable: hooks.actions?.dispatcher.isReachable(id) ?? false })) })
    }
    const request = (reason: string | undefined): OpRequest => ({ who: { ...who, ...(reason !== undefined ? { reason } : {}) }, receivedAt: performance.now(), receivedAtS: gw.nowS() })
    if (route === 'POST /v1/devices' && parts.length === 2) {
      const body = await readJson(req)
      const reason = reasonOf(body)
      // An existing id is replaced only when asked (`device add --replace`), and the refusal says what would change.
      const id = (body.device as { id?: unknown } | undefined)?.id
      const existing = typeof id === 'string' ? gw.getDevice(id) : undefined
      if (existing && body.replace !== true) {
        const parsed = parseDeviceSpec(body.device)
        const changes = parsed.ok ? recordChanges(existing, parsed.spec, reason) : []
        throw new EdgewardenError(
          'DEVICE_EXISTS',
          `device ${existing.spec.id} is already enrolled (${existing.state}${existing.stateReason ? `: ${existing.stateReason}` : ''}); ${parsed.ok ? (changes.length ? `replacing it would change: ${changes.join('; ')}` : 'replacing it would change nothing') : 'and the new record is invalid'}. Give --replace to replace it`,
        )
      }
      const r = await hooks.ops['device.enroll']({ device: body.device }, request(reason))
      // `result` carries the certificate chain of an enrollment with a CSR (PROTOCOL §3), and what a replacement changed
      return send(res, 200, { result: r.local, device: view(r.deviceId!) })
    }
    if (route === 'POST /v1/devices' && parts.length === 6 && parts[3] === 'actions' && parts[5] === 'cancel' && hooks.actions) {
      const [, , id, , actionId] = parts as [string, string, string, string, string]
      const body = await readJson(req)
      const reason = reasonOf(body)
      const pending = gw.actions.find(id, actionId)
      if (pending?.act === 'wipe' && hooks.retirements?.isOpen(id)) {
        throw new EdgewardenError('ILLEGAL_TRANSITION', `the retirement of ${id} waits for this wipe: close it without one instead (edgewarden device retire ${id} --no-wipe --reason TEXT)`)
      }
      const a = await hooks.actions.cancel(id, actionId, request(reason).who)
      return send(res, 200, { result: { cancelled: { id: a.id, act: a.act } }, device: view(id) })
    }
    if (route === 'DELETE /v1/devices' && parts.length === 3) {
      // Local only: an active or revoked device leaves the registry (revoked first, so every session and path closes as for any revocation).
      const id = parts[2]!
      const body = await readJson(req)
      const reason = reasonOf(body)
      const d = gw.requireDevice(id)
      if (d.state !== 'active' && d.state !== 'revoked') {
        throw new EdgewardenError('ILLEGAL_TRANSITION', `device ${id} is ${d.state}: only an active or revoked device is removed (a cut that is under way or finished stays on record)`)
      }
      if (d.state === 'revoked' && d.spec.network !== undefined && gw.config.quarantine !== 'none') {
        throw new EdgewardenError('ILLEGAL_TRANSITION', `device ${id} is revoked and its network address is blocked: removing it would lift the block (retire it instead)`)
      }
      if ((d.certificates ?? []).some((c) => c.issuer === 'site' && !c.revoked)) {
        throw new EdgewardenError('ILLEGAL_TRANSITION', `device ${id} holds a certificate of the site CA: retire it instead, so the certificate stays on the CRL`)
      }
      const r = request(reason ?? 'removed')
      if (d.state === 'active') await hooks.ops['device.revoke']({ deviceId: id, reason: reason ?? 'removed' }, r)
      await gw.removeDevice(id, r.who)
      return send(res, 200, { result: { removed: id } })
    }
    if (route === 'POST /v1/devices' && parts.length === 4) {
      const verb = parts[3] as AdminVerb
      if (!(ADMIN_VERBS as readonly string[]).includes(verb)) throw new RequestError(404, `unknown device verb ${verb}`)
      const op = `device.${verb}` as const
      const body = await readJson(req)
      const reason = reasonOf(body)
      // The op's own arguments, checked by the schema the control plane's are checked by.
      const args: Record<string, unknown> = { deviceId: parts[2]! }
      const shape = opArgs()[op].shape as Record<string, unknown>
      for (const k of ['reason', 'wipe', 'deadlineS'] as const) {
        const v = k === 'reason' ? reason : body[k]
        if (v !== undefined && k in shape) args[k] = v
      }
      const parsed = opArgs()[op].safeParse(args)
      if (!parsed.success) throw new RequestError(400, parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '))
      const r = await hooks.ops[op](parsed.data as Record<string, unknown>, request(reason))
      return send(res, 200, { result: r.local, device: describeDevice(gw, gw.requireDevice(parts[2]!)) })
    }
    if (route === 'GET /v1/quarantine' && parts.length === 2 && hooks.quarantine) {
      return send(res, 200, await hooks.quarantine(gw))
    }
    if (route === 'GET /v1/pki' && parts.length === 2 && hooks.pki) {
      const { ca, crl } = hooks.pki
      const signed = crl.current
      const facts: PkiFacts = {
        origin: ca.origin,
        chain: ca.chainPem,
        previous: ca.trustPem.slice(ca.chainPem.length),
        crl: signed ? { number: signed.number, thisUpdate: signed.thisUpdate, nextUpdate: signed.nextUpdate } : null,
      }
      return send(res, 200, facts)
    }
    if (route === 'GET /v1/audit' && parts[2] === 'verify') {
      const pinned = url.searchParams.getAll('trust')
      const trusted = pinned.length
        ? pinned.map((key) => ({ key, source: 'pinned with --trust-key' }))
        : [{ key: gw.key.publicKeyB64, source: "the running agent's own key, kept with the data it vouches for, so it proves less than a key pinned with --trust-key" }]
      return send(res, 200, { ...(await verifyAuditLog(gw.store, trusted.map((k) => k.key))), trusted })
    }
    if (route === 'GET /v1/audit' && parts[2] === 'export') {
      const device = url.searchParams.get('device')
      res.writeHead(200, { 'content-type': 'application/x-ndjson' })
      for await (const e of device !== null ? deviceAuditEntries(gw.store, device) : exportAuditLog(gw.store)) res.write(`${JSON.stringify(e)}\n`)
      res.end()
      return
    }
    throw new RequestError(404, `no route ${req.method} ${url.pathname}`)
  }

  const oldMask = process.umask(0o177)
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(path, () => {
        server.off('error', reject)
        resolve()
      })
    })
  } finally {
    process.umask(oldMask)
  }
  chmodSync(path, 0o600)
  return {
    server,
    path,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}
