// A certificate device (cert-device.ts) on the site broker's TLS listener
// (PROTOCOL §5, §9): it presents its client certificate (client id = the
// device id its SAN names, no user name, no password), and its actions run
// through the same MQTT action path as a token device's
// (mqtt-action-device.ts). Once a new certificate is installed (install-cert
// acked, or an EST re-enrollment) it reconnects with it at once: the gateway
// ends the renewal's overlap when it sees the new certificate in use.
import type { CertDevice, InstalledCertificate, TlsCredentials } from './cert-device.ts'
import { MqttActionDevice, type ActionStats, type IgnoredEnvelope, type MqttActionDeviceOptions, type SentAck } from './mqtt-action-device.ts'

export interface MqttCertDeviceOptions extends Omit<MqttActionDeviceOptions, 'runtime' | 'clientCertificate' | 'secretKey' | 'lifetimeS'> {
  device: CertDevice
  /** reconnect with a newly installed certificate at once (default true) */
  reconnectOnInstall?: boolean
}

export class MqttCertDevice {
  readonly device: CertDevice
  readonly conn: MqttActionDevice
  /** reconnects made with a newly installed certificate */
  reconnects = 0
  #offInstalled: () => void = () => {}

  private constructor(device: CertDevice, conn: MqttActionDevice) {
    this.device = device
    this.conn = conn
  }

  /** Connect with the current certificate; rejects when refused (CONNACK 5), or when the device has none. */
  static async connect(o: MqttCertDeviceOptions): Promise<MqttCertDevice> {
    const { device, reconnectOnInstall, ...rest } = o
    if (!/^mqtts:\/\//.test(rest.url)) throw new TypeError('a certificate device connects to the TLS listener: the url must be mqtts://')
    if (!device.enrolled) throw new Error(`device ${device.id} has no certificate: enroll it first`)
    const clientCertificate = (): TlsCredentials => {
      const c = device.tlsCredentials()
      if (!c) throw new Error(`device ${device.id} has no certificate (wiped)`)
      return c
    }
    const conn = await MqttActionDevice.connect({ ...rest, runtime: device.runtime, clientCertificate })
    const self = new MqttCertDevice(device, conn)
    if (reconnectOnInstall !== false) {
      self.#offInstalled = device.onInstalled(async (_cert: InstalledCertificate) => {
        if (!conn.connected && !conn.device.client.reconnecting) return // offline: the next connect presents it anyway
        await conn.device.reconnectNow()
        self.reconnects++
      })
    }
    return self
  }

  get connected(): boolean {
    return this.conn.connected
  }
  get stats(): ActionStats {
    return this.conn.stats
  }
  get acked(): ReadonlyMap<string, SentAck> {
    return this.conn.acked
  }
  get lastError(): Error | null {
    return this.conn.lastError ?? this.conn.device.lastError
  }

  onAck(listener: (a: SentAck) => void): () => void {
    return this.conn.onAck(listener)
  }
  onIgnored(listener: (i: IgnoredEnvelope) => void): () => void {
    return this.conn.onIgnored(listener)
  }
  /** Resolves once the ack of `actionId` is out and its follow-up is done (for install-cert: reconnected with the new certificate). */
  waitForAck(actionId: string, timeoutMs = 10_000): Promise<SentAck> {
    return this.conn.waitForAck(actionId, timeoutMs)
  }
  publish(subtopic: string, payload: string | Buffer, opts: { qos?: 0 | 1; retain?: boolean } = {}): Promise<void> {
    return this.conn.publish(subtopic, payload, opts)
  }

  async close(): Promise<void> {
    this.#offInstalled()
    await this.conn.close()
  }
}
