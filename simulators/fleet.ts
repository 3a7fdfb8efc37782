// A fleet of simulated devices against one gateway: N devices, a mix of MQTT
// (simulators/mqtt-device.ts), Modbus with the §7 hook registers
// (simulators/modbus-device.ts) and OPC UA with the §8 hook
// (simulators/opcua-device.ts), each the real device runtime of
// firmware-hooks/, and, as the mix entry `mqtt-x509`, MQTT devices that
// authenticate with a certificate of the site CA on the TLS listener
// (simulators/cert-device.ts), enrolled with a PKCS#10 request. Every device follows the same intermittency model:
// online and offline periods alternate, exponentially distributed, offline
// ones averaging `meanOfflineS`, online ones sized so the device is online
// `onlineFraction` of the time. For MQTT "offline" is the link dropped; for
// Modbus and OPC UA it is the device's server down. `storm()` takes every
// device down and brings all of them back at once. Clock and randomness are
// injected (tests step a ManualSimClock; `edgewarden simulate` runs on the
// system clock). How devices get enrolled is the caller's: `enroll` gets
// each device's PROTOCOL §3 record (and, for a certificate device, answers
// the certificate the gateway issued). Imports nothing from agent/.
import { setMaxListeners } from 'node:events'
import { join } from 'node:path'
import { defaultHooks, type ActionRuntime, type DeviceHooks } from '../firmware-hooks/action-runtime.ts'
import type { CertKeyAlg } from '../firmware-hooks/x509-keys.ts'
import type { SimulatedCertDevice } from './cert-device.ts'
import { createHookedModbusDevice, type SimulatedModbusDevice } from './modbus-device.ts'
import { SimulatedMqttDevice, systemSimClock, type Intermittency, type SimClock, type SimulatedLink } from './mqtt-device.ts'
import type { SimulatedOpcuaDevice } from './opcua-device.ts'
import { freePort } from './ports.ts'

export const PROTOCOLS = ['mqtt', 'modbus', 'opcua'] as const
export type FleetProtocol = (typeof PROTOCOLS)[number]
/** What a fleet is made of: the protocols, and MQTT devices with a certificate (PROTOCOL §9). */
export const DEVICE_KINDS = [...PROTOCOLS, 'mqtt-x509'] as const
export type FleetKind = (typeof DEVICE_KINDS)[number]
/** Weights (or counts) per kind; `mqtt-x509` only when asked for. */
export type FleetMix = Record<FleetProtocol, number> & { 'mqtt-x509'?: number }

/** The default mix: mostly MQTT sensors, some PLCs, a few OPC UA servers. */
export const DEFAULT_MIX: FleetMix = { mqtt: 80, modbus: 15, opcua: 5 }

/** A device's enrollment record (PROTOCOL §3), as `device add` or `device.enroll` takes it. */
export interface FleetEnrollment {
  id: string
  /** a token device's key */
  publicKey?: string
  /** a certificate device's request (base64url DER PKCS#10), for the site CA to issue from */
  x509?: { csr: string }
  mqtt?: Record<string, never>
  modbus?: { host: string; port: number; unitId: number }
  opcua?: { endpoint: string; certificateSha256: string }
}

export interface FleetOptions extends Partial<Intermittency> {
  size: number
  /** weights of each protocol (default 80/15/5); counts are split by largest remainder */
  mix?: Partial<FleetMix>
  /** device ids are <prefix>-<protocol>-<n> (default "sim") */
  prefix?: string
  gatewayId: string
  gatewayPublicKey: string
  /** the gateway's site broker, e.g. mqtt://127.0.0.1:1883 */
  mqttUrl: string
  /** a scratch folder: each OPC UA device keeps its PKI (its certificate) under it */
  workDir: string
  /** the site broker's TLS listener, e.g. mqtts://127.0.0.1:8883: for mqtt-x509 devices */
  mqttsUrl?: string
  /** PEM of the site CA (its chain): what mqtt-x509 devices check the broker's certificate against */
  caPem?: string | string[]
  /** key algorithms of the mqtt-x509 devices, taken in turn (default P-256, Ed25519) */
  x509Algs?: CertKeyAlg[]
  /** enroll one device; for an mqtt-x509 device, answer the certificate issued (PEM chain, the device certificate first: `device.enroll`'s evidence) */
  enroll(e: FleetEnrollment): Promise<void | { certificate?: string }>
  clock?: SimClock
  /** uniform in [0, 1); default Math.random */
  random?: () => number
  /** devices made and enrolled at once (default 20) */
  parallel?: number
}

export interface FleetMember {
  readonly id: string
  readonly protocol: FleetProtocol
  /** the protocol, or mqtt-x509 for an MQTT device with a certificate */
  readonly kind: FleetKind
  readonly runtime: ActionRuntime
  /** connected (MQTT) or serving (Modbus, OPC UA) */
  readonly online: boolean
  /** times it came online / went offline */
  ups: number
  downs: number
  /** actions acted on (first delivery of each; repeats not counted) */
  actions: number
  /** failed attempts to come online (MQTT refused or unreachable) */
  failures: number
  goOnline(): Promise<boolean>
  goOffline(): Promise<void>
}

export interface FleetStats {
  size: number
  online: number
  wiped: number
  ups: number
  downs: number
  actions: number
  failures: number
  byProtocol: Record<FleetProtocol, { size: number; online: number }>
}

/** Counts of each kind for `size` devices, split by largest remainder of the weights (mqtt-x509 only when the mix names it). */
export function splitMix(size: number, mix: Partial<FleetMix> = DEFAULT_MIX): FleetMix {
  const kinds = DEVICE_KINDS.filter((k) => k !== 'mqtt-x509' || mix[k] !== undefined)
  const w = (k: FleetKind): number => mix[k] ?? 0
  const total = kinds.reduce((a, k) => a + w(k), 0)
  if (!Number.isInteger(size) || size < 0) throw new TypeError(`fleet size must be a whole number >= 0, not ${size}`)
  if (!kinds.every((k) => Number.isFinite(w(k)) && w(k) >= 0) || !(total > 0)) throw new TypeError('fleet mix: weights must be >= 0 and not all 0')
  const exact = kinds.map((p) => ({ p, x: (size * w(p)) / total }))
  const out: FleetMix = { mqtt: 0, modbus: 0, opcua: 0 }
  for (const e of exact) out[e.p] = Math.floor(e.x)
  let left = size - exact.reduce((a, e) => a + out[e.p]!, 0)
  for (const e of [...exact].sort((a, b) => b.x - Math.floor(b.x) - (a.x - Math.floor(a.x)))) {
    if (left-- <= 0) break
    out[e.p]!++
  }
  return out
}

/** The next period of the intermittency model, seconds (Infinity: never ends). */
export function nextPeriod(m: Intermittency, online: boolean, random: () => number): number {
  const f = m.onlineFraction
  const mean = online ? (f >= 1 ? Infinity : (m.meanOfflineS * f) / (1 - f)) : f <= 0 ? Infinity : m.meanOfflineS
  if (mean === Infinity || mean === 0) return mean
  return -mean * Math.log(1 - random()) // exponential, mean `mean`
}

/** A seeded uniform random in [0, 1) (mulberry32): the same fleet, the same draws, every run. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}


/** The default hooks, counting each action the device acts on. */
function countingHooks(count: () => void): DeviceHooks {
  const wrap = (h: DeviceHooks[keyof DeviceHooks]): DeviceHooks[keyof DeviceHooks] => async (ctx) => {
    count()
    return h(ctx)
  }
  return {
    wipe: wrap(defaultHooks.wipe),
    reenroll: wrap(defaultHooks.reenroll),
    renew: wrap(defaultHooks.renew),
    'install-cert': wrap(defaultHooks['install-cert']),
    'revoke-notice': wrap(defaultHooks['revoke-notice']),
  }
}

abstract class Member implements FleetMember {
  ups = 0
  downs = 0
  actions = 0
  failures = 0
  abstract readonly id: string
  abstract readonly protocol: FleetProtocol
  get kind(): FleetKind {
    return this.protocol
  }
  abstract readonly runtime: ActionRuntime
  abstract readonly online: boolean
  protected abstract up(): Promise<boolean>
  protected abstract down(): Promise<void>

  async goOnline(): Promise<boolean> {
    if (this.online) return true
    if (this.runtime.wiped) return false
    if (!(await this.up())) {
      this.failures++
      return false
    }
    this.ups++
    return true
  }

  async goOffline(): Promise<void> {
    if (!this.online) return
    await this.down()
    this.downs++
  }
}

/** A member that is one simulated MQTT device (token or certificate): online when its connection is. */
abstract class DeviceMember<D extends SimulatedLink> extends Member {
  readonly protocol = 'mqtt'
  constructor(readonly device: D) {
    super()
  }
  get id(): string {
    return this.device.id
  }
  get runtime(): ActionRuntime {
    return this.device.runtime
  }
  get online(): boolean {
    return this.device.state === 'online'
  }
  protected up(): Promise<boolean> {
    return this.device.goOnline()
  }
  protected down(): Promise<void> {
    return this.device.goOffline()
  }
}

class MqttMember extends DeviceMember<SimulatedMqttDevice> {}

class X509Member extends DeviceMember<SimulatedCertDevice> {
  constructor(device: SimulatedCertDevice) {
    super(device)
    // first deliveries only, as the other members count them through their hooks
    device.onAck((a) => void (a.repeat || this.actions++))
  }
  override get kind(): FleetKind {
    return 'mqtt-x509'
  }
}

/** A member whose device is a server that is started and stopped (Modbus, OPC UA). */
abstract class ServerMember extends Member {
  abstract readonly device: { readonly running: boolean; start(): Promise<unknown>; stop(): Promise<void> }
  get online(): boolean {
    return this.device.running
  }
  protected async up(): Promise<boolean> {
    await this.device.start()
    return true
  }
  protected down(): Promise<void> {
    return this.device.stop()
  }
}

class ModbusMember extends ServerMember {
  readonly protocol = 'modbus'
  constructor(
    readonly id: string,
    readonly device: SimulatedModbusDevice,
    readonly runtime: ActionRuntime,
  ) {
    super()
  }
}

class OpcuaMember extends ServerMember {
  readonly protocol = 'opcua'
  constructor(readonly device: SimulatedOpcuaDevice) {
    super()
  }
  get id(): string {
    return this.device.opts.deviceId
  }
  get runtime(): ActionRuntime {
    return this.device.runtime
  }
}

export class Fleet {
  readonly members: readonly FleetMember[]
  readonly intermittency: Intermittency
  readonly #clock: SimClock
  readonly #random: () => number
  #run: AbortController | null = null
  #loops: Promise<void>[] = []
  /** transitions in progress (a device coming up or going down) */
  #busy = 0
  #idleWaiters: (() => void)[] = []

  private constructor(members: FleetMember[], intermittency: Intermittency, clock: SimClock, random: () => number) {
    this.members = members
    this.intermittency = intermittency
    this.#clock = clock
    this.#random = random
  }

  /** Make every device, enroll it, and leave it offline (Modbus and OPC UA servers down, MQTT not connected). */
  static async create(o: FleetOptions): Promise<Fleet> {
    const intermittency = { onlineFraction: o.onlineFraction ?? 0.9, meanOfflineS: o.meanOfflineS ?? 60 }
    if (!(intermittency.onlineFraction >= 0 && intermittency.onlineFraction <= 1)) throw new TypeError('onlineFraction must be within 0..1')
    if (!(intermittency.meanOfflineS > 0)) throw new TypeError('meanOfflineS must be positive')
    const counts = splitMix(o.size, o.mix ?? DEFAULT_MIX)
    const clock = o.clock ?? systemSimClock
    const random = o.random ?? Math.random
    const prefix = o.prefix ?? 'sim'
    const gw = { gatewayId: o.gatewayId, gatewayPublicKey: o.gatewayPublicKey }
    const plan: { protocol: FleetKind; id: string; n: number }[] = []
    for (const protocol of DEVICE_KINDS) for (let i = 1; i <= (counts[protocol] ?? 0); i++) plan.push({ protocol, id: `${prefix}-${protocol}-${i}`, n: i })
    if (counts['mqtt-x509'] && (!o.mqttsUrl || !o.caPem)) throw new TypeError('fleet: mqtt-x509 devices need mqttsUrl (the TLS listener) and caPem (the site CA)')
    const algs = o.x509Algs?.length ? o.x509Algs : (['P-256', 'Ed25519'] as const)

    const members: FleetMember[] = []
    const make = async ({ protocol, id, n }: { protocol: FleetKind; id: string; n: number }): Promise<FleetMember> => {
      const ref: { member: Member | null } = { member: null }
      const hooks = countingHooks(() => void (ref.member && ref.member.actions++))
      let member: Member
      if (protocol === 'mqtt-x509') {
        // loaded only for a fleet with certificate devices (@peculiar/x509)
        const { SimulatedCertDevice } = await import('./cert-device.ts')
        const device = await SimulatedCertDevice.create({ ...gw, url: o.mqttsUrl!, ca: o.caPem!, deviceId: id, alg: algs[(n - 1) % algs.length]!, clock, mqtt: { connectTimeoutMs: 10_000, reconnectMs: 1000 } })
        member = new X509Member(device)
        const answer = await o.enroll({ id, x509: { csr: await device.requestCertificate() }, mqtt: {} })
        if (!answer?.certificate) throw new TypeError(`fleet: enroll answered no certificate for ${id} (an mqtt-x509 device needs the chain device.enroll issued)`)
        await device.install(answer.certificate)
      } else if (protocol === 'mqtt') {
        const device = await SimulatedMqttDevice.create({ ...gw, url: o.mqttUrl, deviceId: id, clock, hooks, mqtt: { connectTimeoutMs: 10_000, reconnectMs: 1000 } })
        ref.member = member = new MqttMember(device)
        await o.enroll({ id, publicKey: device.runtime.publicKeyB64!, mqtt: {} })
      } else if (protocol === 'modbus') {
        const d = await createHookedModbusDevice({ ...gw, deviceId: id, port: await freePort(), hooks })
        ref.member = member = new ModbusMember(id, d.device, d.runtime)
        await o.enroll({ id, publicKey: d.publicKey, modbus: { host: d.device.host, port: d.device.port, unitId: 1 } })
      } else {
        // node-opcua loads only for a fleet with OPC UA devices (it is slow to load, and prints on stdout)
        const { SimulatedOpcuaDevice } = await import('./opcua-device.ts')
        const device = await SimulatedOpcuaDevice.create({ ...gw, deviceId: id, pkiDir: join(o.workDir, 'opcua', id), port: await freePort(), hooks })
        ref.member = member = new OpcuaMember(device)
        await device.start() // its certificate exists from the first start on: pinned at enrollment
        try {
          await o.enroll({ id, publicKey: device.runtime.publicKeyB64!, opcua: { endpoint: device.endpoint, certificateSha256: device.certificateSha256 } })
        } finally {
          await device.stop()
        }
      }
      return member
    }
    const fleet = new Fleet(members, intermittency, clock, random)
    try {
      const parallel = Math.max(1, o.parallel ?? 20)
      for (let i = 0; i < plan.length; i += parallel) members.push(...(await Promise.all(plan.slice(i, i + parallel).map(make))))
    } catch (err) {
      await fleet.close()
      throw err
    }
    return fleet
  }

  get size(): number {
    return this.members.length
  }

  get running(): boolean {
    return this.#run !== null
  }

  byProtocol(p: FleetProtocol): FleetMember[] {
    return this.members.filter((m) => m.protocol === p)
  }

  member(id: string): FleetMember {
    const m = this.members.find((x) => x.id === id)
    if (!m) throw new TypeError(`no device ${id} in the fleet`)
    return m
  }

  stats(): FleetStats {
    const s: FleetStats = { size: this.size, online: 0, wiped: 0, ups: 0, downs: 0, actions: 0, failures: 0, byProtocol: { mqtt: { size: 0, online: 0 }, modbus: { size: 0, online: 0 }, opcua: { size: 0, online: 0 } } }
    for (const m of this.members) {
      const p = s.byProtocol[m.protocol]
      p.size++
      if (m.online) {
        s.online++
        p.online++
      }
      if (m.runtime.wiped) s.wiped++
      s.ups += m.ups
      s.downs += m.downs
      s.actions += m.actions
      s.failures += m.failures
    }
    return s
  }

  async #transition(fn: () => Promise<unknown>): Promise<void> {
    this.#busy++
    try {
      await fn()
    } finally {
      if (--this.#busy === 0) for (const w of this.#idleWaiters.splice(0)) w()
    }
  }

  /** Resolves once no device is coming up or going down (the next changes wait on the clock). */
  idle(): Promise<void> {
    if (this.#busy === 0) return Promise.resolve()
    return new Promise((resolve) => this.#idleWaiters.push(resolve))
  }

  /** Start the intermittency model on every device: each starts online with probability `onlineFraction`. */
  start(): void {
    if (this.#run) return
    const run = new AbortController()
    setMaxListeners(0, run.signal) // every device's sleep listens to it
    this.#run = run
    // draws in member order, before any await: a seeded `random` gives the same fleet every time
    this.#loops = this.members.map((m) => this.#loop(m, this.#random() < this.intermittency.onlineFraction, run.signal))
  }

  async #loop(m: FleetMember, online: boolean, signal: AbortSignal): Promise<void> {
    while (!signal.aborted && !m.runtime.wiped) {
      await this.#transition(() => (online ? m.goOnline() : m.goOffline()))
      const s = nextPeriod(this.intermittency, online, this.#random)
      if (signal.aborted) break
      if (s === Infinity) await new Promise<void>((r) => signal.addEventListener('abort', () => r(), { once: true }))
      else await this.#clock.sleep(s * 1000, signal)
      online = !online
    }
  }

  /** Stop the intermittency model; devices stay as they are. */
  async pause(): Promise<void> {
    const run = this.#run
    if (!run) return
    this.#run = null
    run.abort()
    await Promise.all(this.#loops)
    this.#loops = []
  }

  /** Every device offline (the model paused first). */
  async allOffline(): Promise<void> {
    await this.pause()
    await Promise.all(this.members.map((m) => this.#transition(() => m.goOffline())))
  }

  /**
   * A reconnect storm: every device down, then every one (but the wiped)
   * back at the same moment. Resolves when each has come up or failed to;
   * the model stays paused (start() resumes it).
   */
  async storm(): Promise<{ ms: number; online: number; failed: number }> {
    await this.allOffline()
    const started = performance.now()
    const up = await Promise.all(this.members.filter((m) => !m.runtime.wiped).map(async (m) => {
      let ok = false
      await this.#transition(async () => (ok = await m.goOnline()))
      return ok
    }))
    return { ms: performance.now() - started, online: up.filter(Boolean).length, failed: up.filter((x) => !x).length }
  }

  /** Stop the model and take every device down for good. */
  async close(): Promise<void> {
    await this.pause()
    await Promise.allSettled(this.members.map((m) => m.goOffline()))
  }
}
