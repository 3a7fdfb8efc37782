// The crypto pool (agent/runtime/crypto-pool.ts): the same answers on a
// worker as inline, a burst handed over in batches, a dead worker's
// requests answered inline, and the gateway's events signed on it verify.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { CryptoPool } from '../../../agent/runtime/crypto-pool.ts'
import { generateKeyPair, publicKeyFromB64, signBytes, verifyBytes } from '../../../agent/store/keys.ts'
import { Gateway } from '../../../agent/gateway.ts'
import { createLogger } from '../../../agent/observe/logger.ts'
import { parseJws } from '../../../wire/jws.ts'
import { tempDir, testConfig } from '../../helpers/agent.ts'

const data = new TextEncoder().encode('edgewarden.signing-input')

test('a worker answers as inline does: good signatures true, wrong key, bad signature and a malformed key false; signatures verify', async (t) => {
  const gwKey = generateKeyPair()
  const keys = Array.from({ length: 50 }, () => generateKeyPair())
  const sigs = keys.map((k) => signBytes(k.privateKey, data))
  for (const size of [0, 1]) {
    const pool = new CryptoPool({ size, signKey: gwKey.privateKey })
    t.after(() => pool.close())
    assert.equal(pool.size, size)
    const good = await Promise.all(keys.map((k, i) => pool.verify(k.publicKeyB64, data, sigs[i]!)))
    assert.deepEqual(good, keys.map(() => true))
    assert.equal(await pool.verify(keys[1]!.publicKeyB64, data, sigs[0]!), false)
    const bent = Uint8Array.from(sigs[0]!)
    bent[5]! ^= 1
    assert.equal(await pool.verify(keys[0]!.publicKeyB64, data, bent), false)
    assert.equal(await pool.verify('not-a-key', data, sigs[0]!), false)
    assert.equal(await pool.verifyAny([keys[2]!.publicKeyB64, keys[0]!.publicKeyB64], data, sigs[0]!), keys[0]!.publicKeyB64)
    assert.equal(await pool.verifyAny([keys[2]!.publicKeyB64], data, sigs[0]!), null)
    const sig = await pool.sign(data)
    assert.ok(verifyBytes(publicKeyFromB64(gwKey.publicKeyB64)!, data, sig))
    if (size > 0) assert.ok(pool.stats.offloaded >= 56 && pool.stats.batches < 20, `a burst goes over in batches: ${JSON.stringify(pool.stats)}`)
    else assert.equal(pool.stats.offloaded, 0)
  }
})

test('a worker that dies: what it held and what comes after is answered inline', async (t) => {
  const k = generateKeyPair()
  const sig = signBytes(k.privateKey, data)
  const pool = new CryptoPool({ size: 1, signKey: k.privateKey, log: createLogger('silent') })
  t.after(() => pool.close())
  const inFlight = Array.from({ length: 20 }, () => pool.verify(k.publicKeyB64, data, sig))
  await new Promise<void>((r) => setImmediate(r)) // the batch is in the worker's hands
  await Promise.all(pool.threads.map((w) => w.terminate()))
  assert.deepEqual(await Promise.all(inFlight), inFlight.map(() => true))
  assert.equal(pool.size, 0)
  assert.equal(await pool.verify(k.publicKeyB64, data, sig), true)
  assert.ok(verifyBytes(publicKeyFromB64(k.publicKeyB64)!, data, await pool.sign(data)))
})

test('events the gateway signs on its pool verify with the gateway key and are stored in seq order', async (t) => {
  const gw = await Gateway.open(testConfig(tempDir(t), { cryptoWorkers: '1' }), { log: createLogger('silent') })
  t.after(() => gw.close())
  assert.equal(gw.crypto.size, 1)
  const stored = await Promise.all(Array.from({ length: 30 }, (_, i) => gw.commit({ events: [{ type: 'test.event', data: { i } }] })))
  const events = stored.flat()
  assert.deepEqual(events.map((e) => e.seq), events.map((_, i) => events[0]!.seq + i))
  const key = publicKeyFromB64(gw.key.publicKeyB64)!
  for (const e of await gw.outbox.pending(gw.store, events[0]!.seq - 1, 100)) {
    const jws = parseJws(e.jws)
    assert.ok(verifyBytes(key, jws.signingInput, jws.signature), `event ${e.seq} verifies`)
    assert.equal(jws.payload.seq, e.seq)
  }
  assert.ok(gw.crypto.stats.offloaded >= 30)
})

