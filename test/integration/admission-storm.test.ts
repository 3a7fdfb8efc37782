// Admission under a storm, through the real site broker: connects that pass
// the memory-only checks take turns at the admission gate (bounded
// concurrency, arrival order); once the oldest waiting connect has waited
// admissionMaxWaitMs, a new one is refused at once with CONNACK 3 (server
// unavailable: retry), which is not a failure of its credential; garbage
// is refused from memory without waiting; a connect whose client left while
// it waited costs no check; a device's ack and the actions sent to it wait
// for the connects waiting, then follow. Before any of that, the kernel
// holds the connects the broker has not taken yet, up to listenBacklog.
import assert from 'node:assert/strict'
import { connect as netConnect, type Socket } from 'node:net'
import { join } from 'node:path'
import { test } from 'node:test'
import { spawnAgent, startTestAgent, tempDir } from '../helpers/agent.ts'
import { connectDevice, enrollDevice, Inbox, tokenFor, WHO, type TestDevice } from '../helpers/mqtt-devices.ts'
import { sign } from '../../firmware-hooks/crypto.ts'
import { newJti } from '../../wire/ids.ts'
import { assembleJws, jwsSigningInput } from '../../wire/jws.ts'
import { until, within } from '../helpers/wait.ts'
import { connectPacket, rawExchange } from '../fuzz/mqtt-wire.ts'
import { kernelListenCap } from '../../protocols/mqtt/site-broker.ts'
import { utf8 } from '../../wire/base64url.ts'

/** one connect judged at a time; by default a new one refused as soon as another waits */
async function heldAgent(t: Parameters<typeof startTestAgent>[0], admissionMaxWaitMs = '0') {
  const agent = await startTestAgent(t, { flags: { cryptoWorkers: '1', admissionConcurrency: '1', admissionMaxWaitMs, authFailuresPerClient: '1' } })
  const gw = agent.gateway
  return { agent, gw, gate: agent.mqttPolicy.admission.gate, ...holdFirstVerify(agent) }
}

/** From now on: the keys of every signature check on the pool, in order; the first is held until `open`. */
function holdFirstVerify(agent: Awaited<ReturnType<typeof startTestAgent>>) {
  const pool = agent.gateway.crypto
  const verify = pool.verify.bind(pool)
  const verified: string[] = []
  let open!: () => void
  const held = new Promise<void>((r) => (open = r))
  pool.verify = (k, d, s) => {
    verified.push(k)
    const answer = verify(k, d, s)
    return verified.length === 1 ? held.then(() => answer) : answer
  }
  return { verified, open }
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

/**
 * A device x connected, listening, and holding one pending renewal it has
 * got; then a storm: a's connect being checked (its signature held until
 * `open`), b's waiting its turn. The gate takes one connect at a time and
 * nothing ages for a minute.
 */
async function listenerInAStorm(t: Parameters<typeof startTestAgent>[0], names: [string, string, string]) {
  const agent = await startTestAgent(t, { flags: { cryptoWorkers: '1', admissionConcurrency: '1', admissionMaxWaitMs: '60000' } })
  const gw = agent.gateway
  const gate = agent.mqttPolicy.admission.gate
  const [x, a, b] = (await Promise.all(names.map((id) => enrollDevice(gw, id)))) as [TestDevice, TestDevice, TestDevice]
  const client = await connectDevice(gw, agent.mqttPort, x)
  t.after(() => void client.end(true))
  const inbox = new Inbox(client)
  await client.subscribeAsync(`dev/${x.id}/cmd`, { qos: 1 })
  const renew = await agent.actions.queue(x.id, 'renew', WHO)
  await inbox.waitFor((m) => m.payload === renew.jws)

  const { verified, open } = holdFirstVerify(agent)
  const connect = async (d: TestDevice) => rawExchange(agent.mqttPort, connectPacket({ clientId: d.id, username: d.id, password: await tokenFor(gw, d) }))
  const first = connect(a)
  await until('a is being checked', () => verified.length === 1 && gate.running === 1, 5000)
  const second = connect(b)
  await until('b waits its turn', () => gate.waiting === 1, 5000)
  /** x's signed ack of the renewal */
  const ackOfRenew = async (over: Record<string, unknown> = {}) => {
    const input = jwsSigningInput(x.id, { iss: x.id, aud: gw.id, iat: gw.nowS(), jti: newJti('ack.'), ref: renew.id, status: 'failed', ...over })
    return assembleJws(input, await sign(utf8(input), x.secretKey))
  }
  return { agent, gw, gate, x, a, b, client, inbox, renew, verified, open, connects: Promise.all([first, second]), ackOfRenew }
}

test('storm admission: an ack and an action delivery wait for the connects waiting, then follow', async (t) => {
  const { agent, gw, gate, x, a, b, client, inbox, renew, verified, open, connects, ackOfRenew } = await listenerInAStorm(t, ['meter-x', 'meter-a', 'meter-b'])

  // x acks the renewal (it could not), and the gateway queues it two more actions: the ack and the first delivery
  // wait behind b (the second delivery behind the first)
  await client.publishAsync(`dev/${x.id}/ack`, await ackOfRenew({ detail: 'no entropy' }), { qos: 1 })
  const notice = await agent.actions.queue(x.id, 'renew', WHO)
  const reenroll = await agent.actions.queue(x.id, 'reenroll', WHO)
  await until('the ack and the delivery wait their turn', () => gate.backgroundWaiting === 2, 5000)
  assert.deepEqual(verified, [a.publicKey], "the ack's signature not checked yet")
  assert.equal(inbox.messages.length, 1, 'the new actions not sent yet')
  assert.ok(gw.actions.find(x.id, renew.id), 'the renewal still pending')
  // an operator takes the first of them back while it waits: it is never sent
  await agent.actions.cancel(x.id, notice.id, WHO)

  open()
  const [ra, rb] = await connects
  assert.deepEqual([ra.connack, rb.connack], [0, 0])
  await inbox.waitFor((m) => m.payload === reenroll.jws)
  await until('the ack settled', () => gw.actions.find(x.id, renew.id) === undefined, 5000)
  assert.deepEqual(verified, [a.publicKey, b.publicKey, x.publicKey], 'the connects checked first, then the ack')
  assert.deepEqual(inbox.messages.map((m) => m.payload), [renew.jws, reenroll.jws], 'the action taken back never sent')
  assert.equal(gate.backgroundWaiting, 0)
  assert.equal(gate.running, 0)
  assert.equal(gate.stats.backgroundAged, 0)
})

test('storm admission: a device that floods acks holds no more turns than it has actions pending; its copies cost no checks', async (t) => {
  const { agent, gw, gate, x, b, client, renew, verified, open, connects, ackOfRenew } = await listenerInAStorm(t, ['drive-x', 'drive-a', 'drive-b'])
  const stray = agent.actions.strayAcks

  // the same ack five times, and garbage on its ack topic: one waits its turn (x has one action pending), the copies
  // wait for its answer, the garbage is refused from its parse: none of them with a signature checked yet
  const ack = await ackOfRenew()
  for (let i = 0; i < 5; i++) await client.publishAsync(`dev/${x.id}/ack`, ack, { qos: 1 })
  await client.publishAsync(`dev/${x.id}/ack`, 'not an ack', { qos: 1 })
  await until('the garbage refused', () => agent.actions.strayAcks === stray + 1, 5000)
  assert.equal(gate.backgroundWaiting, 1, 'one turn taken, for the one ack that may settle something')
  assert.equal(gate.waiting, 1, 'b still waits')
  assert.equal(verified.length, 1, 'no signature checked but the held connect')
  assert.ok(gw.actions.find(x.id, renew.id), 'the renewal still pending')

  open()
  const [ra, rb] = await connects
  assert.deepEqual([ra.connack, rb.connack], [0, 0])
  await until('the ack checked after b and settled, its copies answered', () => gw.actions.find(x.id, renew.id) === undefined && agent.actions.repeatedAcks === 4 && gate.backgroundWaiting === 0 && gate.running === 0, 5000)
  assert.deepEqual(verified.slice(1), [b.publicKey, x.publicKey], 'one check for the five copies')
})

test('a listenBacklog above net.core.somaxconn is warned of at start, with both figures', async (t) => {
  const cap = kernelListenCap()
  if (cap === null) return t.skip('net.core.somaxconn is unreadable here')
  const over = await spawnAgent(['--data-dir', join(tempDir(t), 'over'), '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--listen-backlog', String(cap + 1)])
  await over.stop()
  const warned = over.lines.find((l) => typeof l.msg === 'string' && l.msg.includes('net.core.somaxconn'))
  assert.ok(warned, 'the start warns that the kernel caps the backlog asked for')
  assert.equal(warned.somaxconn, cap)
  assert.equal(warned.listenBacklog, cap + 1)
  const capped = await spawnAgent(['--data-dir', join(tempDir(t), 'within'), '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--listen-backlog', String(cap)])
  await capped.stop()
  assert.equal(capped.lines.find((l) => typeof l.msg === 'string' && l.msg.includes('net.core.somaxconn')), undefined, 'no warning for a backlog the kernel allows')
})

test('storm admission: connects that arrive while the broker cannot take them wait in the kernel, up to listenBacklog (more than Node\'s 511), on the plain and the TLS listener', { timeout: 60_000 }, async (t) => {
  const cap = kernelListenCap()
  // more than Node's default backlog (511: at most 512 queued), fewer than the cap
  const K = 700
  if (cap === null || cap <= K) return t.skip(`needs net.core.somaxconn above ${K} (it is ${cap ?? 'unreadable'})`)
  const agent = await spawnAgent(['--data-dir', join(tempDir(t), 'data'), '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--mqtts-port', '0'])
  const sockets: Socket[] = []
  // one hook, in this order: a stopped agent is let go on before it is killed, then the sockets go
  t.after(async () => {
    agent.proc.kill('SIGCONT')
    await agent.stop('SIGKILL')
    for (const s of sockets) s.destroy()
  })
  const { mqtt: port, mqtts: tlsPort } = agent.ready.mqtt as { mqtt: number; mqtts: number }

  // The agent's event loop stands still (as when it is busy with a storm's
  // handshakes): no connection is taken off the queue meanwhile. The
  // kernel completes the TCP handshake of every connect its queue holds.
  agent.proc.kill('SIGSTOP')
  try {
    // the plain and the TLS listener each (the TCP handshake comes before TLS's)
    for (const [listener, p] of [['plain', port], ['TLS', tlsPort]] as const) {
      let connected = 0
      await within(
        `${K} TCP handshakes with the ${listener} listener completed while the agent is stopped`,
        new Promise<void>((resolve, reject) => {
          for (let i = 0; i < K; i++) {
            const s = netConnect({ host: '127.0.0.1', port: p })
            s.once('connect', () => ++connected === K && resolve())
            s.once('error', reject)
            sockets.push(s)
          }
        }),
        5000,
      ).catch((err: Error) => assert.fail(`${err.message}: ${connected} of ${K} (Node's default backlog holds 512)`))
      // let go of this round's before the next (file descriptors: one round's worth at a time); the first stays for the check below
      for (const s of sockets.splice(1)) s.destroy()
    }
  } finally {
    agent.proc.kill('SIGCONT')
  }
  // Taken once it runs again: each is a connection of the broker, closed at its CONNECT timeout or here.
  const first = sockets[0]!
  first.write(connectPacket({ clientId: 'nobody', username: 'nobody', password: 'x' }))
  await within('the agent answers the first queued connection once it runs', new Promise<void>((resolve) => first.once('data', () => resolve())), 10_000)
})
