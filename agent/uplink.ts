// The link to the control plane, transport-free: commands in (handed to the
// CommandProcessor, acknowledged to the broker only once their fate is
// durable), events out (from the durable outbox, in seq order, deleted only
// after the broker's PUBACK). The MQTT transport lives in protocols/mqtt.
import type { CommandProcessor } from './commands.ts'
import type { Gateway } from './gateway.ts'
import type { Logger } from './logger.ts'
import type { StoredEvent } from './outbox.ts'

export interface UplinkHandlers {
  /** A command arrived; the transport acknowledges it (PUBACK) when this resolves. */
  onCommand(payload: Uint8Array): Promise<void>
  onUp(): void
  onDown(): void
}

export interface UplinkTransport {
  readonly connected: boolean
  start(handlers: UplinkHandlers): void
  /** Publish one event, QoS 1; resolves on PUBACK (the transport resends across reconnects until then). */
  publishEvent(payload: string): Promise<void>
  stop(): Promise<void>
}

/** Events published but not yet acknowledged, at most. */
const WINDOW = 256
const BATCH = 512

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

  start(): void {
    this.#unsubscribe = this.#gw.onEventsStored(() => this.#pump())
    this.#transport.start({
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
            const batch = await this.#gw.outbox.pending(this.#gw.store, this.#sentUpTo, Math.min(BATCH, WINDOW - this.#inflight))
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
    if (this.#flushTimer) clearImmediate(this.#flushTimer as unknown as NodeJS.Immediate)
    await this.#flushAcks()
    await this.#transport.stop()
  }
}
