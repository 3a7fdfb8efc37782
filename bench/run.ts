// `npm run bench`: one run on this machine, every figure next to its anchor
// measured in the same run with the same load generator. Prints the table
// and the JSON, writes bench/results.json and the table in
// docs/performance.md (between its markers). `--quick`: the same at 1,000
// devices (results in .bench-scratch/results.quick.json, docs left alone).
//
// Processes: the agent (bench/agent-host.ts: `edgewarden start` plus an
// IPC window), bare aedes, Mosquitto (anchor, and the central broker of the
// uplink), the load generator, and the real CLI for the cold start; for
// admission over mTLS a second agent (certificate and token devices, its
// TLS listener) and bare aedes behind node:tls requiring client
// certificates; each
// its own process so its core and its memory are its own. All are killed on
// the way out, whatever happened; everything listens on 127.0.0.1 on ports
// chosen free at run time.
import { AGENT_NODE_FLAGS as DEPLOYED_NODE_FLAGS } from '../agent/runtime/node-flags.ts'
import { generateKeyPair } from '../agent/store/keys.ts'
import { Store } from '../agent/store/store.ts'
import { DEVICE_PREFIX } from '../agent/devices/registry.ts'
import { ControlPlane, TERMINAL } from '../simulators/control-plane.ts'
import { runControlPlaneBench } from './control-plane.ts'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { cpuMsOf, MOSQUITTO, otherThreadsMs, signCostUs, threadCpuMsOf, verifyCostUs, Procs, ROOT, spawnNodeBroker, startMosquitto, TASKSET, type Broker, type HeapSpaces } from './anchors.ts'
import type { AccessRemovedReply, AcksReply, DrainReply, HostRequest, RetireReply } from './agent-host.ts'
import type { ConnectReply, LoadRequest, RevokeReply, TlsMode } from './loadgen.ts'
import type { GcPause, GcWindow, LoopWindow } from './loop-watch.ts'
import { makeDevices, prepareCertDevices, prepareDataDir, deviceId, type BenchDevice } from './prepare.ts'
import { summariseProfile, type CpuProfile, type ProfileSummary } from './profile.ts'
import { cpuCeiling, percentile, renderTable, round, writeAtomically, writeDocsTable, type BenchResults, type CpuCeiling, type Figure } from './report.ts'

const { values: flags } = parseArgs({
  args: process.argv.slice(2),
  options: {
    quick: { type: 'boolean' },
    devices: { type: 'string' },
    'cold-start-devices': { type: 'string' },
    out: { type: 'string' },
    docs: { type: 'string' },
    'no-docs': { type: 'boolean' },
    'no-control-plane': { type: 'boolean' },
    'no-profile': { type: 'boolean' },
    'profile-dir': { type: 'string' },
    json: { type: 'boolean' },
  },
  strict: true,
})

const positiveInt = (name: string, v: string | undefined, dflt: number): number => {
  if (v === undefined) return dflt
  const n = Number(v)
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, not ${JSON.stringify(v)}`)
  return n
}
const QUICK = flags.quick === true
const N = positiveInt('devices', flags.devices, QUICK ? 1000 : 10_000)
const COLD_N = positiveInt('cold-start-devices', flags['cold-start-devices'], QUICK ? 10_000 : 100_000)
const OUT = resolve(flags.out ?? (QUICK ? join(ROOT, '.bench-scratch', 'results.quick.json') : join(ROOT, 'bench', 'results.json')))
const DOCS = flags['no-docs'] ? null : flags.docs ? resolve(flags.docs) : QUICK ? null : join(ROOT, 'docs', 'performance.md')
/** V8's sampling profiler over each timed window of the agent (and of bare aedes in admission), summarised beside the table */
const PROFILE = flags['no-profile'] !== true
/** where each window's whole profile is written too (a .cpuprofile, for Chrome's DevTools or speedscope), with --profile-dir */
const PROFILE_DIR = flags['profile-dir'] ? resolve(flags['profile-dir']) : null
const SITE = 'bench'
const GATEWAY = 'gw-bench'
/** "2 scavenges (the longest 9.9 ms)", "no mark-compact" */
const gcCount = (n: number, kind: string, longestMs: number): string => (n === 0 ? `no ${kind}` : `${n} ${kind}${n === 1 ? '' : 's'} (${n === 1 ? '' : 'the longest '}${longestMs.toFixed(1)} ms)`)
/** a window's collections in words: "1 scavenge (6.4 ms), no mark-compact" */
const gcWords = (gc: GcWindow): string => `${gcCount(gc.scavenges, 'scavenge', gc.scavengeMaxMs)}, ${gcCount(gc.markCompacts, 'mark-compact', gc.markCompactMaxMs)}`
const roundDelay = (w: LoopWindow): LoopWindow['loopDelayMs'] => ({ p99: round(w.loopDelayMs.p99, 2), max: round(w.loopDelayMs.max, 2) })

/**
 * Where a revocation's time went, per sample, from the two processes'
 * clocks (both timeOrigin + now: one system clock): before the command
 * reached the agent (the central broker and the hop to the agent, with the
 * agent's event loop until it read the message), inside the agent until the
 * device's sessions were closed, and after that until the load generator
 * saw the socket closed (the rest of the agent's turn of its event loop, the
 * kernel, the load generator's event loop). Averaged over the slowest
 * samples, those at or above the p99.
 */
function revocationSplit(samples: RevokeReply['samples'], asked: AccessRemovedReply, p99: number, generatorPauses: readonly GcPause[]): { words: string; bound: string; detail: Record<string, unknown> } | null {
  const arrivals = [...asked.commandsArrivedAt].sort((x, y) => x - y)
  const parts = samples.flatMap((x, at) => {
    const closed = asked.closedAt[x.id]
    // its command: the first to arrive after the publish (one revocation at a time); a ms of slack for the two clocks' rounding
    const arrived = arrivals.find((t) => t >= x.publishedAt - 1)
    if (closed === undefined || arrived === undefined || arrived > closed) return []
    return [{ at, from: x.publishedAt, to: x.seenClosedAt, total: x.seenClosedAt - x.publishedAt, before: Math.max(0, arrived - x.publishedAt), inside: closed - Math.max(arrived, x.publishedAt), after: x.seenClosedAt - closed }]
  })
  const slow = parts.filter((x) => x.total >= p99 - 0.001)
  if (slow.length === 0) return null
  type Part = 'total' | 'before' | 'inside' | 'after'
  const mean = (k: Part): number => slow.reduce((a, x) => a + x[k], 0) / slow.length
  const p = (k: Part): number => percentile(parts.map((x) => x[k]), 99)!
  const [total, before, inside, after] = [mean('total'), mean('before'), mean('inside'), mean('after')]
  const p99s = { beforeAgent: p('before'), inAgent: p('inside'), afterClose: p('after') }
  const share = (ms: number): string => `${ms.toFixed(1)} ms (${Math.round((100 * ms) / total)} %)`
  const where = `${share(before)} before the command reached the agent, ${share(inside)} in the agent until the sessions were closed, ${share(after)} from there until the load generator saw the close`
  // Which of them a garbage collection held up: one of the agent's or of the load generator's main thread
  // that overlapped the sample (both clocks the system clock); the longest of each, per sample.
  const heldBy = (pauses: readonly GcPause[], x: { from: number; to: number }): GcPause | null =>
    pauses.filter((g) => g.at < x.to && g.at + g.ms > x.from).reduce<GcPause | null>((a, g) => (a && a.ms >= g.ms ? a : g), null)
  const held = slow.map((x) => ({ agent: heldBy(asked.loop?.pauses ?? [], x), generator: heldBy(generatorPauses, x) }))
  const count = (k: 'agent' | 'generator'): string => {
    const hits = held.map((h) => h[k]).filter((g): g is GcPause => g !== null)
    return hits.length === 0 ? 'none' : `${hits.length} (${hits.map((g) => `a ${g.kind} of ${g.ms.toFixed(1)} ms`).join(', ')})`
  }
  const gcWords = `of them, held up by a garbage collection of the agent: ${count('agent')}; of the load generator: ${count('generator')}`
  return {
    words: `the ${slow.length} slowest (at or above the p99) took ${total.toFixed(1)} ms on average: ${where}; ${gcWords}; over all ${parts.length}, the p99 of each part: ${p99s.beforeAgent.toFixed(2)}, ${p99s.inAgent.toFixed(2)} and ${p99s.afterClose.toFixed(2)} ms`,
    bound: `the ${slow.length} slowest took ${total.toFixed(1)} ms on average: ${where}; ${gcWords}`,
    detail: {
      samples: parts.length,
      slowest: slow.length,
      /** which samples they were, in the order sent (0: the first) */
      slowestAt: slow.map((x) => x.at),
      slowestMeanMs: { total: round(total, 3), beforeAgent: round(before, 3), inAgent: round(inside, 3), afterClose: round(after, 3) },
      slowestHeldByGc: held.map((h) => ({ agentMs: h.agent && round(h.agent.ms, 2), loadGeneratorMs: h.generator && round(h.generator.ms, 2) })),
      p99Ms: { beforeAgent: round(p99s.beforeAgent, 3), inAgent: round(p99s.inAgent, 3), afterClose: round(p99s.afterClose, 3) },
    },
  }
}

/** devices that reconnect, with the profiler on, after admission's memory is read */
const PROFILED_RECONNECTS = 3000
/** connects in flight at once in the admission runs (the same for every broker) */
const ADMISSION_CONCURRENCY = 200
/** devices connected and let go before each admission run */
const WARM_UP = 300
/** connects in flight at once in the storm: "at once", bounded by what one load generator can open */
const STORM_CONCURRENCY = 1000
/** the storm gives up after this long (devices whose connect failed retry until then) */
const STORM_TIMEOUT_MS = 240_000
/**
 * Node flags of the agent: its own as deployed (agent/runtime/node-flags.ts),
 * plus BENCH_AGENT_NODE_FLAGS for the runtime figures, e.g. "--cpu-prof
 * --cpu-prof-dir=.bench-scratch/prof" to profile it. The anchors (bare aedes)
 * run on Node's defaults, as the library runs when nobody tunes it: a flag
 * that helps the agent is the agent's, and what it costs (a larger young
 * generation) is counted against it. (The same flag on bare aedes moves its
 * RSS by when its young generation happens to grow, not by the broker.)
 */
const AGENT_NODE_FLAGS = [...DEPLOYED_NODE_FLAGS, ...(process.env.BENCH_AGENT_NODE_FLAGS ?? '').split(' ').filter(Boolean)]
const REVOCATION_SAMPLES = Math.min(N, QUICK ? 100 : 200)
/** revocations run before the first window, outside it (as admission has its warm-up) */
const REVOCATION_WARM_UP = 10
/** devices of each admission run over TLS: certificate devices (and as many token devices), each with its own P-256 key and certificate */
const TLS_DEVICES = Math.min(N, 2000)
/** certificate devices of the storm over mTLS, the first TLS_DEVICES of them also those of admission over mTLS: all N (issuing them takes ~4 ms of CPU each: ~40 s of CPU for 10,000) */
const TLS_STORM_DEVICES = N
/** cold starts of each registry (empty, COLD_N), taken in turn; the best of each counts */
const COLD_ROUNDS = 4
/** rounds of the TLS admission runs, taken in turn; the best of each counts */
const TLS_ROUNDS = 2

const log = (s: string): void => void process.stderr.write(`bench: ${s}\n`)
const fmt = (n: number): string => Math.round(n).toLocaleString('en-US')

let profilesWritten = 0
/**
 * Start V8's profiler in `b` (unless --no-profile); the function returned
 * stops it and summarises the window as `of`. Both sides of a window are
 * taken outside what it measures: starting the profiler blocks the process
 * while V8 logs its compiled code (~100 ms in the agent), stopping it while
 * the profile is serialised, so neither falls into a timed window, an
 * event-loop reading or a CPU reading.
 */
async function startProfile(b: Broker): Promise<(of: string) => Promise<ProfileSummary | null>> {
  if (!PROFILE) return async () => null
  await b.profile('start')
  return async (of) => {
    const profile = await b.profile('stop')
    if (PROFILE_DIR) {
      mkdirSync(PROFILE_DIR, { recursive: true })
      // numbered in the order taken: two windows may be described alike (the revocations, quiet and busy)
      writeFileSync(join(PROFILE_DIR, `${String(++profilesWritten).padStart(2, '0')}-${of.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '')}.cpuprofile`), JSON.stringify(profile))
    }
    return summariseProfile(profile, of, ROOT)
  }
}

/** Request/answer over a child's IPC channel. */
function rpc<Req>(proc: ChildProcess, name: string): (req: Req, timeoutMs?: number) => Promise<unknown> {
  let next = 1
  const waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>()
  proc.on('message', (m: { id?: number; result?: unknown; error?: string }) => {
    if (typeof m !== 'object' || m === null || typeof m.id !== 'number') return
    const w = waiting.get(m.id)
    if (!w) return
    waiting.delete(m.id)
    if (m.error) w.reject(new Error(`${name}: ${m.error}`))
    else w.resolve(m.result)
  })
  proc.once('exit', (code) => {
    for (const w of waiting.values()) w.reject(new Error(`${name} exited (${code})`))
    waiting.clear()
  })
  return (req, timeoutMs = 300_000) =>
    new Promise((resolve, reject) => {
      const id = next++
      const timer = setTimeout(() => {
        waiting.delete(id)
        reject(new Error(`${name}: no answer to ${JSON.stringify(req).slice(0, 60)} within ${timeoutMs} ms`))
      }, timeoutMs)
      waiting.set(id, {
        resolve: (v) => (clearTimeout(timer), resolve(v)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      })
      proc.send({ id, req })
    })
}

function fdLimit(): number | null {
  try {
    const m = /Max open files\s+(\d+|unlimited)/.exec(readFileSync('/proc/self/limits', 'utf8'))
    return m ? (m[1] === 'unlimited' ? Infinity : Number(m[1])) : null
  } catch {
    return null
  }
}

function mosquittoVersion(): string | null {
  if (!MOSQUITTO) return null
  const out = spawnSync(MOSQUITTO, ['-h'], { encoding: 'utf8' })
  return /mosquitto version (\S+)/.exec(`${out.stdout}${out.stderr}`)?.[1] ?? 'unknown'
}

async function main(): Promise<BenchResults> {
  const startedAt = new Date().toISOString()
  const limit = fdLimit()
  // Each of the agent, bare aedes, Mosquitto and the load generator holds up
  // to N sockets at once (never two brokers' worth in the generator: each
  // anchor is disconnected before the next connects), plus files and pipes.
  if (limit !== null && limit < N + 512) {
    throw new Error(`the open files limit is ${limit}: ${N} connections need at least ${N + 512} per process. Raise it (ulimit -n ${N + 1024}) or run with --devices ${Math.max(1, limit - 512)}`)
  }
  const results: BenchResults = {
    version: 1,
    startedAt,
    finishedAt: '',
    quick: QUICK,
    devices: N,
    coldStartDevices: COLD_N,
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', node: process.version, nodeFlags: [...DEPLOYED_NODE_FLAGS], platform: `${process.platform} ${process.arch}`, mosquitto: mosquittoVersion(), fdLimit: limit === Infinity ? null : limit },
    figures: [],
    errors: [],
  }
  const scratchRoot = join(ROOT, '.bench-scratch')
  mkdirSync(scratchRoot, { recursive: true })
  const scratch = mkdtempSync(join(scratchRoot, 'run-'))
  const procs = new Procs()
  const onSignal = (signal: NodeJS.Signals): void => {
    log(`${signal}: stopping every process of this run`)
    setTimeout(() => process.exit(130), 10_000).unref() // whatever hangs (a stalled disk), do not outlive the signal by long
    void procs.stopAll().finally(() => {
      rmSync(scratch, { recursive: true, force: true })
      process.exit(130)
    })
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  // however this process ends (an uncaught error included), nothing it started outlives it
  process.on('exit', () => procs.killAllNow())
  try {
    await runWorkloads(results, procs, scratch)
  } finally {
    await procs.stopAll(AGENT_NODE_FLAGS.length ? 60_000 : 5000)
    rmSync(scratch, { recursive: true, force: true })
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
  // The central service (issue 21), after every agent process is gone: its own brokers and databases (bench/control-plane.ts).
  if (!flags['no-control-plane']) await controlPlaneFigures(results)
  results.finishedAt = new Date().toISOString()
  return results
}

/** Run one workload; a failure is recorded and the run goes on. */
async function attempt(results: BenchResults, name: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn()
  } catch (err) {
    log(`${name} failed: ${(err as Error).message}`)
    results.errors.push({ name, error: (err as Error).message })
  }
}

async function runWorkloads(results: BenchResults, procs: Procs, scratch: string): Promise<void> {
  // Fixtures: N device keys, a data dir with them enrolled, one with COLD_N.
  let t = performance.now()
  const devices = makeDevices('dev', N)
  const ids = devices.map((d) => d.id)
  const dirA = join(scratch, 'agent')
  const prepA = await prepareDataDir(dirA, { site: SITE, gateway: GATEWAY, devices })
  log(`${fmt(N)} devices made and enrolled in ${fmt(performance.now() - t)} ms`)
  t = performance.now()
  const dirCold = join(scratch, 'cold')
  await prepareDataDir(dirCold, { site: SITE, gateway: GATEWAY, devices: coldDevices(COLD_N) })
  const dirEmpty = join(scratch, 'empty')
  await prepareDataDir(dirEmpty, { site: SITE, gateway: GATEWAY, devices: [] })
  log(`registry of ${fmt(COLD_N)} for the cold start written in ${fmt(performance.now() - t)} ms`)

  // Cold start first, while nothing else runs: the real CLI, spawn to `ready`.
  await attempt(results, 'cold start', async () => {
    const cli = join(ROOT, 'bin', 'edgewarden.js')
    const once = async (dir: string, extraFlags: string[] = []): Promise<number> => {
      const b = await spawnNodeBroker(procs, 'cold-start agent', cli, ['start', '--data-dir', dir, '--site', SITE, '--gateway', GATEWAY, '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--log-level', 'info'], { nodeFlags: [...DEPLOYED_NODE_FLAGS, ...extraFlags] })
      if (b.ready.devices !== undefined && b.ready.devices !== (dir === dirCold ? COLD_N : 0)) throw new Error(`the agent reported ${String(b.ready.devices)} devices`)
      await b.stop()
      return b.readyMs
    }
    await once(dirEmpty) // warm the file cache
    await once(dirCold)
    // taken in turn, best of COLD_ROUNDS each: a start is under a second, and this machine's noise is ±15 %
    const empties: number[] = []
    const bigs: number[] = []
    for (let i = 0; i < COLD_ROUNDS; i++) {
      empties.push(await once(dirEmpty))
      bigs.push(await once(dirCold))
    }
    const empty = Math.min(...empties)
    const big = Math.min(...bigs)
    // What bounds it, measured beside it: Node's own start (\`node -e 0\`) and
    // LevelDB's read of every record alone (as the start reads them, in this process)
    const nodeAlone = Math.min(...Array.from({ length: COLD_ROUNDS }, () => {
      const t0 = performance.now()
      spawnSync(process.execPath, ['-e', '0'], { stdio: 'ignore' })
      return performance.now() - t0
    }))
    const readAlone: number[] = []
    for (let i = 0; i < 3; i++) readAlone.push(await registryReadMs(dirCold, COLD_N))
    const read = Math.min(...readAlone)
    // One more start on the big registry, profiled (`--cpu-prof`, written when it exits), not counted in the
    // figure: its profile up to `ready`, which it reaches about Node's own start after the profile began.
    let profile: ProfileSummary | null = null
    if (PROFILE) {
      const dir = join(scratch, 'cold-profile')
      const ms = await once(dirCold, ['--cpu-prof', `--cpu-prof-dir=${dir}`])
      const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'))
      if (!file) throw new Error(`the profiled start wrote no profile into ${dir}`)
      const upTo = Math.max(0, ms - nodeAlone)
      profile = summariseProfile(JSON.parse(readFileSync(join(dir, file), 'utf8')) as CpuProfile, `the CLI, a start of its own with \`--cpu-prof\` (${fmt(ms)} ms to ready), its first ${fmt(upTo)} ms`, ROOT, { toUs: upTo * 1000 })
    }
    const met = COLD_N >= 100_000 ? big < 500 : null // not judged on a smaller registry
    results.figures.push({
      name: 'cold start',
      workload: `\`edgewarden start\` (the real CLI, a new process) on a registry of ${fmt(COLD_N)} devices: from spawn to its \`ready\` line; best of ${COLD_ROUNDS}, taken in turn with the empty registry`,
      value: round(big, 0),
      unit: 'ms',
      anchor: `empty registry: ${fmt(empty)} ms (so ${fmt(big - empty)} ms for the registry); Node's own start alone (\`node -e 0\`): ${fmt(nodeAlone)} ms; LevelDB's read of the ${fmt(COLD_N)} records alone: ${fmt(read)} ms (best of 3, in the benchmark's process)`,
      // issue 19's goal
      goal: `< 500 ms with 100,000 devices${COLD_N === 100_000 ? '' : ` (run here with ${fmt(COLD_N)})`}`,
      met,
      ...(met === false
        ? { bound: `of its ${fmt(big)} ms, ${fmt(empty)} are the start with no registry (Node's own start alone ${fmt(nodeAlone)}) and ${fmt(big - empty)} the registry, of which LevelDB's read of the records alone takes ${fmt(read)} ms; the rest (${fmt(Math.max(0, big - empty - read))} ms) is what the start does with the records: the registry's own loop, the garbage collection of what the read made, the start's passes (where the time goes: the cold start's profile, under the table)` }
        : {}),
      ...(profile ? { profiles: [profile] } : {}),
      detail: { devices: COLD_N, readyMs: round(big), emptyRegistryReadyMs: round(empty), registryMs: round(big - empty), nodeAloneMs: round(nodeAlone), registryReadAloneMs: round(read), roundsMs: bigs.map((x) => round(x, 0)), emptyRoundsMs: empties.map((x) => round(x, 0)) },
    })
  })
  rmSync(dirCold, { recursive: true, force: true })

  // The central broker of the uplink, a control-plane key pinned on the agent.
  const central = MOSQUITTO
    ? await startMosquitto(procs, 'central broker (mosquitto)', join(scratch, 'central'))
    : await spawnNodeBroker(procs, 'central broker (aedes)', join(ROOT, 'bench', 'bare-aedes.ts'), []).then((b) => ({ ...b, url: `mqtt://127.0.0.1:${b.port}` }))
  const cpKey = generateKeyPair()
  const cpPub = cpKey.publicKeyB64
  const cpPem = cpKey.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string

  // The load generator.
  const genProc = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', join(ROOT, 'bench', 'loadgen.ts')], { cwd: ROOT, stdio: ['ignore', 'inherit', 'pipe', 'ipc'] })
  procs.add('load generator', genProc)
  const gen = rpc<LoadRequest>(genProc, 'load generator')
  await gen({ op: 'init', devices: devices.map((d: BenchDevice) => ({ id: d.id, d: d.d })), gatewayId: GATEWAY, gatewayPublicKey: prepA.gatewayPublicKey })
  /** A fresh token for each device of `list` (one per connect, PROTOCOL §5), minted before a timed window. */
  const mint = async (list: string[]): Promise<void> => void (await gen({ op: 'mint', ids: list, lifetimeS: 1800 }))
  /** Connect `list`, its tokens minted already (over TLS with `tls`). */
  const connectMinted = async (port: number, list: string[], concurrency: number, timeoutMs = 30_000, tls?: TlsMode): Promise<ConnectReply> =>
    (await gen({ op: 'connect', port, ids: list, concurrency, timeoutMs, ...(tls ? { tls } : {}) }, 600_000)) as ConnectReply
  /** Connect `list`, minting its tokens first (over TLS with `tls`; a certificate device, `mtls`, needs no token). */
  const connect = async (port: number, list: string[], concurrency: number, timeoutMs = 30_000, tls?: TlsMode): Promise<ConnectReply> => {
    if (tls !== 'mtls') await mint(list)
    return connectMinted(port, list, concurrency, timeoutMs, tls)
  }
  /** Connect a few hundred devices and let them go, so neither the broker nor the generator is measured cold (JIT, first allocations). */
  const warmUp = async (port: number, list: string[] = ids, tls?: TlsMode): Promise<void> => {
    await connect(port, list.slice(0, Math.min(list.length, WARM_UP)), ADMISSION_CONCURRENCY, 30_000, tls)
    await gen({ op: 'disconnect', ids: 'all' })
  }
  const admissionRate = (r: ConnectReply, who: string): number => {
    if (r.failed) throw new Error(`${who}: ${r.failed} of ${r.connected + r.failed} connects failed (${r.errors.join('; ')})`)
    return (r.connected / r.elapsedMs) * 1000
  }

  /**
   * Admission over mTLS (issue 17), before the agent of the other figures
   * is started: M = TLS_DEVICES certificate devices (P-256 keys, issued by
   * the site CA of a data dir of their own, with M of the token devices
   * beside them) connect with full TLS handshakes, (1) to the agent by
   * their client certificates, (2) the M token devices to the same agent
   * over the same TLS listener with their tokens, and (3) the certificate
   * devices to bare aedes behind node:tls requiring a client certificate
   * of the same CA (the anchor: TLS alone). Same concurrency and warm-up;
   * both brokers present the same server certificate and run side by side
   * (the one not measured idle), best of TLS_ROUNDS rounds taken in turn.
   * Then the storm over mTLS (issue 19): all TLS_STORM_DEVICES certificate
   * devices at once, as the token storm, to bare aedes and then the agent.
   */
  async function measureTls(): Promise<{ admission: Figure | null; storm: Figure | null }> {
    const M = TLS_DEVICES
    type Run = { connectsPerS: number; elapsedMs: number; brokerCpuPct: number | null; loadGeneratorCpuPct: number }
    const runs: { agentMtls: Run | null; agentTokenTls: Run | null; bareAedesMtls: Run | null } = { agentMtls: null, agentTokenTls: null, bareAedesMtls: null }
    /** every certificate device (the storm's); the admission runs take the first M */
    let stormIds: string[] = []
    let certIds: string[] = []
    const tokenIds = ids.slice(0, M)
    const dirT = join(scratch, 'agent-tls')
    const tlsDir = join(scratch, 'tls')
    let server: { certFile: string; keyFile: string; caFile: string } | null = null
    await attempt(results, 'mTLS fixtures', async () => {
      const t0 = performance.now()
      await prepareDataDir(dirT, { site: SITE, gateway: GATEWAY, devices: devices.slice(0, M) })
      const f = await prepareCertDevices(dirT, { site: SITE, gateway: GATEWAY, prefix: 'crt', count: TLS_STORM_DEVICES, serverDir: tlsDir })
      const caFile = join(tlsDir, 'ca.pem')
      writeFileSync(caFile, f.caPem)
      await gen({ op: 'initTls', ca: f.caPem, devices: f.devices })
      stormIds = f.devices.map((d) => d.id)
      certIds = stormIds.slice(0, M)
      server = { certFile: f.serverCertFile, keyFile: f.serverKeyFile, caFile }
      log(`${fmt(stormIds.length)} certificate devices (P-256, site CA) and ${fmt(M)} token devices enrolled for the TLS runs in ${fmt(performance.now() - t0)} ms`)
    })
    if (!server) return { admission: null, storm: null }
    const srv: { certFile: string; keyFile: string; caFile: string } = server
    /** One timed run of `list` over TLS against `broker`, with the CPU both sides used. */
    const timed = async (broker: Broker, list: string[], tls: TlsMode, who: string): Promise<Run> => {
      const cpu0 = cpuMsOf(broker.pid)
      const r = await connect(broker.port, list, ADMISSION_CONCURRENCY, 30_000, tls)
      const cpu1 = cpuMsOf(broker.pid)
      const rate = admissionRate(r, who)
      if (r.resumed) throw new Error(`${who}: ${r.resumed} TLS sessions were resumed (every connect must be a full handshake)`)
      return {
        connectsPerS: rate,
        elapsedMs: r.elapsedMs,
        brokerCpuPct: cpu0 === null || cpu1 === null ? null : round(((cpu1 - cpu0) / r.elapsedMs) * 100, 0),
        loadGeneratorCpuPct: round((r.cpuMs / r.elapsedMs) * 100, 0),
      }
    }
    // Both brokers up, each warmed up once per kind of connect; then rounds
    // in turn (bare aedes, agent over mTLS, agent with tokens), so a burst of
    // load from outside the run does not land on one broker's only run. The
    // best round of each counts.
    let aedes: Broker | null = null
    let agentT: Broker | null = null
    const kinds = [
      { key: 'bareAedesMtls', who: 'bare aedes over mTLS', broker: () => aedes, list: () => certIds, tls: 'mtls' },
      { key: 'agentMtls', who: 'agent over mTLS', broker: () => agentT, list: () => certIds, tls: 'mtls' },
      { key: 'agentTokenTls', who: 'agent, tokens over TLS', broker: () => agentT, list: () => tokenIds, tls: 'token' },
    ] as const
    const rounds: Record<(typeof kinds)[number]['key'], Omit<Run, 'elapsedMs'>[]> = { bareAedesMtls: [], agentMtls: [], agentTokenTls: [] }
    type Storm = { ms: number; connected: number; retries: number; failed: number; errors: string[]; brokerCpuPct: number | null; loadGeneratorCpuPct: number }
    const stormKinds = [
      { key: 'bareAedes', who: 'bare aedes over mTLS', broker: () => aedes },
      { key: 'agent', who: 'agent over mTLS', broker: () => agentT },
    ] as const
    const storms: Record<(typeof stormKinds)[number]['key'], Storm | null> = { bareAedes: null, agent: null }
    try {
      await attempt(results, 'bare aedes over mTLS', async () => {
        const b = await spawnNodeBroker(procs, 'bare aedes (mTLS)', join(ROOT, 'bench', 'bare-aedes.ts'), ['--tls-cert', srv.certFile, '--tls-key', srv.keyFile, '--tls-ca', srv.caFile], { probe: true, listener: 'mqtts' })
        aedes = b
        await warmUp(b.port, certIds, 'mtls')
      })
      await attempt(results, 'agent admission over TLS', async () => {
        const args = ['--data-dir', dirT, '--site', SITE, '--gateway', GATEWAY, '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--mqtts-port', '0', '--tls-cert', srv.certFile, '--tls-key', srv.keyFile, '--log-level', 'warn', '--uplink', central.url, '--cp-key', `bench=${cpPub}`]
        const a = await spawnNodeBroker(procs, 'agent (TLS)', join(ROOT, 'bench', 'agent-host.ts'), args, { probe: true, nodeFlags: AGENT_NODE_FLAGS, listener: 'mqtts' })
        if (a.ready.devices !== undefined && a.ready.devices !== stormIds.length + M) {
          await a.stop('SIGTERM', 10_000)
          throw new Error(`the agent reported ${String(a.ready.devices)} devices, not ${stormIds.length + M}`)
        }
        agentT = a
        await warmUp(a.port, certIds, 'mtls')
        await warmUp(a.port, tokenIds, 'token')
      })
      for (let n = 1; n <= TLS_ROUNDS; n++) {
        for (const k of kinds) {
          const broker = k.broker()
          if (!broker) continue
          await attempt(results, `${k.who} (round ${n})`, async () => {
            try {
              const r = await timed(broker, k.list(), k.tls, k.who)
              rounds[k.key].push({ connectsPerS: round(r.connectsPerS), brokerCpuPct: r.brokerCpuPct, loadGeneratorCpuPct: r.loadGeneratorCpuPct })
              if (!runs[k.key] || r.connectsPerS > runs[k.key]!.connectsPerS) runs[k.key] = r
              log(`${k.who} (round ${n}): ${fmt(r.connectsPerS)} connects/s`)
            } finally {
              await gen({ op: 'disconnect', ids: 'all' })
            }
          })
        }
      }
      // The storm over mTLS: every certificate device at once, as after a
      // power cut, first to bare aedes (the handshakes alone), then to the
      // agent; a connect that fails is tried again after about 1 s.
      for (const k of stormKinds) {
        const broker = k.broker()
        if (!broker) continue
        await attempt(results, `${k.who}: storm`, async () => {
          try {
            const cpu0 = cpuMsOf(broker.pid)
            const r = (await gen({ op: 'connect', port: broker.port, ids: stormIds, concurrency: STORM_CONCURRENCY, timeoutMs: 30_000, retryMs: 1000, deadlineMs: STORM_TIMEOUT_MS, tls: 'mtls' }, 600_000)) as ConnectReply
            const cpu1 = cpuMsOf(broker.pid)
            if (r.resumed) throw new Error(`${k.who}: ${r.resumed} TLS sessions were resumed in the storm (every connect must be a full handshake)`)
            storms[k.key] = {
              ms: r.elapsedMs,
              connected: r.connected,
              retries: r.retries,
              failed: r.failed,
              errors: r.errors,
              brokerCpuPct: cpu0 === null || cpu1 === null ? null : round(((cpu1 - cpu0) / r.elapsedMs) * 100, 0),
              loadGeneratorCpuPct: round((r.cpuMs / r.elapsedMs) * 100, 0),
            }
            log(`${k.who}: storm of ${fmt(stormIds.length)} in ${(r.elapsedMs / 1000).toFixed(2)} s, ${fmt(r.retries)} connects tried again, ${fmt(r.failed)} failed`)
          } finally {
            await gen({ op: 'disconnect', ids: 'all' })
          }
        })
      }
    } finally {
      await gen({ op: 'disconnect', ids: 'all' })
      // (TypeScript narrows the two to null here: they are set inside the attempts)
      const started = [aedes, agentT] as (Broker | null)[]
      await Promise.all(started.map((b) => b?.stop('SIGTERM', AGENT_NODE_FLAGS.length ? 60_000 : 10_000)))
    }
    rmSync(dirT, { recursive: true, force: true })
    const { agentMtls, agentTokenTls, bareAedesMtls } = runs
    function tlsStormFigure(): Figure | null {
      const a = storms.agent
      const b = storms.bareAedes
      if (!a) return null
      const s = (x: Storm): string => `${(x.ms / 1000).toFixed(2)} s (${fmt(x.retries)} connects tried again${x.failed ? `, ${fmt(x.failed)} failed` : ''})`
      const own = agentMtls ? stormIds.length / agentMtls.connectsPerS : null
      const cpu = (x: Storm): string => `${x.brokerCpuPct ?? '–'} % of a core, the load generator ${x.loadGeneratorCpuPct} %`
      return {
        name: 'reconnect storm over mTLS',
        workload:
          `${fmt(stormIds.length)} certificate devices (each its own P-256 key and a certificate of the site CA) reconnect at once over TLS, a full handshake each, no session resumed (${fmt(STORM_CONCURRENCY)} connects in flight; a device whose connect fails tries again after about 1 s, as devices do): ` +
          `from the first connect until every device is connected and subscribed (SUBACK); the agent judges every certificate as in admission over mTLS; beside it the same storm to bare aedes behind node:tls requiring a client certificate of the same CA`,
        value: round(a.ms / 1000, 2),
        unit: 's',
        anchor:
          `agent ${s(a)}; bare aedes over mTLS, the handshakes alone: ${b ? `${s(b)}, so the agent took ${(a.ms / b.ms).toFixed(2)} × its time` : 'not run'}; ` +
          `${fmt(stormIds.length)} ÷ the agent's rate in admission over mTLS (above): ${own === null ? '–' : `${own.toFixed(2)} s`}; CPU: the agent ${cpu(a)}${b ? `; bare aedes ${cpu(b)}` : ''}`,
        goal: '0 connects tried again (no time goal set: the TLS handshakes alone take what bare aedes beside it takes)',
        met: a.retries === 0 && a.failed === 0,
        detail: {
          devices: stormIds.length,
          concurrency: STORM_CONCURRENCY,
          agent: { ...a, ms: round(a.ms) },
          bareAedes: b && { ...b, ms: round(b.ms) },
          agentOverBareAedes: b ? round(a.ms / b.ms, 3) : null,
          atAdmissionRateS: own === null ? null : round(own, 2),
        },
      }
    }

    function tlsAdmissionFigure(): Figure | null {
      if (!agentMtls && !agentTokenTls && !bareAedesMtls) return null
      const ratio = agentMtls && bareAedesMtls ? agentMtls.connectsPerS / bareAedesMtls.connectsPerS : null
      const tokenRatio = agentTokenTls && bareAedesMtls ? agentTokenTls.connectsPerS / bareAedesMtls.connectsPerS : null
      const rate = (r: Run | null): string => (r === null ? '–' : fmt(r.connectsPerS))
      return {
        name: 'admission over mTLS',
        workload:
          `${fmt(M)} device connects over TLS (min(N, 2,000) certificate devices, each with its own P-256 key and a certificate of the site CA; a full handshake each, no session resumed; CONNECT with the client id alone, SUBSCRIBE dev/<id>/cmd, SUBACK), ` +
          `${ADMISSION_CONCURRENCY} in flight, after a warm-up of ${fmt(Math.min(M, WARM_UP))}, best of ${TLS_ROUNDS} rounds taken in turn with the other brokers, one load generator process on node:tls; the agent judges every certificate (SAN = client id, pinned fingerprint, chain, revocation, state); ` +
          `beside it ${fmt(M)} token devices to the same agent over the same TLS listener (server authentication, a fresh signed token in CONNECT); value: agent over mTLS ÷ bare aedes behind node:tls requiring a client certificate of the same CA (no authentication)`,
        value: ratio === null ? null : round(ratio, 3),
        unit: '× bare aedes over mTLS',
        anchor:
          `agent over mTLS ${rate(agentMtls)} connects/s; bare aedes over mTLS (the TLS cost alone) ${rate(bareAedesMtls)}/s; ` +
          `agent with tokens over the same TLS listener ${rate(agentTokenTls)}/s${tokenRatio === null ? '' : ` (${tokenRatio.toFixed(2)} × bare aedes over mTLS)`}`,
        goal: 'none set (issue 17: shown next to token admission and bare aedes over TLS)',
        met: null,
        detail: {
          devices: M,
          concurrency: ADMISSION_CONCURRENCY,
          warmUp: Math.min(M, WARM_UP),
          rounds: TLS_ROUNDS,
          // every round, in the order they ran: its rate, and the CPU broker and load generator used (% of one core)
          roundResults: rounds,
          connectsPerS: { agentMtls: agentMtls && round(agentMtls.connectsPerS), agentTokenTls: agentTokenTls && round(agentTokenTls.connectsPerS), bareAedesMtls: bareAedesMtls && round(bareAedesMtls.connectsPerS) },
          tokenTlsOverBareAedesMtls: tokenRatio === null ? null : round(tokenRatio, 3),
          // CPU used over the best round, % of one core: a broker near 100 % is the limit; the load generator near 100 % would be; both well under: the machine was busy with something else
          brokerCpuPct: { agentMtls: agentMtls?.brokerCpuPct ?? null, agentTokenTls: agentTokenTls?.brokerCpuPct ?? null, bareAedesMtls: bareAedesMtls?.brokerCpuPct ?? null },
          loadGeneratorCpuPct: { agentMtls: agentMtls?.loadGeneratorCpuPct ?? null, agentTokenTls: agentTokenTls?.loadGeneratorCpuPct ?? null, bareAedesMtls: bareAedesMtls?.loadGeneratorCpuPct ?? null },
        },
      }
    }

    return { admission: tlsAdmissionFigure(), storm: tlsStormFigure() }
  }

  // Admission and memory: bare aedes, then Mosquitto, then the agent; each
  // anchor disconnected and stopped before the next broker is loaded.
  const admission: { agent: number | null; aedes: number | null; mosquitto: number | null } = { agent: null, aedes: null, mosquitto: null }
  /** resident memory and heap in use (after GC): idle, with the first half of the devices connected, with all */
  type Mem = { idle: number; half: number; connected: number; heapIdle: number; heapHalf: number; heapConnected: number; youngHalf: number; youngConnected: number; spacesConnected: HeapSpaces }
  const memory: { agent: Mem | null; aedes: Mem | null } = { agent: null, aedes: null }
  /**
   * Admit every device in two halves, memory read after the warm-up, after
   * the first half and after the second; the rate is over both halves (the
   * reads between them are not timed). The second half gives the cost of one
   * more device; the growth from idle also holds one-time steps (V8's young
   * generation growing to its size under load is tens of MiB, whatever the
   * number of devices).
   */
  /**
   * V8's young generation as reserved: a buffer of the process whose size
   * follows the allocation rate (up to --max-semi-space-size twice), not the
   * number of devices, and which V8 shrinks to 1 MiB after a few idle
   * seconds (64 → 1 MiB was ~58 MiB of RSS for the agent). Whether that
   * happened before one read and not the other is luck, so the per-device
   * figure leaves its change out, for both brokers alike.
   */
  /** CPU used in the timed admission windows, ms: the broker (all threads, and its event loop alone) and the load generator */
  type AdmissionCpu = { connects: number; elapsedMs: number; brokerMainMs: number; brokerMs: number; loadGeneratorMs: number; otherThreadsMs: number[] }
  const admissionCpu: { agent: AdmissionCpu | null; aedes: AdmissionCpu | null } = { agent: null, aedes: null }
  const admissionProfiles: ProfileSummary[] = []
  const youngSize = (sp: HeapSpaces): number => (sp['new_space']?.size ?? 0) + (sp['new_large_object_space']?.size ?? 0)
  const admitInHalves = async (b: Broker, who: string): Promise<{ rate: number; mem: Mem; cpu: AdmissionCpu | null; profile: ProfileSummary | null }> => {
    const idle = await b.memory() // after the warm-up: every broker measured warm
    const cpu: AdmissionCpu = { connects: 0, elapsedMs: 0, brokerMainMs: 0, brokerMs: 0, loadGeneratorMs: 0, otherThreadsMs: [] }
    const threadMs = new Map<number, number>()
    let cpuKnown = true
    /** one timed half, the CPU each side used in it added up (the memory reads between the halves are not counted) */
    const timedHalf = async (list: string[]): Promise<ConnectReply> => {
      const c0 = threadCpuMsOf(b.pid)
      const r = await connect(b.port, list, ADMISSION_CONCURRENCY)
      const c1 = threadCpuMsOf(b.pid)
      admissionRate(r, who)
      if (c0 === null || c1 === null) cpuKnown = false
      else {
        cpu.brokerMs += c1.total - c0.total
        cpu.brokerMainMs += c1.main - c0.main
        for (const [tid, ms] of otherThreadsMs(b.pid, c0, c1)) threadMs.set(tid, (threadMs.get(tid) ?? 0) + ms)
      }
      cpu.loadGeneratorMs += r.cpuMs
      cpu.connects += r.connected
      cpu.elapsedMs += r.elapsedMs
      return r
    }
    const first = await timedHalf(ids.slice(0, N >> 1))
    const half = await b.memory()
    const second = await timedHalf(ids.slice(N >> 1))
    const connected = await b.memory()
    cpu.otherThreadsMs = [...threadMs.values()]
    // The profile, after the memory is read: the profiler's own memory (an entry per compiled function, the
    // samples) is native and stays in RSS, so inside a half it read as ~2-8 KB a device. The last
    // PROFILED_RECONNECTS devices reconnect with it on, so every device is connected again after it.
    let profile: ProfileSummary | null = null
    if (PROFILE) {
      const again = ids.slice(-Math.min(N, PROFILED_RECONNECTS))
      await gen({ op: 'disconnect', ids: again })
      await mint(again)
      const stopProfile = await startProfile(b)
      const r = await connectMinted(b.port, again, ADMISSION_CONCURRENCY)
      profile = await stopProfile(`${who}, over ${fmt(again.length)} of the devices reconnecting after the memory was read`)
      admissionRate(r, `${who} (profiled reconnects)`)
    }
    return {
      profile,
      cpu: cpuKnown ? cpu : null,
      rate: ((first.connected + second.connected) / (first.elapsedMs + second.elapsedMs)) * 1000,
      mem: {
        idle: idle.statusRss ?? idle.rss,
        half: half.statusRss ?? half.rss,
        connected: connected.statusRss ?? connected.rss,
        heapIdle: idle.heapUsed,
        heapHalf: half.heapUsed,
        heapConnected: connected.heapUsed,
        youngHalf: youngSize(half.spaces),
        youngConnected: youngSize(connected.spaces),
        spacesConnected: connected.spaces,
      },
    }
  }
  await attempt(results, 'bare aedes', async () => {
    const aedes = await spawnNodeBroker(procs, 'bare aedes', join(ROOT, 'bench', 'bare-aedes.ts'), [], { probe: true })
    await warmUp(aedes.port)
    const r = await admitInHalves(aedes, 'bare aedes')
    admission.aedes = r.rate
    memory.aedes = r.mem
    admissionCpu.aedes = r.cpu
    if (r.profile) admissionProfiles.push(r.profile)
    await gen({ op: 'disconnect', ids: 'all' })
    await aedes.stop()
    log(`bare aedes: ${fmt(admission.aedes)} connects/s`)
  })
  if (MOSQUITTO) {
    await attempt(results, 'mosquitto', async () => {
      const mosq = await startMosquitto(procs, 'mosquitto', join(scratch, 'mosquitto'))
      await warmUp(mosq.port)
      admission.mosquitto = admissionRate(await connect(mosq.port, ids, ADMISSION_CONCURRENCY), 'mosquitto')
      await gen({ op: 'disconnect', ids: 'all' })
      await mosq.stop()
      log(`mosquitto: ${fmt(admission.mosquitto)} connects/s`)
    })
  }

  const agentArgs = (dataDir: string): string[] => ['--data-dir', dataDir, '--site', SITE, '--gateway', GATEWAY, '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--log-level', 'warn', '--uplink', central.url, '--cp-key', `bench=${cpPub}`]
  // The one-core path (issue 19): the agent as it runs on a gateway of one
  // core, where its crypto pool has no worker and every verify runs on the
  // event loop, next to bare aedes on the same core; each confined to core 0
  // (taskset), the load generator free on the others. Its row goes after the
  // admission figure's.
  let oneCoreFigure: Figure | null = null
  if (TASKSET && cpus().length >= 2) {
    await attempt(results, 'admission on one core', async () => {
      const run = async (who: string, script: string, args: string[], nodeFlags: readonly string[]): Promise<{ rate: number; cpuUs: number | null; eventLoopUs: number | null; profile: ProfileSummary | null }> => {
        const b = await spawnNodeBroker(procs, `${who} (one core)`, script, args, { nodeFlags: [...nodeFlags], cpus: '0', probe: true })
        try {
          await warmUp(b.port)
          await mint(ids)
          const stopProfile = await startProfile(b)
          const c0 = threadCpuMsOf(b.pid)
          const r = await connectMinted(b.port, ids, ADMISSION_CONCURRENCY)
          const c1 = threadCpuMsOf(b.pid)
          const profile = await stopProfile(`${who} on one core, over the timed run`)
          const rate = admissionRate(r, `${who} (one core)`)
          await gen({ op: 'disconnect', ids: 'all' })
          const per = (ms: number | null): number | null => (ms !== null && r.connected ? (ms * 1000) / r.connected : null)
          return { rate, cpuUs: per(c0 && c1 && c1.total - c0.total), eventLoopUs: per(c0 && c1 && c1.main - c0.main), profile }
        } finally {
          await b.stop()
        }
      }
      const aedes = await run('bare aedes', join(ROOT, 'bench', 'bare-aedes.ts'), [], [])
      // on a copy of the agent's data dir: its 10,000 jtis written into the measured agent's store would be
      // LevelDB compactions during that agent's admission, and resident memory in its figure
      const dirOne = join(scratch, 'agent-one-core')
      cpSync(dirA, dirOne, { recursive: true })
      const agentRun = await run('agent', join(ROOT, 'bench', 'agent-host.ts'), agentArgs(dirOne), AGENT_NODE_FLAGS)
      rmSync(dirOne, { recursive: true, force: true })
      const ratio = agentRun.rate / aedes.rate
      const verifyUs = verifyCostUs()
      // on one core the verify is on the same core as everything else: bare aedes' connect with it added
      const verifyRatio = aedes.cpuUs !== null ? aedes.cpuUs / (aedes.cpuUs + verifyUs) : null
      const us = (x: number | null): string => (x === null ? '–' : fmt(x))
      oneCoreFigure = {
        name: 'admission on one core',
        workload: `as admission, each broker confined to one core (\`taskset -c 0\`), the load generator free on the other${cpus().length > 2 ? 's' : ''}: the agent with its defaults, so its crypto pool has no worker (one less than the cores it may use) and every verify runs on its event loop; value: agent ÷ bare aedes on the same core`,
        value: round(ratio, 3),
        unit: '× bare aedes',
        anchor: `agent ${fmt(agentRun.rate)} connects/s, bare aedes ${fmt(aedes.rate)}/s, both on one core; CPU per connect (all threads, on the one core): agent ${us(agentRun.cpuUs)} µs (event loop ${us(agentRun.eventLoopUs)}), bare aedes ${us(aedes.cpuUs)} µs (event loop ${us(aedes.eventLoopUs)}); one Ed25519 verify ${fmt(verifyUs)} µs, which on top of bare aedes' connect alone would allow ${verifyRatio === null ? '–' : verifyRatio.toFixed(2)} ×`,
        goal: 'none set (issue 19: the one-core path measured)',
        met: null,
        profiles: [agentRun.profile, aedes.profile].filter((p): p is ProfileSummary => p !== null),
        detail: { connectsPerS: { agent: round(agentRun.rate), bareAedes: round(aedes.rate) }, cpuPerConnectUs: { agent: agentRun.cpuUs && round(agentRun.cpuUs, 1), agentEventLoop: agentRun.eventLoopUs && round(agentRun.eventLoopUs, 1), bareAedes: aedes.cpuUs && round(aedes.cpuUs, 1), bareAedesEventLoop: aedes.eventLoopUs && round(aedes.eventLoopUs, 1) }, verifyUs: round(verifyUs, 1), verifyOnlyRatio: verifyRatio && round(verifyRatio, 3) },
      }
      log(`one core: agent ${fmt(agentRun.rate)} connects/s, bare aedes ${fmt(aedes.rate)}/s`)
    })
  }

  // measured here, while no agent runs; its row goes after the admission figure's
  const tlsFigures = await measureTls()

  let agent: Broker | null = null
  let host: ((req: HostRequest, timeoutMs?: number) => Promise<unknown>) | null = null
  await attempt(results, 'agent admission', async () => {
    agent = await spawnNodeBroker(procs, 'agent', join(ROOT, 'bench', 'agent-host.ts'), agentArgs(dirA), { probe: true, nodeFlags: AGENT_NODE_FLAGS })
    host = rpc<HostRequest>(agent.proc, 'agent')
    await warmUp(agent.port)
    const r = await admitInHalves(agent, 'agent')
    admission.agent = r.rate
    memory.agent = r.mem
    admissionCpu.agent = r.cpu
    if (r.profile) admissionProfiles.unshift(r.profile)
    log(`agent: ${fmt(admission.agent)} connects/s`)
  })
  if (admission.agent !== null || admission.aedes !== null) {
    const ratio = admission.agent !== null && admission.aedes ? admission.agent / admission.aedes : null
    const cores = cpus().length
    const perConnect = (c: AdmissionCpu | null): CpuCeiling | null =>
      c && c.connects ? cpuCeiling(cores, { count: c.connects, elapsedMs: c.elapsedMs, eventLoopMs: c.brokerMainMs, processMs: c.brokerMs, othersMs: c.loadGeneratorMs, otherThreadsMs: c.otherThreadsMs }) : null
    const cpuA = perConnect(admissionCpu.agent)
    const cpuB = perConnect(admissionCpu.aedes)
    // Both brokers, each with the load generator, on the same cores: at equal use of them the rates go as the
    // ceilings, so the ratio the CPU allows is the agent's ceiling over bare aedes' (both at their run's cost).
    const cpuRatio = cpuA && cpuB && cpuB.ceilingPerS > 0 ? cpuA.ceilingPerS / cpuB.ceilingPerS : null
    // The least the agent must add to bare aedes' connect: one Ed25519 verify. On cores shared with the load
    // generator that alone allows at most (aedes + generator) ÷ (aedes + generator + verify).
    const verifyUs = verifyCostUs()
    const verifyRatio = cpuB ? (cpuB.processUs + cpuB.othersUs) / (cpuB.processUs + cpuB.othersUs + verifyUs) : null
    const cpuText =
      cpuA && cpuB
        ? `; CPU per connect: agent ${fmt(cpuA.processUs)} µs (event loop ${fmt(cpuA.eventLoopUs)}, other threads ${fmt(cpuA.processUs - cpuA.eventLoopUs)}) with the load generator's ${fmt(cpuA.othersUs)}, ` +
          `bare aedes ${fmt(cpuB.processUs)} µs (event loop ${fmt(cpuB.eventLoopUs)}) with ${fmt(cpuB.othersUs)}; ` +
          `at that cost ${cores} fully busy cores would allow the agent ${fmt(cpuA.ceilingPerS)}/s and bare aedes ${fmt(cpuB.ceilingPerS)}/s (${cpuRatio!.toFixed(2)} ×); ` +
          `the runs kept ${cpuA.coresBusy} and ${cpuB.coresBusy} cores busy; ` +
          `one Ed25519 verify takes ${fmt(verifyUs)} µs here (measured in the same run), which on top of bare aedes' connect alone would allow ${verifyRatio!.toFixed(2)} ×`
        : ''
    const bound =
      ratio !== null && ratio < 0.9 && cpuA && cpuB && cpuRatio !== null
        ? cpuRatio < 0.9
          ? `the CPU a connect takes (agent ${fmt(cpuA.processUs)} µs and the load generator ${fmt(cpuA.othersUs)}, against bare aedes ${fmt(cpuB.processUs)} and ${fmt(cpuB.othersUs)}): at equal use of the same ${cores} cores that comes to ${cpuRatio.toFixed(2)} × (the runs kept ${cpuA.coresBusy} and ${cpuB.coresBusy} busy: the one that left more idle measured the closer to the other); the verify alone (${fmt(verifyUs)} µs a connect), added to bare aedes' connect, comes to ${verifyRatio!.toFixed(2)} × the same way: the least any agent that checks every token would cost`
          : `not the CPU: at equal use of the same ${cores} cores the CPU a connect takes comes to ${cpuRatio.toFixed(2)} × (the runs kept ${cpuA.coresBusy} and ${cpuB.coresBusy} busy)`
        : undefined
    results.figures.push({
      name: 'admission',
      workload: `${fmt(N)} device connects (CONNECT with a fresh signed token, SUBSCRIBE dev/<id>/cmd, SUBACK), ${ADMISSION_CONCURRENCY} in flight, after a warm-up of ${fmt(Math.min(N, WARM_UP))}, one load generator process on raw sockets; the agent checks every token in full; value: agent ÷ bare aedes`,
      value: ratio === null ? null : round(ratio, 3),
      unit: '× bare aedes',
      anchor:
        `agent ${admission.agent === null ? '–' : fmt(admission.agent)} connects/s; bare aedes (no authentication) ${admission.aedes === null ? '–' : fmt(admission.aedes)}/s; ` +
        `Mosquitto ${admission.mosquitto === null ? 'not run' : `${fmt(admission.mosquitto)}/s`}${cpuText}`,
      goal: '≥ 0.9 × bare aedes',
      met: ratio === null ? null : ratio >= 0.9,
      ...(bound ? { bound } : {}),
      ...(admissionProfiles.length ? { profiles: admissionProfiles } : {}),
      detail: { connectsPerS: { agent: admission.agent && round(admission.agent), bareAedes: admission.aedes && round(admission.aedes), mosquitto: admission.mosquitto && round(admission.mosquitto) }, concurrency: ADMISSION_CONCURRENCY, cpuPerConnect: { agent: cpuA, bareAedes: cpuB, cores, ratio: cpuRatio && round(cpuRatio, 3), verifyUs: round(verifyUs, 1), verifyOnlyRatio: verifyRatio && round(verifyRatio, 3) }, cpuMs: admissionCpu },
    })
  }
  if (oneCoreFigure) results.figures.push(oneCoreFigure)
  if (tlsFigures.admission) results.figures.push(tlsFigures.admission)
  if (memory.agent && memory.aedes) {
    const a = memory.agent
    const b = memory.aedes
    const M = N - (N >> 1) // the devices of the second half
    // the growth over the second half, less the young generation's change (youngSize)
    const growth = (x: Mem): number => x.connected - x.half - (x.youngConnected - x.youngHalf)
    const perDevice = (growth(a) - growth(b)) / M
    const rawPerDevice = (a.connected - a.half - (b.connected - b.half)) / M
    const fromIdle = (a.connected - a.idle - (b.connected - b.idle)) / N
    const mib = (x: number): string => `${(x / 1048576).toFixed(1)} MiB`
    results.figures.push({
      name: 'memory',
      workload:
        `resident memory (VmRSS after a forced GC) with ${fmt(N)} devices connected and subscribed, connected in two halves; ` +
        `value: the agent's growth per device over the second half above bare aedes', each less its change in V8's young generation reserved (a buffer sized by the allocation rate, not the devices; the growth as measured, and from idle, in the anchor)`,
      value: round(perDevice, 0),
      unit: 'bytes/device',
      anchor:
        `agent ${mib(a.idle)} idle → ${mib(a.half)} → ${mib(a.connected)}; bare aedes ${mib(b.idle)} → ${mib(b.half)} → ${mib(b.connected)} (${fmt((b.connected - b.half) / M)} B/device); ` +
        `young generation ${mib(a.youngHalf)} → ${mib(a.youngConnected)} (bare aedes ${mib(b.youngHalf)} → ${mib(b.youngConnected)}), with it ${fmt(Math.round(rawPerDevice))} B/device above aedes; ` +
        `from idle: ${fmt(fromIdle)} B/device above aedes; heap in use per device: agent ${fmt((a.heapConnected - a.heapHalf) / M)} B, bare aedes ${fmt((b.heapConnected - b.heapHalf) / M)} B`,
      goal: '≤ 2,048 bytes/device above bare aedes',
      met: perDevice <= 2048,
      detail: {
        agent: a,
        bareAedes: b,
        agentRssPerDevice: round((a.connected - a.half) / M, 0),
        bareAedesRssPerDevice: round((b.connected - b.half) / M, 0),
        withYoungGenerationAboveAedes: round(rawPerDevice, 0),
        fromIdleAboveAedes: round(fromIdle, 0),
        agentRssPerDeviceFromIdle: round((a.connected - a.idle) / N, 0),
        bareAedesRssPerDeviceFromIdle: round((b.connected - b.idle) / N, 0),
        // the JavaScript heap in use, for reading the RSS figures (RSS keeps what a heap grew to)
        agentHeapPerDevice: round((a.heapConnected - a.heapHalf) / M, 0),
        bareAedesHeapPerDevice: round((b.heapConnected - b.heapHalf) / M, 0),
      },
    })
  }
  if (!agent || !host) {
    // the storm over mTLS was measured already, with its own agent
    if (tlsFigures.storm) results.figures.push(tlsFigures.storm)
    return
  }
  const agentB: Broker = agent
  const hostRpc: (req: HostRequest, timeoutMs?: number) => Promise<unknown> = host

  // Revocation latency with N connected: command published to the central
  // broker → device socket closed by the agent, one device at a time; then
  // the same with the second core busy (a process spinning on it): the tail
  // a gateway shows when it is not alone on its machine.
  /** `device.revoke` for each of `ids` in turn, through the central broker, as the load generator times them */
  const revokeOneByOne = async (ids: string[]): Promise<RevokeReply> =>
    (await gen({ op: 'revoke', cp: { url: central.url, site: SITE, gateway: GATEWAY, kid: 'bench', keyPem: cpPem }, ids, gapMs: 10, timeoutMs: 5000 }, 600_000)) as RevokeReply
  const revocation = async (o: { name: string; sample: string[]; warmUp: string[]; workload: (n: number) => string; goal: string; busy: boolean }): Promise<void> => {
    if (o.warmUp.length) {
      const w = await revokeOneByOne(o.warmUp)
      if (w.timeouts) throw new Error(`${w.timeouts} of the ${o.warmUp.length} warm-up revocations did not close the socket within 5 s`)
    }
    const spinner = o.busy ? spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }) : null
    if (spinner) procs.add('cpu spinner', spinner)
    let r: RevokeReply
    // the load generator's own garbage first (the 10,000 connects before left it a young generation of
    // survivors: a 20 ms scavenge of it once stood in a window's slowest revocations); the agent's is its own
    await gen({ op: 'gc' })
    const stopProfile = await startProfile(agentB)
    await hostRpc({ op: 'accessRemoved' }) // what came before is not this sample's
    try {
      r = await revokeOneByOne(o.sample)
    } finally {
      spinner?.kill('SIGKILL')
    }
    if (r.timeouts) throw new Error(`${r.timeouts} of ${o.sample.length} revocations did not close the socket within 5 s`)
    const p50 = percentile(r.latenciesMs, 50)!
    const p99 = percentile(r.latenciesMs, 99)!
    // the agent's own part (its accessRemovedMs: command received to sessions closed), from the same revocations
    const asked = (await hostRpc({ op: 'accessRemoved' })) as AccessRemovedReply
    const profile = await stopProfile(`the agent, over the ${fmt(o.sample.length)} revocations`)
    const inside = asked.accessRemovedMs
    const insideP99 = percentile(inside, 99)
    const split = revocationSplit(r.samples, asked, p99, r.loop.pauses)
    const genLoop = `delay p99 ${r.loop.loopDelayMs.p99.toFixed(1)} ms, max ${r.loop.loopDelayMs.max.toFixed(1)} ms, ${gcWords(r.loop.gc)}`
    results.figures.push({
      name: o.name,
      workload: o.workload(r.latenciesMs.length),
      value: round(p99, 2),
      unit: 'ms',
      anchor:
        `p50 ${p50.toFixed(2)} ms; central broker PUBACK alone p50 ${percentile(r.brokerAckMs, 50)!.toFixed(2)} ms, p99 ${percentile(r.brokerAckMs, 99)!.toFixed(2)} ms; ` +
        `inside the agent (accessRemovedMs) p50 ${percentile(inside, 50)?.toFixed(2) ?? '–'} ms, p99 ${insideP99?.toFixed(2) ?? '–'} ms` +
        (asked.loop ? `; the agent's event-loop delay p99 ${asked.loop.loopDelayMs.p99.toFixed(1)} ms, max ${asked.loop.loopDelayMs.max.toFixed(1)} ms; its garbage collection in the window: ${gcWords(asked.loop.gc)}` : '') +
        (split ? `; ${split.words}` : '') +
        `; the load generator's own event loop in the window: ${genLoop}`,
      goal: o.goal,
      met: p99 <= 10,
      // the part after the close is the load generator's to see: its own loop's delay says whether it was late
      ...(p99 > 10 && split ? { bound: `${split.bound}; the load generator's own event loop: ${genLoop}` } : {}),
      ...(profile ? { profiles: [profile] } : {}),
      detail: {
        samples: r.latenciesMs.length,
        p50Ms: round(p50, 3),
        p99Ms: round(p99, 3),
        maxMs: round(Math.max(...r.latenciesMs), 3),
        brokerAckP50Ms: round(percentile(r.brokerAckMs, 50)!, 3),
        brokerAckP99Ms: round(percentile(r.brokerAckMs, 99)!, 3),
        insideAgent: { samples: inside.length, p50Ms: round(percentile(inside, 50) ?? 0, 3), p99Ms: round(insideP99 ?? 0, 3), maxMs: round(inside.length ? Math.max(...inside) : 0, 3) },
        agentLoopDelayMs: asked.loop && roundDelay(asked.loop),
        agentGc: asked.loop?.gc ?? null,
        loadGeneratorLoop: { delayMs: roundDelay(r.loop), gc: r.loop.gc },
        split: split?.detail ?? null,
        connected: N,
      },
    })
    log(`${o.name}: p50 ${p50.toFixed(2)} ms, p99 ${p99.toFixed(2)} ms`)
  }
  // A revocation's first run in the process (its code not compiled yet) is
  // not what a gateway does every time: the devices two after the first
  // window's are revoked before it (none where the windows' devices leave no
  // room between them).
  const revocationWarmUp = N >= 3 * REVOCATION_SAMPLES ? Array.from({ length: REVOCATION_WARM_UP }, (_, i) => ids[Math.floor((i * N) / REVOCATION_SAMPLES) + 2]!) : []
  await attempt(results, 'revocation', () =>
    revocation({
      name: 'revocation latency (p99)',
      sample: Array.from({ length: REVOCATION_SAMPLES }, (_, i) => ids[Math.floor((i * N) / REVOCATION_SAMPLES)]!),
      warmUp: revocationWarmUp,
      workload: (n) => `${fmt(n)} \`device.revoke\` commands, one at a time, signed by the control plane and published to the central broker (Mosquitto) while ${fmt(N)} devices are connected to the agent${revocationWarmUp.length ? `, after a warm-up of ${fmt(revocationWarmUp.length)} other devices revoked` : ''}: from the publish to the device's socket closed`,
      goal: '≤ 10 ms p99 with 10,000 connected',
      busy: false,
    }),
  )
  await attempt(results, 'revocation, second core busy', () =>
    revocation({
      name: 'revocation latency (p99), second core busy',
      // the devices next to the first sample's (those are revoked already)
      sample: [...new Set(Array.from({ length: REVOCATION_SAMPLES }, (_, i) => ids[Math.floor((i * N) / REVOCATION_SAMPLES) + 1]).filter((id): id is string => id !== undefined))],
      warmUp: [],
      workload: (n) => `as above, ${fmt(n)} other devices, while a process spins (a busy loop: a core's worth of CPU, not pinned; this machine has ${cpus().length} cores, which the agent, the load generator, the central broker and the spinner share)`,
      goal: '≤ 10 ms p99 also on a busy machine',
      busy: true,
    }),
  )
  await gen({ op: 'disconnect', ids: 'all' })

  // Bulk retire: every device, offline now, retired in one burst.
  let retired = 0
  await attempt(results, 'bulk retire', async () => {
    // the CPU of the window: the agent's, and the other processes' (the central broker takes the evidence's events)
    const others = (): number => (cpuMsOf(central.pid) ?? 0) + (cpuMsOf(genProc.pid!) ?? 0)
    const stopProfile = await startProfile(agentB)
    const c0 = threadCpuMsOf(agentB.pid)
    const o0 = others()
    const r = (await hostRpc({ op: 'retire', ids }, 600_000)) as RetireReply
    const c1 = threadCpuMsOf(agentB.pid)
    const o1 = others()
    const profile = await stopProfile('the agent, over the burst')
    if (r.failed.length) throw new Error(`${N - r.retired} retirements failed: ${r.failed.join('; ')}`)
    retired = r.queued
    const rate = (r.queued / r.elapsedMs) * 1000
    const cores = cpus().length
    const signUs = signCostUs()
    const cpu = c0 && c1 && r.queued ? cpuCeiling(cores, { count: r.queued, elapsedMs: r.elapsedMs, eventLoopMs: c1.main - c0.main, processMs: c1.total - c0.total, othersMs: o1 - o0, otherThreadsMs: otherThreadsMs(agentB.pid, c0, c1).values() }) : null
    results.figures.push({
      name: 'bulk retire',
      workload: `${fmt(N)} offline devices retired in one burst inside the agent (state change, sessions closed, evidence, one durable wipe action each, fsynced): wipe actions queued per second`,
      value: round(rate, 0),
      unit: 'actions/s',
      anchor:
        `${fmt(r.queued)} wipes queued in ${fmt(r.elapsedMs)} ms` +
        (cpu
          ? `; CPU per retirement: agent ${fmt(cpu.processUs)} µs (event loop ${fmt(cpu.eventLoopUs)}, other threads ${fmt(cpu.processUs - cpu.eventLoopUs)}: the signatures on the crypto pool, LevelDB, GC), central broker and the rest ${fmt(cpu.othersUs)}; at that cost ${cores} fully busy cores would allow at most ${fmt(cpu.ceilingPerS)}/s; the run kept ${cpu.coresBusy} busy; one Ed25519 signature takes ${fmt(signUs)} µs here (measured in the same run), so the 3 a retirement's evidence needs take ${fmt(3 * signUs)} µs, which alone would allow ${fmt((cores * 1e6) / (3 * signUs))}/s on ${cores} cores`
          : ''),
      goal: '≥ 20,000 actions/s',
      met: rate >= 20_000,
      ...(rate < 20_000 && cpu
        ? {
            bound:
              cpu.ceilingPerS < 20_000
                ? `at this run's CPU per retirement (${fmt(cpu.processUs)} µs in the agent, ${fmt(cpu.eventLoopUs)} of it on its event loop), ${cores} fully busy cores would allow at most ${fmt(cpu.ceilingPerS)}/s; the run kept ${cpu.coresBusy} of them busy`
                : `not the CPU: at this run's CPU per retirement ${cores} fully busy cores would allow ${fmt(cpu.ceilingPerS)}/s; the run kept ${cpu.coresBusy} of them busy`,
          }
        : {}),
      ...(profile ? { profiles: [profile] } : {}),
      detail: { retired: r.retired, queued: r.queued, elapsedMs: round(r.elapsedMs), cpuPerRetirement: cpu, signUs: round(signUs, 1) },
    })
    log(`bulk retire: ${fmt(rate)} actions/s`)
  })

  // Reconnect storm: the retired-while-offline devices, each with its wipe
  // queued, reconnect at once; done when every ack is recorded.
  if (retired > 0) {
    await attempt(results, 'reconnect storm', async () => {
      const before = (await hostRpc({ op: 'acks' })) as AcksReply
      await mint(ids)
      const stopProfile = await startProfile(agentB)
      const start = performance.timeOrigin + performance.now()
      const connecting = gen({ op: 'connect', port: agentB.port, ids, concurrency: STORM_CONCURRENCY, timeoutMs: 30_000, retryMs: 1000, deadlineMs: STORM_TIMEOUT_MS }, 600_000) as Promise<ConnectReply>
      const progress = setInterval(() => {
        void hostRpc({ op: 'acks' }).then((a) => log(`  storm: ${fmt((a as AcksReply).acks - before.acks)} acks recorded`), () => {})
      }, 5000)
      const [acked, connected] = await Promise.allSettled([hostRpc({ op: 'waitAcks', count: before.acks + retired, timeoutMs: STORM_TIMEOUT_MS }, STORM_TIMEOUT_MS + 10_000), connecting])
      clearInterval(progress)
      const profile = await stopProfile('the agent, from the first connect to the last ack')
      if (connected.status === 'rejected') throw connected.reason
      const c = connected.value
      if (acked.status === 'rejected') throw new Error(`${(acked.reason as Error).message.split('\n')[0]}; ${fmt(c.connected)} connected, ${fmt(c.failed)} connects failed (${c.errors.join('; ')})`)
      const done = acked.value as AcksReply
      const s = (done.lastAt - start) / 1000
      results.figures.push({
        name: 'reconnect storm',
        workload: `${fmt(N)} devices, offline while retired, each with one queued wipe, reconnect at once (${fmt(STORM_CONCURRENCY)} connects in flight; a device whose connect fails tries again after about 1 s, as devices do): from the first CONNECT until every wipe ack is recorded by the agent`,
        value: round(s, 2),
        unit: 's',
        anchor: `${fmt(c.connected)} devices back (${fmt(c.retries)} connects tried again), ${fmt(retired)} acks recorded; connects alone took ${(c.elapsedMs / 1000).toFixed(2)} s`,
        // the goal is a rate: 10,000 in under 10 s; a run at another size is judged at that rate
        // issue 19: a storm with connects tried again is not met, however fast
        goal: `${N === 10_000 ? '< 10 s for 10,000' : `< 10 s for 10,000 (so < ${((10 * N) / 10_000).toFixed(2)} s for ${fmt(N)})`}, 0 connects tried again`,
        met: s < (10 * N) / 10_000 && c.retries === 0 && c.failed === 0,
        ...(c.retries > 0 || c.failed > 0 ? { bound: `${fmt(c.retries)} connects tried again${c.failed ? `, ${fmt(c.failed)} failed` : ''} (first errors: ${c.errors.slice(0, 3).join('; ') || 'none kept'})` } : {}),
        ...(profile ? { profiles: [profile] } : {}),
        detail: { devices: N, acks: done.acks - before.acks, connectsMs: round(c.elapsedMs), connectRetries: c.retries, connectFailures: c.failed, firstErrors: c.errors, concurrency: STORM_CONCURRENCY },
      })
      log(`reconnect storm: ${s.toFixed(2)} s`)
    })
  }
  // measured with the TLS figures, before this agent started; its row goes after the token storm's
  if (tlsFigures.storm) results.figures.push(tlsFigures.storm)

  // Commands through the uplink: N device.enroll from the control plane
  // through the central broker (Mosquitto), in ctl bulk's window, until
  // every one completed; next to the same client publishing N QoS 1
  // messages in the same window (the broker's own rate, PUBACK each).
  await attempt(results, 'commands through the uplink', async () => {
    // The earlier phases' events (the storm's evidence: several per device) are sent to the central broker first,
    // in seq order as every event is: timed here, and not counted against the commands.
    const drain = (await hostRpc({ op: 'drainOutbox', timeoutMs: 180_000 }, 190_000)) as DrainReply
    log(`uplink: ${fmt(drain.depth)} events of the earlier phases still to send; sent in ${(drain.ms / 1000).toFixed(1)} s${drain.left ? ` (${fmt(drain.left)} left)` : ''}`)
    const keyFile = join(scratch, 'cp.key')
    writeFileSync(keyFile, cpPem, { mode: 0o600 })
    const cp = new ControlPlane({ broker: central.url, site: SITE, gateway: GATEWAY, key: keyFile, kid: 'bench', gatewayKey: prepA.gatewayPublicKey, clientId: 'bench-cp' })
    await cp.connect()
    try {
      await cp.waitOnline()
      const WINDOW = 200
      const cmds = Array.from({ length: N }, (_, i) => cp.sign('device.enroll', { device: { id: deviceId('up', i), publicKey: generateKeyPair().publicKeyB64 } }, { lifetimeS: 3600 }))
      // Halfway through, a revocation from another sender, as the control plane would send one during a
      // bulk: how long until it completed, and how many of the bulk's commands the gateway took before it.
      const accepted: string[] = []
      const offAccepted = cp.onEvent((e) => {
        if (e.type === 'cmd.accepted' && typeof e.data.jti === 'string') accepted.push(e.data.jti)
      })
      let revoke = null as Promise<{ ms: number; ahead: number; type: string }> | null
      let settled = 0
      const startRevoke = (): void => {
        const r = cp.sign('device.revoke', { deviceId: deviceId('up', 0), reason: 'bench: revoked during a bulk' })
        const sentAt = accepted.length
        const t0 = performance.now()
        const done = cp.waitFor((e) => TERMINAL.has(e.type) && e.data.jti === r.jti, 120_000)
        revoke = cp.publishRaw(r.jws).then(async () => {
          const e = await done
          return { ms: performance.now() - t0, ahead: accepted.indexOf(r.jti) - sentAt, type: e.type }
        })
      }
      let t = performance.now()
      const rep = await cp.sendAll(cmds, { window: WINDOW, resendAfterMs: 10_000, timeoutMs: 600_000, onSettled: () => void (++settled === N >> 1 && startRevoke()) })
      const agentMs = performance.now() - t
      const during = revoke ? await revoke : null
      offAccepted()
      if (during && during.type !== 'cmd.completed') throw new Error(`the revocation sent during the bulk was answered ${during.type}`)
      const completed = rep.results.filter((x) => x.outcome === 'completed').length
      if (completed !== N) throw new Error(`${completed} of ${N} enrolls completed: ${JSON.stringify(rep.results.find((x) => x.outcome !== 'completed'))}`)
      // The broker alone: the same count, the same window, to a topic nobody reads.
      t = performance.now()
      let next = 0
      const payload = cmds[0]!.jws
      await Promise.all(
        Array.from({ length: WINDOW }, async () => {
          while (next < N) {
            next++
            await cp.publishRawTo('bench/anchor', payload)
          }
        }),
      )
      const brokerMs = performance.now() - t
      const rate = (N / agentMs) * 1000
      const brokerRate = (N / brokerMs) * 1000
      results.figures.push({
        name: 'commands through the uplink',
        workload: `${fmt(N)} \`device.enroll\` commands (a new device and key each) from the control plane through the central broker (Mosquitto) to the agent, ${WINDOW} unanswered at most (ctl bulk's window), until every \`cmd.completed\` is back: commands per second`,
        value: round(rate, 0),
        unit: 'commands/s',
        anchor:
          `the same client publishing ${fmt(N)} QoS 1 messages in the same window: ${fmt(brokerRate)}/s (${round(rate / brokerRate, 3)} × the broker); ${fmt(rep.resends)} re-sent; ` +
          `first, ${fmt(drain.depth)} events of the earlier phases sent in ${(drain.ms / 1000).toFixed(1)} s (not timed here)` +
          (during ? `; a \`device.revoke\` sent halfway completed in ${round(during.ms, 0)} ms, ${fmt(during.ahead)} of the bulk's commands taken before it` : ''),
        goal: 'none set (issue 19: measured, windowed, nothing lost)',
        met: null,
        detail: { commands: N, window: WINDOW, ms: round(agentMs), resends: rep.resends, revokeDuringBulk: during && { ms: round(during.ms), commandsAhead: during.ahead }, duplicates: rep.duplicates, brokerAloneMs: round(brokerMs), brokerPerS: round(brokerRate), earlierEvents: { depth: drain.depth, left: drain.left, ms: round(drain.ms) } },
      })
      log(`commands through the uplink: ${fmt(rate)}/s (the broker alone ${fmt(brokerRate)}/s)`)
    } finally {
      await cp.close()
    }
  })
}

/** Events ingested per second into PostgreSQL (and PGlite) and commands fanned out to 100 gateways, each next to Mosquitto's own rate in the same run. */
async function controlPlaneFigures(results: BenchResults): Promise<void> {
  await attempt(results, 'control plane', async () => {
    const r = await runControlPlaneBench({
      events: QUICK ? 2000 : 10_000,
      gateways: 100,
      commandsPerGateway: QUICK ? 5 : 20,
      engines: ['postgres', 'pglite'],
      log: (line) => log(`control plane: ${line}`),
    })
    for (const [engine, e] of Object.entries(r.intake.engines)) {
      results.figures.push({
        name: `control plane: events ingested (${engine})`,
        workload: `${fmt(e.count)} signed events from ${r.options.intakeGateways} gateways through Mosquitto into the service: each verified against its gateway's key and stored verbatim with its decoded form, on ${engine === 'postgres' ? 'PostgreSQL' : 'embedded PGlite'}: events per second`,
        value: e.perSecond,
        unit: 'events/s',
        anchor: `Mosquitto alone, the same events with the same load generator: ${fmt(r.intake.broker.perSecond)}/s (${e.vsBroker} × the broker)`,
        goal: 'none set (issue 21: next to the broker\'s own rate)',
        met: null,
        detail: { ...e, broker: r.intake.broker },
      })
    }
    for (const [engine, f] of Object.entries(r.fanout.engines)) {
      results.figures.push({
        name: `control plane: commands fanned out (${engine})`,
        workload: `${fmt(f.delivered.count)} commands (${r.options.commandsPerGateway} for each of ${r.options.gateways} simulated gateways) through the API, stored, signed and sent in each gateway's window, on ${engine === 'postgres' ? 'PostgreSQL' : 'embedded PGlite'}: commands delivered per second`,
        value: f.delivered.perSecond,
        unit: 'commands/s',
        anchor: `Mosquitto alone: ${fmt(r.fanout.broker.perSecond)}/s (${f.delivered.vsBroker} × the broker); completed (answered by the gateways) ${fmt(f.completed.perSecond)}/s`,
        goal: 'none set (issue 21: next to the broker\'s own rate)',
        met: null,
        detail: { ...f, broker: r.fanout.broker },
      })
    }
  })
}

/** How long LevelDB takes to hand over every device record of `dataDir` (as the registry reads them at start), ms; checks it read `n`. */
async function registryReadMs(dataDir: string, n: number): Promise<number> {
  const store = await Store.open(dataDir)
  try {
    const t0 = performance.now()
    let read = 0
    for await (const batch of store.scanBatches(DEVICE_PREFIX, 5000)) read += batch.length
    const ms = performance.now() - t0
    if (read !== n) throw new Error(`read ${read} device records, not ${n}`)
    return ms
  } finally {
    await store.close()
  }
}

/** COLD_N enrolled devices for the cold-start registry (public keys only). */
function* coldDevices(n: number): Generator<{ id: string; publicKey: string }> {
  for (let i = 0; i < n; i++) {
    yield { id: deviceId('cold', i), publicKey: generateKeyPair().publicKeyB64 }
  }
}

const results = await main()
const table = renderTable(results)
const json = JSON.stringify(results, null, 2)
writeAtomically(OUT, `${json}\n`)
if (DOCS) writeDocsTable(DOCS, results)
process.stdout.write(`${table}\n\n${json}\n`)
log(`results in ${OUT}${DOCS ? `, table in ${DOCS}` : ''}`)
process.exit(results.errors.length ? 1 : 0)
