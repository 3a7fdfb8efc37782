// Figures for docs/reliability.md. A reliability test calls recordFigure()
// with what it did (its size) and what came out; `npm run reliability` runs
// those tests with EDGEWARDEN_FIGURES naming a file and builds the table from
// the lines written there. Under plain `npm test` the figure is only a test
// diagnostic. EDGEWARDEN_RELIABILITY_SCALE (default 1) lets the script run
// the same tests bigger than the suite does.
import { appendFileSync } from 'node:fs'
import type { TestContext } from 'node:test'

export interface Figure {
  /** the area of docs/reliability.md: fuzzing, crash consistency, uplink chaos, brute force, secrets */
  area: string
  /** what was done, in a few words */
  test: string
  /** how much of it: "40,000 packets", "25 kills" */
  size: string
  /** what came out: "no crash, devices still admitted, RSS +3.1 MiB" */
  result: string
  /** true where the checks of the test held */
  pass: boolean
}

/** Scale factor for sizes: 1 in the suite, larger when the reliability script asks. */
export const RELIABILITY_SCALE = Math.max(1, Number(process.env.EDGEWARDEN_RELIABILITY_SCALE ?? '1') || 1)

export function scaled(n: number): number {
  return Math.round(n * RELIABILITY_SCALE)
}

export function recordFigure(t: TestContext | null, figure: Figure): void {
  t?.diagnostic(`${figure.area}: ${figure.test} (${figure.size}): ${figure.result}`)
  const file = process.env.EDGEWARDEN_FIGURES
  if (file) appendFileSync(file, JSON.stringify({ ...figure, at: new Date().toISOString() }) + '\n')
}
