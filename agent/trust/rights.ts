// The trust decision: what may this identity do now, on this path (PROTOCOL
// §4). Every protocol asks here (MQTT admission and forwarding, the Modbus
// proxy, the OPC UA and Modbus relays, the network level, the enforcer that
// closes sessions), so no protocol can drift from the others on the
// product's central question. Where paths really differ, the difference is
// a named function with its reason, not a local predicate in an adapter.
// Pure: a record and the time in, a verdict out.
import type { ParsedJws } from '../../wire/jws.ts'
import type { Act } from '../../wire/protocol.ts'
import { verifyBytes, type PublicKeyCache } from '../store/keys.ts'
import type { DeviceRecord, DeviceState } from '../devices/device.ts'
import type { AgentConfig } from '../runtime/config.ts'

/** PROTOCOL §4 rights of a device's own session (it connected to the gateway). */
export type Rights = 'full' | 'renew-only' | 'wipe-only'

/** The states that refuse a device's own connection outright. */
export type StateRefusal = 'quarantined' | 'revoked' | 'retired'

/** Why a device may not connect: its record (or its absence). */
export type RecordRefusal = 'unknown-device' | 'credential-expired' | StateRefusal

/** The network level a state calls for (PROTOCOL §6 `network.rule`). */
export type NetworkLevel = 'open' | 'wipe-only' | 'blocked'

const CUT_STATES: ReadonlySet<string> = new Set<StateRefusal>(['quarantined', 'revoked', 'retired'])

/** Whether every attempt of a device in this state is residual use (§4): it is cut off. */
export const isCutState = (state: string | undefined): state is StateRefusal => state !== undefined && CUT_STATES.has(state)

/**
 * The rights a record grants a device's own session now (§4), from memory:
 * full while the credential is valid, renew-only within `renewGraceS` after
 * it expired, wipe-only while retiring; otherwise the refusal.
 */
export function rightsOf(
  ctx: { config: Pick<AgentConfig, 'renewGraceS'> },
  record: DeviceRecord | undefined,
  nowS: number,
): { ok: true; rights: Rights } | { ok: false; reason: RecordRefusal; detail: string } {
  if (!record) return { ok: false, reason: 'unknown-device', detail: 'no such device is enrolled' }
  switch (record.state) {
    case 'active':
      if (nowS < record.credentialExpiresAt) return { ok: true, rights: 'full' }
      if (nowS - record.credentialExpiresAt < ctx.config.renewGraceS) return { ok: true, rights: 'renew-only' }
      return { ok: false, reason: 'credential-expired', detail: `credential expired at ${record.credentialExpiresAt}, beyond the ${ctx.config.renewGraceS} s renewal grace` }
    case 'retiring':
      return { ok: true, rights: 'wipe-only' }
    default:
      return { ok: false, reason: record.state, detail: `device is ${record.state}` }
  }
}

/** The rights a record grants a device's own session right now, or null when it may not be connected at all. */
export function currentRights(ctx: { config: Pick<AgentConfig, 'renewGraceS'>; nowS(): number }, record: DeviceRecord | undefined): Rights | null {
  const r = rightsOf(ctx, record, ctx.nowS())
  return r.ok ? r.rights : null
}

/**
 * A device in service: it keeps its sessions when its state changes to
 * this one, SCADA traffic for it passes the Modbus proxy (a client of the
 * proxy is not the device, so wipe-only does not apply to it), and the
 * gateway's routine work with it (identification, renewal) goes on.
 */
export const inService = (state: DeviceState): boolean => state === 'active'

/**
 * The gateway may hold its own session to the device (OPC UA: the gateway
 * is the client): while it is active, and while it is retiring, for its wipe
 * (§6 step 3). A quarantined or revoked device's certificate is distrusted
 * and its session closed.
 */
export const sessionReachable = (state: DeviceState): boolean => state === 'active' || state === 'retiring'

/**
 * The gateway may write a device's Modbus hook registers (§7): in every
 * state but retired. Modbus has no session to cut and no identity of its
 * own, so a wipe or revoke-notice queued for a quarantined or revoked
 * device (which §5 allows) still reaches it; the proxy keeps SCADA out.
 */
export const registersReachable = (state: DeviceState): boolean => state !== 'retired'

/** An action a gateway-initiated path may deliver in a state: anything, but only the wipe to a retiring device (§4 wipe-only). */
export const mayDeliver = (state: DeviceState, act: Act): boolean => state !== 'retiring' || act === 'wipe'

/** The network level a device state calls for (§6): open while active, wipe-only while retiring, else blocked. */
export function networkLevel(state: string): NetworkLevel {
  if (state === 'active') return 'open'
  if (state === 'retiring') return 'wipe-only'
  return 'blocked'
}

export const keyValidAt = (k: DeviceRecord['keys'][number], nowS: number): boolean => k.notBefore <= nowS && (k.notAfter === null || nowS < k.notAfter)

/**
 * The device key (base64url) whose signature a JWS carries, among the keys
 * of the record valid at `nowS`, or null: the one check of "signed by this
 * device" for tokens (§5) and acks (§5) alike. `earlyS` lets a key count
 * that far before its notBefore (acks allow the clock skew; tokens none).
 * `stats.verifies` counts signature checks made; keys in `except` (checked
 * already) are not tried.
 */
export function signingKey(
  record: DeviceRecord,
  jws: ParsedJws,
  nowS: number,
  keys: PublicKeyCache,
  opts: { earlyS?: number; stats?: { verifies: number }; except?: readonly string[] } = {},
): string | null {
  for (const publicKey of signingCandidates(record, nowS, opts.earlyS ?? 0)) {
    if (opts.except?.includes(publicKey)) continue
    const key = keys.get(publicKey)
    if (opts.stats) opts.stats.verifies++
    if (key && verifyBytes(key, jws.signingInput, jws.signature)) return publicKey
  }
  return null
}

/** The keys of a record that may have signed at `nowS` (signingKey tries them in this order), `earlyS` before their notBefore. */
export function signingCandidates(record: DeviceRecord, nowS: number, earlyS = 0): string[] {
  const out: string[] = []
  for (const k of record.keys) if (keyValidAt(earlyS ? { ...k, notBefore: k.notBefore - earlyS } : k, nowS)) out.push(k.publicKey)
  return out
}

/** The rights a certificate of a device grants now (§4, §5): by its own notAfter, renew-only within the grace after it. */
export function certificateRights(
  ctx: { config: Pick<AgentConfig, 'renewGraceS'> },
  record: DeviceRecord,
  notAfter: number,
  nowS: number,
): { ok: true; rights: Rights } | { ok: false; reason: RecordRefusal; detail: string } {
  if (record.state !== 'active') return rightsOf(ctx, record, nowS)
  if (nowS < notAfter) return { ok: true, rights: 'full' }
  if (nowS - notAfter < ctx.config.renewGraceS) return { ok: true, rights: 'renew-only' }
  return { ok: false, reason: 'credential-expired', detail: `certificate expired at ${notAfter}, beyond the ${ctx.config.renewGraceS} s renewal grace` }
}

/** The credential id of a password hash, as a session grant names it. */
export const passwordCredential = (phc: string): string => `password:${phc}`

/** The credential id of a certificate, as a session grant names it. */
export const certificateCredential = (sha256: string): string => `x509:${sha256}`

/**
 * Whether a credential (a token key, base64url, or `x509:<sha256>`) is one
 * the record still accepts at `nowS`: a key within its validity, a
 * certificate the record holds and has not revoked.
 */
export function credentialValid(record: DeviceRecord, credential: string, nowS: number): boolean {
  if (credential.startsWith('password:')) return record.spec.password === credential.slice(9)
  if (credential.startsWith('x509:')) {
    const sha = credential.slice(5)
    return record.certificates?.some((c) => c.sha256 === sha && !c.revoked) ?? false
  }
  return record.keys.some((k) => k.publicKey === credential && keyValidAt(k, nowS))
}

/** What a live session was admitted with. */
export interface SessionGrant {
  /** the credential it was opened with (a token key, or `x509:<sha256>`); null: not opened with a device credential */
  key: string | null
  rights: Rights
}

/**
 * PROTOCOL §4: the rights a live session keeps after its device's record
 * changed, or null when it must be closed: the new record would not admit
 * it (the device may not connect, or its key is no longer valid), or would
 * admit it with fewer rights (anything but full, where it had more).
 */
export function grantHolds(ctx: { config: Pick<AgentConfig, 'renewGraceS'>; nowS(): number }, grant: SessionGrant, after: DeviceRecord | undefined): Rights | null {
  const nowS = ctx.nowS()
  const r = sessionRights(ctx, grant.key, after, nowS)
  if (!r.ok) return null
  if (grant.key !== null && !credentialValid(after!, grant.key, nowS)) return null
  return r.rights === grant.rights || r.rights === 'full' ? r.rights : null
}

/**
 * The rights of a session opened with `credential` now: a certificate
 * session is bound by that certificate's own expiry (a session opened with
 * an expired certificate stays renew-only after its renewal is installed,
 * until the device connects with the new one); any other by the record's.
 */
export function sessionRights(
  ctx: { config: Pick<AgentConfig, 'renewGraceS'> },
  credential: string | null,
  record: DeviceRecord | undefined,
  nowS: number,
): { ok: true; rights: Rights } | { ok: false; reason: RecordRefusal; detail: string } {
  if (credential === null || !credential.startsWith('x509:') || !record) return rightsOf(ctx, record, nowS)
  const sha = credential.slice(5)
  const cert = record.certificates?.find((c) => c.sha256 === sha)
  if (!cert || cert.revoked) return { ok: false, reason: 'revoked', detail: 'the certificate of this session is no longer the device\'s' }
  return certificateRights(ctx, record, cert.notAfter || record.credentialExpiresAt, nowS)
}

/** Whether a record change takes a credential away (a key, a certificate): a stored session opened with it must go too. */
export function keysRemoved(before: DeviceRecord, after: DeviceRecord, nowS: number): boolean {
  const credentials = [
    ...before.keys.filter((k) => keyValidAt(k, nowS)).map((k) => k.publicKey),
    ...(before.certificates ?? []).filter((c) => !c.revoked).map((c) => certificateCredential(c.sha256)),
    ...(before.spec.password !== undefined ? [passwordCredential(before.spec.password)] : []),
  ]
  return credentials.some((c) => !credentialValid(after, c, nowS))
}
