// Admission under a storm, through the real site broker: connects that pass
// the memory-only checks take turns at the admission gate (bounded
// concurrency, arrival order); once the oldest waiting connect has waited
// admissionMaxWaitMs, a new one is refused at once with CONNACK 3 (server
// unavailable: retry), which is not a failure of its credential; garbage
// is refused from memory without waiting; a connect whose client left while
// it waited costs no check.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startTestAgent } from '../helpers/agent.ts'
import { enrollDevice, tokenFor } from '../helpers/mqtt-devices.ts'
import { until, within } from '../helpers/wait.ts'
import { connectPacket, rawExchange } from '../fuzz/mqtt-wire.ts'
import { utf8 } from '../../wire/base64url.ts'

async function heldAgent(t: Parameters<typeof startTestAgent>[0]) {
  // one connect judged at a time, and a new one refused as soon as another waits
  const agent = await startTestAgent(t, { flags: { cryptoWorkers: '1', admissionConcurrency: '1', admissionMaxWaitMs: '0', authFailuresPerClient: '1' } })
  const gw = agent.gateway
  const pool = gw.crypto
  const verify = pool.verify.bind(pool)
  const verified: string[] = []
  let open!: () => void
  const held = new Promise<void>((r) => (open = r))
  // the signature check of the first connect is held until the test opens it
  pool.verify = (k, d, s) => {
    verified.push(k)
    const answer = verify(k, d, s)
    return verified.length === 1 ? held.then(() => answer) : answer
  }
  return { agent, gw, verified, open, gate: agent.mqttPolicy.admission.gate }
}

test('storm admission: turns in arrival order; CONNACK 3 at once when the oldest has waited, not held against the device, which gets in on its retry', async (t) => {
  const { agent, gw, verified, open, gate } = await heldAgent(t)
  const [a, b, c] = await Promise.all(['pump-a', 'pump-b', 'pump-c'].map((id) => enrollDevice(gw, id)))
  const connect = async (d: Awaited<ReturnType<typeof enrollDevice>>) => rawExchange(agent.mqttPort, connectPacket({ clientId: d.id, username: d.id, password: await tokenFor(gw, d) }))

  const first = connect(a!)
  await until('the first connect is being checked', () => verified.length === 1 && gate.running === 1, 5000)
  const second = connect(b!)
  await until('the second connect waits its turn', () => gate.waiting === 1, 5000)

  // the oldest waiting connect has waited maxWaitMs (0): a new one is refused before any check
  const busy = await within('CONNACK for the third connect', connect(c!), 5000)
  assert.equal(busy.connack, 3, 'server unavailable: retry')
  assert.equal(verified.length, 1, 'no signature checked for it')
  assert.equal(agent.mqttPolicy.throttle.check(c!.id, '127.0.0.1'), null, 'a busy refusal is not a failed credential (authFailuresPerClient is 1)')
  // garbage and unknown ids are refused from memory, without waiting behind anyone
  const unknown = await within('CONNACK for an unknown device', rawExchange(agent.mqttPort, connectPacket({ clientId: 'nobody', username: 'nobody', password: await tokenFor(gw, { ...c!, id: 'nobody' }) })), 5000)
  assert.equal(unknown.connack, 5)
  const garbage = await within('CONNACK for a password that is no JWS', rawExchange(agent.mqttPort, connectPacket({ clientId: a!.id, username: a!.id, password: 'not-a-token' })), 5000)
  assert.equal(garbage.connack, 4)
  assert.equal(gate.waiting, 1)

  open()
  const [ra, rb] = await Promise.all([first, second])
  assert.deepEqual([ra.connack, rb.connack], [0, 0])
  assert.deepEqual(verified, [a!.publicKey, b!.publicKey], 'checked in arrival order')
  assert.equal((await connect(c!)).connack, 0, 'admitted on its retry')
  const refusals = agent.mqttPolicy.admission.refusals()
  assert.equal(refusals.find((r) => r.reason === 'busy')?.count, 1)
  assert.equal(gate.stats.refused, 1)
})

test('storm admission: a connect whose client went away while it waited gets no signature check when its turn comes', async (t) => {
  const { gw, verified, open, gate, agent } = await heldAgent(t)
  const [a, b] = await Promise.all(['valve-a', 'valve-b'].map((id) => enrollDevice(gw, id)))
  const admission = agent.mqttPolicy.admission
  const first = admission.admit({ protocol: 'mqtt', clientId: a!.id, username: a!.id, password: utf8(await tokenFor(gw, a!)) })
  await until('the first connect is being checked', () => gate.running === 1, 5000)
  let gone = false
  const second = admission.admit({ protocol: 'mqtt', clientId: b!.id, username: b!.id, password: utf8(await tokenFor(gw, b!)), gone: () => gone })
  await until('the second connect waits its turn', () => gate.waiting === 1, 5000)
  gone = true
  open()
  assert.equal((await first).ok, true)
  const d = await second
  assert.equal(d.ok, false)
  assert.equal(!d.ok && d.reason, 'gone')
  assert.deepEqual(verified, [a!.publicKey], 'only the first was checked')
  assert.equal(gate.running, 0)
})
