// A V8 CPU profile (the `.cpuprofile` format: nodes, samples, timeDeltas),
// summarised as a figure's row of the profile table in docs/performance.md:
// where the sampled time went by kind (the agent's own code, each package,
// Node's internals, garbage collection, idle) and the functions with the
// most time of their own. The benchmark profiles the processes it measures
// over each timed window (bench/probe.mjs) and the cold start with
// `--cpu-prof`.
import { sep } from 'node:path'

export interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }[]
  startTime: number
  endTime: number
  samples?: number[]
  timeDeltas?: number[]
}

export interface ProfileSummary {
  /** which process, over which window */
  of: string
  /** the time the samples cover, ms */
  sampledMs: number
  /** share of the samples by kind, largest first (under 1 % left out) */
  byKind: { kind: string; pct: number }[]
  /** the functions with the most time of their own, largest first */
  top: { fn: string; at: string; pct: number }[]
}

const SPECIAL: Record<string, string> = { '(garbage collector)': 'garbage collection', '(idle)': 'idle', '(program)': 'V8 and native code (program)' }

/** A frame's path inside node_modules (`aedes/lib/client.js`), or null for one outside it. */
function inPackage(url: string): string | null {
  const nm = url.lastIndexOf('/node_modules/')
  return nm < 0 ? null : url.slice(nm + '/node_modules/'.length)
}

/** What a call frame is: the product's own code, a package, Node's internals, native. */
function kindOf(url: string, fn: string, root: string): string {
  if (SPECIAL[fn] && url === '') return SPECIAL[fn]!
  const pkg = inPackage(url)
  if (pkg !== null) {
    const rest = pkg.split('/')
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!
  }
  if (url.startsWith('node:')) return 'Node.js internals'
  const path = url.startsWith('file://') ? decodeURIComponent(url.slice('file://'.length)) : url
  if (path.startsWith(root)) return path.slice(root.length).startsWith(`bench${sep}`) ? 'the benchmark host' : 'edgewarden'
  return url === '' ? 'native built-ins' : 'other'
}

/** file:line of a frame (1-based); the file alone where V8 gives line 0, as for all of tsx's compiled code */
const where = (url: string, line: number, root: string): string => {
  if (url === '') return ''
  const path = inPackage(url) ?? url.replace(`file://${root}`, '')
  return line > 0 ? `${path}:${line + 1}` : path
}

/** the functions a summary lists */
const TOP = 6

/**
 * Summarise `p`, up to `toUs` after its start when given (the cold start's
 * profile runs on after `ready`). `root` is the checkout (with a trailing
 * separator): frames under it are the product's own.
 */
export function summariseProfile(p: CpuProfile, of: string, root: string, o: { toUs?: number } = {}): ProfileSummary {
  const byId = new Map(p.nodes.map((n) => [n.id, n]))
  const selfUs = new Map<number, number>()
  const samples = p.samples ?? []
  const deltas = p.timeDeltas ?? []
  let t = 0
  let total = 0
  for (let i = 0; i < samples.length; i++) {
    t += deltas[i] ?? 0
    // the time of sample i is until the next one
    const d = deltas[i + 1] ?? 0
    if (o.toUs !== undefined && t > o.toUs) continue
    selfUs.set(samples[i]!, (selfUs.get(samples[i]!) ?? 0) + d)
    total += d
  }
  const kinds = new Map<string, number>()
  const fns = new Map<string, { fn: string; at: string; us: number; kind: string }>()
  for (const [id, us] of selfUs) {
    const { functionName, url, lineNumber } = byId.get(id)!.callFrame
    if (functionName === '(root)') continue
    const kind = kindOf(url, functionName, root)
    kinds.set(kind, (kinds.get(kind) ?? 0) + us)
    const key = `${functionName} ${url}:${lineNumber}`
    const f = fns.get(key) ?? { fn: functionName || '(anonymous)', at: where(url, lineNumber, root), us: 0, kind }
    f.us += us
    fns.set(key, f)
  }
  const pct = (us: number): number => (total > 0 ? Math.round((1000 * us) / total) / 10 : 0)
  return {
    of,
    sampledMs: Math.round(total / 1000),
    byKind: [...kinds].sort((a, b) => b[1] - a[1]).map(([kind, us]) => ({ kind, pct: pct(us) })).filter((k) => k.pct >= 1),
    top: [...fns.values()]
      .filter((f) => f.kind !== 'idle')
      .sort((a, b) => b.us - a.us)
      .slice(0, TOP)
      .map((f) => ({ fn: f.fn, at: f.at, pct: pct(f.us) })),
  }
}

/** One line of Markdown for a summary. */
export function renderProfile(s: ProfileSummary): string {
  const kinds = s.byKind.map((k) => `${k.kind} ${k.pct} %`).join(', ')
  const top = s.top.map((f) => `\`${f.fn}\`${f.at ? ` (${f.at})` : ''} ${f.pct} %`).join(', ')
  return `${s.of}, ${s.sampledMs.toLocaleString('en-US')} ms sampled: ${kinds}; most time of their own: ${top}`
}
