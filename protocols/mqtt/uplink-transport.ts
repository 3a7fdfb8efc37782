// The uplink over MQTT (PROTOCOL §3) with mqtt.js: client id
// edgewarden-<site>-<gateway>, persistent session so commands sent while the
// site was away arrive when it returns, QoS 1 both ways, a retained status
// with a will, and reconnects with capped exponential backoff and jitter.
import { readFileSync } from 'node:fs'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import type { UplinkHandlers, UplinkTransport } from '../../agent/uplink/uplink.ts'
import type { AgentConfig } from '../../agent/runtime/config.ts'
import type { Logger } from '../../agent/observe/logger.ts'
import { topicRoot } from '../../wire/protocol.ts'
import { BACKOFF, backoffDelay } from '../../agent/runtime/timers.ts'

export type MqttUplinkOptions = NonNullable<AgentConfig['uplink']> & {
  site: string
  gateway: string
  version: string
  log: Logger
  backoff?: { minMs: number; maxMs: number }
}

export { topicRoot }

export class MqttUplinkTransport implements UplinkTransport {
  readonly #opts: MqttUplinkOptions
  readonly #root: string
  #client: MqttClient | null = null
  #handlers: UplinkHandlers | null = null
  #attempt = 0
  #timer: NodeJS.Timeout | null = null
  #stopping = false
  #up = false

  constructor(opts: MqttUplinkOptions) {
    this.#opts = opts
    this.#root = topicRoot(opts.site, opts.gateway)
  }

  get connected(): boolean {
    return this.#client?.connected ?? false
  }

  /** Delay before reconnect attempt n: the `uplinkReconnect` policy (agent/runtime/timers.ts). */
  static backoffMs(attempt: number, minMs: number, maxMs: number, random = Math.random): number {
    return backoffDelay(Math.min(attempt, 20), BACKOFF.uplinkReconnect(minMs, maxMs), () => 1 - random())
  }

  start(handlers: UplinkHandlers): void {
    this.#handlers = handlers
    this.#connect()
  }

  /**
   * One mqtt.js client per connection: when it closes it is discarded with
   * whatever it held in flight, and the Uplink re-sends every unacknowledged
   * event from the durable outbox on the next connection. (mqtt.js' own
   * resend of in-flight messages after a manual reconnect proved unreliable
   * across a broker restart; the outbox is the one source of truth.)
   */
  #connect(): void {
    const o = this.#opts
    const handlers = this.#handlers!
    const options: IClientOptions = {
      clientId: `edgewarden-${o.site}-${o.gateway}`,
      clean: false, // PROTOCOL §3: persistent session
      protocolVersion: 4,
      keepalive: 30,
      reconnectPeriod: 0, // reconnects are ours, with backoff and jitter
      connectTimeout: 10_000,
      resubscribe: false,
      will: { topic: `${this.#root}status`, payload: Buffer.from(JSON.stringify({ online: false })), qos: 1, retain: true },
      ...(o.username !== undefined ? { username: o.username } : {}),
      ...(o.password !== undefined ? { password: o.password } : {}),
      ...(o.caFile ? { ca: readFileSync(o.caFile) } : {}),
      ...(o.certFile ? { cert: readFileSync(o.certFile) } : {}),
      ...(o.keyFile ? { key: readFileSync(o.keyFile) } : {}),
    }
    const client = mqtt.connect(o.url, options)
    this.#client = client
    const cmdTopic = `${this.#root}cmd`
    // PUBACK only after the command's fate is durable; on a storage error no
    // PUBACK is sent, so the broker delivers it again.
    client.handleMessage = (packet, done) => {
      if (packet.topic !== cmdTopic) return done()
      const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload
      handlers.onCommand(payload).then(
        () => done(),
        (err: unknown) => {
          o.log.error({ err }, 'command could not be recorded; not acknowledging it')
          done(err as Error)
        },
      )
    }
    client.on('connect', () => {
      // A CONNACK that lands after stop() began (or for a client already
      // replaced) must not publish on a client that is closing.
      if (this.#stopping || this.#client !== client) return
      // Small packets both ways (events, PUBACKs): no Nagle delay behind unacknowledged data.
      ;(client.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true)
      this.#attempt = 0
      client.subscribe(cmdTopic, { qos: 1 }, (err) => {
        if (err) o.log.error({ err: err.message }, 'subscribing to the command topic failed')
      })
      this.publishStatus()
      this.#up = true
      handlers.onUp()
    })
    client.on('close', () => {
      if (this.#client !== client) return
      this.#client = null
      client.removeAllListeners('close')
      client.end(true)
      if (this.#stopping) return
      if (this.#up) {
        this.#up = false
        handlers.onDown()
      }
      this.#scheduleReconnect()
    })
    client.on('error', (err) => o.log.warn({ err: err.message }, 'uplink error'))
  }

  #scheduleReconnect(): void {
    if (this.#timer || this.#stopping) return
    const { minMs, maxMs } = this.#opts.backoff ?? { minMs: 500, maxMs: 30_000 }
    const delay = MqttUplinkTransport.backoffMs(this.#attempt++, minMs, maxMs)
    this.#opts.log.info({ delayMs: delay, attempt: this.#attempt }, 'uplink reconnecting')
    this.#timer = setTimeout(() => {
      this.#timer = null
      if (!this.#stopping) this.#connect()
    }, delay)
  }

  /** The retained status: online, version, and what the core adds (PROTOCOL §3: last event seq, audit head). */
  publishStatus(): void {
    const client = this.#client
    if (!client?.connected || this.#stopping) return
    const status = { online: true, version: this.#opts.version, ...this.#handlers?.status() }
    client.publish(`${this.#root}status`, JSON.stringify(status), { qos: 1, retain: true }, (err) => {
      if (err) this.#opts.log.warn({ err: err.message }, 'publishing the status failed')
    })
  }

  publishEvent(payload: string): Promise<void> {
    const client = this.#client
    if (!client?.connected) return Promise.reject(new Error('uplink not connected'))
    return new Promise((resolve, reject) => {
      client.publish(`${this.#root}evt`, payload, { qos: 1 }, (err) => (err ? reject(err) : resolve()))
    })
  }

  async stop(): Promise<void> {
    this.#stopping = true
    if (this.#timer) clearTimeout(this.#timer)
    const client = this.#client
    if (!client) return
    // A clean stop says so (the will covers the unclean ones), but never
    // waits long on a broker that does not answer.
    const within = (ms: number, p: Promise<void>): Promise<void> =>
      Promise.race([p, new Promise<void>((resolve) => setTimeout(resolve, ms).unref())])
    if (client.connected) {
      await within(
        2000,
        new Promise<void>((resolve) =>
          client.publish(`${this.#root}status`, JSON.stringify({ online: false, version: this.#opts.version, ...this.#handlers?.status() }), { qos: 1, retain: true }, () => resolve()),
        ),
      )
    }
    await within(1000, new Promise<void>((resolve) => client.end(false, {}, () => resolve())))
    // mqtt.js ignores a forced end() while a clean one is under way: close the connection itself.
    if (!client.disconnected) {
      const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
      client.stream?.destroy()
      client.end(true)
      await within(500, closed)
    }
    if (this.#client === client) this.#client = null
  }
}
