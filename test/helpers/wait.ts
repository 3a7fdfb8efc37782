// Bounded waits for tests: a promise within a deadline, or a condition
// that has no event of its own to await, re-checked until a deadline.
// Either fails with what was awaited, never hangs a run.
import type { ChildProcess } from 'node:child_process'

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

/** The next `event` on `emitter` whose arguments pass `pred`; rejects after `ms`. */
export function nextEvent<A extends unknown[]>(emitter: { on(e: string, f: (...a: unknown[]) => void): unknown; off(e: string, f: (...a: unknown[]) => void): unknown }, event: string, pred: (...args: A) => boolean = () => true, ms = 20_000): Promise<A> {
  return new Promise((resolve, reject) => {
    const on = (...args: unknown[]): void => {
      if (!pred(...(args as A))) return
      clearTimeout(timer)
      emitter.off(event, on)
      resolve(args as A)
    }
    const timer = setTimeout(() => {
      emitter.off(event, on)
      reject(new Error(`no '${event}' within ${ms} ms`))
    }, ms)
    emitter.on(event, on)
  })
}

/** Resolves when the gateway's device `id` reaches state `to`; rejects after `ms`. */
export function stateReached(gateway: { onDeviceChange(l: (c: { record: { spec: { id: string } }; to: string }) => void): () => void }, id: string, to: string, ms = 15_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off()
      reject(new Error(`${id} did not reach ${to} within ${ms} ms`))
    }, ms)
    const off = gateway.onDeviceChange((c) => {
      if (c.record.spec.id !== id || c.to !== to) return
      clearTimeout(timer)
      off()
      resolve()
    })
  })
}

/**
 * Resolves once `output()` (what the caller gathers from `proc`'s stderr,
 * its listener added before this call) matches `ready`; rejects when `proc`
 * exits first or after `ms`. `what` names the process in the rejection.
 */
export function stderrReady(proc: ChildProcess, ready: RegExp, output: () => string, what: string, ms: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not start within ${ms / 1000} s: ${output()}`)), ms)
    const onData = (): void => {
      if (ready.test(output())) {
        clearTimeout(timer)
        proc.stderr!.off('data', onData)
        resolve()
      }
    }
    proc.stderr!.on('data', onData)
    proc.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`${what} exited (${code}): ${output()}`))
    })
  })
}
