// Time is injected: expiry, re-send delays, gap grace and rollback
// confirmation are tested without sleeping.
export interface Clock {
  nowMs(): number
}

export const systemClock: Clock = { nowMs: () => Date.now() }

export const nowS = (clock: Clock): number => Math.floor(clock.nowMs() / 1000)

/** A stored time (ms since the epoch) as the API gives it: ISO 8601, or null. */
export const iso = (ms: number | null | undefined): string | null => (ms === null || ms === undefined ? null : new Date(Number(ms)).toISOString())
