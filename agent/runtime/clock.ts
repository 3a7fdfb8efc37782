// Time is injected so expiry, grace and deadlines are tested across months
// without sleeping (SPIRE's controllable test clock).
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number
}

export const systemClock: Clock = { now: () => Date.now() }

export class ManualClock implements Clock {
  #ms: number
  constructor(startMs = Date.UTC(2026, 0, 1)) {
    this.#ms = startMs
  }
  now(): number {
    return this.#ms
  }
  advance(ms: number): void {
    this.#ms += ms
  }
  set(ms: number): void {
    this.#ms = ms
  }
}

export const nowSeconds = (clock: Clock): number => Math.floor(clock.now() / 1000)
