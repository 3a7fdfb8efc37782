// Actions signed on the crypto pool (cryptoWorkers 1): until its signature
// is back an action has no JWS and is not stored, so a delivery pass that
// runs meanwhile (the device reconnecting, say) sends nothing for it; once
// its queueing is durable it is sent once, signed by the gateway, exactly
// as it was stored.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startTestAgent } from '../helpers/agent.ts'
import { enrollDevice, mqttConnect, tokenFor, WHO } from '../helpers/mqtt-devices.ts'
import { until, within } from '../helpers/wait.ts'
import { parseJws } from '../../wire/jws.ts'
import { verifyParsed } from '../../agent/store/jws.ts'
import { ACTION_PREFIX } from '../../agent/actions/action-queue.ts'

/** An agent with one crypto worker and a device `id` connected and listening on its command topic: what it receives, and a wait for the n-th. */
async function listeningDevice(t: Parameters<typeof startTestAgent>[0], id: string) {
  const agent = await startTestAgent(t, { flags: { cryptoWorkers: '1' } })
  const gw = agent.gateway
  const dev = await enrollDevice(gw, id)
  const c = await mqttConnect(agent.mqttPort, { clientId: dev.id, username: dev.id, password: await tokenFor(gw, dev) })
  assert.ok(c.ok, 'admitted')
  t.after(() => void c.client.end(true))
  const received: string[] = []
  const waiters: { n: number; resolve: () => void }[] = []
  c.client.on('message', (_topic, payload) => {
    received.push(payload.toString())
    for (const w of waiters) if (received.length >= w.n) w.resolve()
  })
  await c.client.subscribeAsync(`dev/${dev.id}/cmd`, { qos: 1 })
  const receivedCount = (n: number): Promise<void> => new Promise((resolve) => (received.length >= n ? resolve() : waiters.push({ n, resolve })))
  return { agent, gw, dev, received, receivedCount }
}

test('an action signed on the crypto pool is sent only once signed and stored, exactly as stored', async (t) => {
  const { agent, gw, dev, received, receivedCount } = await listeningDevice(t, 'press-1')
  assert.equal(gw.crypto.size, 1)
  const arrived = receivedCount(1).then(() => received[0]!)

  // every signature on the pool waits until the test lets it go
  const pool = gw.crypto
  const sign = pool.sign.bind(pool)
  let release!: () => void
  const held = new Promise<void>((r) => (release = r))
  let asked = 0
  pool.sign = (data) => {
    asked++
    return held.then(() => sign(data))
  }
  const queued = agent.actions.queue(dev.id, 'wipe', WHO)
  const pending = gw.actions.pending(dev.id)
  assert.equal(pending.length, 1)
  assert.equal(pending[0]!.jws, '', 'no JWS yet: its signature is on the pool')
  assert.ok(asked >= 1)
  // a delivery pass now (as on a reconnect) has nothing it may send
  agent.actions.dispatcher.deviceReady(dev.id)
  release()
  const action = await queued
  const payload = await within('the wipe delivered', arrived, 10_000)
  assert.equal(payload, action.jws)
  assert.deepEqual(received, [action.jws], 'sent once, and never without its JWS')
  const parsed = parseJws(payload)
  assert.ok(verifyParsed(parsed, gw.key.publicKey), 'signed by the gateway key')
  assert.equal(parsed.payload.jti, action.id)
  assert.equal(parsed.payload.act, 'wipe')
  // stored with the same JWS (the stored value is read once the signature is in)
  const stored = [...(await gw.store.db.iterator({ gte: ACTION_PREFIX, lt: 'act"' }).all())].map(([, v]) => JSON.parse(v) as { id: string; jws: string })
  assert.deepEqual(stored.map((a) => [a.id, a.jws]), [[action.id, action.jws]])
})

test('actions signed on the pool out of order are still sent in queueing order', async (t) => {
  const { agent, gw, dev, received, receivedCount } = await listeningDevice(t, 'press-2')
  const both = receivedCount(2)
  // the first action's signature comes back last (as from a second worker)
  const pool = gw.crypto
  const sign = pool.sign.bind(pool)
  let release!: () => void
  const held = new Promise<void>((r) => (release = r))
  let calls = 0
  pool.sign = (data) => (++calls === 1 ? held.then(() => sign(data)) : sign(data))
  const first = agent.actions.queue(dev.id, 'renew', WHO)
  await new Promise((r) => setImmediate(r)) // the next action in another turn (another pool batch)
  const later = agent.actions.queue(dev.id, 'reenroll', WHO)
  const [a, b] = gw.actions.pending(dev.id)
  assert.ok(a && b)
  // the later one signed, the first not yet: a delivery pass now sends neither
  await until('the later action signed', () => b.jws !== '', 5000)
  assert.equal(a.jws, '')
  agent.actions.dispatcher.deviceReady(dev.id)
  release()
  const [x, y] = await Promise.all([first, later])
  await within('both delivered', both, 10_000)
  assert.deepEqual(received, [x.jws, y.jws], 'in queueing order, each once')
})
