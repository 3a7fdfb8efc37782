// Admission under a storm (a site back after a power cut: every device at
// once). The costly part of a connect (the signature check, a password
// derivation, the durable jti) runs for at most `concurrency` connects at a
// time, the rest wait their turn in arrival order (FIFO), so the first to
// arrive are answered first instead of every connect waiting on one huge
// batch. A connect waiting here is not timed out by the broker: its
// CONNECT has arrived, and the connect timeout covers only that.
//
// The early refusal is cheap and is only for connects that could not be
// served in time anyway: when the connect at the head of the queue has
// waited `maxWaitMs` or more (the queue is not draining fast enough), a new
// arrival is refused at once, before any parsing or crypto, so the device
// backs off and retries instead of timing out at its end (its connect
// timeout is usually 30 s) after costing us a check nobody reads. The
// queue therefore holds at most about what is served in `maxWaitMs`, and
// never more than MAX_WAITING. A connect whose client went away while it
// waited costs nothing when its turn comes (`gone`).

/** Waiting connects at most, whatever the wait: a bound on memory under a flood. */
export const MAX_WAITING = 65_536

export interface GateOptions {
  /** connects judged at once (signature, password, jti write) */
  concurrency: number
  /** a new connect is refused once the oldest waiting one has waited this long, milliseconds */
  maxWaitMs: number
  /** monotonic milliseconds (tests inject one) */
  now?: () => number
}

interface Waiter {
  since: number
  resolve: (release: () => void) => void
}

export class AdmissionGate {
  readonly #concurrency: number
  readonly #maxWaitMs: number
  readonly #now: () => number
  /** FIFO: waiting from #head on; the array is compacted when half of it is spent */
  #waiting: Waiter[] = []
  #head = 0
  #running = 0
  /** connects let through, refused as busy, and the most that waited at once (metrics, tests) */
  readonly stats = { entered: 0, refused: 0, peakWaiting: 0 }

  constructor(o: GateOptions) {
    if (!(o.concurrency >= 1)) throw new RangeError('admission concurrency must be at least 1')
    this.#concurrency = o.concurrency
    this.#maxWaitMs = o.maxWaitMs
    this.#now = o.now ?? (() => performance.now())
  }

  /** Connects being judged now. */
  get running(): number {
    return this.#running
  }

  /** Connects waiting for their turn now. */
  get waiting(): number {
    return this.#waiting.length - this.#head
  }

  /** How long the connect at the head of the queue has waited, milliseconds (0: none waits). */
  get oldestWaitMs(): number {
    const w = this.#waiting[this.#head]
    return w ? this.#now() - w.since : 0
  }

  /**
   * A turn to judge one connect: resolves with its release (call it once,
   * when the connect is decided) when a slot is free, in arrival order; or
   * null at once when the connect must be refused as busy.
   */
  enter(): Promise<() => void> | null {
    if (this.#running < this.#concurrency && this.waiting === 0) {
      this.#running++
      this.stats.entered++
      return Promise.resolve(this.#release())
    }
    if (this.waiting >= MAX_WAITING || (this.waiting > 0 && this.oldestWaitMs >= this.#maxWaitMs)) {
      this.stats.refused++
      return null
    }
    return new Promise((resolve) => {
      this.#waiting.push({ since: this.#now(), resolve })
      if (this.waiting > this.stats.peakWaiting) this.stats.peakWaiting = this.waiting
    })
  }

  #release(): () => void {
    let done = false
    return () => {
      if (done) return
      done = true
      this.#running--
      this.#next()
    }
  }

  #next(): void {
    while (this.#running < this.#concurrency && this.waiting > 0) {
      const w = this.#waiting[this.#head]!
      this.#waiting[this.#head++] = undefined as unknown as Waiter
      if (this.waiting === 0) {
        this.#waiting = []
        this.#head = 0
      } else if (this.#head >= 1024 && this.#head * 2 >= this.#waiting.length) {
        this.#waiting = this.#waiting.slice(this.#head)
        this.#head = 0
      }
      this.#running++
      this.stats.entered++
      w.resolve(this.#release())
    }
  }
}
