// The durable event outbox: seq gapless across restarts, and the explicit
// policy at its bound.
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import { Gateway } from '../../../agent/gateway.ts'
import { publicKeyToB64 } from '../../../agent/store/keys.ts'
import { createLogger } from '../../../agent/observe/logger.ts'
import { parseJws } from '../../../wire/jws.ts'
import { tempDir, testConfig } from '../../helpers/agent.ts'

const devKey = (): string => publicKeyToB64(generateKeyPairSync('ed25519').publicKey)

test('seq starts at 1, grows by one per event, and continues across a restart', async (t) => {
  const dir = tempDir(t)
  let gw = await Gateway.open(testConfig(dir), { log: createLogger('silent') })
  await gw.enroll({ id: 'a', publicKey: devKey() }, { actor: 'test' })
  await gw.transition('a', 'quarantine', { actor: 'test' })
  await gw.close()
  gw = await Gateway.open(testConfig(dir), { log: createLogger('silent') })
  t.after(() => gw.close())
  await gw.transition('a', 'release', { actor: 'test' })
  const events = await gw.outbox.pending(gw.store, 0, 100)
  assert.deepEqual(events.map((e) => e.seq), [1, 2, 3])
  const claims = events.map((e) => parseJws(e.jws).payload)
  assert.deepEqual(claims.map((c) => c.seq), [1, 2, 3])
  assert.deepEqual(claims.map((c) => (c.data as { to: string }).to), ['active', 'quarantined', 'active'])
  assert.ok(claims.every((c) => c.iss === 'gw1' && c.aud === 'cp'))
})

test('at the outbox bound informational events are left out (and audited), evidence events are kept, seq stays gapless', async (t) => {
  const dir = tempDir(t)
  const lines: string[] = []
  const log = createLogger('warn', { write: (s: string) => void lines.push(s) })
  const gw = await Gateway.open(testConfig(dir, { outboxMax: '3' }), { log })
  t.after(() => gw.close())
  for (const id of ['a', 'b', 'c']) await gw.enroll({ id, publicKey: devKey() }, { actor: 'test' })
  assert.equal(gw.outbox.depth, 3)
  const alert = { type: 'alert.residual-use', data: { deviceId: 'a', protocol: 'mqtt', detail: 'x' } }
  await gw.commit({ audit: [{ actor: 'test', action: 'alert.residual-use', subject: 'a' }], events: [alert, alert] })
  assert.equal(gw.outbox.depth, 3, 'informational events were not queued')
  assert.equal(gw.eventsDroppedAtBound, 2)
  await gw.transition('a', 'revoke', { actor: 'test' })
  assert.equal(gw.outbox.depth, 4, 'a revocation is always kept')
  const seqs = (await gw.outbox.pending(gw.store, 0, 100)).map((e) => e.seq)
  assert.deepEqual(seqs, [1, 2, 3, 4])
  assert.ok(lines.some((l) => l.includes('informational event not queued')))
  assert.ok(lines.some((l) => l.includes('outbox over its bound')))
})
