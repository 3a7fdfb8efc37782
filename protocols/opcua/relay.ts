// The OPC UA relay (PROTOCOL §8): the gateway is an OPC UA client of each
// device's server. It keeps one secured session per reachable device (an
// `active` one, or a `retiring` one for its wipe only, §4/§6), delivers
// queued actions by calling EdgeWarden.Execute, and hands the returned ack to
// the core. Unreachable devices are probed with backoff and jitter; their
// actions wait in the queue. Trust is the device's pinned certificate
// (`certificateSha256`, or pinned on first use where the record allows it),
// mirrored in the gateway's PKI: trusted while the device may be reached,
// rejected while it is quarantined, revoked or retired.
//
// node-opcua is loaded (driver.ts, dynamic import) only once an OPC UA device
// exists: the agent starts fast without one.
import { randomBytes, X509Certificate } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { join } from 'node:path'
import type { VerifiedAck } from '../../agent/actions/ack.ts'
import type { ActionChannel } from '../../agent/actions/action-dispatcher.ts'
import type { QueuedAction } from '../../agent/actions/action-queue.ts'
import type { ProtocolAdapter } from '../../agent/adapter.ts'
import type { DeviceRecord } from '../../agent/devices/device.ts'
import type { DeviceChange, Gateway } from '../../agent/gateway.ts'
import type { Logger } from '../../agent/observe/logger.ts'
import type { SitePki } from '../../agent/pki/site-pki.ts'
import { certificateFacts, deviceIdOf } from '../../agent/pki/ca.ts'
import type { ResidualAttempt } from '../../agent/trust/residual-use.ts'
import { BACKOFF, backoffDelay, realTimers, type BackoffPolicy, type Timers } from '../../agent/runtime/timers.ts'
import type { DriverOptions, OpcuaDriver, OpcuaLink, TrustListContent } from './driver.ts'
import { certificateSha256, leafCertificate, pickEndpoint, policyName } from './security.ts'
import { mayDeliver, sessionReachable as reachable } from '../../agent/trust/rights.ts'

export interface OpcuaRelayHooks {
  /** a device answered and its session is up: deliver what is pending */
  ready(deviceId: string): void
  /** an ack came back from Execute: verify and settle it (DeviceActions.ack) */
  ack(deviceId: string, ack: string): Promise<{ ok: boolean; reason?: string }>
  /** an outcome the gateway vouches for (a push, PROTOCOL §8: no device signature): settle it with its evidence */
  vouch?(ack: VerifiedAck, evidence: Record<string, unknown>): Promise<void>
}

export interface DeliveryReport {
  deviceId: string
  actionId: string
  act: string
  ok: boolean
  reason?: string
  /** from the Execute call to the ack settled */
  ms: number
}

export interface OpcuaRelayOptions {
  log: Logger
  /** where refused certificates are reported as alert.residual-use */
  residual: { record(a: ResidualAttempt): void }
  retry?: Partial<BackoffPolicy>
  timers?: Timers
  random?: () => number
  /** per network step (connect, session, Execute) */
  timeoutMs?: number
  /** tests: replace the node-opcua driver */
  loadDriver?: (opts: DriverOptions) => Promise<OpcuaDriver>
  /** the site PKI (PROTOCOL §8, §9): the gateway's own certificate, trust through the CA and its CRL, push management. Without it: pins only, a self-signed certificate. */
  pki?: SitePki
}

interface DeviceLink {
  link: OpcuaLink | null
  /** the leaf certificate the device presented when last admitted */
  cert: Buffer | null
  probing: boolean
  /** a probe was asked for while one was running: run another after it */
  again: boolean
  timer: unknown
  /** failed probes in a row */
  attempt: number
  /** bumped whenever sessions are closed: a probe started before is void */
  gen: number
  /** refused or failed deliveries in a row */
  refusals: number
  redeliverTimer: unknown
  /** PKI moves and admissions of this device, one at a time */
  chain: Promise<unknown>
  /** the push (PROTOCOL §8) in flight, for the renew action it delivers */
  push: { actionId: string; run: Promise<{ ok: boolean; reason?: string }> } | null
}

/** §4: who may be reached at all; `retiring` for its wipe only (§6). */

export class OpcuaRelay implements ProtocolAdapter, ActionChannel {
  readonly protocol = 'opcua' as const
  /**
   * 'connected' (deviceId, {mode, policy}), 'down' (deviceId, reason): a probe
   * failed or the session was lost, 'closed' (deviceId): a session closed by
   * closeSessions() is gone, 'refused' (deviceId, reason): the server
   * certificate was refused, 'pinned' (deviceId, sha256), 'delivery'
   * (DeliveryReport).
   */
  readonly events = new EventEmitter()
  readonly retry: BackoffPolicy
  readonly stats = { probes: 0, connects: 0, executes: 0, executeMsTotal: 0, acksRefused: 0, certificatesRefused: 0, pushes: 0 }
  readonly #gw: Gateway
  readonly #log: Logger
  readonly #residual: OpcuaRelayOptions['residual']
  readonly #timers: Timers
  readonly #random: () => number
  readonly #timeoutMs: number
  readonly #loadDriver: (opts: DriverOptions) => Promise<OpcuaDriver>
  readonly #links = new Map<string, DeviceLink>()
  readonly #pki: SitePki | null
  #driver: Promise<OpcuaDriver> | null = null
  /** the site CA and CRL being put into the driver's PKI, one update after the other */
  #trustSync: Promise<void> = Promise.resolve()
  #offCrl: (() => void) | null = null
  #hooks: OpcuaRelayHooks | null = null
  #off: (() => void) | null = null
  #stopped = false

  constructor(gw: Gateway, opts: OpcuaRelayOptions) {
    this.#gw = gw
    this.#log = opts.log
    this.#residual = opts.residual
    this.retry = { ...BACKOFF.opcuaProbe, ...opts.retry }
    this.#timers = opts.timers ?? realTimers
    this.#random = opts.random ?? Math.random
    this.#timeoutMs = opts.timeoutMs ?? 10_000
    this.#loadDriver = opts.loadDriver ?? (async (o) => (await import('./driver.ts')).createDriver(o))
    this.#pki = opts.pki ?? null
    this.events.on('error', () => {}) // never let a report crash the agent
    // §8/§9: every new CRL (revoke, retire, hold, release, supersede, the daily signing) into the PKI at once, no restart
    if (this.#pki) this.#offCrl = this.#pki.onCrlSigned(() => void this.#syncTrust().then(() => this.#refreshDeviceCrls()))
    // Subscribed at construction, before the enforcer: its closeSessions()
    // for the same change runs right after this listener.
    this.#off = gw.onDeviceChange((c) => this.#onChange(c))
  }

  get pkiDir(): string {
    return join(this.#gw.config.dataDir, 'opcua-pki')
  }

  /** Where acks go and whom to tell that a device answered. Call before start(). */
  attach(hooks: OpcuaRelayHooks): void {
    this.#hooks = hooks
  }

  /** Probe every OPC UA device in the background; resolves at once (node-opcua loads lazily). */
  async start(): Promise<void> {
    for (const r of this.#gw.registry.mayHoldProtocolOrCertificate()) {
      if (!r.spec.opcua) continue
      if (reachable(r.state)) this.#schedule(r.spec.id, 0)
      else this.#serial(r.spec.id, () => this.#distrust(r.spec.id, 'start'))
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true
    this.#off?.()
    this.#offCrl?.()
    const closing: Promise<void>[] = []
    for (const l of this.#links.values()) {
      this.#timers.clearTimeout(l.timer)
      this.#timers.clearTimeout(l.redeliverTimer)
      l.gen++
      if (l.link) closing.push(l.link.close())
      l.link = null
    }
    await Promise.all(closing)
    await Promise.allSettled([...this.#links.values()].map((l) => l.chain))
    await this.#trustSync
    if (this.#driver) await this.#driver.then((d) => d.dispose()).catch(() => {})
  }

  closeSessions(deviceId: string): number {
    const l = this.#links.get(deviceId)
    if (!l) return 0
    l.gen++
    this.#timers.clearTimeout(l.timer)
    l.timer = null
    const n = l.link ? 1 : 0
    if (l.link) {
      const link = l.link
      l.link = null
      void link.close().then(() => this.events.emit('closed', deviceId))
    }
    // A device still reachable (retiring: its wipe-only path) is probed again at once.
    const r = this.#gw.registry.get(deviceId)
    if (r?.spec.opcua && reachable(r.state)) this.#schedule(deviceId, 0)
    return n
  }

  /** Resolves once the trust moves asked for so far (rejected, trusted, pinned) are done. */
  async settled(deviceId: string): Promise<void> {
    await this.#links.get(deviceId)?.chain
  }

  sessionCount(deviceId: string): number {
    return this.#links.get(deviceId)?.link ? 1 : 0
  }

  describe(): Record<string, unknown> {
    let connected = 0
    for (const l of this.#links.values()) if (l.link) connected++
    return { opcua: { pki: this.pkiDir, devices: this.#links.size, connected, loaded: this.#driver !== null } }
  }

  /** The gateway's own application certificate (DER), for a device's trust list. Loads node-opcua. */
  async applicationCertificate(): Promise<Buffer> {
    return (await this.#getDriver()).certificate()
  }

  /** The PKI verdict on a device's certificate: where it is held now. */
  async certificateStatus(cert: Buffer): Promise<'trusted' | 'rejected' | 'unknown'> {
    return (await this.#getDriver()).trustStatus(leafCertificate(cert))
  }

  /**
   * node-opcua's verdict on a certificate or chain (DER) with the PKI as it
   * is once every CRL change asked for so far is in it: 'Good', or a status
   * name such as BadCertificateRevoked, BadCertificateUntrusted.
   */
  async certificateVerdict(cert: Buffer): Promise<string> {
    const driver = await this.#getDriver()
    await this.#siteTrustCurrent()
    return driver.check(cert)
  }

  // --- ActionChannel ---

  ready(deviceId: string): boolean {
    const r = this.#gw.registry.get(deviceId)
    return !!this.#links.get(deviceId)?.link && !!r && reachable(r.state)
  }

  async send(action: QueuedAction): Promise<void> {
    const id = action.deviceId
    const l = this.#links.get(id)
    const r = this.#gw.registry.get(id)
    if (!l?.link || !r || !reachable(r.state)) throw new Error(`no OPC UA session with ${id}`)
    // §4/§6: a retiring device is reached for its wipe only.
    if (!mayDeliver(r.state, action.act)) throw new Error(`${id} is retiring: wipe only`)
    const hooks = this.#hooks
    if (!hooks) throw new Error('relay not attached')
    const t0 = performance.now()
    const report = (ok: boolean, reason?: string): void => {
      const ms = Math.round((performance.now() - t0) * 100) / 100
      this.events.emit('delivery', { deviceId: id, actionId: action.id, act: action.act, ok, ms, ...(reason !== undefined ? { reason } : {}) } satisfies DeliveryReport)
    }
    // PROTOCOL §8: a device with push management renews its application certificate by Part 12, not by Execute
    if (action.act === 'renew' && r.spec.opcua?.pushManagement === true && this.#pki) {
      // The dispatcher may offer the same action twice at once (queued, and the device ready): one push, which both await.
      if (l.push?.actionId === action.id) {
        await l.push.run
        return
      }
      // offered again after it was settled (the dispatcher's list was read before): nothing to do
      if (!this.#gw.actions.find(id, action.id)) return
      let outcome: { ok: boolean; reason?: string }
      const run = this.#push(id, l, action)
      l.push = { actionId: action.id, run }
      try {
        outcome = await run
      } catch (err) {
        const reason = err instanceof Error ? err.message : String(err)
        report(false, reason)
        this.#redeliverLater(id)
        throw err
      } finally {
        if (l.push?.run === run) l.push = null
      }
      l.refusals = 0
      report(outcome.ok, ...(outcome.reason !== undefined ? [outcome.reason] : []))
      return
    }
    let ack: string
    try {
      ack = await l.link.execute(action.jws, this.#timeoutMs)
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err)
      report(false, reason)
      this.#redeliverLater(id)
      throw err
    }
    this.stats.executes++
    this.stats.executeMsTotal += performance.now() - t0
    const verdict = await hooks.ack(id, ack)
    if (verdict.ok || verdict.reason === 'repeated') {
      l.refusals = 0
      report(true)
      return
    }
    // A refused ack (forged, wrong device...) settles nothing: the action
    // stays queued and is offered again later, with backoff.
    this.stats.acksRefused++
    report(false, `ack refused: ${verdict.reason ?? 'unknown'}`)
    this.#redeliverLater(id)
    throw new Error(`ack refused: ${verdict.reason ?? 'unknown'}`)
  }

  // --- internals ---

  #link(id: string): DeviceLink {
    let l = this.#links.get(id)
    if (!l) this.#links.set(id, (l = { link: null, cert: null, probing: false, again: false, timer: null, attempt: 0, gen: 0, refusals: 0, redeliverTimer: null, chain: Promise.resolve(), push: null }))
    return l
  }

  #serial(id: string, fn: () => Promise<void>): Promise<void> {
    const l = this.#link(id)
    const run = l.chain.then(fn).catch((err: unknown) => this.#log.error({ err, deviceId: id }, 'OPC UA trust step failed'))
    l.chain = run
    return run
  }

  #getDriver(): Promise<OpcuaDriver> {
    if (!this.#driver) {
      const t0 = performance.now()
      const gw = this.#gw
      const pki = this.#pki
      this.#driver = this.#loadDriver({
        pkiDir: this.pkiDir,
        applicationName: `edgewarden-${gw.site}-${gw.id}`,
        applicationUri: `urn:edgewarden:gateway:${gw.site}:${gw.id}`,
        log: this.#log,
        // §8: the gateway's own client certificate from the site CA (issued on first start, again near its end)
        ...(pki ? { ownCertificate: (o: Parameters<SitePki['opcuaClientCertificate']>[0]) => pki.opcuaClientCertificate(o) } : {}),
      }).then(async (d) => {
        // a failure here leaves devices of the site CA refused (no CRL: BadCertificateRevocationUnknown), pinned ones still reached
        if (pki) await d.setSiteTrust(siteTrust(pki)).catch((err: unknown) => this.#log.error({ err }, 'putting the site CA and CRL into the OPC UA PKI failed'))
        return d
      })
      this.#driver.then(
        () => this.#log.info({ ms: Math.round(performance.now() - t0), pki: this.pkiDir }, 'OPC UA relay loaded'),
        (err: unknown) => this.#log.error({ err }, 'OPC UA relay could not load'),
      )
    }
    return this.#driver
  }

  /** The site CA and the current CRL into the driver's PKI (after the load, and on every signing of the CRL). */
  #syncTrust(): Promise<void> {
    const pki = this.#pki
    const loading = this.#driver
    if (!pki || !loading) return this.#trustSync
    const run = this.#trustSync.then(async () => {
      const driver = await loading
      await driver.setSiteTrust(siteTrust(pki))
    })
    this.#trustSync = run.catch((err: unknown) => this.#log.error({ err }, 'putting the site CRL into the OPC UA PKI failed'))
    return this.#trustSync
  }

  /**
   * Devices with push management hold the site CRL on their TrustList (for
   * the gateway's own certificate): each connected one gets the new CRL
   * (read, merge, write; no ApplyChanges unless the device asks for it), so
   * that a device which checks CRL dates never finds it past its nextUpdate.
   * Best effort: a device that is off gets it with its next push.
   */
  #refreshDeviceCrls(): void {
    const pki = this.#pki
    if (!pki || this.#stopped) return
    for (const [id, l] of this.#links) {
      const r = this.#gw.registry.get(id)
      if (!l.link || l.push || r?.spec.opcua?.pushManagement !== true || !r.certificates?.some((c) => c.issuer === 'site' && c.role === 'current' && !c.revoked)) continue
      const link = l.link
      void this.#serial(id, async () => {
        if (l.link !== link || l.push) return
        try {
          if (await this.#pushTrustList(link, pki)) await link.push.applyChanges(this.#timeoutMs)
          this.events.emit('crl-pushed', id)
        } catch (err) {
          this.#log.warn({ deviceId: id, err: (err as Error).message }, 'the new site CRL could not be written to the device\'s TrustList; it goes with the next push')
        }
      })
    }
  }

  /** Resolves once every CRL change asked for so far is signed and in the driver's PKI. */
  async #siteTrustCurrent(): Promise<void> {
    if (!this.#pki) return
    await this.#pki.idle()
    await this.#trustSync
  }

  #onChange(c: DeviceChange): void {
    const id = c.record.spec.id
    if (!c.record.spec.opcua) {
      // no longer an OPC UA device (re-enrolled without it)
      if (this.#links.get(id)?.link) this.closeSessions(id)
      return
    }
    if (reachable(c.to)) {
      // A new record (enroll) may name another endpoint or pin: start afresh.
      if (c.cause === 'enroll' && this.#links.get(id)?.link) this.closeSessions(id)
      if (c.from === 'quarantined' || c.from === 'revoked') this.#serial(id, () => this.#restore(id, c.cause))
      // retire: the enforcer's closeSessions() re-probes; the rest probe now
      if (c.to === 'active') this.#schedule(id, 0)
      return
    }
    // quarantined, revoked, retired: the enforcer closes the session right
    // after this listener (and counts it); no probe; the certificate goes to
    // rejected.
    const l = this.#link(id)
    this.#timers.clearTimeout(l.timer)
    this.#timers.clearTimeout(l.redeliverTimer)
    l.timer = null
    l.gen++
    this.#serial(id, () => this.#distrust(id, c.cause))
  }

  /** Whether a certificate (DER) was issued by the site CA (its signature checks). */
  #siteIssued(der: Buffer): boolean {
    if (!this.#pki) return false
    try {
      return this.#pki.ca.issued(new X509Certificate(der))
    } catch {
      return false
    }
  }

  #pinOf(r: DeviceRecord): string | undefined {
    return r.spec.opcua?.certificateSha256?.toLowerCase() ?? r.opcuaPin?.sha256
  }

  async #certOf(id: string): Promise<Buffer | null> {
    const l = this.#link(id)
    if (l.cert) return l.cert
    const r = this.#gw.registry.get(id)
    const pin = r && this.#pinOf(r)
    return pin ? (await this.#getDriver()).find(pin) : null
  }

  /** Revoke, quarantine, retire (PROTOCOL §8): the device's certificate from trusted to rejected. */
  async #distrust(id: string, cause: string): Promise<void> {
    const l = this.#link(id)
    if (l.link) {
      const link = l.link
      l.link = null
      await link.close()
    }
    const cert = await this.#certOf(id)
    if (!cert) return
    // A certificate of the site CA is refused by the CRL (§8, §9: on hold or revoked there): nothing to move.
    if (this.#siteIssued(cert)) return
    const driver = await this.#getDriver()
    if ((await driver.trustStatus(cert)) === 'rejected') return
    await driver.reject(cert)
    await this.#gw.commit({ audit: [{ actor: 'gateway', action: 'opcua.certificate-rejected', subject: id, data: { sha256: certificateSha256(cert), cause } }] })
  }

  /** Release (or re-admission): the certificate back to trusted. */
  async #restore(id: string, cause: string): Promise<void> {
    // Only the certificate the record pins now (re-admission may have dropped a TOFU pin).
    const r = this.#gw.registry.get(id)
    const pin = r && this.#pinOf(r)
    if (!pin) return
    // a pinned certificate the device has since replaced by a site certificate (a push, §8) stays refused
    if (r.certificates?.some((c) => c.sha256 === pin && c.revoked)) return
    const last = this.#link(id).cert
    const cert = last && certificateSha256(last) === pin ? last : await (await this.#getDriver()).find(pin)
    if (!cert) return
    const driver = await this.#getDriver()
    if ((await driver.trustStatus(cert)) !== 'rejected') return
    await driver.trust(cert)
    await this.#gw.commit({ audit: [{ actor: 'gateway', action: 'opcua.certificate-trusted', subject: id, data: { sha256: certificateSha256(cert), cause } }] })
  }

  #schedule(id: string, delayMs: number): void {
    if (this.#stopped || !this.#hooks) return
    const l = this.#link(id)
    this.#timers.clearTimeout(l.timer)
    l.timer = this.#timers.setTimeout(() => {
      l.timer = null
      void this.#probe(id)
    }, delayMs)
  }

  #retryLater(id: string, reason: string): void {
    const l = this.#link(id)
    const delay = backoffDelay(l.attempt++, this.retry, this.#random)
    this.#log.debug({ deviceId: id, reason, attempt: l.attempt, delayMs: delay }, 'OPC UA device not reachable; probing again later')
    this.events.emit('down', id, reason)
    this.#schedule(id, delay)
  }

  #redeliverLater(id: string): void {
    const l = this.#link(id)
    if (this.#stopped) return
    const delay = backoffDelay(l.refusals++, this.retry, this.#random)
    this.#timers.clearTimeout(l.redeliverTimer)
    l.redeliverTimer = this.#timers.setTimeout(() => {
      l.redeliverTimer = null
      if (this.ready(id)) this.#hooks?.ready(id)
    }, delay)
  }

  /** One attempt: discover, pick the strongest endpoint, check the certificate, open the session. */
  async #probe(id: string): Promise<void> {
    const l = this.#link(id)
    if (l.probing) {
      l.again = true
      return
    }
    if (this.#stopped || l.link) return
    const r0 = this.#gw.registry.get(id)
    if (!r0?.spec.opcua || !reachable(r0.state)) return
    const gen = l.gen
    const url = r0.spec.opcua.endpoint
    const current = (): DeviceRecord | null => {
      const r = this.#gw.registry.get(id)
      return !this.#stopped && l.gen === gen && r?.spec.opcua?.endpoint === url && reachable(r.state) ? r : null
    }
    l.probing = true
    this.stats.probes++
    let link: OpcuaLink | null = null
    try {
      const driver = await this.#getDriver()
      const endpoints = await driver.discover(url, this.#timeoutMs)
      const ep = pickEndpoint(endpoints)
      if (!ep) {
        const offered = endpoints.map((e) => `${e.securityMode}/${policyName(e.securityPolicyUri)}`).join(', ')
        this.#log.warn({ deviceId: id, endpoint: url, offered }, 'OPC UA device offers no acceptable security (SignAndEncrypt or Sign with Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss)')
        return this.#retryLater(id, `no acceptable endpoint (${offered})`)
      }
      const leaf = leafCertificate(ep.serverCertificate)
      let admitted = false
      await this.#serial(id, async () => {
        const r = current()
        if (r) admitted = await this.#admit(r, leaf, ep.serverCertificate, url)
      })
      if (!admitted) {
        if (current()) this.#retryLater(id, 'server certificate refused')
        return
      }
      // §8: push management needs SecurityAdmin on the device: the gateway's certificate as its user identity
      // (a server that offers no such token gets an anonymous session; its push calls then answer BadUserAccessDenied, and the renewal fails visibly)
      link = await driver.connect(url, ep, this.#timeoutMs, { certificateUser: r0.spec.opcua.pushManagement === true && this.#pki !== null && ep.certificateUserToken === true })
      if (!current()) {
        await link.close()
        return
      }
      l.link = link
      l.cert = leaf
      l.attempt = 0
      this.stats.connects++
      const mine = link
      link.onLost((reason) => {
        if (l.link !== mine) return
        l.link = null
        this.#log.info({ deviceId: id, reason }, 'OPC UA session with the device lost')
        this.#retryLater(id, reason)
      })
      this.#log.info({ deviceId: id, endpoint: url, mode: ep.securityMode, policy: policyName(ep.securityPolicyUri) }, 'OPC UA session with the device up')
      // the device answered the gateway: its last seen (status page, device show), as for the other protocols
      this.#gw.seen(id)
      this.events.emit('connected', id, { mode: ep.securityMode, policy: policyName(ep.securityPolicyUri) })
      this.#hooks?.ready(id)
    } catch (err) {
      if (link && l.link !== link) await link.close()
      if (current()) this.#retryLater(id, err instanceof Error ? err.message : String(err))
    } finally {
      l.probing = false
      if (l.again) {
        l.again = false
        if (!l.link && !l.timer) this.#schedule(id, 0)
      }
    }
  }

  /**
   * PROTOCOL §3: the certificate must be the pinned one; with
   * `trustOnFirstUse` and no pin yet, the first one seen is pinned (on the
   * record, audited). Another certificate is refused and reported as
   * residual use. An admitted certificate is held in the trusted store and
   * must pass node-opcua's checks (validity dates, CRLs).
   */
  async #admit(r: DeviceRecord, leaf: Buffer, chain: Buffer, url: string): Promise<boolean> {
    const id = r.spec.id
    const driver = await this.#getDriver()
    const sha = certificateSha256(leaf)
    const pin = this.#pinOf(r)
    const entry = r.certificates?.find((c) => c.sha256 === sha)
    const refuse = async (why: string, residual: boolean, o: { keep?: boolean } = {}): Promise<false> => {
      this.stats.certificatesRefused++
      // An unknown certificate goes to rejected, where an operator can see it (one of the site CA is on the CRL instead).
      if (!o.keep && (await driver.trustStatus(leaf)) === 'unknown') await driver.reject(leaf)
      if (residual) this.#residual.record({ deviceId: id, protocol: 'opcua', remote: url, detail: why })
      else this.#log.warn({ deviceId: id, endpoint: url, sha256: sha }, why)
      this.events.emit('refused', id, why)
      return false
    }
    if (this.#siteIssued(leaf)) return this.#admitThroughCa(r, leaf, sha, entry, chain, refuse)
    if (entry?.revoked) return refuse(`server certificate ${sha} was ${entry.revoked.reason === 'superseded' ? 'replaced by a certificate of the site CA' : `revoked (${entry.revoked.reason})`}`, entry.revoked.reason !== 'superseded')
    if (!entry && r.certificates?.some((c) => c.issuer === 'site' && !c.revoked)) {
      return refuse(`server certificate ${sha} is not one of the device's: it holds a certificate of the site CA, and only that (or the one it replaces) is admitted`, true)
    }
    if (pin !== undefined) {
      if (pin !== sha) return refuse(`server certificate sha256 ${sha} is not the pinned ${pin}`, true)
    } else if (r.spec.opcua?.trustOnFirstUse === true) {
      const at = this.#gw.nowS()
      await this.#gw.updateDevice(id, (d) => ({ ...d, opcuaPin: { sha256: sha, at } }), {
        audit: [{ actor: 'gateway', action: 'opcua.certificate-pinned', subject: id, data: { sha256: sha, endpoint: url, how: 'trust-on-first-use' } }],
      })
      this.#log.info({ deviceId: id, sha256: sha }, 'OPC UA server certificate pinned on first use')
      this.events.emit('pinned', id, sha)
    } else {
      return refuse('device record has no certificateSha256 and no trustOnFirstUse: its server certificate cannot be trusted', false)
    }
    if ((await driver.trustStatus(leaf)) !== 'trusted') {
      await driver.trust(leaf)
      await this.#gw.commit({ audit: [{ actor: 'gateway', action: 'opcua.certificate-trusted', subject: id, data: { sha256: sha, cause: 'pin-matched' } }] })
    }
    const verdict = await driver.check(leaf)
    if (verdict !== 'Good') return refuse(`server certificate refused by the PKI: ${verdict}`, false)
    return true
  }

  /**
   * PROTOCOL §8: a certificate of the site CA is trusted through the CA and
   * its current CRL, not by a pin: node-opcua's verdict on the chain must be
   * Good (a revoked or held serial is BadCertificateRevoked), the
   * certificate must name this device (`urn:edgewarden:device:<id>`), and be
   * the record's (current, or the one it replaces during the overlap); one
   * the record does not know yet is learnt, when the record holds no other.
   * The device presenting its current certificate ends the overlap.
   */
  async #admitThroughCa(
    r: DeviceRecord,
    leaf: Buffer,
    sha: string,
    entry: NonNullable<DeviceRecord['certificates']>[number] | undefined,
    chain: Buffer,
    refuse: (why: string, residual: boolean, o?: { keep?: boolean }) => Promise<false>,
  ): Promise<boolean> {
    const id = r.spec.id
    const pki = this.#pki!
    const driver = await this.#getDriver()
    await this.#siteTrustCurrent()
    const keep = { keep: true }
    const verdict = await driver.check(chain)
    if (verdict !== 'Good') {
      // a revoked certificate presented again is residual use (§4); a superseded one is a device that kept its old certificate
      return refuse(`server certificate refused by the PKI: ${verdict}`, verdict === 'BadCertificateRevoked' && entry?.revoked?.reason !== 'superseded', keep)
    }
    const x = new X509Certificate(leaf)
    const named = deviceIdOf(x)
    if (named !== id) return refuse(`server certificate of the site CA names ${named === null ? 'no device' : `device ${named}`}, not ${id}`, true, keep)
    if (entry?.revoked) return refuse(`server certificate ${sha} was revoked (${entry.revoked.reason})`, entry.revoked.reason !== 'superseded', keep)
    if (!entry) {
      if (r.certificates?.some((c) => c.issuer === 'site' && !c.revoked)) {
        return refuse(`server certificate ${sha} of the site CA is not the device's current one, nor the one it replaces`, true, keep)
      }
      await pki.learnOpcua(id, leaf)
      this.#log.info({ deviceId: id, serial: x.serialNumber.toLowerCase(), sha256: sha }, 'OPC UA device admitted through the site CA; its certificate is recorded')
      this.events.emit('learnt', id, sha)
      return true
    }
    if (entry.role === 'current') {
      pki.connectedWith(id, { sha256: sha, serial: entry.serial, notBefore: entry.notBefore, notAfter: entry.notAfter, issuerName: x.issuer.replace(/\n/g, ', ') })
      // a pinned certificate it replaced, once superseded, leaves the trusted store
      void pki.idle().then(() => this.#serial(id, () => this.#rejectReplaced(id)))
    }
    return true
  }

  /** Pinned certificates of a device that a site certificate superseded: from trusted to rejected (audited). */
  async #rejectReplaced(id: string): Promise<void> {
    const r = this.#gw.registry.get(id)
    const driver = await this.#getDriver()
    for (const c of r?.certificates ?? []) {
      if (c.issuer !== 'external' || c.revoked?.reason !== 'superseded') continue
      const der = await driver.find(c.sha256)
      if (!der || (await driver.trustStatus(der)) !== 'trusted') continue
      await driver.reject(der)
      await this.#gw.commit({ audit: [{ actor: 'gateway', action: 'opcua.certificate-rejected', subject: id, data: { sha256: c.sha256, cause: 'superseded' } }] })
    }
  }

  /**
   * PROTOCOL §8: `renew` of a device with push management, over its
   * SignAndEncrypt session (OPC 10000-12 §7.7): CreateSigningRequest for a
   * new key, the site CA issues, UpdateCertificate with the issuer chain,
   * the site CA and CRL into its TrustList, ApplyChanges; then the action is
   * settled as done (the gateway vouches: there is no signed ack). The new
   * certificate is recorded once the device took it (UpdateCertificate
   * answered Good), with `certificate.issued` via `opcua-push`; the one it
   * replaces stays valid until the device presents the new one (or the
   * overlap ends). A Bad answer of the device, or a request the CA refuses,
   * settles the renewal as failed; a call that did not get through leaves it
   * queued.
   */
  async #push(id: string, l: DeviceLink, action: QueuedAction): Promise<{ ok: boolean; reason?: string }> {
    const pki = this.#pki
    const vouch = this.#hooks?.vouch
    if (!pki || !vouch) throw new Error('push management needs the site PKI')
    const link = l.link!
    const presented = l.cert!
    const r = this.#gw.requireDevice(id)
    const settle = async (status: 'done' | 'failed', detail: string, evidence: Record<string, unknown>): Promise<void> => {
      await vouch({ deviceId: id, jti: `opcua-push:${action.id}`, action, status, detail }, { via: 'opcua-push', ...evidence })
    }
    if (link.securityMode !== 'SignAndEncrypt') {
      await settle('failed', `push management needs a SignAndEncrypt session; the device offers ${link.securityMode}`, {})
      return { ok: false, reason: 'no SignAndEncrypt session' }
    }
    // Delivered again after a crash or a lost answer: the device already presents what this renewal installed.
    const cur = r.certificates?.find((c) => c.role === 'current' && !c.revoked)
    // (By the action that installed it, not by time: a renewal asked for in the same second as the last push is a new one.)
    if (cur && cur.sha256 === certificateSha256(presented) && cur.via === 'opcua-push' && cur.actionId === action.id) {
      await settle('done', 'the device holds the certificate of this renewal', { serial: cur.serial, sha256: cur.sha256, notAfter: cur.notAfter, repeated: true })
      return { ok: true }
    }
    const ms = this.#timeoutMs
    const deviceVerdict = (err: unknown): string | null =>
      err instanceof Error && (err.name === 'OpcuaStatusError' || (err as { code?: string }).code === 'CSR_INVALID') ? err.message : null
    let issued
    try {
      const csr = await link.push.createSigningRequest({ regeneratePrivateKey: true, nonce: randomBytes(32) }, ms)
      issued = await pki.issueOpcua(id, csr, { criticality: r.spec.criticality, host: endpointHost(r.spec.opcua!.endpoint) })
      await link.push.updateCertificate(derOf(issued.pem), pki.ca.chainPem.map(derOf), ms)
      const held = new X509Certificate(presented)
      await pki.install(id, issued, 'opcua-push', {}, {
        actionId: action.id,
        replacing: { ...certificateFacts(held), issuerName: held.issuer.replace(/\n/g, ', ') },
      })
    } catch (err) {
      const verdict = deviceVerdict(err)
      if (verdict === null) throw err
      this.#log.warn({ deviceId: id, actionId: action.id, detail: verdict }, 'OPC UA push management refused')
      await settle('failed', verdict, {})
      return { ok: false, reason: verdict }
    }
    let applyTrust = false
    try {
      applyTrust = await this.#pushTrustList(link, pki)
    } catch (err) {
      // the certificate matters more: it is applied without the trust list, which the next push writes again
      if (deviceVerdict(err) === null) throw err
      this.#log.warn({ deviceId: id, err: (err as Error).message }, 'the device refused its new TrustList; its certificate is applied without it')
    }
    // Always applied: a server that staged nothing answers BadNothingToDo, a Bad answer we may ignore only then.
    try {
      await link.push.applyChanges(ms)
    } catch (err) {
      if (!(err instanceof Error && err.name === 'OpcuaStatusError' && (err as { status?: string }).status === 'BadNothingToDo')) throw err
    }
    this.stats.pushes++
    await settle('done', `certificate ${issued.serial} installed by push management${applyTrust ? ', trust list updated' : ''}`, { serial: issued.serial, sha256: issued.sha256, notAfter: issued.notAfter })
    // The device changes its certificate now: this session ends, the next one is with the new certificate.
    if (l.link === link) {
      l.link = null
      void link.close()
      this.#schedule(id, 0)
    }
    return { ok: true }
  }

  /**
   * The device's TrustList with the site CA among its trusted certificates
   * and the site's current CRL in place of any older one of it; everything
   * else the device trusts stays. Written only when it changes. Resolves
   * whether ApplyChanges is needed for it.
   */
  async #pushTrustList(link: OpcuaLink, pki: SitePki): Promise<boolean> {
    const ms = this.#timeoutMs
    const now = await link.push.readTrustList(ms)
    const crl = pki.crl.current?.der ?? null
    const has = (list: Buffer[], b: Buffer): boolean => list.some((x) => x.equals(b))
    const trustedCertificates = [...now.trustedCertificates]
    for (const ca of pki.caCertificatesDer()) if (!has(trustedCertificates, ca)) trustedCertificates.push(ca)
    const trustedCrls: Buffer[] = []
    for (const c of now.trustedCrls) if (!(await pki.issuedCrl(c))) trustedCrls.push(c)
    if (crl) trustedCrls.push(crl)
    const next: TrustListContent = { ...now, trustedCertificates, trustedCrls }
    const same = next.trustedCertificates.length === now.trustedCertificates.length && next.trustedCrls.length === now.trustedCrls.length && next.trustedCrls.every((c) => has(now.trustedCrls, c))
    if (same) return false
    return link.push.writeTrustList(next, ms)
  }
}

/** The host of an opc.tcp:// endpoint URL (an IPv6 literal without its brackets). */
function endpointHost(url: string): string {
  const host = new URL(url.replace(/^opc\.tcp:/, 'http:')).hostname
  return host.startsWith('[') ? host.slice(1, -1) : host
}

/** What the driver's PKI holds of the site (PROTOCOL §8): its CA chain and current CRL. */
const siteTrust = (pki: SitePki): { cas: Buffer[]; crl: Buffer | null } => ({ cas: pki.caCertificatesDer(), crl: pki.crl.current?.der ?? null })

/** DER of a PEM certificate. */
const derOf = (pem: string): Buffer => Buffer.from(new X509Certificate(pem).raw)
