// Gateway side of actions (PROTOCOL §5, §6), driven without a network:
// acks (forged, stray, repeated), re-keying with and without overlap,
// deadlines, and the credential lifecycle across months on a ManualClock.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ManualClock } from '../../../agent/runtime/clock.ts'
import { jwsSigningInput, parseJws } from '../../../wire/jws.ts'
import { b64urlEncode } from '../../../wire/base64url.ts'
import { newJti } from '../../../wire/ids.ts'
import { startTestAgent } from '../../helpers/agent.ts'
import { ackFor, rekeyProof, testKey } from '../../helpers/device-keys.ts'

const DAY = 86400
type Agent = Awaited<ReturnType<typeof startTestAgent>>

async function events(agent: Agent): Promise<{ type: string; data: Record<string, unknown> }[]> {
  const stored = await agent.gateway.outbox.pending(agent.gateway.store, 0, 100_000)
  return stored.map((e) => {
    const p = parseJws(e.jws).payload
    return { type: p.type as string, data: p.data as Record<string, unknown> }
  })
}

test('acks: forged, misaddressed and stray acks change nothing; a valid one settles the action once; a repeat is harmless', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const dev = testKey()
  const other = testKey()
  await gw.enroll({ id: 'd1', publicKey: dev.publicKey }, { actor: 'test' })
  await gw.enroll({ id: 'd2', publicKey: other.publicKey }, { actor: 'test' })
  const wipe = await agent.actions.queue('d1', 'wipe', { actor: 'test' })
  const refused = async (payload: string, as = 'd1'): Promise<string | undefined> => {
    const r = await agent.actions.ack(as, payload, 'test')
    assert.equal(r.ok, false)
    assert.equal(gw.actions.pending('d1').length, 1, 'the action is still pending')
    return r.reason
  }
  assert.match((await refused(ackFor(other.privateKey, 'd1', 'gw1', wipe.id, 'done')))!, /signature/)
  assert.match((await refused(ackFor(dev.privateKey, 'd1', 'gw-other', wipe.id, 'done')))!, /aud/)
  assert.match((await refused(ackFor(dev.privateKey, 'd1', 'gw1', 'act.nope', 'done')))!, /not an action pending/)
  assert.match((await refused(ackFor(other.privateKey, 'd2', 'gw1', wipe.id, 'done'), 'd2'))!, /not an action pending/)
  assert.match((await refused(ackFor(dev.privateKey, 'd1', 'gw1', wipe.id, 'done'), 'd2'))!, /kid and iss/)
  assert.match((await refused(ackFor(dev.privateKey, 'd1', 'gw1', wipe.id, 'finished')))!, /status/)
  assert.match((await refused('not.a.jws'))!, /malformed/)
  // ES256 is for certificate devices (PROTOCOL §9): a token device's ack with it is refused before any key is looked at,
  // well formed and signed or not (the ack's first parse accepts either algorithm, to see whether it may settle something)
  const es256 = (claims: Record<string, unknown>): string => {
    const input = jwsSigningInput('d1', claims, 'ES256')
    return `${input}.${b64urlEncode(new Uint8Array(64))}`
  }
  assert.match((await refused(es256({ iss: 'd1', aud: 'gw1', iat: gw.nowS(), jti: newJti('ack.'), ref: wipe.id, status: 'done' })))!, /bad-alg/)
  assert.equal(agent.actions.strayAcks, 8)

  const good = ackFor(dev.privateKey, 'd1', 'gw1', wipe.id, 'done')
  assert.deepEqual(await agent.actions.ack('d1', good, 'test'), { ok: true })
  assert.equal(gw.actions.pending('d1').length, 0)
  const again = await agent.actions.ack('d1', good, 'test')
  assert.deepEqual(again, { ok: false, reason: 'repeated' })
  const acked = (await events(agent)).filter((e) => e.type === 'action.acked')
  assert.deepEqual(acked.map((e) => e.data), [{ deviceId: 'd1', actionId: wipe.id, act: 'wipe', status: 'done' }])
})

/** An agent with device d1 enrolled (its key `dev`), and its crypto pool's signature checks counted; while `pool.refuse` holds, the pool answers "not signed". */
async function d1WithCountedPool(t: Parameters<typeof startTestAgent>[0]) {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const dev = testKey()
  await gw.enroll({ id: 'd1', publicKey: dev.publicKey }, { actor: 'test' })
  const crypto = gw.crypto
  const verify = crypto.verify.bind(crypto)
  const pool = { checks: 0, refuse: false }
  crypto.verify = async (k, d, sig) => {
    pool.checks++
    return pool.refuse ? false : verify(k, d, sig)
  }
  return { agent, gw, dev, pool }
}

test('an ack costs at most one signature check: claims that settle nothing cost none, and a signature the pool refused is not checked again inline', async (t) => {
  const { agent, gw, dev, pool } = await d1WithCountedPool(t)
  const other = testKey()
  const wipe = await agent.actions.queue('d1', 'wipe', { actor: 'test' })
  // the pool answers "not signed" to every check, and counts them
  pool.refuse = true
  const refused = async (payload: string): Promise<string | undefined> => {
    const r = await agent.actions.ack('d1', payload, 'test')
    assert.equal(r.ok, false)
    return r.reason
  }
  assert.match((await refused(ackFor(other.privateKey, 'd1', 'gw1', 'act.nope', 'done')))!, /not an action pending/)
  assert.match((await refused(ackFor(other.privateKey, 'd1', 'gw-other', wipe.id, 'done')))!, /aud/)
  assert.match((await refused(ackFor(other.privateKey, 'd1', 'gw1', wipe.id, 'finished')))!, /status/)
  assert.equal(pool.checks, 0, 'claims that settle nothing are refused before any signature is checked')
  // the device's own ack, which the pool (stubbed) refuses: the keys it tried are not tried again on the event loop
  const good = ackFor(dev.privateKey, 'd1', 'gw1', wipe.id, 'done')
  assert.match((await refused(good))!, /signature is not by a currently valid key/)
  assert.equal(pool.checks, 1, 'one check, on the pool')
  assert.equal(gw.actions.pending('d1').length, 1)
  pool.refuse = false
  assert.deepEqual(await agent.actions.ack('d1', good, 'test'), { ok: true })
  assert.equal(pool.checks, 2)
})

test('copies of an ack being checked get its answer without a check of their own; a different ack for the same action is checked on its own', async (t) => {
  const { agent, gw, dev, pool } = await d1WithCountedPool(t)
  // three copies handed over at once (a flood on its ack topic, a QoS 1 re-send): one checked, one settlement
  const wipe = await agent.actions.queue('d1', 'wipe', { actor: 'test' })
  const good = ackFor(dev.privateKey, 'd1', 'gw1', wipe.id, 'done')
  const answers = await Promise.all([1, 2, 3].map(() => agent.actions.ack('d1', good, 'test')))
  assert.deepEqual(answers, [{ ok: true }, { ok: false, reason: 'repeated' }, { ok: false, reason: 'repeated' }])
  assert.equal(pool.checks, 1)
  assert.equal(agent.actions.repeatedAcks, 2)
  assert.equal(agent.actions.strayAcks, 0, 'not counted as bad')
  assert.equal(gw.actions.pending('d1').length, 0)
  // a forged ack for the device's next action (its id seen on the cmd topic), copied, handed over together with the
  // device's own: the forgery and its copy refused on one check, the device's own ack checked on its own and settled
  const renew = await agent.actions.queue('d1', 'renew', { actor: 'test' })
  const forged = ackFor(testKey().privateKey, 'd1', 'gw1', renew.id, 'failed')
  const own = ackFor(dev.privateKey, 'd1', 'gw1', renew.id, 'failed', { detail: 'no entropy' })
  pool.checks = 0
  const [f1, f2, mine] = await Promise.all([forged, forged, own].map((p) => agent.actions.ack('d1', p, 'test')))
  assert.deepEqual(mine, { ok: true }, "someone else's forgery does not stand in for the device's ack")
  // the forgery refused (by its signature, or as a repeat when the device's ack settled first), its copy the same
  assert.equal(f1!.ok, false)
  assert.match(f1!.reason!, /signature|repeated/)
  assert.deepEqual(f2, f1)
  assert.ok(pool.checks <= 2, `${pool.checks} signature checks for three acks, two of them alike`)
  assert.equal(gw.actions.pending('d1').length, 0)
})

test('re-enrollment replaces the key at once; a bad proof of the new key is refused', async (t) => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1))
  const agent = await startTestAgent(t, { clock })
  const gw = agent.gateway
  const old = testKey()
  await gw.enroll({ id: 'r1', publicKey: old.publicKey }, { actor: 'test' })
  const a = await agent.actions.queue('r1', 'reenroll', { actor: 'test' })
  const fresh = testKey()
  const wrongProof = { ...rekeyProof(fresh, 'some-other-id') }
  assert.equal((await agent.actions.ack('r1', ackFor(old.privateKey, 'r1', 'gw1', a.id, 'done', wrongProof), 'test')).ok, false)
  assert.equal((await agent.actions.ack('r1', ackFor(old.privateKey, 'r1', 'gw1', a.id, 'done'), 'test')).ok, false, 'done without the new key')
  assert.equal(gw.getDevice('r1')!.keys[0]!.publicKey, old.publicKey)
  assert.deepEqual(await agent.actions.ack('r1', ackFor(old.privateKey, 'r1', 'gw1', a.id, 'done', rekeyProof(fresh, a.id)), 'test'), { ok: true })
  const r = gw.getDevice('r1')!
  assert.deepEqual(r.keys.map((k) => k.publicKey), [fresh.publicKey], 'only the new key remains')
  assert.equal(r.spec.publicKey, fresh.publicKey)
  assert.equal(r.credentialExpiresAt, gw.nowS() + gw.config.credentialLifetimeS)
})

test('renewal keeps the old key for the overlap window, then drops it', async (t) => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1))
  const agent = await startTestAgent(t, { clock, flags: { renewOverlapS: String(2 * DAY) } })
  const gw = agent.gateway
  const old = testKey()
  await gw.enroll({ id: 'n1', publicKey: old.publicKey }, { actor: 'test' })
  const a = await agent.actions.queue('n1', 'renew', { actor: 'test' })
  const fresh = testKey()
  assert.deepEqual(await agent.actions.ack('n1', ackFor(old.privateKey, 'n1', 'gw1', a.id, 'done', rekeyProof(fresh, a.id)), 'test'), { ok: true })
  const now = gw.nowS()
  assert.deepEqual(
    gw.getDevice('n1')!.keys.map((k) => [k.publicKey, k.notAfter]),
    [
      [old.publicKey, now + 2 * DAY],
      [fresh.publicKey, null],
    ],
  )
  // Within the overlap the old key still signs valid acks (a device that missed the switch).
  const b = await agent.actions.queue('n1', 'wipe', { actor: 'test' })
  assert.deepEqual(await agent.actions.ack('n1', ackFor(old.privateKey, 'n1', 'gw1', b.id, 'failed', { detail: 'test' }), 'test'), { ok: true })
  clock.advance(2 * DAY * 1000 + 1000)
  await agent.maintenance.tick()
  assert.deepEqual(gw.getDevice('n1')!.keys.map((k) => k.publicKey), [fresh.publicKey])
})

test('credential lifecycle: renewal thresholds by criticality, expiring and expired notices once each, over months', async (t) => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1))
  const agent = await startTestAgent(t, { clock, flags: { credentialLifetimeS: String(100 * DAY), renewGraceS: String(10 * DAY) } })
  const gw = agent.gateway
  for (const [id, criticality] of [
    ['safety-1', 'safety'],
    ['low-1', 'low'],
  ] as const) {
    await gw.enroll({ id, publicKey: testKey().publicKey, criticality }, { actor: 'test' })
  }
  const at = async (days: number): Promise<void> => {
    clock.set(Date.UTC(2026, 0, 1) + days * DAY * 1000)
    await agent.maintenance.tick()
  }
  const notices = async (): Promise<string[]> =>
    (await events(agent)).filter((e) => e.type.startsWith('credential.')).map((e) => `${e.type}:${e.data.deviceId}${e.data.withinGrace === undefined ? '' : `:${e.data.withinGrace}`}`)
  await at(60)
  assert.deepEqual(await notices(), [])
  await at(71) // safety renews with 30% left: day 70
  assert.deepEqual(await notices(), ['credential.expiring:safety-1'])
  assert.deepEqual(gw.actions.pending('safety-1').map((a) => a.act), ['renew'])
  assert.equal(gw.actions.pending('low-1').length, 0)
  await at(75)
  assert.equal((await notices()).length, 1, 'reported once')
  await at(91) // low renews with 10% left: day 90
  assert.deepEqual((await notices()).slice(1), ['credential.expiring:low-1'])
  await at(101) // both expired, within the grace: reported, renew still pending (not queued twice)
  assert.deepEqual((await notices()).slice(2), ['credential.expired:safety-1:true', 'credential.expired:low-1:true'])
  assert.equal(gw.actions.pending('safety-1').filter((a) => a.act === 'renew').length, 1)
  await at(111) // beyond the grace
  assert.deepEqual((await notices()).slice(4), ['credential.expired:safety-1:false', 'credential.expired:low-1:false'])
})

test('actions past their deadline are removed and audited', async (t) => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1))
  const agent = await startTestAgent(t, { clock })
  const gw = agent.gateway
  await gw.enroll({ id: 'x1', publicKey: testKey().publicKey }, { actor: 'test' })
  const a = await agent.actions.queue('x1', 'renew', { actor: 'test' })
  clock.advance(29 * DAY * 1000)
  await agent.maintenance.tick()
  assert.ok(gw.actions.find('x1', a.id), 'still pending before its deadline')
  clock.advance(2 * DAY * 1000)
  await agent.maintenance.tick()
  assert.equal(gw.actions.find('x1', a.id), undefined)
  const { exportAuditLog } = await import('../../../agent/store/audit.ts')
  const expired = []
  for await (const e of exportAuditLog(gw.store)) if (e.action === 'action.expired') expired.push(e.data)
  assert.deepEqual(expired, [{ actionId: a.id, act: 'renew', deadline: a.deadline }])
})

test('a Modbus-only device is not renewed (it holds no credential the gateway checks)', async (t) => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1))
  const agent = await startTestAgent(t, { clock, flags: { credentialLifetimeS: String(10 * DAY) } })
  const gw = agent.gateway
  await gw.enroll({ id: 'plc-1', publicKey: testKey().publicKey, modbus: { host: '127.0.0.1', port: 5020, unitId: 3 } }, { actor: 'test' })
  await gw.enroll({ id: 'both-1', publicKey: testKey().publicKey, mqtt: {}, modbus: { host: '127.0.0.1', port: 5021, unitId: 4 } }, { actor: 'test' })
  clock.advance(9 * DAY * 1000)
  await agent.maintenance.tick()
  assert.equal(gw.actions.pending('plc-1').length, 0)
  assert.deepEqual(gw.actions.pending('both-1').map((a) => a.act), ['renew'])
})
