// Bounded waits for tests: a promise within a deadline, or a condition
// that has no event of its own to await, re-checked until a deadline.
// Either fails with what was awaited, never hangs a run.

/** `p`, or a rejection naming `what` once `boundMs` have passed. */
export function within<T>(what: string, p: Promise<T>, boundMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${boundMs} ms`)), boundMs)
  })
  return Promise.race([p, late]).finally(() => clearTimeout(timer))
}

/** Resolves (with the ms it took) once `check` holds; re-checked every `everyMs`, rejected after `boundMs`. */
export async function until(what: string, check: () => boolean | Promise<boolean>, boundMs: number, everyMs = 20): Promise<number> {
  const t0 = performance.now()
  while (!(await check())) {
    if (performance.now() - t0 > boundMs) throw new Error(`${what}: not within ${boundMs} ms`)
    await new Promise((r) => setTimeout(r, everyMs))
  }
  return performance.now() - t0
}

/** Whether `p` has settled (either way) yet, to read at a moment an event defines. */
export function settledFlag(p: Promise<unknown>): { readonly settled: boolean } {
  const s = { settled: false }
  p.then(
    () => void (s.settled = true),
    () => void (s.settled = true),
  )
  return s
}
