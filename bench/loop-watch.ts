// A window of a process's main thread, watched from inside it: the event
// loop's delay and the garbage collections (pauses of the main thread) by
// kind. The agent host watches the agent's revocation windows with it, the
// load generator its own, so a slow revocation can be placed in one process
// or the other.
import { constants as perfConstants, monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'

export interface GcWindow {
  scavenges: number
  scavengeMaxMs: number
  markCompacts: number
  markCompactMaxMs: number
  otherMaxMs: number
}

/** one collection: when it began (epoch ms: timeOrigin + now, as the bench's samples are timed in every process), how long it held the main thread, and its kind */
export interface GcPause {
  at: number
  ms: number
  kind: 'scavenge' | 'mark-compact' | 'other'
}

export interface LoopWindow {
  loopDelayMs: { p99: number; max: number }
  gc: GcWindow
  /** each collection of the window, in order (the first MAX_PAUSES) */
  pauses: GcPause[]
}

const MAX_PAUSES = 1000

const kindOf = (k: number | undefined): GcPause['kind'] =>
  k === perfConstants.NODE_PERFORMANCE_GC_MINOR ? 'scavenge' : k === perfConstants.NODE_PERFORMANCE_GC_MAJOR ? 'mark-compact' : 'other'

/** Start watching; `end()` returns what the window saw and stops watching. */
export function watchLoop(): { end(): LoopWindow } {
  const gc: GcWindow = { scavenges: 0, scavengeMaxMs: 0, markCompacts: 0, markCompactMaxMs: 0, otherMaxMs: 0 }
  const pauses: GcPause[] = []
  // an entry is delivered after its collection, so one from before the window may arrive in it
  const start = performance.now()
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      if (e.startTime < start) continue
      const kind = kindOf((e as unknown as { detail?: { kind?: number } }).detail?.kind)
      if (kind === 'scavenge') {
        gc.scavenges++
        gc.scavengeMaxMs = Math.max(gc.scavengeMaxMs, e.duration)
      } else if (kind === 'mark-compact') {
        gc.markCompacts++
        gc.markCompactMaxMs = Math.max(gc.markCompactMaxMs, e.duration)
      } else gc.otherMaxMs = Math.max(gc.otherMaxMs, e.duration)
      if (pauses.length < MAX_PAUSES) pauses.push({ at: performance.timeOrigin + e.startTime, ms: e.duration, kind })
    }
  })
  observer.observe({ entryTypes: ['gc'] })
  const delay = monitorEventLoopDelay({ resolution: 1 })
  delay.enable()
  return {
    end() {
      delay.disable()
      observer.disconnect()
      return { loopDelayMs: { p99: delay.percentile(99) / 1e6, max: delay.max / 1e6 }, gc, pauses }
    },
  }
}
