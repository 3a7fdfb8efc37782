// The admission gate on its own: at most `concurrency` connects judged at
// once, the rest let through in arrival order, and a new arrival refused at
// once only when the oldest waiting connect has waited maxWaitMs already;
// background work (acks, action delivery) served after the connects waiting,
// or first once it has waited maxWaitMs itself.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { AdmissionGate, MAX_WAITING } from '../../../agent/trust/admission-gate.ts'

const turn = (p: Promise<() => void> | null): Promise<() => void> => {
  assert.ok(p, 'let in (or queued), not refused')
  return p
}

test('admission gate: concurrency bound, FIFO turns, a release frees one slot once', async () => {
  const gate = new AdmissionGate({ concurrency: 2, maxWaitMs: 10_000 })
  const a = await turn(gate.enter())
  const b = await turn(gate.enter())
  assert.equal(gate.running, 2)
  const order: number[] = []
  const waiting = [3, 4, 5].map((n) => turn(gate.enter()).then((release) => (order.push(n), release)))
  assert.equal(gate.waiting, 3)
  a()
  a() // a second call of the same release frees nothing more
  const r3 = await waiting[0]!
  assert.deepEqual(order, [3])
  assert.equal(gate.running, 2)
  assert.equal(gate.waiting, 2)
  b()
  r3()
  const [r4, r5] = await Promise.all([waiting[1]!, waiting[2]!])
  assert.deepEqual(order, [3, 4, 5], 'in arrival order')
  r4()
  r5()
  assert.equal(gate.running, 0)
  assert.equal(gate.waiting, 0)
  assert.equal(gate.stats.entered, 5)
  assert.equal(gate.stats.peakWaiting, 3)
  // idle again: the next one goes straight in
  ;(await turn(gate.enter()))()
})

test('admission gate: a new arrival is refused only once the oldest waiting one has waited maxWaitMs', async () => {
  let now = 0
  const gate = new AdmissionGate({ concurrency: 1, maxWaitMs: 5000, now: () => now })
  const first = await turn(gate.enter())
  const second = turn(gate.enter()) // waits from t=0
  now = 4999
  const third = turn(gate.enter()) // the oldest has waited 4,999 ms: still queued
  assert.equal(gate.waiting, 2)
  now = 5000
  assert.equal(gate.oldestWaitMs, 5000)
  assert.equal(gate.enter(), null, 'refused at once: the queue is not draining in time')
  assert.equal(gate.stats.refused, 1)
  first()
  const r2 = await second
  // the head is now the one that arrived at 4,999: it has waited 1 ms
  assert.equal(gate.oldestWaitMs, 1)
  const fourth = turn(gate.enter())
  r2()
  ;(await third)()
  ;(await fourth)()
  assert.equal(gate.waiting, 0)
  assert.equal(gate.oldestWaitMs, 0)
})

test('admission gate: maxWaitMs 0 queues one behind a full gate and refuses the next; a hard bound on waiting connects', async () => {
  const gate = new AdmissionGate({ concurrency: 1, maxWaitMs: 0 })
  const first = await turn(gate.enter())
  const second = turn(gate.enter())
  assert.equal(gate.enter(), null)
  first()
  ;(await second)()

  const big = new AdmissionGate({ concurrency: 1, maxWaitMs: Number.MAX_SAFE_INTEGER })
  const hold = await turn(big.enter())
  const queued: Promise<() => void>[] = []
  for (let i = 0; i < MAX_WAITING; i++) queued.push(turn(big.enter()))
  assert.equal(big.enter(), null, `no more than ${MAX_WAITING} wait`)
  hold()
  for (const q of queued) (await q)()
  assert.equal(big.waiting, 0)
  assert.equal(big.running, 0)
})

test('admission gate: background work waits while connects wait, and goes first once it has waited maxWaitMs', async () => {
  let now = 0
  const gate = new AdmissionGate({ concurrency: 1, maxWaitMs: 5000, now: () => now })
  // idle: a background turn is given at once, and holds the slot until released
  const bg0 = await gate.background()
  assert.equal(gate.running, 1)
  const order: string[] = []
  const took = (name: string) => (release: () => void) => (order.push(name), release)
  const c1 = turn(gate.enter()).then(took('c1'))
  const b1 = gate.background().then(took('b1'))
  const c2 = turn(gate.enter()).then(took('c2'))
  assert.equal(gate.waiting, 2)
  assert.equal(gate.backgroundWaiting, 1)
  bg0()
  ;(await c1)()
  ;(await c2)()
  ;(await b1)()
  assert.deepEqual(order, ['c1', 'c2', 'b1'], 'connects waiting go first, whatever the arrival order')
  assert.equal(gate.stats.backgroundAged, 0)

  // a flood of connects never locks background work out: once it has waited maxWaitMs it goes before them
  order.length = 0
  const hold = await turn(gate.enter())
  const b2 = gate.background().then(took('b2'))
  now = 1000
  const c3 = turn(gate.enter()).then(took('c3'))
  now = 5000
  const c4 = turn(gate.enter()).then(took('c4'))
  hold()
  ;(await b2)()
  ;(await c3)()
  ;(await c4)()
  assert.deepEqual(order, ['b2', 'c3', 'c4'])
  assert.equal(gate.stats.backgroundAged, 1)
  assert.equal(gate.running, 0)
  assert.equal(gate.stats.background, 3)

  // a pile of aged background work does not starve the connects either: they take every other turn
  order.length = 0
  const hold2 = await turn(gate.enter())
  const bs = ['b3', 'b4', 'b5'].map((n) => gate.background().then(took(n)))
  now = 20_000
  const cs = ['c5', 'c6'].map((n) => turn(gate.enter()).then(took(n)))
  hold2()
  for (const p of [bs[0]!, cs[0]!, bs[1]!, cs[1]!, bs[2]!]) (await p)()
  assert.deepEqual(order, ['b3', 'c5', 'b4', 'c6', 'b5'])
})

test('admission gate: with maxWaitMs 0 background work and connects take every other turn', async () => {
  const gate = new AdmissionGate({ concurrency: 1, maxWaitMs: 0 })
  const hold = await turn(gate.enter())
  const order: string[] = []
  const took = (name: string) => (release: () => void) => (order.push(name), release)
  const b = ['b1', 'b2'].map((n) => gate.background().then(took(n)))
  const c = turn(gate.enter()).then(took('c1')) // waits (the next arrival would be refused)
  hold()
  for (const p of [b[0]!, c, b[1]!]) (await p)()
  assert.deepEqual(order, ['b1', 'c1', 'b2'])
})

test('admission gate: background turns beyond the bound go at once (nothing is refused), outside the slots', async () => {
  const gate = new AdmissionGate({ concurrency: 1, maxWaitMs: Number.MAX_SAFE_INTEGER })
  const hold = await turn(gate.enter())
  const queued: Promise<() => void>[] = []
  for (let i = 0; i < MAX_WAITING; i++) queued.push(gate.background())
  const over = await gate.background()
  assert.equal(gate.running, 1, 'the one over the bound takes no slot')
  over()
  assert.equal(gate.running, 1)
  hold()
  for (const q of queued) (await q)()
  assert.equal(gate.backgroundWaiting, 0)
  assert.equal(gate.running, 0)
})

test('admission gate: a concurrency below 1 is refused', () => {
  assert.throws(() => new AdmissionGate({ concurrency: 0, maxWaitMs: 1 }), /at least 1/)
})
