// A device that re-keys (reenroll done, signed with its old key) and right
// after acks its next action with the new key (two MQTT messages in one
// read) has both acks settled: the second, not by a key the device had when
// it arrived, is checked again against the keys it has once the first settled.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startTestAgent } from '../helpers/agent.ts'
import { ackFor, rekeyProof, testKey } from '../helpers/device-keys.ts'

test('back-to-back acks across a re-key: the ack signed with the new key settles too', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const old = testKey()
  await gw.enroll({ id: 'r1', publicKey: old.publicKey }, { actor: 'test' })
  // (a wipe queued after a reenroll would supersede it: queued the other way round)
  const wipe = await agent.actions.queue('r1', 'wipe', { actor: 'test' })
  const reenroll = await agent.actions.queue('r1', 'reenroll', { actor: 'test' })
  const fresh = testKey()
  const ack1 = ackFor(old.privateKey, 'r1', 'gw1', reenroll.id, 'done', rekeyProof(fresh, reenroll.id))
  const ack2 = ackFor(fresh.privateKey, 'r1', 'gw1', wipe.id, 'done')
  // as the MQTT adapter hands them over: one after the other, without waiting
  const [r1, r2] = await Promise.all([agent.actions.ack('r1', ack1, 'mqtt'), agent.actions.ack('r1', ack2, 'mqtt')])
  assert.deepEqual(r1, { ok: true })
  assert.deepEqual(r2, { ok: true }, 'the wipe ack, signed with the key the device proved a message earlier')
  assert.equal(gw.actions.pending('r1').length, 0)
})
