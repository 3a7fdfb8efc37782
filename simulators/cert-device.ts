// A simulated MQTT device that authenticates with a certificate of the site
// CA (PROTOCOL §5, §9): the real certificate device of firmware-hooks/
// (cert-device.ts, mqtt-cert-device.ts) behind the same intermittent link as
// the token device of mqtt-device.ts. It is enrolled through the gateway with
// a PKCS#10 request (requestCertificate(), then install() with the chain the
// gateway answered), renews over MQTT when told to, and reconnects with
// each new certificate. Imports nothing from agent/.
import { CertDevice, MemoryCertStorage, type CertStorage } from '../firmware-hooks/cert-device.ts'
import { MemoryDeviceStorage, type ActionRuntime, type DeviceHooks, type DeviceStorage } from '../firmware-hooks/action-runtime.ts'
import { MqttCertDevice } from '../firmware-hooks/mqtt-cert-device.ts'
import { newActionStats, waitForAck, type ActionStats, type SentAck } from '../firmware-hooks/mqtt-action-device.ts'
import type { MqttDeviceOptions } from '../firmware-hooks/mqtt-device.ts'
import type { CertKeyAlg } from '../firmware-hooks/x509-keys.ts'
import { b64urlEncode } from '../wire/base64url.ts'
import { systemSimClock, type SimClock, type SimDeviceState } from './mqtt-device.ts'

export interface SimulatedCertDeviceOptions {
  /** the site broker's TLS listener, mqtts://host:port */
  url: string
  deviceId: string
  gatewayId: string
  gatewayPublicKey: string
  /** PEM of the CA(s) the broker's server certificate chains to (the site CA) */
  ca: string | string[]
  /** default P-256 */
  alg?: CertKeyAlg
  storage?: CertStorage
  runtimeStorage?: DeviceStorage
  hooks?: Partial<DeviceHooks>
  clock?: SimClock
  /** passed to the MQTT connection */
  mqtt?: Pick<MqttDeviceOptions, 'connectTimeoutMs' | 'reconnectMs' | 'tls'>
}

export class SimulatedCertDevice {
  readonly id: string
  readonly device: CertDevice
  readonly stats: ActionStats = newActionStats()
  /** acks out, across connections */
  readonly acked = new Map<string, SentAck>()
  connectFailures = 0
  lastError: Error | null = null
  readonly #o: SimulatedCertDeviceOptions
  #conn: MqttCertDevice | null = null
  readonly #ackListeners = new Set<(a: SentAck) => void>()

  private constructor(o: SimulatedCertDeviceOptions, device: CertDevice) {
    this.#o = o
    this.id = o.deviceId
    this.device = device
  }

  static async create(o: SimulatedCertDeviceOptions): Promise<SimulatedCertDevice> {
    const clock = o.clock ?? systemSimClock
    const device = await CertDevice.open({
      deviceId: o.deviceId,
      gatewayId: o.gatewayId,
      gatewayPublicKey: o.gatewayPublicKey,
      alg: o.alg ?? 'P-256',
      storage: o.storage ?? new MemoryCertStorage(),
      runtimeStorage: o.runtimeStorage ?? new MemoryDeviceStorage(),
      nowS: () => Math.floor(clock.now() / 1000),
      ...(o.hooks ? { hooks: o.hooks } : {}),
    })
    return new SimulatedCertDevice(o, device)
  }

  get runtime(): ActionRuntime {
    return this.device.runtime
  }

  /** The request to enroll with (PROTOCOL §3 `x509.csr`): base64url DER of a new key's PKCS#10. */
  async requestCertificate(): Promise<string> {
    return b64urlEncode(await this.device.requestCertificate())
  }

  /** The chain the gateway issued at enrollment (PEM bundle or blocks, the device certificate first). */
  async install(chain: string | string[]): Promise<void> {
    await this.device.installChain(chain, 'enroll')
  }

  get state(): SimDeviceState {
    if (this.runtime.wiped) return 'wiped'
    return this.#conn?.connected ? 'online' : 'offline'
  }

  /** Connect now with the current certificate. False (and counted) when refused or unreachable, not enrolled, or wiped. */
  async goOnline(): Promise<boolean> {
    if (this.runtime.wiped || !this.device.enrolled) return false
    if (this.#conn?.connected) return true
    await this.goOffline()
    try {
      const { tls, ...rest } = this.#o.mqtt ?? {}
      const conn = await MqttCertDevice.connect({ url: this.#o.url, device: this.device, stats: this.stats, tls: { ...tls, ca: this.#o.ca }, ...rest })
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

  async goOffline(): Promise<void> {
    const c = this.#conn
    this.#conn = null
    if (c) await c.close()
  }

  onAck(listener: (a: SentAck) => void): () => void {
    this.#ackListeners.add(listener)
    return () => this.#ackListeners.delete(listener)
  }

  /** Resolves once the ack of `actionId` is out and its follow-up is done (install-cert: reconnected with the new certificate). */
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
    await this.goOffline()
  }
}
