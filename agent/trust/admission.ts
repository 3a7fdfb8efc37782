// Device admission (PROTOCOL §4 rights, §5 tokens), protocol-free: the MQTT
// site broker asks it, and any adapter that admits devices by token can.
// Reads memory only: the registry's in-memory index, the cached KeyObjects
// and the in-memory jti set. The one write is the remembered jti, committed
// (fsync, group-committed by the store) before the caller answers.
import type { Protocol } from '../adapter.ts'
import type { Gateway } from '../gateway.ts'
import { JtiStore } from '../store/jti-store.ts'
import { PublicKeyCache } from '../store/keys.ts'
import type { Logger } from '../observe/logger.ts'
import type { ResidualUseMonitor } from './residual-use.ts'
import { currentRights, isCutState, rightsOf, signingKey, type Rights, type StateRefusal } from './rights.ts'
import { checkTimeClaims, JwsFormatError, parseJws, type ParsedJws } from '../../wire/jws.ts'
import { MAX_TOKEN_LIFETIME_S } from '../../wire/protocol.ts'

export { MAX_TOKEN_LIFETIME_S }
const JTI_NAMESPACE = 'token'
const SWEEP_EVERY_S = 60

/** Stable reasons (log lines, tests); the wire only says CONNACK 4 or 5. */
export type AdmissionRefusal =
  | 'malformed-token' // not a well-formed JWS: CONNACK 4
  | 'bad-alg'
  | 'identity-mismatch' // client id, user name, kid and iss must all be the device id
  | 'wrong-audience'
  | 'malformed-claims'
  | 'expired'
  | 'not-yet-valid'
  | 'lifetime-too-long'
  | 'unknown-device'
  | 'replayed'
  | 'wrong-key'
  | 'credential-expired'
  | 'unavailable' // the jti could not be made durable
  | StateRefusal

export type AdmissionDecision =
  | { ok: true; deviceId: string; rights: Rights; jti: string; exp: number; /** the device key that signed the token (base64url) */ key: string }
  | { ok: false; reason: AdmissionRefusal; detail: string }

/**
 * Every check of a device token (§5), synchronous, memory only. `deviceId`
 * is the MQTT client id. The state is judged last, after the signature
 * check; DeviceAdmission.admit reads it again after the jti write.
 */
export function decideAdmission(
  gw: Gateway,
  deviceId: string,
  username: string | undefined,
  token: ParsedJws,
  ctx: { keys: PublicKeyCache; jtis: JtiStore; nowS: number; stats?: { verifies: number } },
): AdmissionDecision {
  const { nowS } = ctx
  const claims = token.payload
  if (username !== deviceId) return { ok: false, reason: 'identity-mismatch', detail: `user name ${JSON.stringify(username ?? null)} is not the client id` }
  if (token.header.kid !== deviceId || claims.iss !== deviceId) {
    return { ok: false, reason: 'identity-mismatch', detail: 'token kid and iss must both be the device id' }
  }
  if (claims.aud !== gw.id) return { ok: false, reason: 'wrong-audience', detail: `aud ${JSON.stringify(claims.aud ?? null)} is not this gateway` }
  const time = checkTimeClaims(claims, nowS, { skewS: gw.config.clockSkewS, maxLifetimeS: MAX_TOKEN_LIFETIME_S })
  if (time) return { ok: false, reason: time.reason === 'malformed' ? 'malformed-claims' : time.reason, detail: time.detail }
  const jti = claims.jti as string
  const exp = claims.exp as number
  const before = gw.registry.get(deviceId)
  if (!before) return { ok: false, reason: 'unknown-device', detail: 'no such device is enrolled' }
  if (ctx.jtis.has(jti, nowS)) return { ok: false, reason: 'replayed', detail: `token ${jti} was already used` }
  const verified = signingKey(before, token, nowS, ctx.keys, { ...(ctx.stats ? { stats: ctx.stats } : {}) })
  if (verified === null) return { ok: false, reason: 'wrong-key', detail: 'signature is not by any currently valid key of the device' }
  // Synchronous since `before` was read: nothing can have replaced it.
  const rights = rightsOf(gw, before, nowS)
  if (!rights.ok) return rights
  return { ok: true, deviceId, rights: rights.rights, jti, exp, key: verified }
}

export interface AdmissionRequest {
  protocol: Protocol
  clientId: string
  username: string | undefined
  password: Uint8Array | string | undefined
  remote?: string
}

/** Token admission with its durable one-connect-per-token memory and residual-use reporting. */
export class DeviceAdmission {
  readonly #gw: Gateway
  readonly #jtis: JtiStore
  readonly #keys: PublicKeyCache
  readonly #residual: ResidualUseMonitor | null
  readonly #log: Logger
  #lastSweepS = 0
  /** signature checks made so far (a throttled storm of garbage makes none) */
  readonly stats = { verifies: 0 }

  private constructor(gw: Gateway, jtis: JtiStore, residual: ResidualUseMonitor | null, log: Logger, keys: PublicKeyCache) {
    this.#gw = gw
    this.#jtis = jtis
    this.#residual = residual
    this.#log = log
    this.#keys = keys
  }

  static async open(gw: Gateway, opts: { log: Logger; residual?: ResidualUseMonitor; keys?: PublicKeyCache }): Promise<DeviceAdmission> {
    const jtis = await JtiStore.load(gw.store, JTI_NAMESPACE)
    return new DeviceAdmission(gw, jtis, opts.residual ?? null, opts.log, opts.keys ?? new PublicKeyCache())
  }

  /**
   * Decide a connect. Resolves (never rejects) once an admitted token's jti
   * is on disk and the state has been read again, so the caller can answer
   * at once: a revoke that landed during the write refuses the connect.
   */
  async admit(req: AdmissionRequest): Promise<AdmissionDecision> {
    let decision: AdmissionDecision
    const nowS = this.#gw.nowS()
    if (req.password === undefined || req.password.length === 0) {
      decision = { ok: false, reason: 'malformed-token', detail: 'no password' }
    } else {
      let token: ParsedJws | null = null
      try {
        token = parseJws(req.password)
      } catch (err) {
        if (!(err instanceof JwsFormatError)) throw err
        decision = { ok: false, reason: err.reason === 'bad-alg' ? 'bad-alg' : 'malformed-token', detail: err.message }
      }
      decision ??= decideAdmission(this.#gw, req.clientId, req.username, token!, { keys: this.#keys, jtis: this.#jtis, nowS, stats: this.stats })
    }
    if (decision.ok) {
      // Remembered in memory now (a concurrent replay is refused at once), until exp plus the skew a token is accepted for.
      const op = this.#jtis.remember(decision.jti, decision.exp + this.#gw.config.clockSkewS, null)
      try {
        await this.#gw.commit({ ops: [op] }, { sync: true })
      } catch (err) {
        this.#log.error({ err, deviceId: req.clientId }, 'cannot store the token jti; connect refused')
        return this.#refused(req, { ok: false, reason: 'unavailable', detail: 'token jti could not be stored' })
      }
      this.#maybeSweep(nowS)
      // The decisive read: after verification and after the write.
      const after = rightsOf(this.#gw, this.#gw.registry.get(req.clientId), this.#gw.nowS())
      if (!after.ok) return this.#refused(req, after)
      return { ...decision, rights: after.rights }
    }
    return this.#refused(req, decision)
  }

  #refused(req: AdmissionRequest, d: Extract<AdmissionDecision, { ok: false }>): AdmissionDecision {
    this.#log.debug({ deviceId: req.clientId, username: req.username, protocol: req.protocol, remote: req.remote, reason: d.reason, detail: d.detail }, 'connect refused')
    this.reportRefused(req, d.reason)
    return d
  }

  /** PROTOCOL §4: a refused connect by a cut identity (client id or user name) is residual use, whatever else was wrong with it. */
  reportRefused(req: Omit<AdmissionRequest, 'password'>, why: string): void {
    if (!this.#residual) return
    const ids = req.username !== undefined && req.username !== req.clientId ? [req.clientId, req.username] : [req.clientId]
    for (const id of ids) {
      const state = this.#gw.registry.get(id)?.state
      if (!isCutState(state)) continue
      this.#residual.record({
        deviceId: id,
        protocol: req.protocol,
        ...(req.remote !== undefined ? { remote: req.remote } : {}),
        detail: `connect refused (${why}): device is ${state}`,
      })
    }
  }

  #maybeSweep(nowS: number): void {
    if (nowS - this.#lastSweepS < SWEEP_EVERY_S) return
    this.#lastSweepS = nowS
    const ops = this.#jtis.sweep(nowS)
    if (ops.length) this.#gw.commit({ ops }, { sync: false }).catch((err: unknown) => this.#log.error({ err }, 'cannot sweep expired token jtis'))
  }

  /** Rights of a device now (memory only); null when it may not be connected. */
  rightsNow(deviceId: string): Rights | null {
    return currentRights(this.#gw, this.#gw.registry.get(deviceId))
  }

  get residual(): ResidualUseMonitor | null {
    return this.#residual
  }
}
