// Timers and retry backoff for every part of the agent: one Timers interface
// (injected, so tests control time), and one backoff function with named
// policies. Exponential growth capped at maxMs; jitter spreads the delays
// of many devices (or gateways) so they do not retry in step:
// - `below`: drawn from [d·(1 − jitter), d], never past the cap;
// - `around`: drawn from [d·(1 − jitter), d·(1 + jitter)].

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(handle: unknown): void
  /** a monotonic clock for elapsed time, ms (performance.now() where not given) */
  now?(): number
}

/** Node's timers, unref'd: a pending retry never keeps the process alive. */
export const realTimers: Timers = {
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms)
    t.unref()
    return t
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
  now: () => performance.now(),
}

/** Elapsed-time clock of a Timers. */
export const monotonic = (t: Timers): (() => number) => (t.now ? () => t.now!() : () => performance.now())

export interface BackoffPolicy {
  /** first delay, ms */
  initialMs: number
  /** the delay never grows past this (before `around` jitter), ms */
  maxMs: number
  factor: number
  /** 0..1: the random fraction of each delay */
  jitter: number
  /** how jitter is applied; `below` where not named */
  spread?: 'below' | 'around'
}

/** The delay before attempt `attempt` (0 for the first). `random` returns [0, 1). Pure, for tests. */
export function backoffDelay(attempt: number, policy: BackoffPolicy, random: () => number): number {
  const base = Math.min(policy.maxMs, policy.initialMs * policy.factor ** Math.max(0, Math.min(attempt, 52)))
  const jitter = Math.min(1, Math.max(0, policy.jitter))
  if (policy.spread === 'around') return Math.max(0, Math.round(base * (1 - jitter + 2 * jitter * random())))
  return Math.round(base * (1 - jitter * random()))
}

/** The named policies: who retries what, how. */
export const BACKOFF = {
  /** reconnecting to the central broker (config uplinkBackoffMinMs/MaxMs set the bounds): many gateways must not return in step */
  uplinkReconnect: (minMs: number, maxMs: number): BackoffPolicy => ({ initialMs: minMs, maxMs, factor: 2, jitter: 0.5 }),
  /** probing an OPC UA device that does not answer, and re-offering a refused ack */
  opcuaProbe: { initialMs: 1000, maxMs: 60_000, factor: 2, jitter: 0.5 } satisfies BackoffPolicy,
  /** probing a Modbus device's hook registers until it answers */
  modbusProbe: { initialMs: 1000, maxMs: 60_000, factor: 2, jitter: 0.5, spread: 'around' } satisfies BackoffPolicy,
  /** polling a Modbus device's `status` register while it works on an action: fast first, no jitter (one device, one poller) */
  modbusPoll: { initialMs: 20, maxMs: 1000, factor: 2, jitter: 0, spread: 'around' } satisfies BackoffPolicy,
} as const
