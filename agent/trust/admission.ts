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
import { certificateCredential, certificateRights, credentialValid, passwordCredential, currentRights, isCutState, rightsOf, signingCandidates, signingKey, type Rights, type StateRefusal } from './rights.ts'
import { credentialKind, type DeviceRecord } from '../devices/device.ts'
import { KnownPasswords, verifyPassword } from './password.ts'
import { BoundedMap } from '../runtime/bounded-map.ts'
import { AdmissionGate } from './admission-gate.ts'
import type { CryptoPool } from '../runtime/crypto-pool.ts'
import { checkTimeClaims, JwsFormatError, parseJws, type ParsedJws } from '../../wire/jws.ts'
import { MAX_TOKEN_LIFETIME_S } from '../../wire/protocol.ts'

export { MAX_TOKEN_LIFETIME_S }
const JTI_NAMESPACE = 'token'
const SWEEP_EVERY_S = 60
/** A refused connect is logged at info once per device and reason in this long; the rest are counted into the next line. */
export const REFUSAL_LOG_EVERY_MS = 60_000
/** Devices (and made-up ids) whose last refusal log is remembered; the oldest is forgotten first. */
const REFUSAL_LOG_MEMORY = 4096
/** At most this many refusal lines a second in all, whatever the number of ids: a flood of made-up ids does not flood the log. */
const REFUSAL_LOG_PER_S = 10

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
  | 'wrong-credential' // the device authenticates with another kind of credential (a token for a certificate device, ...)
  | 'wrong-certificate' // a certificate that is not the device's current one, nor the one it replaces
  | 'untrusted-certificate' // does not chain to the site CA (or a pinned device CA)
  | 'revoked-certificate'
  | 'wrong-password'
  | 'busy' // refused before any check: connects have waited too long already (admission-gate.ts); CONNACK 3
  | 'gone' // the client closed its connection while the connect waited its turn
  | StateRefusal

export type AdmissionDecision =
  | {
      ok: true
      deviceId: string
      rights: Rights
      /** the credential the session is opened with: the token's key (base64url), or `x509:<sha256>` */
      key: string
      /** a token's jti and exp (remembered against replay); absent for a certificate */
      jti?: string
      exp?: number
    }
  | { ok: false; reason: AdmissionRefusal; detail: string }

/** A token that passed every check but its signature: who it claims to be. */
interface TokenCandidate {
  ok: true
  record: DeviceRecord
  jti: string
  exp: number
}

/**
 * Every check of a device token (§5) before its signature, synchronous,
 * memory only: the identity (client id = user name = kid = iss), the
 * audience, the time claims, an enrolled device, a jti not used before.
 */
export function precheckToken(
  gw: Gateway,
  deviceId: string,
  username: string | undefined,
  token: ParsedJws,
  ctx: { jtis: JtiStore; nowS: number },
): TokenCandidate | Extract<AdmissionDecision, { ok: false }> {
  const { nowS } = ctx
  const claims = token.payload
  if (username !== deviceId) return { ok: false, reason: 'identity-mismatch', detail: `user name ${JSON.stringify(username ?? null)} is not the client id ${JSON.stringify(deviceId)}` }
  if (token.header.kid !== deviceId || claims.iss !== deviceId) {
    return { ok: false, reason: 'identity-mismatch', detail: `token kid ${JSON.stringify(token.header.kid ?? null)} and iss ${JSON.stringify(claims.iss ?? null)} must both be the client id ${JSON.stringify(deviceId)}` }
  }
  if (claims.aud !== gw.id) return { ok: false, reason: 'wrong-audience', detail: `aud is ${JSON.stringify(claims.aud ?? null)}, this gateway is ${JSON.stringify(gw.id)}` }
  const time = checkTimeClaims(claims, nowS, { skewS: gw.config.clockSkewS, maxLifetimeS: MAX_TOKEN_LIFETIME_S })
  if (time) return { ok: false, reason: time.reason === 'malformed' ? 'malformed-claims' : time.reason, detail: time.detail }
  const jti = claims.jti as string
  const record = gw.registry.get(deviceId)
  if (!record) return { ok: false, reason: 'unknown-device', detail: `no device ${JSON.stringify(deviceId)} is enrolled on this gateway` }
  if (ctx.jtis.has(jti, nowS)) return replayed(jti)
  return { ok: true, record, jti, exp: claims.exp as number }
}

const replayed = (jti: string): Extract<AdmissionDecision, { ok: false }> => ({ ok: false, reason: 'replayed', detail: `token ${jti} was already used: a device makes a new token (new jti) for every connect` })

const wrongKey = (deviceId: string, record: DeviceRecord): Extract<AdmissionDecision, { ok: false }> => ({
  ok: false,
  reason: 'wrong-key',
  detail: `the signature is not by any key of ${deviceId} valid now (${record.keys.length} on record): a device with a new key must be enrolled with it`,
})

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
  const pre = precheckToken(gw, deviceId, username, token, ctx)
  if (!pre.ok) return pre
  const verified = signingKey(pre.record, token, ctx.nowS, ctx.keys, { ...(ctx.stats ? { stats: ctx.stats } : {}) })
  if (verified === null) return wrongKey(deviceId, pre.record)
  // Synchronous since the record was read: nothing can have replaced it.
  const rights = rightsOf(gw, pre.record, ctx.nowS)
  if (!rights.ok) return rights
  return { ok: true, deviceId, rights: rights.rights, jti: pre.jti, exp: pre.exp, key: verified }
}

/** A TLS client certificate as the listener saw it (SitePki.inspect), and what the TLS stack said of its chain. */
export interface PeerCertificate {
  deviceId: string | null
  sha256: string
  serial: string
  notBefore: number
  notAfter: number
  /** issued (and signed) by the site CA */
  siteIssued: boolean
  issuerName: string
  /** the TLS stack's verdict on the chain (null: it chains to a trusted CA; CERT_HAS_EXPIRED and CERT_NOT_YET_VALID are judged here, by the gateway's clock) */
  chainError: string | null
}

/**
 * The TLS stack's verdicts on time, taken by wall time: the gateway judges
 * validity again with its own clock (the injected one, the judge of every
 * expiry), as it issues by that clock too.
 */
const TIME_VERDICTS: ReadonlySet<string> = new Set(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID'])

/**
 * Every check of a TLS client certificate (§5), synchronous, memory only:
 * the id its SAN names is the client id (and the user name, if sent), it is
 * the device's current certificate or the one it replaces, it chains to the
 * site CA (or, pinned, to a device CA), it is not revoked, and the state and
 * its own expiry (within the grace: renew-only) decide the rights.
 * Revocation is checked here, whatever the TLS stack said first (it reports
 * CERT_HAS_EXPIRED before it would a revocation).
 */
export function decideCertificate(gw: Gateway, deviceId: string, username: string | undefined, peer: PeerCertificate, nowS: number): AdmissionDecision {
  if (peer.deviceId !== null && peer.deviceId !== deviceId) return { ok: false, reason: 'identity-mismatch', detail: `the certificate names ${peer.deviceId}, not the client id` }
  if (username !== undefined && username !== deviceId) return { ok: false, reason: 'identity-mismatch', detail: 'the user name is not the client id' }
  const record = gw.registry.get(deviceId)
  if (!record) return { ok: false, reason: 'unknown-device', detail: 'no such device is enrolled' }
  if (credentialKind(record.spec) !== 'x509') return { ok: false, reason: 'wrong-credential', detail: `device ${deviceId} authenticates with ${credentialKind(record.spec)}, not a certificate` }
  const entry = record.certificates?.find((c) => c.sha256 === peer.sha256)
  if (!entry) return { ok: false, reason: 'wrong-certificate', detail: `certificate ${peer.serial} is not the current certificate of ${deviceId}, nor the one it replaces` }
  if (peer.chainError !== null && !TIME_VERDICTS.has(peer.chainError)) return { ok: false, reason: 'untrusted-certificate', detail: `the certificate does not chain to a trusted CA (${peer.chainError})` }
  if (entry.issuer === 'site' && !peer.siteIssued) return { ok: false, reason: 'untrusted-certificate', detail: 'the certificate is not signed by the site CA' }
  if (peer.deviceId === null && entry.issuer === 'site') return { ok: false, reason: 'identity-mismatch', detail: 'the certificate names no device in its SAN' }
  if (entry.revoked) return { ok: false, reason: 'revoked-certificate', detail: `certificate ${peer.serial} was revoked (${entry.revoked.reason})` }
  if (peer.notBefore > nowS + gw.config.clockSkewS) return { ok: false, reason: 'not-yet-valid', detail: `certificate ${peer.serial} is valid only from ${peer.notBefore}` }
  const rights = certificateRights(gw, record, peer.notAfter, nowS)
  if (!rights.ok) return rights
  return { ok: true, deviceId, rights: rights.rights, key: certificateCredential(peer.sha256) }
}

export interface AdmissionRequest {
  protocol: Protocol
  clientId: string
  username: string | undefined
  password: Uint8Array | string | undefined
  remote?: string
  /** the client certificate of a TLS connection, where one was presented */
  certificate?: PeerCertificate
  /** whether the client went away (its connection closed): checked when a waiting connect gets its turn */
  gone?: () => boolean
}

/** Token admission with its durable one-connect-per-token memory and residual-use reporting. */
export class DeviceAdmission {
  readonly #gw: Gateway
  readonly #jtis: JtiStore
  readonly #keys: PublicKeyCache
  /** where signatures are checked off the event loop; null: inline */
  readonly #pool: CryptoPool | null
  readonly #residual: ResidualUseMonitor | null
  readonly #log: Logger
  /** connects past the memory-only checks take a turn here: bounded concurrency, FIFO, early refusal (admission-gate.ts) */
  readonly gate: AdmissionGate
  #lastSweepS = 0
  /** signature checks and password derivations made so far (a throttled storm of garbage makes none) */
  readonly stats = { verifies: 0, passwordChecks: 0 }
  readonly #passwords = new KnownPasswords()
  /** when a throttled attempt last got a full password check, by device */
  readonly #blockedChecks = new BoundedMap<string, number>(10_000)
  /** refused connects since start, by `protocol reason` (the metric edgewarden_connects_refused_total) */
  readonly #refusals = new Map<string, number>()
  /** per `client id, reason`: when its last refusal was logged, and how many since were not */
  readonly #refusalLog = new BoundedMap<string, { atMs: number; unlogged: number }>(REFUSAL_LOG_MEMORY)
  #logWindow = { startMs: 0, lines: 0, unlogged: 0 }

  private constructor(gw: Gateway, jtis: JtiStore, residual: ResidualUseMonitor | null, log: Logger, keys: PublicKeyCache, pool: CryptoPool | null) {
    this.#gw = gw
    this.#pool = pool !== null && pool.size > 0 ? pool : null
    this.#jtis = jtis
    this.#residual = residual
    this.#log = log
    this.#keys = keys
    this.gate = new AdmissionGate({ concurrency: gw.config.admissionConcurrency, maxWaitMs: gw.config.admissionMaxWaitMs })
  }

  static async open(gw: Gateway, opts: { log: Logger; residual?: ResidualUseMonitor; keys?: PublicKeyCache; pool?: CryptoPool }): Promise<DeviceAdmission> {
    const jtis = await JtiStore.load(gw.store, JTI_NAMESPACE)
    return new DeviceAdmission(gw, jtis, opts.residual ?? null, opts.log, opts.keys ?? new PublicKeyCache(), opts.pool ?? null)
  }

  /**
   * Decide a connect. Resolves (never rejects) once an admitted token's jti
   * is on disk and the state has been read again, so the caller can answer
   * at once: a revoke that landed during the write refuses the connect.
   */
  async admit(req: AdmissionRequest): Promise<AdmissionDecision> {
    const nowS = this.#gw.nowS()
    const record = this.#gw.registry.get(req.clientId)
    const kind = record && credentialKind(record.spec)
    if (req.certificate && (kind === undefined || kind === 'x509')) {
      // A certificate admission writes nothing (no jti to remember): decided now, state read in the same step.
      const d = decideCertificate(this.#gw, req.clientId, req.username, req.certificate, nowS)
      return d.ok ? d : this.#refused(req, d)
    }
    // What memory alone refuses is refused now, without a turn at the gate:
    // garbage waits behind nobody and takes nobody's place.
    let token: ParsedJws | null = null
    if (kind !== 'password') {
      if (kind === 'x509') return this.#refused(req, { ok: false, reason: 'wrong-credential', detail: `device ${req.clientId} authenticates with a client certificate on the TLS listener` })
      if (req.password === undefined || req.password.length === 0) return this.#refused(req, { ok: false, reason: 'malformed-token', detail: 'no password' })
      try {
        token = parseJws(req.password)
      } catch (err) {
        if (!(err instanceof JwsFormatError)) throw err
        return this.#refused(req, { ok: false, reason: err.reason === 'bad-alg' ? 'bad-alg' : 'malformed-token', detail: err.message })
      }
      const pre = precheckToken(this.#gw, req.clientId, req.username, token, { jtis: this.#jtis, nowS })
      if (!pre.ok) return this.#refused(req, pre)
    }
    // The signature (or password) and the durable jti: one turn at the gate, in arrival order.
    const turn = this.gate.enter()
    if (turn === null) {
      return this.#refused(req, { ok: false, reason: 'busy', detail: `too many connects at once: the oldest waiting one has waited ${Math.round(this.gate.oldestWaitMs)} ms (admissionMaxWaitMs); retry` })
    }
    const release = await turn
    try {
      // its client went away while it waited: nobody to answer, nothing to check
      if (req.gone?.()) return this.#refused(req, { ok: false, reason: 'gone', detail: 'the connection closed while the connect waited its turn' })
      return await (token ? this.#judgeToken(req, token) : this.#judgePassword(req))
    } finally {
      release()
    }
  }

  async #judgePassword(req: AdmissionRequest): Promise<AdmissionDecision> {
    // read again: the record may have changed while the connect waited
    const record = this.#gw.registry.get(req.clientId)
    if (!record) return this.#refused(req, { ok: false, reason: 'unknown-device', detail: `no device ${JSON.stringify(req.clientId)} is enrolled on this gateway` })
    if (credentialKind(record.spec) !== 'password') return this.#refused(req, { ok: false, reason: 'wrong-credential', detail: `device ${req.clientId} no longer authenticates with a password` })
    const decision = await this.#decidePassword(req, record, this.#gw.nowS())
    if (!decision.ok) return this.#refused(req, decision)
    // the state read again: a revoke may have landed while scrypt ran
    const after = rightsOf(this.#gw, this.#gw.registry.get(req.clientId), this.#gw.nowS())
    if (!after.ok) return this.#refused(req, after)
    return { ...decision, rights: after.rights }
  }

  async #judgeToken(req: AdmissionRequest, token: ParsedJws): Promise<AdmissionDecision> {
    const nowS = this.#gw.nowS()
    const decision = this.#pool ? await this.#decideOffloaded(req, token, nowS) : decideAdmission(this.#gw, req.clientId, req.username, token, { keys: this.#keys, jtis: this.#jtis, nowS, stats: this.stats })
    if (!decision.ok) return this.#refused(req, decision)
    // Checked again in the same step as it is remembered: two connects with one token, whose signatures were checked at once, let in one.
    if (this.#jtis.has(decision.jti!, this.#gw.nowS())) return this.#refused(req, replayed(decision.jti!))
    // Remembered in memory now (a concurrent replay is refused at once), until exp plus the skew a token is accepted for.
    const op = this.#jtis.remember(decision.jti!, decision.exp! + this.#gw.config.clockSkewS, null)
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

  /**
   * decideAdmission with the signature checked on the crypto pool, off the
   * event loop. What the check did not see is judged again once it is back:
   * the record (a key taken away meanwhile, a state changed) by the key
   * that verified; a replay of the same token by admit, as it remembers it.
   */
  async #decideOffloaded(req: AdmissionRequest, token: ParsedJws, nowS: number): Promise<AdmissionDecision> {
    // admit() ran these checks when the connect arrived; they are run again here, after its turn at the
    // gate, because a turn may come seconds later (a record gone, the jti used, the token expired meanwhile)
    const pre = precheckToken(this.#gw, req.clientId, req.username, token, { jtis: this.#jtis, nowS })
    if (!pre.ok) return pre
    const keys = signingCandidates(pre.record, nowS)
    this.stats.verifies += keys.length
    const key = await this.#pool!.verifyAny(keys, token.signingInput, token.signature)
    if (key === null) return wrongKey(req.clientId, pre.record)
    const now = this.#gw.nowS()
    const record = this.#gw.registry.get(req.clientId)
    if (!record || !credentialValid(record, key, now)) return wrongKey(req.clientId, record ?? pre.record)
    const rights = rightsOf(this.#gw, record, now)
    if (!rights.ok) return rights
    return { ok: true, deviceId: req.clientId, rights: rights.rights, jti: pre.jti, exp: pre.exp, key }
  }

  /**
   * PROTOCOL §5 password admission: client id = user name = device id, the
   * password compared with the stored scrypt hash in constant time (a
   * password that verified before is recognised by its HMAC, without scrypt).
   */
  async #decidePassword(req: AdmissionRequest, record: DeviceRecord, nowS: number): Promise<AdmissionDecision> {
    const id = req.clientId
    if (req.username !== id) return { ok: false, reason: 'identity-mismatch', detail: `user name ${JSON.stringify(req.username ?? null)} is not the client id` }
    if (req.password === undefined || req.password.length === 0) return { ok: false, reason: 'malformed-token', detail: 'no password' }
    if (req.password.length > 1024) return { ok: false, reason: 'wrong-password', detail: 'the password is longer than any the gateway stores' }
    const phc = record.spec.password!
    let ok = this.#passwords.known(id, phc, req.password)
    if (!ok) {
      this.stats.passwordChecks++
      ok = await verifyPassword(phc, req.password)
      if (ok) this.#passwords.remember(id, phc, req.password)
    }
    if (!ok) return { ok: false, reason: 'wrong-password', detail: 'the password does not match the stored hash' }
    const rights = rightsOf(this.#gw, this.#gw.registry.get(id), nowS)
    if (!rights.ok) return rights
    return { ok: true, deviceId: id, rights: rights.rights, key: passwordCredential(phc) }
  }

  /**
   * Whether a throttled attempt with a password gets judged in full: one
   * that verified before for this device (cheap: an HMAC), or, at most once
   * a second per device, any other (a device first seen while someone
   * guesses at its id still gets in, and the guesses cost one scrypt a second).
   */
  judgesPasswordUnderBlock(deviceId: string, password: Uint8Array | string | undefined): boolean {
    const r = this.#gw.registry.get(deviceId)
    if (password === undefined || r?.spec.password === undefined) return false
    if (this.#passwords.known(deviceId, r.spec.password, password)) return true
    const now = performance.now()
    const last = this.#blockedChecks.get(deviceId)
    if (last !== undefined && now - last < 1000) return false
    this.#blockedChecks.set(deviceId, now)
    return true
  }

  #refused(req: AdmissionRequest, d: Extract<AdmissionDecision, { ok: false }>): AdmissionDecision {
    this.noteRefusal(req, d.reason, d.detail)
    this.reportRefused(req, d.reason)
    return d
  }

  /**
   * Count a refused connect (by protocol and reason) and log it at info with
   * the reason a person can act on: once per device and reason a minute
   * (REFUSAL_LOG_EVERY_MS; the line says how many were not logged since),
   * and at most REFUSAL_LOG_PER_S lines a second in all. Never the password.
   */
  noteRefusal(req: Omit<AdmissionRequest, 'password'>, reason: string, detail: string): void {
    const k = `${req.protocol} ${reason}`
    this.#refusals.set(k, (this.#refusals.get(k) ?? 0) + 1)
    const fields = { deviceId: req.clientId, username: req.username, protocol: req.protocol, remote: req.remote, reason, detail }
    const now = this.#gw.clock.now()
    const key = `${req.clientId}\0${reason}`
    const last = this.#refusalLog.get(key)
    if (last && now - last.atMs < REFUSAL_LOG_EVERY_MS) {
      last.unlogged++
      this.#log.debug(fields, 'connect refused')
      return
    }
    const w = this.#logWindow
    if (now - w.startMs >= 1000) {
      if (w.unlogged) this.#log.info({ unlogged: w.unlogged }, `${w.unlogged} refused connect(s) of other ids not logged in the last second (see edgewarden_connects_refused_total)`)
      this.#logWindow = { startMs: now, lines: 0, unlogged: 0 }
    }
    if (this.#logWindow.lines >= REFUSAL_LOG_PER_S) {
      this.#logWindow.unlogged++
      this.#log.debug(fields, 'connect refused')
      return
    }
    this.#logWindow.lines++
    this.#refusalLog.set(key, { atMs: now, unlogged: 0 })
    this.#log.info({ ...fields, ...(last?.unlogged ? { alsoSince: last.unlogged } : {}) }, `connect of ${req.clientId} refused (${reason}): ${detail}`)
  }

  /** Refused connects since start, by protocol and reason. */
  refusals(): { protocol: string; reason: string; count: number }[] {
    return [...this.#refusals].map(([k, count]) => {
      const [protocol, reason] = k.split(' ') as [string, string]
      return { protocol, reason, count }
    })
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
