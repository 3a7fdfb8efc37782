// Time is injected: expiry, re-send delays, gap grace and rollback
// confirmation are tested without sleeping.
export interface Clock {
  nowMs(): number
}

export const systemClock: Clock = { nowMs: () => Date.now() }

export const nowS = (clock: Clock): number => Math.floor(clock.nowMs() / 1000)

/** A clock the test moves by hand. */
export class ManualClock implements Clock {
  #t: number
  constructor(startMs = Date.UTC(2026, 0, 1)) {
    this.#t = startMs
  }
  nowMs(): number {
    return this.#t
  }
  advance(ms: number): void {
    this.#t += ms
  }
}
