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
import type { MqttDeviceOptions } from '../firmware-hooks/mqtt-device.ts'
import type { CertKeyAlg } from '../firmware-hooks/x509-keys.ts'
import { b64urlEncode } from '../wire/base64url.ts'
import { SimulatedLink, systemSimClock, type SimClock } from './mqtt-device.ts'

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

export class SimulatedCertDevice extends SimulatedLink<MqttCertDevice> {
  readonly id: string
  readonly device: CertDevice
  readonly #o: SimulatedCertDeviceOptions

  private constructor(o: SimulatedCertDeviceOptions, device: CertDevice) {
    super()
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

  /** Connects with the current certificate: not before it has one. */
  protected override canConnect(): boolean {
    return this.device.enrolled
  }

  protected openConnection(): Promise<MqttCertDevice> {
    const { tls, ...rest } = this.#o.mqtt ?? {}
    return MqttCertDevice.connect({ url: this.#o.url, device: this.device, stats: this.stats, tls: { ...tls, ca: this.#o.ca }, ...rest })
  }
}
