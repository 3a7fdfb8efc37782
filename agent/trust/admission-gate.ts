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
//
// Acks and action delivery yield to admission (`background()`): they take a
// turn from the same slots, but only when no connect waits, so a storm's
// connects are checked first and the acks and wipes they bring follow. Not
// for ever: once the background turn at the head has waited `maxWaitMs`,
// background and connects take every other turn, so a flood of connects
// (forged ones included) slows a device's ack, never locks it out, and a
// pile of background work never starves the connects either.

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
  /** connects, FIFO */
  readonly #connects = new Fifo()
  /** background work (acks, action delivery), FIFO; served when no connect waits */
  readonly #background = new Fifo()
  #running = 0
  /** the last turn went to background work that had waited maxWaitMs while connects waited: the next goes to a connect */
  #agedLast = false
  /** connects let through, refused as busy, and the most that waited at once; background turns given, and those given while connects waited, for having waited maxWaitMs (metrics, tests) */
  readonly stats = { entered: 0, refused: 0, peakWaiting: 0, background: 0, backgroundAged: 0 }

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
    return this.#connects.size
  }

  /** Background work (acks, action delivery) waiting for the connects to be served. */
  get backgroundWaiting(): number {
    return this.#background.size
  }

  /** How long the connect at the head of the queue has waited, milliseconds (0: none waits). */
  get oldestWaitMs(): number {
    const w = this.#connects.peek()
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
      this.#connects.push({ since: this.#now(), resolve })
      if (this.waiting > this.stats.peakWaiting) this.stats.peakWaiting = this.waiting
    })
  }

  /**
   * A turn for work that yields to admission (verifying an ack, delivering
   * actions): resolves with its release (call it once, when the work's
   * costly part is done) when a slot is free and no connect waits, or,
   * once it has waited maxWaitMs, every other turn. Nothing is refused:
   * with MAX_WAITING turns waiting already, it goes at once, outside the
   * bound (callers keep their own order: the dispatcher sends a device's
   * actions one delivery after another).
   */
  background(): Promise<() => void> {
    if (this.#running < this.#concurrency && this.waiting === 0 && this.backgroundWaiting === 0) {
      this.#running++
      this.stats.background++
      return Promise.resolve(this.#release())
    }
    if (this.backgroundWaiting >= MAX_WAITING) return Promise.resolve(() => {})
    return new Promise((resolve) => this.#background.push({ since: this.#now(), resolve }))
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
    while (this.#running < this.#concurrency) {
      // connects first; background when none waits, or every other turn once it has waited maxWaitMs
      const bg = this.#background.peek()
      let w: Waiter | undefined
      if (this.waiting === 0) w = this.#background.shift()
      else if (bg !== undefined && !this.#agedLast && this.#now() - bg.since >= this.#maxWaitMs) {
        w = this.#background.shift()
        this.#agedLast = true
        this.stats.backgroundAged++
      } else {
        w = this.#connects.shift()
        this.#agedLast = false
      }
      if (!w) return
      this.#running++
      if (w === bg) this.stats.background++
      else this.stats.entered++
      w.resolve(this.#release())
    }
  }
}

/** A FIFO of waiters: taken from #head on; the array is compacted when half of it is spent. */
class Fifo {
  #items: (Waiter | undefined)[] = []
  #head = 0

  get size(): number {
    return this.#items.length - this.#head
  }

  push(w: Waiter): void {
    this.#items.push(w)
  }

  peek(): Waiter | undefined {
    return this.#items[this.#head]
  }

  shift(): Waiter | undefined {
    const w = this.#items[this.#head]
    if (!w) return undefined
    this.#items[this.#head++] = undefined
    if (this.size === 0) {
      this.#items = []
      this.#head = 0
    } else if (this.#head >= 1024 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head)
      this.#head = 0
    }
    return w
  }
}
