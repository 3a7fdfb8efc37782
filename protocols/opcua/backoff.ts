// Probing unreachable devices: exponential backoff with jitter, timers and
// randomness injected so tests control both.
export interface RetryPolicy {
  /** first delay after a failure, ms */
  initialMs: number
  /** the delay never grows past this, ms */
  maxMs: number
  factor: number
  /** fraction of the delay that is random: 0.5 waits between 50 % and 100 % of it */
  jitter: number
}

export const DEFAULT_RETRY: RetryPolicy = { initialMs: 1000, maxMs: 60_000, factor: 2, jitter: 0.5 }

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(handle: unknown): void
}

export const realTimers: Timers = {
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms)
    t.unref()
    return t
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
}

/** Delay before retry number `attempt` (0 for the first retry). `random` returns [0, 1). */
export function backoffDelay(attempt: number, policy: RetryPolicy, random: () => number): number {
  const base = Math.min(policy.maxMs, policy.initialMs * policy.factor ** Math.max(0, Math.min(attempt, 52)))
  const jitter = Math.min(1, Math.max(0, policy.jitter))
  return Math.round(base * (1 - jitter * random()))
}
