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

/**
 * The system clock, guarded against jumps (PROTOCOL §5: the gateway is the
 * time source of devices without one, and the judge of every expiry). Wall
 * time is compared with the monotonic clock at each check (the maintenance
 * pass): a forward jump of more than `maxJumpMs` that the monotonic clock
 * did not see is not believed (an RTC that lost its battery, a bad NTP
 * answer): the gateway keeps counting from the time it trusted, so a whole
 * fleet's certificates and tokens do not expire at once. A signed command
 * whose `iat` agrees with the wall clock (the control plane vouches for it)
 * ends the doubt. A backward jump is believed (nothing expires by it) and
 * logged.
 */
export class GuardedClock implements Clock {
  readonly #wall: () => number
  readonly #mono: () => number
  readonly #maxJumpMs: number
  #lastWall: number
  #lastMono: number
  /** ms subtracted from wall time while a jump is not believed */
  #offsetMs = 0
  /** listeners told of each jump: its size, whether it is believed */
  readonly #onJump = new Set<(j: { ms: number; believed: boolean }) => void>()

  constructor(o: { wall?: () => number; mono?: () => number; maxJumpMs?: number } = {}) {
    this.#wall = o.wall ?? (() => Date.now())
    this.#mono = o.mono ?? (() => performance.now())
    this.#maxJumpMs = o.maxJumpMs ?? 3600_000
    this.#lastWall = this.#wall()
    this.#lastMono = this.#mono()
  }

  now(): number {
    return this.#wall() - this.#offsetMs
  }

  /** The wall clock now, believed or not. */
  wallNow(): number {
    return this.#wall()
  }

  /** Whether a forward jump is being held back (and by how much). */
  get heldBackMs(): number {
    return this.#offsetMs
  }

  onJump(fn: (j: { ms: number; believed: boolean }) => void): () => void {
    this.#onJump.add(fn)
    return () => this.#onJump.delete(fn)
  }

  /** Compare wall and monotonic time since the last check. */
  check(): void {
    const wall = this.#wall()
    const mono = this.#mono()
    const drift = wall - this.#lastWall - (mono - this.#lastMono)
    this.#lastWall = wall
    this.#lastMono = mono
    if (Math.abs(drift) < 5000) return
    const believed = drift < 0 || drift <= this.#maxJumpMs
    if (!believed) this.#offsetMs += drift
    else if (drift < 0 && this.#offsetMs > 0) this.#offsetMs = Math.max(0, this.#offsetMs + drift)
    for (const l of this.#onJump) l({ ms: drift, believed })
  }

  /** A trusted party's time (a verified command's iat, seconds) agrees with the wall clock within `skewS`: believe the wall clock again. */
  vouch(iatS: number, skewS: number): boolean {
    if (this.#offsetMs === 0) return false
    if (Math.abs(this.#wall() / 1000 - iatS) > skewS) return false
    this.#offsetMs = 0
    return true
  }
}
