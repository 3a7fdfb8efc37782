// The benchmark's results: their shape (bench/results.json), the goals of
// the product checked against them, the table printed and written into
// docs/performance.md between two marker comments, so a rerun refreshes it.
import { readFileSync, renameSync, writeFileSync } from 'node:fs'
import { renderProfile, type ProfileSummary } from './profile.ts'

export interface Figure {
  /** short name: admission, revocation, ... */
  name: string
  /** what was run, in words: sizes, concurrency, what the clock measures */
  workload: string
  /** the headline figure, in `unit` */
  value: number | null
  unit: string
  /** what the figure is compared with, in words ("bare aedes: 5,432 connects/s") */
  anchor: string
  /** the goal, in words, and whether it was met (null: not measured) */
  goal: string
  met: boolean | null
  /** where the goal is not met: the most this run's CPU per item would allow on this machine, or that the CPU is not what stops it (shown in the Met column) */
  bound?: string
  /** V8's CPU profile of the measured process over the timed window, summarised (bench/profile.ts) */
  profiles?: ProfileSummary[]
  /** everything else measured for this figure */
  detail: Record<string, unknown>
}

export interface BenchResults {
  version: 1
  startedAt: string
  finishedAt: string
  quick: boolean
  devices: number
  coldStartDevices: number
  machine: { cpus: number; cpuModel: string; node: string; nodeFlags?: string[]; platform: string; mosquitto: string | null; fdLimit: number | null }
  figures: Figure[]
  /** workloads that failed, with why (the run goes on with the others) */
  errors: { name: string; error: string }[]
}

export const BEGIN = '<!-- bench:results:begin (written by `npm run bench`; edit outside these markers) -->'
export const END = '<!-- bench:results:end -->'

/** `n` to `digits` decimals, as a number */
export const round = (n: number, digits = 2): number => Math.round(n * 10 ** digits) / 10 ** digits

const fmtNumber = (v: number): string => (Math.abs(v) >= 100 ? Math.round(v).toLocaleString('en-US') : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2))

export function formatValue(f: Pick<Figure, 'value' | 'unit'>): string {
  return f.value === null ? 'not measured' : `${fmtNumber(f.value)} ${f.unit}`
}

const cell = (s: string): string => s.replace(/\|/g, '\\|').replace(/\n/g, ' ')

/** The results as a Markdown table, one row per figure, then the machine and any failed workload. */
export function renderTable(r: BenchResults): string {
  const rows = [
    '| Figure | Measured | Anchor (same run) | Goal | Met | Workload |',
    '| --- | --- | --- | --- | --- | --- |',
    ...r.figures.map((f) => `| ${cell(f.name)} | ${cell(formatValue(f))} | ${cell(f.anchor)} | ${cell(f.goal)} | ${f.met === null ? '–' : f.met ? 'yes' : f.bound ? `**no**: ${cell(f.bound)}` : '**no**'} | ${cell(f.workload)} |`),
  ]
  const m = r.machine
  const lines = [
    rows.join('\n'),
    '',
    `Run ${r.startedAt} – ${r.finishedAt}${r.quick ? ' (--quick)' : ''}: ${r.devices.toLocaleString('en-US')} devices, cold start with ${r.coldStartDevices.toLocaleString('en-US')}; ` +
      `${m.cpus} × ${m.cpuModel}, Node ${m.node}${m.nodeFlags?.length ? ` (the agent with \`${m.nodeFlags.join(' ')}\` as deployed, the anchors on Node's defaults)` : ''}, ${m.platform}, Mosquitto ${m.mosquitto ?? 'not installed'}, open files limit ${m.fdLimit ?? 'unknown'}.`,
  ]
  const profiled = r.figures.filter((f) => f.profiles?.length)
  if (profiled.length) {
    lines.push(
      '',
      "Where each profiled figure's time went: V8's sampling CPU profiler (a sample a millisecond) in the measured process over the window each line names (the timed window itself, but for admission, profiled over devices reconnecting after its memory is read, and the cold start, a start of its own up to about its `ready`); shares of the samples, by kind and then the functions with the most time of their own:",
      '',
      ...profiled.flatMap((f) => f.profiles!.map((p) => `- **${f.name}**: ${cell(renderProfile(p))}`)),
    )
  }
  if (r.errors.length) lines.push('', 'Workloads that failed in this run:', '', ...r.errors.map((e) => `- ${e.name}: ${cell(e.error.split('\n')[0] ?? '')}`))
  return lines.join('\n')
}

/** Replace what lies between the markers of `doc` with `body`; throws when the markers are missing. */
export function replaceBetweenMarkers(doc: string, body: string): string {
  const a = doc.indexOf(BEGIN)
  const b = doc.indexOf(END)
  if (a < 0 || b < 0 || b < a) throw new Error(`the markers ${BEGIN} … ${END} are missing or out of order`)
  return `${doc.slice(0, a + BEGIN.length)}\n${body}\n${doc.slice(b)}`
}

/** Write `text` to `path` through a temporary file, so a reader never sees half of it. */
export function writeAtomically(path: string, text: string): void {
  writeFileSync(`${path}.tmp`, text)
  renameSync(`${path}.tmp`, path)
}

export function writeDocsTable(path: string, r: BenchResults): void {
  writeAtomically(path, replaceBetweenMarkers(readFileSync(path, 'utf8'), renderTable(r)))
}

/** Nearest-rank percentile of `xs` (unsorted), p in 0..100; null when empty. */
export function percentile(xs: readonly number[], p: number): number | null {
  if (xs.length === 0) return null
  const s = [...xs].sort((x, y) => x - y)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!
}

/** The CPU used over a window (cpuCeiling): per item, µs, and the most items a second this machine would allow at that cost per item. */
export type CpuCeiling = { eventLoopUs: number; processUs: number; busiestOtherThreadsUs: number[]; othersUs: number; coresBusy: number; ceilingPerS: number }

/**
 * The ceiling the CPU puts on a rate: `count` items took `eventLoopMs` of
 * the measured process's main thread, `processMs` of all its threads, and
 * `othersMs` of the other processes of the run on the same machine (the
 * load generator, the central broker), on a machine of `cores`; its other
 * threads used `otherThreadsMs` each (the busiest are kept). The event loop
 * runs on one core; everything shares all of them; so at this cost per item
 * the rate cannot pass min(1 s ÷ event loop, cores ÷ everything), even with
 * every core fully busy. An estimate, not a hard bound: costs shared by a batch (an
 * fsync, a batch's signature) shrink per item at higher rates, and what
 * else the machine runs is not counted. `coresBusy` says how near the run
 * came to it.
 */
export function cpuCeiling(cores: number, w: { count: number; elapsedMs: number; eventLoopMs: number; processMs: number; othersMs: number; otherThreadsMs?: Iterable<number> }): CpuCeiling {
  const us = (ms: number): number => (ms * 1000) / w.count
  const eventLoop = us(w.eventLoopMs)
  const all = us(w.processMs + w.othersMs)
  const ceiling = Math.min(eventLoop > 0 ? 1e6 / eventLoop : Infinity, all > 0 ? (cores * 1e6) / all : Infinity)
  return {
    eventLoopUs: round(eventLoop, 0),
    processUs: round(us(w.processMs), 0),
    busiestOtherThreadsUs: [...(w.otherThreadsMs ?? [])].sort((x, y) => y - x).slice(0, 4).map((ms) => round(us(ms), 0)),
    othersUs: round(us(w.othersMs), 0),
    coresBusy: round((w.processMs + w.othersMs) / w.elapsedMs, 2),
    ceilingPerS: round(ceiling, 0),
  }
}
