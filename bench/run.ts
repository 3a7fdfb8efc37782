// `npm run bench`: one run on this machine, every figure next to its anchor
// measured in the same run with the same load generator. Prints the table
// and the JSON, writes bench/results.json and the table in
// docs/performance.md (between its markers). `--quick`: the same at 1,000
// devices (results in .bench-scratch/results.quick.json, docs left alone).
//
// Processes: the agent (bench/agent-host.ts: `edgewarden start` plus an
// IPC window), bare aedes, Mosquitto (anchor, and the central broker of the
// uplink), the load generator, and the real CLI for the cold start; each
// its own process so its core and its memory are its own. All are killed on
// the way out, whatever happened; everything listens on 127.0.0.1 on ports
// chosen free at run time.
import { generateKeyPair } from '../agent/store/keys.ts'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { cpus } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { MOSQUITTO, Procs, ROOT, spawnNodeBroker, startMosquitto, type Broker } from './anchors.ts'
import type { AcksReply, HostRequest, RetireReply } from './agent-host.ts'
import type { ConnectReply, LoadRequest, RevokeReply } from './loadgen.ts'
import { makeDevices, prepareDataDir, deviceId, type BenchDevice } from './prepare.ts'
import { percentile, renderTable, writeAtomically, writeDocsTable, type BenchResults, type Figure } from './report.ts'

const { values: flags } = parseArgs({
  args: process.argv.slice(2),
  options: {
    quick: { type: 'boolean' },
    devices: { type: 'string' },
    'cold-start-devices': { type: 'string' },
    out: { type: 'string' },
    docs: { type: 'string' },
    'no-docs': { type: 'boolean' },
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
const SITE = 'bench'
const GATEWAY = 'gw-bench'
/** connects in flight at once in the admission runs (the same for every broker) */
const ADMISSION_CONCURRENCY = 200
/** devices connected and let go before each admission run */
const WARM_UP = 300
/** connects in flight at once in the storm: "at once", bounded by what one load generator can open */
const STORM_CONCURRENCY = 1000
/** the storm gives up after this long (devices whose connect failed retry until then) */
const STORM_TIMEOUT_MS = 240_000
/** extra node flags for the agent, e.g. BENCH_AGENT_NODE_FLAGS="--cpu-prof --cpu-prof-dir=.bench-scratch/prof" to profile it */
const AGENT_NODE_FLAGS = (process.env.BENCH_AGENT_NODE_FLAGS ?? '').split(' ').filter(Boolean)
const REVOCATION_SAMPLES = Math.min(N, QUICK ? 100 : 200)

const log = (s: string): void => void process.stderr.write(`bench: ${s}\n`)
const fmt = (n: number): string => Math.round(n).toLocaleString('en-US')
const round = (n: number, digits = 2): number => Math.round(n * 10 ** digits) / 10 ** digits

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
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', node: process.version, platform: `${process.platform} ${process.arch}`, mosquitto: mosquittoVersion(), fdLimit: limit === Infinity ? null : limit },
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
    const once = async (dir: string): Promise<number> => {
      const b = await spawnNodeBroker(procs, 'cold-start agent', cli, ['start', '--data-dir', dir, '--site', SITE, '--gateway', GATEWAY, '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--log-level', 'info'])
      if (b.ready.devices !== undefined && b.ready.devices !== (dir === dirCold ? COLD_N : 0)) throw new Error(`the agent reported ${String(b.ready.devices)} devices`)
      await b.stop()
      return b.readyMs
    }
    await once(dirEmpty) // warm the file cache and tsx's compile cache
    const empty = Math.min(await once(dirEmpty), await once(dirEmpty))
    const big = Math.min(await once(dirCold), await once(dirCold))
    results.figures.push({
      name: 'cold start',
      workload: `\`edgewarden start\` (the real CLI, a new process) on a registry of ${fmt(COLD_N)} devices: from spawn to its \`ready\` line; best of 2`,
      value: round(big, 0),
      unit: 'ms',
      anchor: `empty registry: ${fmt(empty)} ms (so ${fmt(big - empty)} ms for the registry)`,
      goal: `< 2,000 ms with 100,000 devices${COLD_N === 100_000 ? '' : ` (run here with ${fmt(COLD_N)})`}`,
      met: COLD_N >= 100_000 ? big < 2000 : null, // not judged on a smaller registry
      detail: { devices: COLD_N, readyMs: round(big), emptyRegistryReadyMs: round(empty), registryMs: round(big - empty) },
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
  const genProc = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'bench', 'loadgen.ts')], { cwd: ROOT, stdio: ['ignore', 'inherit', 'pipe', 'ipc'] })
  procs.add('load generator', genProc)
  const gen = rpc<LoadRequest>(genProc, 'load generator')
  await gen({ op: 'init', devices: devices.map((d: BenchDevice) => ({ id: d.id, d: d.d })), gatewayId: GATEWAY, gatewayPublicKey: prepA.gatewayPublicKey })
  const connect = async (port: number, list: string[], concurrency: number, timeoutMs = 30_000): Promise<ConnectReply> => {
    await gen({ op: 'mint', ids: list, lifetimeS: 1800 })
    return (await gen({ op: 'connect', port, ids: list, concurrency, timeoutMs }, 600_000)) as ConnectReply
  }
  /** Connect a few hundred devices and let them go, so neither the broker nor the generator is measured cold (JIT, first allocations). */
  const warmUp = async (port: number): Promise<void> => {
    await connect(port, ids.slice(0, Math.min(N, WARM_UP)), ADMISSION_CONCURRENCY)
    await gen({ op: 'disconnect', ids: 'all' })
  }
  const admissionRate = (r: ConnectReply, who: string): number => {
    if (r.failed) throw new Error(`${who}: ${r.failed} of ${r.connected + r.failed} connects failed (${r.errors.join('; ')})`)
    return (r.connected / r.elapsedMs) * 1000
  }

  // Admission and memory: bare aedes, then Mosquitto, then the agent; each
  // anchor disconnected and stopped before the next broker is loaded.
  const admission: { agent: number | null; aedes: number | null; mosquitto: number | null } = { agent: null, aedes: null, mosquitto: null }
  type Mem = { idle: number; connected: number; heapIdle: number; heapConnected: number }
  const memory: { agent: Mem | null; aedes: Mem | null } = { agent: null, aedes: null }
  await attempt(results, 'bare aedes', async () => {
    const aedes = await spawnNodeBroker(procs, 'bare aedes', join(ROOT, 'bench', 'bare-aedes.ts'), [], { probe: true })
    await warmUp(aedes.port)
    const idle = await aedes.memory() // after the warm-up: both measured warm
    admission.aedes = admissionRate(await connect(aedes.port, ids, ADMISSION_CONCURRENCY), 'bare aedes')
    const connected = await aedes.memory()
    memory.aedes = { idle: idle.statusRss ?? idle.rss, connected: connected.statusRss ?? connected.rss, heapIdle: idle.heapUsed, heapConnected: connected.heapUsed }
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

  const agentArgs = ['--data-dir', dirA, '--site', SITE, '--gateway', GATEWAY, '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--log-level', 'warn', '--uplink', central.url, '--cp-key', `bench=${cpPub}`]
  let agent: Broker | null = null
  let host: ((req: HostRequest, timeoutMs?: number) => Promise<unknown>) | null = null
  await attempt(results, 'agent admission', async () => {
    agent = await spawnNodeBroker(procs, 'agent', join(ROOT, 'bench', 'agent-host.ts'), agentArgs, { probe: true, nodeFlags: AGENT_NODE_FLAGS })
    host = rpc<HostRequest>(agent.proc, 'agent')
    await warmUp(agent.port)
    const idle = await agent.memory() // after the warm-up: both measured warm
    admission.agent = admissionRate(await connect(agent.port, ids, ADMISSION_CONCURRENCY), 'agent')
    const connected = await agent.memory()
    memory.agent = { idle: idle.statusRss ?? idle.rss, connected: connected.statusRss ?? connected.rss, heapIdle: idle.heapUsed, heapConnected: connected.heapUsed }
    log(`agent: ${fmt(admission.agent)} connects/s`)
  })
  if (admission.agent !== null || admission.aedes !== null) {
    const ratio = admission.agent !== null && admission.aedes ? admission.agent / admission.aedes : null
    results.figures.push({
      name: 'admission',
      workload: `${fmt(N)} device connects (CONNECT with a fresh signed token, SUBSCRIBE dev/<id>/cmd, SUBACK), ${ADMISSION_CONCURRENCY} in flight, after a warm-up of ${fmt(Math.min(N, WARM_UP))}, one load generator process on raw sockets; the agent checks every token in full; value: agent ÷ bare aedes`,
      value: ratio === null ? null : round(ratio, 3),
      unit: '× bare aedes',
      anchor:
        `agent ${admission.agent === null ? '–' : fmt(admission.agent)} connects/s; bare aedes (no authentication) ${admission.aedes === null ? '–' : fmt(admission.aedes)}/s; ` +
        `Mosquitto ${admission.mosquitto === null ? 'not run' : `${fmt(admission.mosquitto)}/s`}`,
      goal: '≥ 0.9 × bare aedes',
      met: ratio === null ? null : ratio >= 0.9,
      detail: { connectsPerS: { agent: admission.agent && round(admission.agent), bareAedes: admission.aedes && round(admission.aedes), mosquitto: admission.mosquitto && round(admission.mosquitto) }, concurrency: ADMISSION_CONCURRENCY },
    })
  }
  if (memory.agent && memory.aedes) {
    const a = memory.agent
    const b = memory.aedes
    const perDevice = (a.connected - a.idle - (b.connected - b.idle)) / N
    const mib = (x: number): string => `${(x / 1048576).toFixed(1)} MiB`
    results.figures.push({
      name: 'memory',
      workload: `resident memory (VmRSS after a forced GC) with ${fmt(N)} devices connected and subscribed, minus the same process idle; value: the agent's growth per device above bare aedes' growth`,
      value: round(perDevice, 0),
      unit: 'bytes/device',
      anchor: `agent ${mib(a.idle)} idle → ${mib(a.connected)}; bare aedes ${mib(b.idle)} → ${mib(b.connected)} (${fmt((b.connected - b.idle) / N)} B/device); heap in use per device: agent ${fmt((a.heapConnected - a.heapIdle) / N)} B, bare aedes ${fmt((b.heapConnected - b.heapIdle) / N)} B`,
      goal: '≤ 2,048 bytes/device above bare aedes',
      met: perDevice <= 2048,
      detail: {
        agent: a,
        bareAedes: b,
        agentRssPerDevice: round((a.connected - a.idle) / N, 0),
        bareAedesRssPerDevice: round((b.connected - b.idle) / N, 0),
        // the JavaScript heap in use, for reading the RSS figures (RSS keeps what a heap grew to)
        agentHeapPerDevice: round((a.heapConnected - a.heapIdle) / N, 0),
        bareAedesHeapPerDevice: round((b.heapConnected - b.heapIdle) / N, 0),
      },
    })
  }
  if (!agent || !host) return
  const agentB: Broker = agent
  const hostRpc: (req: HostRequest, timeoutMs?: number) => Promise<unknown> = host

  // Revocation latency with N connected: command published to the central
  // broker → device socket closed by the agent, one device at a time.
  await attempt(results, 'revocation', async () => {
    const sample = Array.from({ length: REVOCATION_SAMPLES }, (_, i) => ids[Math.floor((i * N) / REVOCATION_SAMPLES)]!)
    const r = (await gen({ op: 'revoke', cp: { url: central.url, site: SITE, gateway: GATEWAY, kid: 'bench', keyPem: cpPem }, ids: sample, gapMs: 10, timeoutMs: 5000 }, 600_000)) as RevokeReply
    if (r.timeouts) throw new Error(`${r.timeouts} of ${sample.length} revocations did not close the socket within 5 s`)
    const p50 = percentile(r.latenciesMs, 50)!
    const p99 = percentile(r.latenciesMs, 99)!
    results.figures.push({
      name: 'revocation latency (p99)',
      workload: `${fmt(r.latenciesMs.length)} \`device.revoke\` commands, one at a time, signed by the control plane and published to the central broker (Mosquitto) while ${fmt(N)} devices are connected to the agent: from the publish to the device's socket closed`,
      value: round(p99, 2),
      unit: 'ms',
      anchor: `p50 ${p50.toFixed(2)} ms; central broker PUBACK alone p50 ${percentile(r.brokerAckMs, 50)!.toFixed(2)} ms`,
      goal: '≤ 10 ms p99 with 10,000 connected',
      met: p99 <= 10,
      detail: { samples: r.latenciesMs.length, p50Ms: round(p50, 3), p99Ms: round(p99, 3), maxMs: round(Math.max(...r.latenciesMs), 3), brokerAckP50Ms: round(percentile(r.brokerAckMs, 50)!, 3), connected: N },
    })
    log(`revocation: p50 ${p50.toFixed(2)} ms, p99 ${p99.toFixed(2)} ms`)
  })
  await gen({ op: 'disconnect', ids: 'all' })

  // Bulk retire: every device, offline now, retired in one burst.
  let retired = 0
  await attempt(results, 'bulk retire', async () => {
    const r = (await hostRpc({ op: 'retire', ids }, 600_000)) as RetireReply
    if (r.failed.length) throw new Error(`${N - r.retired} retirements failed: ${r.failed.join('; ')}`)
    retired = r.queued
    const rate = (r.queued / r.elapsedMs) * 1000
    results.figures.push({
      name: 'bulk retire',
      workload: `${fmt(N)} offline devices retired in one burst inside the agent (state change, sessions closed, evidence, one durable wipe action each, fsynced): wipe actions queued per second`,
      value: round(rate, 0),
      unit: 'actions/s',
      anchor: `${fmt(r.queued)} wipes queued in ${fmt(r.elapsedMs)} ms`,
      goal: '≥ 20,000 actions/s',
      met: rate >= 20_000,
      detail: { retired: r.retired, queued: r.queued, elapsedMs: round(r.elapsedMs) },
    })
    log(`bulk retire: ${fmt(rate)} actions/s`)
  })

  // Reconnect storm: the retired-while-offline devices, each with its wipe
  // queued, reconnect at once; done when every ack is recorded.
  if (retired > 0) {
    await attempt(results, 'reconnect storm', async () => {
      const before = (await hostRpc({ op: 'acks' })) as AcksReply
      await gen({ op: 'mint', ids, lifetimeS: 1800 })
      const start = performance.timeOrigin + performance.now()
      const connecting = gen({ op: 'connect', port: agentB.port, ids, concurrency: STORM_CONCURRENCY, timeoutMs: 30_000, retryMs: 1000, deadlineMs: STORM_TIMEOUT_MS }, 600_000) as Promise<ConnectReply>
      const progress = setInterval(() => {
        void hostRpc({ op: 'acks' }).then((a) => log(`  storm: ${fmt((a as AcksReply).acks - before.acks)} acks recorded`), () => {})
      }, 5000)
      const [acked, connected] = await Promise.allSettled([hostRpc({ op: 'waitAcks', count: before.acks + retired, timeoutMs: STORM_TIMEOUT_MS }, STORM_TIMEOUT_MS + 10_000), connecting])
      clearInterval(progress)
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
        goal: N === 10_000 ? '< 10 s for 10,000' : `< 10 s for 10,000 (so < ${((10 * N) / 10_000).toFixed(2)} s for ${fmt(N)})`,
        met: s < (10 * N) / 10_000,
        detail: { devices: N, acks: done.acks - before.acks, connectsMs: round(c.elapsedMs), connectRetries: c.retries, connectFailures: c.failed, firstErrors: c.errors, concurrency: STORM_CONCURRENCY },
      })
      log(`reconnect storm: ${s.toFixed(2)} s`)
    })
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
