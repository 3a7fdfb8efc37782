// The device runtime on a real broker: actions in on dev/<id>/cmd, acks out
// on dev/<id>/ack (QoS 1), the wipe only after the PUBACK, reconnects under
// the new key after a renew; the simulated device, offline most of the
// time, answered when it comes back. A plain aedes broker whose
// authenticate checks device tokens against a key table the test controls
// plays the site broker; a last test runs against the real agent.
import assert from 'node:assert/strict'
import { createPublicKey, verify as nodeVerify, type KeyObject } from 'node:crypto'
import { createServer, type AddressInfo } from 'node:net'
import { describe, test } from 'node:test'
import { Aedes, type Client } from 'aedes'
import { ActionRuntime, MemoryDeviceStorage } from '../../firmware-hooks/action-runtime.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { MqttActionDevice } from '../../firmware-hooks/mqtt-action-device.ts'
import { b64urlDecode, utf8 } from '../../wire/base64url.ts'
import { parseJws, type Claims } from '../../wire/jws.ts'
import { ManualSimClock, MOSTLY_OFFLINE, SimulatedMqttDevice } from '../../simulators/mqtt-device.ts'
import { signJws } from '../../agent/store/jws.ts'
import { generateKeyPair } from '../../agent/store/keys.ts'
import { startTestAgent } from '../helpers/agent.ts'
import { enrollDevice } from '../helpers/mqtt-devices.ts'

const GW = 'gw1'
const gateway = generateKeyPair()

const nodeKey = (b64: string): KeyObject => createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64 }, format: 'jwk' })
function verifyWith(jws: string, pub: string): Claims | null {
  const p = parseJws(jws)
  return nodeVerify(null, p.signingInput, nodeKey(pub), p.signature) ? p.payload : null
}

let seq = 0
const action = (deviceId: string, act: string, over: Claims = {}): string =>
  signJws(gateway.privateKey, GW, { iss: GW, aud: deviceId, iat: 1_790_000_000, jti: `a${++seq}`, act, args: {}, ...over })

interface Received {
  deviceId: string
  payload: string
  /** the device's key in the runtime when the broker got the ack (before its PUBACK) */
  deviceHadKey: boolean | null
}

/** aedes on 127.0.0.1:0; a device is admitted when its token verifies with a key the test lists for it. */
async function startBroker(t: { after(fn: () => Promise<void>): void }) {
  const keys = new Map<string, Set<string>>()
  const admitted: { deviceId: string; key: string }[] = []
  const refused: string[] = []
  const acks: Received[] = []
  const runtimes = new Map<string, ActionRuntime>()
  const aedes = new Aedes({
    authenticate: (client, username, password, done) => {
      const allowed = keys.get(client.id) ?? new Set()
      const key = password && username === client.id ? [...allowed].find((k) => verifyWith(password.toString(), k)) : undefined
      if (!key) {
        refused.push(client.id)
        return done(Object.assign(new Error('refused'), { returnCode: 5 as const }), false)
      }
      admitted.push({ deviceId: client.id, key })
      done(null, true)
    },
  })
  await aedes.listen()
  const live = new Map<string, Client>()
  aedes.on('client', (c) => void live.set(c.id, c))
  aedes.on('clientDisconnect', (c) => void (live.get(c.id) === c && live.delete(c.id)))
  aedes.on('publish', (packet, client) => {
    const m = /^dev\/([^/]+)\/ack$/.exec(packet.topic)
    if (!m || !client) return
    acks.push({ deviceId: m[1]!, payload: packet.payload.toString(), deviceHadKey: runtimes.has(m[1]!) ? runtimes.get(m[1]!)!.secretKey !== null : null })
  })
  const server = createServer(aedes.handle)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const url = `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`
  t.after(async () => {
    await new Promise<void>((r) => aedes.close(() => r())) // closes the clients first: server.close() waits for them
    await new Promise<void>((r) => server.close(() => r()))
  })
  // A miniature gateway queue (PROTOCOL §5): actions are sent when the device subscribes to its cmd topic, again after each reconnect, until acked.
  const pending = new Map<string, string[]>()
  const send = (deviceId: string, envelope: string): Promise<void> =>
    new Promise((resolve, reject) =>
      aedes.publish({ cmd: 'publish', topic: `dev/${deviceId}/cmd`, payload: Buffer.from(envelope), qos: 1, retain: false, dup: false }, (err) => (err ? reject(err) : resolve())),
    )
  aedes.on('subscribe', (subs, client: Client) => {
    if (!subs.some((s) => s.topic === `dev/${client.id}/cmd`)) return
    for (const env of pending.get(client.id) ?? []) void send(client.id, env)
  })
  aedes.on('publish', (packet) => {
    const m = /^dev\/([^/]+)\/ack$/.exec(packet.topic)
    if (!m) return
    const ref = parseJws(packet.payload.toString()).payload.ref
    pending.set(m[1]!, (pending.get(m[1]!) ?? []).filter((e) => parseJws(e).payload.jti !== ref))
  })
  const queue = (deviceId: string, envelope: string): void => {
    pending.set(deviceId, [...(pending.get(deviceId) ?? []), envelope])
    if (live.has(deviceId)) void send(deviceId, envelope)
  }
  const kick = (deviceId: string): void => live.get(deviceId)?.close()
  return { aedes, url, live, keys, admitted, refused, acks, runtimes, send, queue, kick, pending }
}

function until(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      if (cond()) return resolve()
      if (Date.now() > end) return reject(new Error('condition not met in time'))
      setTimeout(tick, 10)
    }
    tick()
  })
}

describe('MqttActionDevice on aedes', () => {
  test('renew: valid ack on dev/<id>/ack, reconnect under the new key; wipe: erase only after the PUBACK; forged actions ignored', async (t) => {
    const b = await startBroker(t)
    const kp = await keygen()
    const oldPub = publicKeyToB64(kp.publicKey)
    b.keys.set('d1', new Set([oldPub]))
    const storage = new MemoryDeviceStorage()
    const runtime = await ActionRuntime.open({ deviceId: 'd1', gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, secretKey: kp.secretKey, storage })
    b.runtimes.set('d1', runtime)
    const dev = await MqttActionDevice.connect({ url: b.url, runtime, reconnectMs: 50 })
    t.after(() => dev.close())

    // forged and misaddressed: never acked
    const forged = signJws(generateKeyPair().privateKey, GW, { iss: GW, aud: 'd1', iat: 1, jti: 'forged-1', act: 'wipe', args: {} })
    await b.send('d1', forged)
    await b.send('d1', action('d2', 'wipe'))
    await until(() => dev.stats.ignored === 2)

    const renew = action('d1', 'renew')
    const renewId = parseJws(renew).payload.jti as string
    await b.send('d1', renew)
    await dev.waitForAck(renewId)
    const ack = b.acks.find((a) => parseJws(a.payload).payload.ref === renewId)!
    const c = verifyWith(ack.payload, oldPub)
    assert.ok(c, 'the ack is signed by the old key')
    assert.deepEqual([c.iss, c.aud, c.status, parseJws(ack.payload).header.kid], ['d1', GW, 'done', 'd1'])
    const newPub = c.newPublicKey as string
    assert.ok(nodeVerify(null, utf8(renewId), nodeKey(newPub), b64urlDecode(c.newKeyProof as string)!), 'proof of possession')
    assert.equal(runtime.publicKeyB64, newPub)

    // the gateway installs the new key and drops the old one; the device comes back under the new key
    b.keys.set('d1', new Set([newPub]))
    b.kick('d1')
    await until(() => b.admitted.filter((a) => a.deviceId === 'd1').length === 2)
    assert.deepEqual(b.admitted.map((a) => a.key), [oldPub, newPub])
    await until(() => dev.connected)

    const wipe = action('d1', 'wipe')
    const wipeId = parseJws(wipe).payload.jti as string
    await until(() => b.live.has('d1'))
    await new Promise((r) => setTimeout(r, 50)) // resubscribed
    await b.send('d1', wipe)
    const sent = await dev.waitForAck(wipeId)
    assert.equal(sent.status, 'done')
    const wAck = b.acks.find((a) => parseJws(a.payload).payload.ref === wipeId)!
    assert.equal(verifyWith(wAck.payload, newPub)?.status, 'done', 'wipe ack signed by the current (new) key')
    assert.equal(wAck.deviceHadKey, true, 'the key was still there when the broker got the ack')
    assert.equal(runtime.secretKey, null)
    assert.equal(storage.peek()!.secretKey, null)
    assert.equal(runtime.wiped, true)
    assert.deepEqual({ ...dev.stats }, { actionsHandled: 2, repeats: 0, acksSent: 2, ignored: 2, wipesDone: 1, keyChanges: 2 })
    await until(() => !dev.connected)
  })

  test('a repeated action id is acked again and acted on once', async (t) => {
    const b = await startBroker(t)
    const kp = await keygen()
    b.keys.set('d2', new Set([publicKeyToB64(kp.publicKey)]))
    let ran = 0
    const runtime = await ActionRuntime.open({
      deviceId: 'd2', gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, secretKey: kp.secretKey, storage: new MemoryDeviceStorage(),
      hooks: { 'revoke-notice': async () => (ran++, { status: 'done' }) },
    })
    const dev = await MqttActionDevice.connect({ url: b.url, runtime })
    t.after(() => dev.close())
    const env = action('d2', 'revoke-notice')
    await b.send('d2', env)
    await b.send('d2', env)
    await until(() => b.acks.length === 2)
    assert.equal(b.acks[0]!.payload, b.acks[1]!.payload)
    assert.equal(ran, 1)
    assert.equal(dev.stats.repeats, 1)
  })

  test('a device restarted between a reenroll ack and its key switch gets back in with the pending key', async (t) => {
    const b = await startBroker(t)
    const kp = await keygen()
    b.keys.set('d3', new Set([publicKeyToB64(kp.publicKey)]))
    const storage = new MemoryDeviceStorage()
    const rt = await ActionRuntime.open({ deviceId: 'd3', gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, secretKey: kp.secretKey, storage })
    const r = await rt.handle(action('d3', 'reenroll'))
    assert.equal(r.kind, 'ack')
    // the ack reached the gateway, which replaced the key; the device died before switching
    const newPub = parseJws((r as { ack: string }).ack).payload.newPublicKey as string
    b.keys.set('d3', new Set([newPub]))
    const restarted = await ActionRuntime.open({ deviceId: 'd3', gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage })
    const dev = await MqttActionDevice.connect({ url: b.url, runtime: restarted })
    t.after(() => dev.close())
    assert.equal(restarted.publicKeyB64, newPub)
    assert.deepEqual(b.refused, ['d3'])
  })
})

// mulberry32: a small seeded PRNG, so the intermittency is the same on every run
function seeded(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

describe('SimulatedMqttDevice', () => {
  test('the intermittency model keeps its online fraction and mean absence', async () => {
    const kp = await keygen()
    const sim = await SimulatedMqttDevice.create({ url: 'mqtt://127.0.0.1:1', deviceId: 's0', gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, secretKey: kp.secretKey, random: seeded(1), ...MOSTLY_OFFLINE })
    let on = 0
    let off = 0
    const n = 20_000
    for (let i = 0; i < n; i++) {
      on += sim.nextPeriod(true)
      off += sim.nextPeriod(false)
    }
    assert.ok(Math.abs(on / (on + off) - 0.05) < 0.005, `online fraction ${on / (on + off)}`)
    assert.ok(Math.abs(off / n / 86_400 - 1) < 0.05, `mean absence ${off / n} s`)
  })

  test('a device offline most of the time is wiped exactly once when it comes back', async (t) => {
    const b = await startBroker(t)
    const clock = new ManualSimClock()
    const kp = await keygen()
    b.keys.set('s1', new Set([publicKeyToB64(kp.publicKey)]))
    const sim = await SimulatedMqttDevice.create({
      url: b.url, deviceId: 's1', gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, secretKey: kp.secretKey,
      clock, random: seeded(10), onlineFraction: 0.05, meanOfflineS: 6 * 3600, // seed 10: starts offline, first absence ~15 h
    })
    b.runtimes.set('s1', sim.runtime)
    await sim.runtime.setData('calibration', '42')
    t.after(() => sim.close())

    // explicit control
    assert.equal(await sim.goOnline(), true)
    assert.equal(sim.state, 'online')
    await sim.goOffline()
    assert.equal(sim.state, 'offline')

    // the gateway queues a wipe while the device is away; run() brings it back at some point
    const wipe = action('s1', 'wipe')
    const wipeId = parseJws(wipe).payload.jti as string
    b.queue('s1', wipe)
    const ac = new AbortController()
    const running = sim.run(ac.signal)
    let hours = 0
    let offlineHours = 0
    while (sim.state !== 'wiped' && hours < 24 * 30) {
      await clock.advance(3600_000)
      hours++
      await until(() => clock.sleepers === 1) // the run loop has gone online or offline and sleeps again
      if (sim.state === 'online') await sim.waitForAck(wipeId, 5000)
      else if (sim.state === 'offline') offlineHours++
    }
    ac.abort()
    await running
    assert.equal(sim.state, 'wiped', `wiped within ${hours} simulated hours`)
    assert.equal(sim.stats.wipesDone, 1)
    assert.equal(b.acks.filter((a) => a.deviceId === 's1').length, 1)
    assert.equal(sim.runtime.getData('calibration'), undefined)
    assert.equal(sim.runtime.secretKey, null)
    assert.equal(await sim.goOnline(), false, 'a wiped device has nothing to connect with')
    assert.ok(offlineHours >= 10, `it was away for a while first (${offlineHours} h)`)
  })
})

test('against the real agent: an enrolled device receives an action and its ack is published on dev/<id>/ack', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const enrolled = await enrollDevice(gw, 'rd1')
  const runtime = await ActionRuntime.open({ deviceId: 'rd1', gatewayId: gw.id, gatewayPublicKey: gw.key.publicKeyB64, secretKey: enrolled.secretKey, storage: new MemoryDeviceStorage() })
  const dev = await MqttActionDevice.connect({ url: `mqtt://127.0.0.1:${agent.mqttPort}`, runtime, nowS: () => gw.nowS() })
  t.after(() => dev.close())
  const acks: string[] = []
  agent.broker.aedes.on('publish', (p) => void (p.topic === 'dev/rd1/ack' && acks.push(p.payload.toString())))
  const env = signJws(gw.key.privateKey, gw.id, { iss: gw.id, aud: 'rd1', iat: gw.nowS(), jti: 'real-1', act: 'revoke-notice', args: {} })
  await new Promise<void>((resolve, reject) =>
    agent.broker.aedes.publish({ cmd: 'publish', topic: 'dev/rd1/cmd', payload: Buffer.from(env), qos: 1, retain: false, dup: false }, (err) => (err ? reject(err) : resolve())),
  )
  const sent = await dev.waitForAck('real-1')
  assert.equal(sent.status, 'done')
  await until(() => acks.length === 1)
  assert.equal(verifyWith(acks[0]!, enrolled.publicKey)?.ref, 'real-1')
})
