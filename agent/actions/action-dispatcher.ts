// Delivery of queued actions (PROTOCOL §5): sent when the device is
// connected and listening, again after each reconnect, until an ack removes
// them. Protocol adapters provide channels and say when a device is ready;
// the dispatcher knows no wire protocol.
import type { ActionChannel } from '../adapter.ts'
import type { QueuedAction } from './action-queue.ts'
import type { Gateway } from '../gateway.ts'
import type { Logger } from '../observe/logger.ts'

export type { ActionChannel }

/** A turn for work that yields to admission in a connect storm (trust/admission-gate.ts background()): resolves with its release. */
export type YieldTurn = () => Promise<() => void>

/** No storm to yield to (a gateway without admission, tests of the parts alone). */
export const NO_YIELD: YieldTurn = () => Promise.resolve(() => {})

export class ActionDispatcher {
  readonly #gw: Gateway
  readonly #log: Logger
  readonly #channels: ActionChannel[] = []
  /** actions already reported as delivered (action.delivered is sent once per action) */
  readonly #reported = new Set<string>()
  readonly #turn: YieldTurn
  /** each device's deliveries in progress, chained: the last one's promise */
  readonly #delivering = new Map<string, Promise<void>>()

  /** `turn`: delivery yields to admission in a connect storm (trust/admission-gate.ts background()) */
  constructor(gw: Gateway, log: Logger, opts: { turn?: YieldTurn } = {}) {
    this.#gw = gw
    this.#log = log
    this.#turn = opts.turn ?? NO_YIELD
  }

  addChannel(channel: ActionChannel): void {
    this.#channels.push(channel)
  }

  /** A channel reports the device connected and listening: send everything pending, in order. */
  deviceReady(deviceId: string): void {
    this.#deliver(deviceId, this.#gw.actions.pending(deviceId))
  }

  /** A new action was queued: send it now if the device is listening. */
  queued(action: QueuedAction): void {
    this.#deliver(action.deviceId, [action])
  }

  isReachable(deviceId: string): boolean {
    return this.#channels.some((c) => c.ready(deviceId))
  }

  #deliver(deviceId: string, actions: readonly QueuedAction[]): void {
    if (actions.length === 0 || !this.isReachable(deviceId)) return
    // A device's deliveries run one after another, in the order they were asked for, whatever order turns come in.
    const list = [...actions]
    const next = (this.#delivering.get(deviceId) ?? Promise.resolve())
      .then(async () => {
        // In a connect storm delivery waits until the connects waiting are checked (or it has waited admissionMaxWaitMs).
        // The turn is given back at once: a device that stops reading holds up its own sends (aedes waits for its
        // socket to drain), never a turn connects need.
        ;(await this.#turn())()
        await this.#send(deviceId, list)
      })
      .catch((err: unknown) => this.#log.error({ err, deviceId }, 'delivering actions failed; they stay queued'))
      .finally(() => {
        if (this.#delivering.get(deviceId) === next) this.#delivering.delete(deviceId)
      })
    this.#delivering.set(deviceId, next)
  }

  async #send(deviceId: string, actions: readonly QueuedAction[]): Promise<void> {
    // the device may have gone while this waited its turn: then it gets them when it is back
    const channel = this.#channels.find((c) => c.ready(deviceId))
    if (!channel) return
    for (const a of actions) {
      // taken back, acked or expired while this waited: never sent again
      if (this.#gw.actions.find(deviceId, a.id) === undefined) continue
      // its signature is still being made (and it is not stored yet): it and
      // what follows it are sent once their queueing is durable (queued(), in
      // queueing order), never one behind another out of order
      if (a.jws === '') break
      try {
        await channel.send(a)
      } catch (err) {
        this.#log.debug({ err, deviceId, actionId: a.id }, 'action not delivered; it stays queued')
        return
      }
      if (this.#reported.has(a.id)) continue
      this.#reported.add(a.id)
      const data = { deviceId, actionId: a.id, act: a.act, protocol: channel.protocol }
      // audited too: the device's history (device history ID) shows when it got it
      await this.#gw.commit(
        { audit: [{ actor: 'gateway', action: 'action.delivered', subject: deviceId, data: { actionId: a.id, act: a.act, protocol: channel.protocol } }], events: [{ type: 'action.delivered', data }] },
        { sync: false },
      )
    }
  }

  /** Forget delivery reports of actions that are gone (acked, superseded, expired). */
  forget(actionId: string): void {
    this.#reported.delete(actionId)
  }
}
