// The link to the control plane, transport-free: commands in (handed to the
// CommandProcessor, acknowledged to the broker only once their fate is
// durable), events out (from the durable outbox, in seq order, deleted only
// after the broker's PUBACK). The MQTT transport lives in protocols/mqtt.
import type { CommandProcessor } from '../commands/processor.ts'
import type { Gateway } from '../gateway.ts'
import type { Logger } from '../observe/logger.ts'
import type { StoredEvent } from './outbox.ts'

export interface UplinkHandlers {
  /** A command arrived; the transport acknowledges it (PUBACK) when this resolves. */
  onCommand(payload: Uint8Array): Promise<void>
  onUp(): void
  onDown(): void
  /** What `…/status` says beside `online` and `version` (PROTOCOL §3: last event seq, audit head). */
  status(): Record<string, unknown>
}

export interface UplinkTransport {
  readonly connected: boolean
  start(handlers: UplinkHandlers): void
  /** Publish one event, QoS 1; resolves on PUBACK (the transport resends across reconnects until then). */
  publishEvent(payload: string): Promise<void>
  /** Publish the retained status again (handlers.status() changed). */
  publishStatus(): void
  stop(): Promise<void>
}

/** Events published but not yet acknowledged, at most. */
const WINDOW = 256
const BATCH = 512
/** The retained status is refreshed at most this often while seq or the audit head move. */
const STATUS_EVERY_MS = 1000

export class Uplink {
  readonly #gw: Gateway
  readonly #transport: UplinkTransport
  readonly #commands: CommandProcessor
  readonly #log: Logger
  /** highest seq handed to the transport in this process */
  #sentUpTo: number
  #inflight = 0
  /** bumped on every connection change; callbacks of an older connection are ignored */
  #generation = 0
  #pumping = false
  #again = false
  #stopped = false
  #acked: number[] = []
  #flushTimer: NodeJS.Timeout | null = null
  #unsubscribe: (() => void) | null = null
  #unsubscribeStatus: (() => void) | null = null
  #statusTimer: NodeJS.Timeout | null = null
  /** the status last handed to the transport */
  #statusSent = ''
  readonly #drainWaiters: (() => void)[] = []

  constructor(gw: Gateway, transport: UplinkTransport, commands: CommandProcessor, log: Logger) {
    this.#gw = gw
    this.#transport = transport
    this.#commands = commands
    this.#log = log
    this.#sentUpTo = 0
  }

  get connected(): boolean {
    return this.#transport.connected
  }

  /** PROTOCOL §3 status: the last event seq and the audit head, as far as on disk. */
  #status(): Record<string, unknown> {
    const h = this.#gw.durableHead
    const status = { seq: h.seq, audit: { seq: h.audit.seq, hash: h.audit.hash } }
    this.#statusSent = JSON.stringify(status)
    return status
  }

  #scheduleStatus(): void {
    if (this.#statusTimer || this.#stopped) return
    this.#statusTimer = setTimeout(() => {
      this.#statusTimer = null
      const h = this.#gw.durableHead
      if (!this.#transport.connected || JSON.stringify({ seq: h.seq, audit: h.audit }) === this.#statusSent) return
      this.#transport.publishStatus()
    }, STATUS_EVERY_MS)
    this.#statusTimer.unref()
  }

  start(): void {
    this.#unsubscribe = this.#gw.onEventsStored(() => this.#pump())
    this.#unsubscribeStatus = this.#gw.onCommitted(() => this.#scheduleStatus())
    this.#transport.start({
      status: () => this.#status(),
      onCommand: (payload) => this.#commands.handle(payload),
      onUp: () => {
        this.#log.info('uplink connected')
        // Everything not yet acknowledged goes out again, oldest first; the
        // control plane de-duplicates by seq.
        void this.#flushAcks().then(() => {
          this.#generation++
          this.#inflight = 0
          this.#sentUpTo = 0
          this.#pump()
        })
      },
      onDown: () => {
        this.#generation++
        this.#inflight = 0
        this.#log.warn({ depth: this.#gw.outbox.depth }, 'uplink down; events stay in the outbox')
      },
    })
  }

  /** Publish stored events in seq order, at most WINDOW unacknowledged at once. */
  #pump(): void {
    if (this.#stopped || !this.#transport.connected) return
    if (this.#pumping) {
      // Events stored while a read was under way: read once more after it.
      this.#again = true
      return
    }
    this.#pumping = true
    void (async () => {
      try {
        do {
          this.#again = false
          while (!this.#stopped && this.#transport.connected && this.#inflight < WINDOW) {
            const batch = await this.#gw.outbox.pending(this.#gw.store, this.#sentUpTo, Math.min(BATCH, WINDOW - this.#inflight), this.#gw.durableHead.seq)
            if (batch.length === 0) break
            for (const e of batch) this.#send(e)
          }
        } while (this.#again && !this.#stopped)
      } catch (err) {
        this.#log.error({ err }, 'reading the outbox failed')
      } finally {
        this.#pumping = false
      }
    })()
  }

  #send(e: StoredEvent): void {
    const gen = this.#generation
    this.#sentUpTo = e.seq
    this.#inflight++
    this.#transport.publishEvent(e.jws).then(
      () => {
        if (gen !== this.#generation) return
        this.#inflight--
        this.#acked.push(e.seq)
        this.#scheduleFlush()
        this.#pump()
      },
      (err: unknown) => {
        // The connection went away before the PUBACK: the event stays in the
        // outbox and goes out again on the next connection.
        if (gen !== this.#generation) return
        this.#inflight--
        this.#log.debug({ err, seq: e.seq }, 'event not acknowledged')
      },
    )
  }

  /** Acknowledged events are deleted in batches (not synced: losing a delete only means sending an event twice). */
  #scheduleFlush(): void {
    if (this.#flushTimer) return
    this.#flushTimer = setImmediate(() => {
      this.#flushTimer = null
      void this.#flushAcks()
    }) as unknown as NodeJS.Timeout
  }

  async #flushAcks(): Promise<void> {
    const seqs = this.#acked
    this.#acked = []
    const ops = seqs.map((s) => this.#gw.outbox.acknowledged(s)).filter((op) => op !== null)
    if (ops.length) {
      await this.#gw.store.write(ops, { sync: false }).catch((err: unknown) => {
        this.#log.error({ err }, 'removing acknowledged events failed')
      })
    }
    if (this.#gw.outbox.depth === 0) for (const w of this.#drainWaiters.splice(0)) w()
  }

  /** Resolves once the outbox is empty: every event stored so far was acknowledged by the broker. */
  drained(): Promise<void> {
    if (this.#gw.outbox.depth === 0) return Promise.resolve()
    return new Promise((resolve) => this.#drainWaiters.push(resolve))
  }

  async stop(): Promise<void> {
    this.#stopped = true
    this.#unsubscribe?.()
    this.#unsubscribeStatus?.()
    if (this.#statusTimer) clearTimeout(this.#statusTimer)
    if (this.#flushTimer) clearImmediate(this.#flushTimer as unknown as NodeJS.Immediate)
    await this.#flushAcks()
    await this.#transport.stop()
  }
}
