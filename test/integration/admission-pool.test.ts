// Token admission with the signature checked on the crypto pool, off the
// broker's event loop (cryptoWorkers 1): what the check did not see while it
// ran is judged when it is back. One token sent on many connections at once
// lets in exactly one; a key taken away while its signature is being
// checked lets in none; a burst of good tokens all get in.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startTestAgent } from '../helpers/agent.ts'
import { enrollDevice, tokenFor, WHO } from '../helpers/mqtt-devices.ts'
import { connectPacket, rawExchange } from '../fuzz/mqtt-wire.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'

test('the crypto pool: one token on eight connections at once admits one; a burst of 200 good tokens all admitted, verified on the worker', async (t) => {
  const agent = await startTestAgent(t, { flags: { cryptoWorkers: '1' } })
  const gw = agent.gateway
  assert.equal(gw.crypto.size, 1)
  const dev = await enrollDevice(gw, 'pump-1')
  const token = await tokenFor(gw, dev)
  const packet = connectPacket({ clientId: dev.id, username: dev.id, password: token })
  const results = await Promise.all(Array.from({ length: 8 }, () => rawExchange(agent.mqttPort, packet)))
  assert.deepEqual(results.map((r) => r.connack).sort(), [0, 5, 5, 5, 5, 5, 5, 5], 'one connect per token')

  const devs = await Promise.all(Array.from({ length: 200 }, (_, i) => enrollDevice(gw, `sim-${i}`)))
  const before = gw.crypto.stats.offloaded
  const burst = await Promise.all(devs.map(async (d) => rawExchange(agent.mqttPort, connectPacket({ clientId: d.id, username: d.id, password: await tokenFor(gw, d) }))))
  assert.deepEqual(burst.filter((r) => r.connack !== 0), [])
  assert.ok(gw.crypto.stats.offloaded - before >= 200, 'each signature checked on the worker')
})

test('the crypto pool: a key replaced while its signature is checked is refused (the record is read again when the check is back)', async (t) => {
  const agent = await startTestAgent(t, { flags: { cryptoWorkers: '1' } })
  const gw = agent.gateway
  const dev = await enrollDevice(gw, 'pump-2')
  const token = await tokenFor(gw, dev)
  // the key changes the moment the signature goes to the worker
  const pool = gw.crypto
  const verify = pool.verify.bind(pool)
  let replaced: Promise<unknown> | null = null
  pool.verify = (k, d, s) => {
    const answer = verify(k, d, s)
    replaced ??= keygen().then((kp) => gw.enroll({ id: dev.id, publicKey: publicKeyToB64(kp.publicKey) }, WHO))
    return replaced.then(() => answer)
  }
  const r = await rawExchange(agent.mqttPort, connectPacket({ clientId: dev.id, username: dev.id, password: token }))
  assert.equal(r.connack, 5, 'refused: the key that signed is no longer the device\'s')
  assert.ok(replaced, 'the check went through the pool')
})
