// The control plane on the central broker (PROTOCOL §3), with mqtt.js:
// - one plain session per instance (clean): it publishes commands (QoS 1) and
//   takes every gateway's retained status (a plain subscription: retained
//   messages never go to shared ones);
// - one persistent session per intake slot this instance holds, subscribed to
//   $share/<group>/edgewarden/v1/+/+/evt: the broker spreads events over the
//   slots, and keeps a slot's share while nobody holds it. A message is
//   acknowledged (PUBACK) only after the intake committed it; when storing
//   fails it is tried again while the slot is held, and never acknowledged
//   otherwise, so the broker delivers it again to whoever holds the slot next.
//   With --intake-mode plain (a broker without shared subscriptions, e.g.
//   aedes) the one slot subscribes to the filter itself.
import { readFileSync } from 'node:fs'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import type { CpConfig } from '../runtime/config.ts'
import type { Logger } from '../runtime/log.ts'
import { maskUrl } from '../runtime/log.ts'
import { EVENT_FILTER, STATUS_FILTER } from './topics.ts'


interface Slot {
  k: number
  client: MqttClient
  closing: boolean
  current: Promise<void> | null
}

export interface BrokerLinkOptions {
  broker: CpConfig['broker']
  shareGroup: string
  /** false: a plain subscription (a broker without shared subscriptions; one slot) */
  shared: boolean
  instanceId: string
  log: Logger
  onStatus(topic: string, payload: Buffer): void
  /** resolves once the event is stored; rejects when it could not be (it is tried again) */
  onEvent(topic: string, payload: Buffer): Promise<void>
}

const noDelay = (c: MqttClient): void => (c.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true)

export class BrokerLink {
  readonly #o: BrokerLinkOptions
  readonly #tls: Pick<IClientOptions, 'ca' | 'cert' | 'key'>
  #main: MqttClient | null = null
  readonly #slots = new Map<number, Slot>()
  #stopped = false

  constructor(o: BrokerLinkOptions) {
    this.#o = o
    const b = o.broker
    this.#tls = {
      ...(b.caFile ? { ca: readFileSync(b.caFile) } : {}),
      ...(b.certFile ? { cert: readFileSync(b.certFile) } : {}),
      ...(b.keyFile ? { key: readFileSync(b.keyFile) } : {}),
    }
  }

  #options(clientId: string, clean: boolean): IClientOptions {
    const b = this.#o.broker
    return {
      clientId,
      clean,
      protocolVersion: 4,
      keepalive: 30,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
      ...(b.username !== undefined ? { username: b.username } : {}),
      ...(b.password !== undefined ? { password: b.password } : {}),
      ...this.#tls,
    }
  }

  get connected(): boolean {
    return this.#main?.connected ?? false
  }

  get slotCount(): number {
    return [...this.#slots.values()].filter((s) => s.client.connected).length
  }

  start(): void {
    const log = this.#o.log
    const client = mqtt.connect(this.#o.broker.url, this.#options(`${this.#o.shareGroup}-${this.#o.instanceId}`.slice(0, 64), true))
    this.#main = client
    let wasUp = false
    client.on('connect', () => {
      noDelay(client)
      if (!wasUp) log.info({ broker: maskUrl(this.#o.broker.url) }, 'central broker connected')
      wasUp = true
      client.subscribe(STATUS_FILTER, { qos: 1 }, (err) => {
        if (err) log.error({ err: err.message }, 'subscribing to the gateways\' status failed')
      })
    })
    client.on('close', () => {
      if (wasUp && !this.#stopped) log.warn({ broker: maskUrl(this.#o.broker.url) }, 'central broker connection lost; reconnecting')
      wasUp = false
    })
    client.on('error', (err) => log.warn({ err: err.message }, 'central broker error'))
    client.on('message', (topic, payload) => {
      if (topic.endsWith('/status')) this.#o.onStatus(topic, payload)
    })
  }

  publish(topic: string, payload: string): Promise<void> {
    const c = this.#main
    if (!c?.connected) return Promise.reject(new Error('not connected to the central broker'))
    return c.publishAsync(topic, payload, { qos: 1 }).then(() => undefined)
  }

  /** Hold exactly these intake slots: open the new ones, close the others (after the message under way). */
  async setSlots(held: ReadonlySet<number>): Promise<void> {
    for (const [k, s] of this.#slots) if (!held.has(k)) await this.#close(s)
    if (this.#stopped) return
    for (const k of held) if (!this.#slots.has(k)) this.#open(k)
  }

  #open(k: number): void {
    const log = this.#o.log.child({ slot: k })
    const client = mqtt.connect(this.#o.broker.url, this.#options(`${this.#o.shareGroup}-intake-${k}`, false))
    const slot: Slot = { k, client, closing: false, current: null }
    this.#slots.set(k, slot)
    const filter = this.#o.shared ? `$share/${this.#o.shareGroup}/${EVENT_FILTER}` : EVENT_FILTER
    client.on('connect', () => {
      noDelay(client)
      client.subscribe(filter, { qos: 1 }, (err) => {
        if (err) log.error({ err: err.message }, 'subscribing to the shared event intake failed')
      })
    })
    client.on('error', (err) => log.warn({ err: err.message }, 'intake session error'))
    // PUBACK only after the event is stored (mqtt.js sends it when `done` is called).
    client.handleMessage = (packet, done) => {
      if (slot.closing) return // never acknowledged: redelivered to the slot's next holder
      const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload
      const work: Promise<void> = this.#store(slot, packet.topic, payload, log)
        .then((stored) => {
          if (stored) done()
        })
        .finally(() => {
          if (slot.current === work) slot.current = null
        })
      slot.current = work
    }
  }

  async #store(slot: Slot, topic: string, payload: Buffer, log: Logger): Promise<boolean> {
    let delay = 100
    for (;;) {
      try {
        await this.#o.onEvent(topic, payload)
        return true
      } catch (err) {
        if (slot.closing || this.#stopped) return false
        log.error({ err, topic }, 'storing an event failed; trying again (not acknowledged to the broker)')
        await new Promise((r) => setTimeout(r, delay))
        delay = Math.min(5000, delay * 2)
      }
    }
  }

  async #close(s: Slot): Promise<void> {
    s.closing = true
    this.#slots.delete(s.k)
    await Promise.race([s.current ?? Promise.resolve(), new Promise((r) => setTimeout(r, 5000).unref())])
    // Forced: what arrived but was not stored stays unacknowledged in the session, for the next holder.
    await new Promise<void>((resolve) => s.client.end(true, {}, () => resolve()))
  }

  async stop(): Promise<void> {
    this.#stopped = true
    for (const s of [...this.#slots.values()]) await this.#close(s)
    const c = this.#main
    this.#main = null
    if (c) await new Promise<void>((resolve) => c.end(false, {}, () => resolve()))
  }
}
