// PROTOCOL §3/§4 `alert.residual-use`: a revoked, quarantined or retired
// identity tried to get in, or a retiring one stepped outside its wipe-only
// rights. Every attempt is a warn log line; events are rate-limited to one
// per device per `residualAlertIntervalS`, the attempts in between folded into
// the next one's `count`. Protocol-free: every adapter reports here.
import type { Protocol } from '../adapter.ts'
import type { Gateway } from '../gateway.ts'
import type { Logger } from '../observe/logger.ts'

export interface ResidualAttempt {
  deviceId: string
  protocol: Protocol
  /** the peer's address, where the protocol knows it */
  remote?: string
  detail: string
}

interface DeviceWindow {
  /** seconds: when the last alert of this device was raised */
  lastAlertS: number
  /** attempts since that alert, not yet in any event */
  folded: number
  last: ResidualAttempt
  timer: NodeJS.Timeout | null
}

export class ResidualUseMonitor {
  readonly #gw: Gateway
  readonly #log: Logger
  readonly #windows = new Map<string, DeviceWindow>()
  readonly #totals = new Map<string, number>()
  readonly #inflight = new Set<Promise<unknown>>()
  #stopped = false

  constructor(gw: Gateway, log: Logger) {
    this.#gw = gw
    this.#log = log
  }

  get #intervalS(): number {
    return this.#gw.config.residualAlertIntervalS
  }

  /** Report one attempt. Never throws; the event (if any) is committed in the background. */
  record(a: ResidualAttempt): void {
    const total = (this.#totals.get(a.deviceId) ?? 0) + 1
    this.#totals.set(a.deviceId, total)
    this.#log.warn({ event: 'residual-use', deviceId: a.deviceId, protocol: a.protocol, remote: a.remote, detail: a.detail, total }, 'residual use of a cut identity')
    if (this.#stopped) return
    const now = this.#gw.nowS()
    const w = this.#windows.get(a.deviceId)
    if (!w || now >= w.lastAlertS + this.#intervalS) {
      const count = (w?.folded ?? 0) + 1
      if (w?.timer) clearTimeout(w.timer)
      this.#windows.set(a.deviceId, { lastAlertS: now, folded: 0, last: a, timer: null })
      this.#raise(a, count)
      return
    }
    w.folded++
    w.last = a
    // Folded attempts are reported when the window closes even if no attempt follows.
    if (!w.timer) {
      const ms = Math.max(0, (w.lastAlertS + this.#intervalS - now) * 1000)
      w.timer = setTimeout(() => {
        w.timer = null
        this.flushDue()
      }, ms)
      w.timer.unref()
    }
  }

  /** Raise the folded alerts of every device whose window has closed (the timers call this; tests with a manual clock too). */
  flushDue(): void {
    if (this.#stopped) return
    const now = this.#gw.nowS()
    for (const [id, w] of this.#windows) {
      if (w.folded === 0 || now < w.lastAlertS + this.#intervalS) continue
      const count = w.folded
      if (w.timer) clearTimeout(w.timer)
      this.#windows.set(id, { lastAlertS: now, folded: 0, last: w.last, timer: null })
      this.#raise(w.last, count)
    }
  }

  /** Attempts seen for a device since the agent started (retirement evidence's `residualUse`). */
  attempts(deviceId: string): number {
    return this.#totals.get(deviceId) ?? 0
  }

  #raise(a: ResidualAttempt, count: number): void {
    const data: Record<string, unknown> = { deviceId: a.deviceId, protocol: a.protocol, detail: a.detail, count }
    if (a.remote !== undefined) data.remote = a.remote
    const p = this.#gw
      .commit({ audit: [{ actor: 'gateway', action: 'alert.residual-use', subject: a.deviceId, data }], events: [{ type: 'alert.residual-use', data }] })
      .catch((err: unknown) => this.#log.error({ err, deviceId: a.deviceId }, 'cannot record alert.residual-use'))
      .finally(() => this.#inflight.delete(p))
    this.#inflight.add(p)
  }

  /** Resolves once every alert raised so far is committed. */
  async idle(): Promise<void> {
    while (this.#inflight.size) await Promise.all([...this.#inflight])
  }

  /** Stop the window timers and wait for alerts in flight. Folded attempts not yet reported stay in the log lines only. */
  async stop(): Promise<void> {
    this.#stopped = true
    for (const w of this.#windows.values()) if (w.timer) clearTimeout(w.timer)
    await this.idle()
  }
}
