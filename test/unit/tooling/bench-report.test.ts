// The benchmark's own machinery, cheaply: the results rendered as the table
// of docs/performance.md, the table replaced between its markers (and
// nothing else), percentiles. The benchmark itself is not a test.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { BEGIN, cpuCeiling, END, formatValue, percentile, renderTable, replaceBetweenMarkers, type BenchResults } from '../../../bench/report.ts'
import { otherThreadsMs, threadCpuMsOf, verifyCostUs } from '../../../bench/anchors.ts'
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
