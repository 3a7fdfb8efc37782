// A simulated MQTT device: the real device runtime (firmware-hooks/) behind
// an intermittent link. Online and offline periods alternate, each of an
// exponentially distributed length: offline ones average `meanOfflineS`,
// online ones are sized so that over time the device is online
// `onlineFraction` of the time. Clock and randomness are injected, so a
// test (or the fleet simulator) decides exactly when each device is away.
// Imports nothing from agent/.
import { ActionRuntime, MemoryDeviceStorage, type DeviceHooks, type DeviceStorage } from '../firmware-hooks/action-runtime.ts'
import { keygen } from '../firmware-hooks/crypto.ts'
import { MqttActionDevice, newActionStats, waitForAck, type ActionStats, type SentAck } from '../firmware-hooks/mqtt-action-device.ts'
import type { MqttDeviceOptions } from '../firmware-hooks/mqtt-device.ts'

export interface SimClock {
  /** milliseconds since the epoch */
  now(): number
  /** resolves after `ms` of this clock's time, or early (without error) when `signal` aborts */
  sleep(ms: number, signal?: AbortSignal): Promise<void>
}

export const systemSimClock: SimClock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise((resolve) => {
      if (signal?.aborted) return resolve()
      const done = (): void => {
        clearTimeout(timer)
        signal?.removeEventListener('abort', done)
        resolve()
      }
      const timer = setTimeout(done, ms)
      signal?.addEventListener('abort', done, { once: true })
    }),
}

/** A clock that moves only when told: sleepers wake as advance() passes their time. */
export class ManualSimClock implements SimClock {
  #ms: number
  #sleepers: { at: number; resolve: () => void }[] = []
  constructor(startMs = Date.UTC(2026, 0, 1)) {
    this.#ms = startMs
  }
  now(): number {
    return this.#ms
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) return resolve()
      const s = { at: this.#ms + ms, resolve }
      this.#sleepers.push(s)
      signal?.addEventListener('abort', () => {
        this.#sleepers = this.#sleepers.filter((x) => x !== s)
        resolve()
      }, { once: true })
    })
  }
  /** Move time forward, waking each sleeper due by then (in time order). */
  async advance(ms: number): Promise<void> {
    const end = this.#ms + ms
    for (;;) {
      const due = this.#sleepers.filter((s) => s.at <= end).sort((a, b) => a.at - b.at)[0]
      if (!due) break
      this.#sleepers = this.#sleepers.filter((s) => s !== due)
      this.#ms = Math.max(this.#ms, due.at)
      due.resolve()
      await new Promise((r) => setImmediate(r)) // let the woken code run before the next
    }
    this.#ms = end
  }
  get sleepers(): number {
    return this.#sleepers.length
  }
}

/** Intermittency: the share of time online, and the mean length of an absence. */
export interface Intermittency {
  /** 0..1; 1 (default) never goes offline, 0 never comes online */
  onlineFraction: number
  /** mean length of an offline period, seconds (default 60) */
  meanOfflineS: number
}

/** A device that is away most of the time: online 5 % of the time, gone a day on average. */
export const MOSTLY_OFFLINE: Intermittency = { onlineFraction: 0.05, meanOfflineS: 86_400 }

export interface SimulatedMqttDeviceOptions extends Partial<Intermittency> {
  url: string
  deviceId: string
  gatewayId: string
  gatewayPublicKey: string
  /** the device's key at first start (made with noble when absent and storage is empty) */
  secretKey?: Uint8Array
  storage?: DeviceStorage
  hooks?: Partial<DeviceHooks>
  clock?: SimClock
  /** uniform in [0, 1); default Math.random */
  random?: () => number
  /** passed to the MQTT connection (TLS, timeouts) */
  mqtt?: Pick<MqttDeviceOptions, 'tls' | 'connectTimeoutMs' | 'lifetimeS' | 'reconnectMs'>
}

export type SimDeviceState = 'offline' | 'online' | 'wiped'

/** What a simulated device's MQTT connection offers (MqttActionDevice, MqttCertDevice). */
interface SimConnection {
  readonly connected: boolean
  onAck(listener: (a: SentAck) => void): () => void
  publish(subtopic: string, payload: string | Buffer, opts?: { qos?: 0 | 1; retain?: boolean }): Promise<void>
  close(): Promise<void>
}

/**
 * The link of a simulated MQTT device, with a token (SimulatedMqttDevice)
 * or a certificate (cert-device.ts): one connection at a time, acks gathered
 * across connections, refused or failed connects counted.
 */
export abstract class SimulatedLink<C extends SimConnection = SimConnection> {
  abstract readonly id: string
  abstract readonly runtime: ActionRuntime
  readonly stats: ActionStats = newActionStats()
  /** acks out, across connections */
  readonly acked = new Map<string, SentAck>()
  /** connects refused or failed */
  connectFailures = 0
  lastError: Error | null = null
  #conn: C | null = null
  readonly #ackListeners = new Set<(a: SentAck) => void>()

  /** A new connection with the device's current credential; rejects when refused or unreachable. */
  protected abstract openConnection(): Promise<C>
  /** Whether the device has what it connects with (it is not wiped either way). */
  protected canConnect(): boolean {
    return true
  }

  get state(): SimDeviceState {
    if (this.runtime.wiped) return 'wiped'
    return this.#conn?.connected ? 'online' : 'offline'
  }

  /** Connect now. Resolves false (and counts it) when the broker refuses or is unreachable; false when the device is wiped or cannot connect (a certificate device not enrolled). */
  async goOnline(): Promise<boolean> {
    if (this.runtime.wiped || !this.canConnect()) return false
    if (this.#conn?.connected) return true
    await this.#dropConnection()
    try {
      const conn = await this.openConnection()
      conn.onAck((a) => {
        this.acked.set(a.actionId, a)
        for (const l of [...this.#ackListeners]) l(a)
      })
      this.#conn = conn
      return true
    } catch (err) {
      this.connectFailures++
      this.lastError = err as Error
      return false
    }
  }

  /** Disconnect now (a clean DISCONNECT: the link went away, the device did not crash). */
  async goOffline(): Promise<void> {
    await this.#dropConnection()
  }

  async #dropConnection(): Promise<void> {
    const c = this.#conn
    this.#conn = null
    if (c) await c.close()
  }

  onAck(listener: (a: SentAck) => void): () => void {
    this.#ackListeners.add(listener)
    return () => this.#ackListeners.delete(listener)
  }

  /** Resolves once the ack of `actionId` is out and its follow-up (key switch, wipe; install-cert: reconnected with the new certificate) is done, on any connection. */
  waitForAck(actionId: string, timeoutMs = 10_000): Promise<SentAck> {
    return waitForAck(this, actionId, timeoutMs, this.id)
  }

  /** Telemetry under `dev/<id>/tele` while online; false when offline. */
  async publishTelemetry(payload: string): Promise<boolean> {
    if (!this.#conn?.connected) return false
    await this.#conn.publish('tele', payload, { qos: 0 })
    return true
  }

  async close(): Promise<void> {
    await this.#dropConnection()
  }
}

export class SimulatedMqttDevice extends SimulatedLink<MqttActionDevice> {
  readonly id: string
  readonly runtime: ActionRuntime
  readonly intermittency: Intermittency
  readonly #o: SimulatedMqttDeviceOptions
  readonly #clock: SimClock
  readonly #random: () => number

  private constructor(o: SimulatedMqttDeviceOptions, runtime: ActionRuntime, clock: SimClock) {
    super()
    this.#o = o
    this.id = o.deviceId
    this.runtime = runtime
    this.#clock = clock
    this.#random = o.random ?? Math.random
    const onlineFraction = o.onlineFraction ?? 1
    const meanOfflineS = o.meanOfflineS ?? 60
    if (!(onlineFraction >= 0 && onlineFraction <= 1)) throw new TypeError('onlineFraction must be within 0..1')
    if (!(meanOfflineS > 0)) throw new TypeError('meanOfflineS must be positive')
    this.intermittency = { onlineFraction, meanOfflineS }
  }

  static async create(o: SimulatedMqttDeviceOptions): Promise<SimulatedMqttDevice> {
    const clock = o.clock ?? systemSimClock
    const storage = o.storage ?? new MemoryDeviceStorage()
    const runtime = await ActionRuntime.open({
      deviceId: o.deviceId,
      gatewayId: o.gatewayId,
      gatewayPublicKey: o.gatewayPublicKey,
      secretKey: o.secretKey ?? (await keygen()).secretKey, // used only when storage is empty
      storage,
      nowS: () => Math.floor(clock.now() / 1000),
      ...(o.hooks ? { hooks: o.hooks } : {}),
    })
    return new SimulatedMqttDevice(o, runtime, clock)
  }

  protected openConnection(): Promise<MqttActionDevice> {
    return MqttActionDevice.connect({
      url: this.#o.url,
      runtime: this.runtime,
      stats: this.stats,
      nowS: () => Math.floor(this.#clock.now() / 1000),
      ...this.#o.mqtt,
    })
  }

  /** The next period of the intermittency model, drawn from `random`. */
  nextPeriod(online: boolean): number {
    const { onlineFraction: f, meanOfflineS } = this.intermittency
    const mean = online ? (f >= 1 ? Infinity : (meanOfflineS * f) / (1 - f)) : f <= 0 ? Infinity : meanOfflineS
    if (mean === Infinity) return Infinity
    if (mean === 0) return 0
    return -mean * Math.log(1 - this.#random()) // exponential, mean `mean`
  }

  /**
   * Alternate online and offline periods until `signal` aborts or the
   * device is wiped. Starts online with probability `onlineFraction`.
   */
  async run(signal?: AbortSignal): Promise<void> {
    let online = this.#random() < this.intermittency.onlineFraction
    while (!signal?.aborted && !this.runtime.wiped) {
      if (online) await this.goOnline()
      else await this.goOffline()
      const s = this.nextPeriod(online)
      if (s === Infinity) await new Promise<void>((r) => (signal ? signal.addEventListener('abort', () => r(), { once: true }) : undefined))
      else await this.#clock.sleep(s * 1000, signal)
      online = !online
    }
    await this.goOffline()
  }
}
