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
import { EventEmitter } from 'node:events'
import { join } from 'node:path'
import type { ActionChannel } from '../../agent/actions/action-dispatcher.ts'
import type { QueuedAction } from '../../agent/actions/action-queue.ts'
import type { ProtocolAdapter } from '../../agent/adapter.ts'
import type { DeviceRecord } from '../../agent/devices/device.ts'
import type { DeviceChange, Gateway } from '../../agent/gateway.ts'
import type { Logger } from '../../agent/observe/logger.ts'
import type { ResidualAttempt } from '../../agent/trust/residual-use.ts'
import { BACKOFF, backoffDelay, realTimers, type BackoffPolicy, type Timers } from '../../agent/runtime/timers.ts'
import type { DriverOptions, OpcuaDriver, OpcuaLink } from './driver.ts'
import { certificateSha256, leafCertificate, pickEndpoint, policyName } from './security.ts'
import { mayDeliver, sessionReachable as reachable } from '../../agent/trust/rights.ts'

export interface OpcuaRelayHooks {
  /** a device answered and its session is up: deliver what is pending */
  ready(deviceId: string): void
  /** an ack came back from Execute: verify and settle it (DeviceActions.ack) */
  ack(deviceId: string, ack: string): Promise<{ ok: boolean; reason?: string }>
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
  readonly stats = { probes: 0, connects: 0, executes: 0, executeMsTotal: 0, acksRefused: 0, certificatesRefused: 0 }
  readonly #gw: Gateway
  readonly #log: Logger
  readonly #residual: OpcuaRelayOptions['residual']
  readonly #timers: Timers
  readonly #random: () => number
  readonly #timeoutMs: number
  readonly #loadDriver: (opts: DriverOptions) => Promise<OpcuaDriver>
  readonly #links = new Map<string, DeviceLink>()
  #driver: Promise<OpcuaDriver> | null = null
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
    this.events.on('error', () => {}) // never let a report crash the agent
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
    for (const r of this.#gw.registry.values()) {
      if (!r.spec.opcua) continue
      if (reachable(r.state)) this.#schedule(r.spec.id, 0)
      else this.#serial(r.spec.id, () => this.#distrust(r.spec.id, 'start'))
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true
    this.#off?.()
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
    if (!l) this.#links.set(id, (l = { link: null, cert: null, probing: false, again: false, timer: null, attempt: 0, gen: 0, refusals: 0, redeliverTimer: null, chain: Promise.resolve() }))
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
      this.#driver = this.#loadDriver({
        pkiDir: this.pkiDir,
        applicationName: `edgewarden-${gw.site}-${gw.id}`,
        applicationUri: `urn:edgewarden:gateway:${gw.site}:${gw.id}`,
        log: this.#log,
      })
      this.#driver.then(
        () => this.#log.info({ ms: Math.round(performance.now() - t0), pki: this.pkiDir }, 'OPC UA relay loaded'),
        (err: unknown) => this.#log.error({ err }, 'OPC UA relay could not load'),
      )
    }
    return this.#driver
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
        if (r) admitted = await this.#admit(r, leaf, url)
      })
      if (!admitted) {
        if (current()) this.#retryLater(id, 'server certificate refused')
        return
      }
      link = await driver.connect(url, ep, this.#timeoutMs)
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
  async #admit(r: DeviceRecord, leaf: Buffer, url: string): Promise<boolean> {
    const id = r.spec.id
    const driver = await this.#getDriver()
    const sha = certificateSha256(leaf)
    const pin = this.#pinOf(r)
    const refuse = async (why: string, residual: boolean): Promise<false> => {
      this.stats.certificatesRefused++
      // An unknown certificate goes to rejected, where an operator can see it.
      if ((await driver.trustStatus(leaf)) === 'unknown') await driver.reject(leaf)
      if (residual) this.#residual.record({ deviceId: id, protocol: 'opcua', remote: url, detail: why })
      else this.#log.warn({ deviceId: id, endpoint: url, sha256: sha }, why)
      this.events.emit('refused', id, why)
      return false
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
}
