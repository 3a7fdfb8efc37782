// The benchmark's own machinery, cheaply: the results rendered as the table
// of docs/performance.md, the table replaced between its markers (and
// nothing else), percentiles. The benchmark itself is not a test.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { BEGIN, cpuCeiling, END, formatValue, percentile, renderTable, replaceBetweenMarkers, type BenchResults } from '../../../bench/report.ts'
import { otherThreadsMs, Procs, signCostUs, spawnNodeBroker, threadCpuMsOf, verifyCostUs } from '../../../bench/anchors.ts'
import { watchLoop } from '../../../bench/loop-watch.ts'
import { renderProfile, summariseProfile, type CpuProfile } from '../../../bench/profile.ts'
import { Worker } from 'node:worker_threads'
import { ROOT } from '../../helpers/agent.ts'

const results: BenchResults = {
  version: 1,
  startedAt: '2026-11-23T10:00:00.000Z',
  finishedAt: '2026-11-23T10:05:00.000Z',
  quick: false,
  devices: 10_000,
  coldStartDevices: 100_000,
  machine: { cpus: 2, cpuModel: 'Test CPU', node: 'v20.0.0', platform: 'linux x64', mosquitto: '2.0.11', fdLimit: 20000 },
  figures: [
    { name: 'admission', workload: 'connects | with a pipe', value: 0.93, unit: '× bare aedes', anchor: 'agent 900/s', goal: '≥ 0.9', met: true, detail: {} },
    { name: 'bulk retire', workload: 'burst', value: 2345.6, unit: 'actions/s', anchor: '-', goal: '≥ 20,000', met: false, detail: {} },
    { name: 'storm', workload: 'storm', value: 12, unit: 's', anchor: '-', goal: '< 10 s', met: false, bound: 'at this CPU | 2 cores allow 3,000/s', detail: {} },
    { name: 'memory', workload: 'rss', value: null, unit: 'bytes/device', anchor: '-', goal: '≤ 2,048', met: null, detail: {} },
  ],
  errors: [{ name: 'reconnect storm', error: 'agent: 9 of 10 acks\n  at stack' }],
}

test('the table: one row per figure with its workload, anchor, goal and verdict; the machine; failed workloads', () => {
  const table = renderTable(results)
  const lines = table.split('\n')
  assert.equal(lines[0], '| Figure | Measured | Anchor (same run) | Goal | Met | Workload |')
  assert.equal(lines[2], '| admission | 0.93 × bare aedes | agent 900/s | ≥ 0.9 | yes | connects \\| with a pipe |')
  assert.equal(lines[3], '| bulk retire | 2,346 actions/s | - | ≥ 20,000 | **no** | burst |')
  assert.equal(lines[4], '| storm | 12.0 s | - | < 10 s | **no**: at this CPU \\| 2 cores allow 3,000/s | storm |', 'a missed goal with its bound')
  assert.equal(lines[5], '| memory | not measured | - | ≤ 2,048 | – | rss |')
  assert.match(table, /10,000 devices, cold start with 100,000; 2 × Test CPU, Node v20\.0\.0, linux x64, Mosquitto 2\.0\.11, open files limit 20000/)
  assert.match(table, /- reconnect storm: agent: 9 of 10 acks$/m)
  assert.equal(formatValue({ value: 12.345, unit: 'ms' }), '12.3 ms')
})

test('only what lies between the markers is replaced; missing markers are an error and change nothing', () => {
  const doc = `# Title\n\nbefore\n${BEGIN}\nold table\n${END}\nafter\n`
  const once = replaceBetweenMarkers(doc, 'NEW')
  assert.equal(once, `# Title\n\nbefore\n${BEGIN}\nNEW\n${END}\nafter\n`)
  assert.equal(replaceBetweenMarkers(once, 'NEWER'), `# Title\n\nbefore\n${BEGIN}\nNEWER\n${END}\nafter\n`)
  assert.throws(() => replaceBetweenMarkers('# no markers', 'x'), /markers .* are missing/)
  assert.throws(() => replaceBetweenMarkers(`${END}\n${BEGIN}`, 'x'), /out of order/)
  // docs/performance.md carries the markers the benchmark writes between
  const perf = readFileSync(join(ROOT, 'docs', 'performance.md'), 'utf8')
  assert.ok(perf.includes(BEGIN) && perf.indexOf(END) > perf.indexOf(BEGIN))
})

test('percentiles by nearest rank', () => {
  const xs = Array.from({ length: 100 }, (_, i) => 100 - i) // 100..1, unsorted
  assert.equal(percentile(xs, 50), 50)
  assert.equal(percentile(xs, 99), 99)
  assert.equal(percentile(xs, 100), 100)
  assert.equal(percentile([7], 99), 7)
  assert.equal(percentile([], 50), null)
})

test('the CPU ceiling: the event loop on one core, everything on all of them, at the window\'s cost per item', () => {
  // 1,000 items: 300 ms on the event loop, 500 ms in the process, 200 ms elsewhere, in 600 ms
  const c = cpuCeiling(2, { count: 1000, elapsedMs: 600, eventLoopMs: 300, processMs: 500, othersMs: 200, otherThreadsMs: [40, 120] })
  assert.deepEqual(c, { eventLoopUs: 300, processUs: 500, busiestOtherThreadsUs: [120, 40], othersUs: 200, coresBusy: 1.17, ceilingPerS: 2857 }, '2 cores ÷ 700 µs = 2,857/s, under the event loop\'s 3,333/s')
  // on 4 cores the event loop is what is left
  assert.equal(cpuCeiling(4, { count: 1000, elapsedMs: 600, eventLoopMs: 300, processMs: 500, othersMs: 200 }).ceilingPerS, 3333)
})

test('CPU per thread from /proc: the main thread is part of the process, a busy worker shows among the other threads', { skip: process.platform !== 'linux' }, async () => {
  const before = threadCpuMsOf(process.pid)!
  // a worker that spins for 400 ms of wall time (its own CPU cannot be read from inside on Node 20), then waits
  const w = new Worker('const t = Date.now(); while (Date.now() - t < 400) {} require("node:worker_threads").parentPort.postMessage(1); setInterval(() => {}, 1000)', { eval: true })
  await new Promise((r) => w.once('message', r))
  const after = threadCpuMsOf(process.pid)!
  await w.terminate()
  assert.ok(after.main <= after.total && before.main <= before.total)
  const others = otherThreadsMs(process.pid, before, after)
  assert.ok(!others.has(process.pid), 'the main thread is not among the others')
  const busiest = Math.max(...others.values())
  const all = [...others.values()].reduce((a, b) => a + b, 0)
  assert.ok(busiest >= 50, `the busiest other thread used ${busiest} ms`)
  assert.ok(busiest >= 0.6 * all, `the spinning worker (${busiest} ms) is most of what the other threads used (${all} ms)`)
})

test('the verify anchor: Ed25519 verifies as the crypto workers make them (the key as a JWK), each one checked', () => {
  const us = verifyCostUs(200)
  assert.ok(Number.isFinite(us) && us > 0, `${us} µs a verify`)
})

test('the sign anchor: Ed25519 signatures with one key, each one of 64 bytes', () => {
  const us = signCostUs(200)
  assert.ok(Number.isFinite(us) && us > 0, `${us} µs a signature`)
})

test('a CPU profile summarised: shares by kind (the product, each package, Node, GC, idle) and the functions with most time of their own, over a window', () => {
  const root = '/src/edgewarden/'
  const frame = (functionName: string, url = '', lineNumber = -1): { functionName: string; url: string; lineNumber: number } => ({ functionName, url, lineNumber })
  const profile: CpuProfile = {
    nodes: [
      { id: 1, callFrame: frame('(root)'), children: [2, 3, 4, 5, 6] },
      { id: 2, callFrame: frame('admit', `file://${root}agent/trust/admission.ts`, 0) },
      { id: 3, callFrame: frame('handleConnect', 'file:///x/node_modules/aedes/lib/handlers/connect.js', 41) },
      { id: 4, callFrame: frame('(garbage collector)') },
      { id: 5, callFrame: frame('(idle)') },
      { id: 6, callFrame: frame('writeGeneric', 'node:internal/stream_base_commons', 150) },
    ],
    startTime: 0,
    endTime: 10_000,
    // each sample's time is until the next: admit 4 ms, aedes 2, GC 1, idle 2, node 1 (the last sample has none)
    samples: [2, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6],
    timeDeltas: [0, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000],
  }
  const s = summariseProfile(profile, 'the agent', root)
  assert.equal(s.sampledMs, 10)
  assert.deepEqual(s.byKind, [
    { kind: 'edgewarden', pct: 40 },
    { kind: 'aedes', pct: 20 },
    { kind: 'idle', pct: 20 },
    { kind: 'garbage collection', pct: 10 },
    { kind: 'Node.js internals', pct: 10 },
  ])
  assert.deepEqual(s.top[0], { fn: 'admit', at: 'agent/trust/admission.ts', pct: 40 }, 'the product\'s file relative to the checkout; no line where V8 gives none')
  assert.deepEqual(s.top[1], { fn: 'handleConnect', at: 'aedes/lib/handlers/connect.js:42', pct: 20 })
  assert.ok(!s.top.some((f) => f.fn === '(idle)'), 'idle is a kind, not a function that took time')
  // a window: the first 4 ms only (the cold start's profile runs on after ready)
  const w = summariseProfile(profile, 'the agent', root, { toUs: 3500 })
  assert.deepEqual(w.byKind, [{ kind: 'edgewarden', pct: 100 }])
  assert.match(renderProfile(s), /^the agent, 10 ms sampled: edgewarden 40 %, aedes 20 %, idle 20 %, garbage collection 10 %, Node\.js internals 10 %; most time of their own: `admit` \(agent\/trust\/admission\.ts\) 40 %/)
})

test('the probe profiles a broker over a window: a real bare aedes, its profile taken and stopped over IPC', { timeout: 60_000 }, async () => {
  const procs = new Procs()
  try {
    const b = await spawnNodeBroker(procs, 'bare aedes', join(ROOT, 'bench', 'bare-aedes.ts'), [], { probe: true })
    await b.profile('start')
    await new Promise((r) => setTimeout(r, 100)) // a window the sampler has something in: the broker idle
    const p = await b.profile('stop')
    assert.ok(p.nodes.length > 0 && Array.isArray(p.samples), 'a V8 CPU profile')
    await assert.rejects(b.profile('stop'), /no profile started/)
    const s = summariseProfile(p, 'bare aedes', ROOT)
    assert.ok(s.sampledMs > 0 && s.byKind.some((k) => k.kind === 'idle'), `the idle broker's window: ${JSON.stringify(s.byKind)}`)
    await b.stop()
  } finally {
    await procs.stopAll()
  }
})

test("a window of the event loop: its delay and its garbage collections, from inside the process", async () => {
  const w = watchLoop()
  // the monitor's first tick starts its clock: a delay before it is not seen
  await new Promise((r) => setTimeout(r, 10))
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 40)
  const began = Date.now() - 100
  let keep: unknown[] = []
  for (let i = 0; i < 400_000; i++) keep.push({ i }) // tens of MB of young objects: at least one scavenge
  keep = []
  // the observer's entries arrive after the collection, on a later turn
  await new Promise((r) => setTimeout(r, 20))
  return new Promise<void>((resolve) =>
    setTimeout(() => {
      const r = w.end()
      assert.ok(r.loopDelayMs.max >= 30, `the loop held 40 ms shows as a delay (max ${r.loopDelayMs.max} ms)`)
      assert.equal(typeof r.gc.scavenges, 'number')
      // the collections the allocation below caused, each timed on the system clock inside the window
      assert.ok(r.gc.scavenges >= 1 && r.pauses.some((p) => p.kind === 'scavenge'), `a young generation filled is a scavenge: ${JSON.stringify(r.gc)}`)
      assert.equal(r.pauses.length, r.gc.scavenges + r.gc.markCompacts + r.pauses.filter((p) => p.kind === 'other').length)
      for (const p of r.pauses) assert.ok(p.at >= began && p.at <= Date.now() + 1 && p.ms >= 0, `${JSON.stringify(p)} within the window`)
      resolve()
    }, 5),
  )
})

test('the table is followed by the profile of each profiled figure, one line each', () => {
  const profile = { of: 'the agent, over the burst', sampledMs: 2022, byKind: [{ kind: 'edgewarden', pct: 43.5 }], top: [{ fn: 'start', at: 'agent/actions/retirement.ts', pct: 5.7 }] }
  const withProfile: BenchResults = { ...results, figures: [...results.figures, { name: 'bulk retire', workload: '-', value: 1, unit: 'actions/s', anchor: '-', goal: '-', met: null, profiles: [profile], detail: {} }] }
  assert.doesNotMatch(renderTable(results), /profiled figure/, 'no profiles, no section')
  assert.match(renderTable(withProfile), /\n\n- \*\*bulk retire\*\*: the agent, over the burst, 2,022 ms sampled: edgewarden 43\.5 %; most time of their own: `start` \(agent\/actions\/retirement\.ts\) 5\.7 %$/m)
})
