// A progress bar on a terminal; a line every 10% elsewhere, so logs of
// scripted runs stay readable.
export class ProgressBar {
  readonly #total: number
  readonly #label: string
  readonly #tty: boolean
  #n = 0
  #lastDecile = -1

  constructor(total: number, label: string, stream: NodeJS.WriteStream = process.stderr) {
    this.#total = total
    this.#label = label
    this.#tty = stream.isTTY === true
  }

  get done(): boolean {
    return this.#n >= this.#total
  }

  tick(n = 1): void {
    this.#n = Math.min(this.#total, this.#n + n)
    this.#render()
  }

  #render(): void {
    const frac = this.#total ? this.#n / this.#total : 1
    if (this.#tty) {
      const width = 30
      const full = Math.round(frac * width)
      process.stderr.write(`\r${this.#label} [${'#'.repeat(full)}${'-'.repeat(width - full)}] ${this.#n}/${this.#total}`)
    } else {
      const decile = Math.floor(frac * 10)
      if (decile !== this.#lastDecile) {
        this.#lastDecile = decile
        process.stderr.write(`${this.#label}: ${this.#n}/${this.#total}\n`)
      }
    }
  }

  finish(): void {
    if (this.#tty) process.stderr.write('\n')
  }
}
