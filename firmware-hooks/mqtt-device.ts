// A device on the site broker (PROTOCOL §5): connect with a fresh token, or
// with its client certificate on the TLS listener, subscribe to its command
// topic, hand each command to one handler. The action runtime (verify, run
// the hook, sign the ack) is built on top.
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import type { TlsCredentials } from './cert-device.ts'
import { mintToken } from './token.ts'

export interface MqttDeviceOptions {
  /** mqtt://host:port or mqtts://host:port (PROTOCOL §5: sites should use TLS) */
  url: string
  deviceId: string
  gatewayId: string
  /** the device's 32-byte seed, or a getter read at every (re)connect, so a key changed by a re-key is used from then on */
  secretKey?: Uint8Array | (() => Uint8Array)
  /**
   * Instead of secretKey (PROTOCOL §5, §9): authenticate with a client
   * certificate on the TLS listener, no user name nor password. Read at
   * every (re)connect, so a certificate installed since is used from then on.
   */
  clientCertificate?: () => TlsCredentials
  /** token lifetime, seconds (default 300, at most 3600) */
  lifetimeS?: number
  /** seconds since the epoch, for the token's iat */
  nowS?: () => number
  /** TLS options passed to mqtt.js (ca, rejectUnauthorized, servername...) */
  tls?: Pick<IClientOptions, 'ca' | 'rejectUnauthorized' | 'servername'>
  will?: IClientOptions['will']
  /** delay before reconnecting with a fresh token; 0 (default) does not reconnect */
  reconnectMs?: number
  connectTimeoutMs?: number
}

export type CommandHandler = (payload: Buffer, device: MqttDevice) => void

export class MqttDevice {
  readonly id: string
  readonly cmdTopic: string
  readonly client: MqttClient
  readonly #opts: MqttDeviceOptions
  #handler: CommandHandler | null = null
  /** commands that arrived before onCommand() was called (right after the SUBACK, before connect() returned) */
  #early: Buffer[] = []
  #closing = false
  /** a reconnectNow() in progress: the close it causes is not a lost link */
  #replacing = false
  /** the last error the connection reported (a refused reconnect, a denied subscription) */
  lastError: Error | null = null

  private constructor(opts: MqttDeviceOptions, client: MqttClient) {
    this.#opts = opts
    this.id = opts.deviceId
    this.cmdTopic = `dev/${opts.deviceId}/cmd`
    this.client = client
    client.on('error', (err) => (this.lastError = err)) // an EventEmitter 'error' without a listener would throw
    client.on('message', (topic, payload) => {
      if (topic !== this.cmdTopic) return
      if (this.#handler) this.#handler(payload, this)
      else if (this.#early.length < 100) this.#early.push(payload)
    })
    // a clean session forgets subscriptions: subscribe again after each reconnect
    client.on('connect', () => void this.#subscribe().catch((err: unknown) => client.emit('error', err as Error)))
    client.on('close', () => {
      if (this.#closing || this.#replacing || !opts.reconnectMs) return
      setTimeout(() => void this.#reconnect(), opts.reconnectMs).unref?.()
    })
  }

  /** What the next connect authenticates with: a fresh token, or the client certificate as it is now. */
  static async #credentials(opts: MqttDeviceOptions): Promise<Pick<IClientOptions, 'username' | 'password' | 'key' | 'cert'>> {
    if (opts.clientCertificate) {
      const { key, cert } = opts.clientCertificate()
      return { key, cert }
    }
    const secretKey = opts.secretKey!
    const password = await mintToken({
      deviceId: opts.deviceId,
      gatewayId: opts.gatewayId,
      secretKey: typeof secretKey === 'function' ? secretKey() : secretKey,
      ...(opts.nowS ? { nowS: opts.nowS() } : {}),
      ...(opts.lifetimeS !== undefined ? { lifetimeS: opts.lifetimeS } : {}),
    })
    return { username: opts.deviceId, password } // PROTOCOL §5: client id = user name = device id
  }

  /** Connect and subscribe; rejects when the broker refuses (CONNACK 4 or 5) or the command subscription is denied. */
  static async connect(opts: MqttDeviceOptions): Promise<MqttDevice> {
    if ((opts.secretKey === undefined) === (opts.clientCertificate === undefined)) throw new TypeError('exactly one of secretKey and clientCertificate')
    const client = mqtt.connect(opts.url, {
      clientId: opts.deviceId, // PROTOCOL §5: the device id, also for a certificate (the id its SAN names)
      ...(await MqttDevice.#credentials(opts)),
      protocolVersion: 4, // the site broker speaks MQTT 3.1.1
      clean: true,
      reconnectPeriod: 0, // reconnects need a fresh token (or the newest certificate): done here, not by mqtt.js
      connectTimeout: opts.connectTimeoutMs ?? 10_000,
      ...(opts.will ? { will: opts.will } : {}),
      ...opts.tls,
    })
    try {
      await new Promise<void>((resolve, reject) => {
        const done = (err?: Error): void => {
          client.off('connect', onConnect).off('error', done).off('close', onClose)
          if (err) reject(err)
          else resolve()
        }
        const onConnect = (): void => done()
        const onClose = (): void => done(new Error('connection closed before CONNACK'))
        client.on('connect', onConnect).on('error', done).on('close', onClose)
      })
      const device = new MqttDevice(opts, client)
      await device.#subscribe()
      return device
    } catch (err) {
      client.end(true)
      throw err
    }
  }

  async #subscribe(): Promise<void> {
    const granted = await this.client.subscribeAsync(this.cmdTopic, { qos: 1 })
    if (granted[0]?.qos === 128) throw new Error(`subscription to ${this.cmdTopic} was denied`)
  }

  async #reconnect(): Promise<void> {
    if (this.#closing || this.#replacing) return
    try {
      // mqtt.js builds each new TLS stream from these same options
      Object.assign(this.client.options, await MqttDevice.#credentials(this.#opts))
      this.client.reconnect()
    } catch (err) {
      this.client.emit('error', err as Error)
    }
  }

  /**
   * Drop the connection and connect again at once with fresh credentials:
   * after a new certificate was installed, so the gateway sees it in use
   * (PROTOCOL §9 ends the overlap on that). Resolves on the CONNACK; rejects
   * when refused, and then reconnects later as usual if reconnectMs is set.
   */
  async reconnectNow(): Promise<void> {
    if (this.#closing) throw new Error('device connection is closed')
    this.#replacing = true
    try {
      if (this.client.connected) await this.client.endAsync()
      Object.assign(this.client.options, await MqttDevice.#credentials(this.#opts))
      await new Promise<void>((resolve, reject) => {
        const done = (err?: Error): void => {
          this.client.off('connect', onConnect).off('error', done).off('close', onClose)
          if (err) reject(err)
          else resolve()
        }
        const onConnect = (): void => done()
        const onClose = (): void => done(new Error('connection closed before CONNACK'))
        this.client.on('connect', onConnect).on('error', done).on('close', onClose)
        this.client.reconnect()
      })
    } catch (err) {
      this.lastError = err as Error
      if (this.#opts.reconnectMs && !this.#closing) setTimeout(() => void this.#reconnect(), this.#opts.reconnectMs).unref?.()
      throw err
    } finally {
      this.#replacing = false
    }
  }

  /** The handler for every message on `dev/<id>/cmd` (one handler; a second call replaces it). */
  onCommand(handler: CommandHandler): void {
    this.#handler = handler
    const early = this.#early
    this.#early = []
    for (const p of early) handler(p, this)
  }

  /** Publish under the device's own namespace, `dev/<id>/<subtopic>`. */
  async publish(subtopic: string, payload: string | Buffer, opts: { qos?: 0 | 1; retain?: boolean } = {}): Promise<void> {
    await this.client.publishAsync(`dev/${this.id}/${subtopic}`, payload, { qos: opts.qos ?? 1, retain: opts.retain ?? false })
  }

  async close(): Promise<void> {
    this.#closing = true
    await this.client.endAsync()
  }
}
