// Progress for long operations, on standard error and only on a terminal:
// a script or a log gets the result alone, never a stream of progress lines.
// A bar when the total is known, a running count when it is not (null), and
// a waiting line with the seconds gone for waits. Redrawn at most every
// 100 ms, so ticking per item costs nothing on large runs.

type Stream = Pick<NodeJS.WriteStream, 'write'> & { isTTY?: boolean }

const REDRAW_MS = 100

export class ProgressBar {
  readonly #total: number | null
  readonly #label: string
  readonly #stream: Stream
  readonly #tty: boolean
  #n = 0
  #drawnAt = -Infinity
  #drawn = false

  constructor(total: number | null, label: string, stream: Stream = process.stderr) {
    this.#total = total
    this.#label = label
    this.#stream = stream
    this.#tty = stream.isTTY === true
  }

  get done(): boolean {
    return this.#total !== null && this.#n >= this.#total
  }

  get count(): number {
    return this.#n
  }

  tick(n = 1): void {
    this.#n = this.#total === null ? this.#n + n : Math.min(this.#total, this.#n + n)
    const now = performance.now()
    if (this.#tty && (this.done || now - this.#drawnAt >= REDRAW_MS)) {
      this.#drawnAt = now
      this.#render()
    }
  }

  #render(): void {
    this.#drawn = true
    if (this.#total === null) {
      this.#stream.write(`\r${this.#label}: ${this.#n}`)
      return
    }
    const frac = this.#total ? this.#n / this.#total : 1
    const width = 30
    const full = Math.round(frac * width)
    this.#stream.write(`\r${this.#label} [${'#'.repeat(full)}${'-'.repeat(width - full)}] ${this.#n}/${this.#total}`)
  }

  /** The last state drawn, and the line ended (nothing when nothing was drawn). */
  finish(): void {
    if (!this.#tty || !this.#drawn) return
    this.#render()
    this.#stream.write('\n')
  }
}

/**
 * `label… 3 s` redrawn every second on a terminal while a wait lasts.
 * clear() before printing anything else (the line comes back at the next
 * second); stop() when the wait is over.
 */
export function waiting(label: string, stream: Stream = process.stderr): { clear(): void; stop(): void } {
  if (stream.isTTY !== true) return { clear() {}, stop() {} }
  const t0 = performance.now()
  let shown = false
  const draw = (): void => {
    shown = true
    stream.write(`\r${label}… ${Math.floor((performance.now() - t0) / 1000)} s`)
  }
  const clear = (): void => {
    if (shown) stream.write(`\r${' '.repeat(label.length + 12)}\r`)
    shown = false
  }
  draw()
  const timer = setInterval(draw, 1000)
  timer.unref()
  return {
    clear,
    stop() {
      clearInterval(timer)
      clear()
    },
  }
}
