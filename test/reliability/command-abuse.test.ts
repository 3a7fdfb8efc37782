// Abuse of the command topic with valid structure: commands held back on the
// way and released later (PROTOCOL §3 `superseded`), and junk from anyone who
// can publish to …/cmd, which must cost next to nothing and keep nothing.
// A real Mosquitto as the central broker, a real agent.
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import { UNAUTHENTICATED_ANSWERED } from '../../agent/commands/processor.ts'
import { ControlPlane, publicKeyB64, type GatewayEvent } from '../../simulators/control-plane.ts'
import { startTestAgent, tempDir } from '../helpers/agent.ts'
import { recordFigure, scaled } from '../helpers/figures.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'

const cpKey = generateKeyPairSync('ed25519').privateKey
const devKey = (): string => publicKeyB64(generateKeyPairSync('ed25519').privateKey)

async function setup(t: Parameters<typeof startTestAgent>[0], dataDir = tempDir(t as never)) {
  const m = await Mosquitto.start(t)
  const flags = { uplink: m.url, cpKey: [`cp1=${publicKeyB64(cpKey)}`] }
  const agent = await startTestAgent(t, { dataDir, flags })
  const cp = new ControlPlane({ broker: m.url, site: 'site1', gateway: 'gw1', key: cpKey, kid: 'cp1', gatewayKey: agent.gateway.key.publicKeyB64 })
  await cp.connect()
  t.after(() => cp.close())
  return { m, agent, cp, dataDir, flags }
}

const outcome = (cp: ControlPlane, jti: string): Promise<GatewayEvent> =>
  cp.waitFor((e) => ['cmd.completed', 'cmd.failed', 'cmd.rejected', 'cmd.duplicate'].includes(e.type) && e.data.jti === jti, 20_000)

test('a held-back command never undoes a newer decision (superseded), also after a restart', async (t) => {
  const { agent, cp, dataDir, flags } = await setup(t)
  const now = Math.floor(Date.now() / 1000)
  const id = 'press-1'
  await cp.run('device.enroll', { device: { id, publicKey: devKey() } }, { nowS: now - 100 })
  // Signed before the revoke, delivered after it: the stolen device must stay out.
  const heldEnroll = cp.sign('device.enroll', { device: { id, publicKey: devKey() } }, { nowS: now - 50 })
  const heldRelease = cp.sign('device.release', { deviceId: id }, { nowS: now - 40 })
  assert.equal((await cp.run('device.quarantine', { deviceId: id }, { nowS: now - 45 })).type, 'cmd.completed')
  assert.equal((await cp.run('device.revoke', { deviceId: id, reason: 'stolen' }, { nowS: now - 10 })).type, 'cmd.completed')
  const replays = scaled(20)
  let superseded = 0
  for (const held of [heldEnroll, heldRelease]) {
    const got = outcome(cp, held.jti)
    await cp.publishRaw(held.jws)
    const e = await got
    assert.equal(e.type, 'cmd.rejected')
    assert.equal(e.data.reason, 'superseded')
    superseded++
  }
  assert.equal(agent.gateway.getDevice(id)?.state, 'revoked', 'the held-back enroll did not re-admit the stolen device')
  // More held-back commands of every device op, some after a restart (the last iat per device is on disk).
  await agent.stop()
  const again = await startTestAgent(t, { dataDir, flags })
  for (let i = 0; i < replays; i++) {
    const ops: [string, Record<string, unknown>][] = [
      ['device.enroll', { device: { id, publicKey: devKey() } }],
      ['device.release', { deviceId: id }],
      ['device.quarantine', { deviceId: id }],
      ['device.wipe', { deviceId: id }],
    ]
    const [op, args] = ops[i % ops.length]!
    const held = cp.sign(op, args, { nowS: now - 30 + (i % 10) })
    const got = outcome(cp, held.jti)
    await cp.publishRaw(held.jws)
    const e = await got
    assert.equal(e.data.reason, 'superseded', `${op}: ${JSON.stringify(e.data)}`)
    superseded++
  }
  assert.equal(again.gateway.getDevice(id)?.state, 'revoked')
  assert.equal(again.gateway.actions.pending(id).length, 0)
  // A newer command does run; one with the same iat as the last runs too (arrival order).
  const same = await cp.run('device.enroll', { device: { id, publicKey: devKey() } }, { nowS: now - 10 })
  assert.equal(same.type, 'cmd.completed', 'equal iat: runs in arrival order')
  assert.equal(again.gateway.getDevice(id)?.state, 'active')
  // Another device is not affected by this one's history.
  assert.equal((await cp.run('device.enroll', { device: { id: 'other-1', publicKey: devKey() } }, { nowS: now - 500 })).type, 'cmd.completed')
  recordFigure(t, {
    area: 'uplink abuse',
    test: 'held-back commands released after a newer decision (enroll after revoke, release after revoke, ...)',
    size: `${superseded} stale commands, half after a restart`,
    result: `${superseded}/${superseded} rejected as superseded; the revoked device stayed revoked; nothing queued`,
    pass: true,
  })
})

test('junk on the command topic is answered a few at a time and reported per burst; nothing of it is kept', async (t) => {
  const { agent, cp } = await setup(t)
  const gw = agent.gateway
  await cp.run('device.enroll', { device: { id: 'valve-1', publicKey: devKey() } })
  await gw.store.flush()
  const before = { audit: gw.auditHead.seq, events: gw.outbox.lastSeq, jtis: await count(gw, 'jti!cmd!') }
  const n = scaled(3000)
  const forger = generateKeyPairSync('ed25519').privateKey
  const now = Math.floor(Date.now() / 1000)
  const lastJunk = agent.commands.stats.unauthenticated + n
  for (let i = 0; i < n; i++) {
    // garbage, alg none, a kid nobody pinned, a forged signature under the pinned kid
    const kind = i % 4
    const payload =
      kind === 0
        ? `junk-${i}`
        : kind === 1
          ? `${b64({ alg: 'none', kid: 'cp1' })}.${b64({ iss: 'x', aud: 'gw1', iat: now, exp: now + 60, jti: `n-${i}`, op: 'device.revoke', args: { deviceId: 'valve-1' } })}.`
          : forgedCommand(forger, kind === 2 ? 'cp-unknown' : 'cp1', now, i)
    await cp.publishRaw(payload)
  }
  // every message taken (the gateway PUBACKs once a message's fate is decided)
  while (agent.commands.stats.unauthenticated < lastJunk) await new Promise((r) => setImmediate(r))
  await agent.commands.flushUnauthenticated()
  await gw.store.flush()
  const after = { audit: gw.auditHead.seq, events: gw.outbox.lastSeq, jtis: await count(gw, 'jti!cmd!') }
  const auditAdded = after.audit - before.audit
  const eventsAdded = after.events - before.events
  assert.ok(auditAdded <= UNAUTHENTICATED_ANSWERED + 2, `audit entries for ${n} junk messages: ${auditAdded}`)
  assert.ok(eventsAdded <= UNAUTHENTICATED_ANSWERED + 2, `events for ${n} junk messages: ${eventsAdded}`)
  assert.equal(after.jtis, before.jtis, 'no jti of an unauthenticated message is kept')
  const report = await cp.waitFor((e) => e.type === 'cmd.rejected' && typeof e.data.count === 'number')
  assert.equal(report.data.count, n - UNAUTHENTICATED_ANSWERED, 'the burst report counts every message not answered one by one')
  assert.equal(gw.getDevice('valve-1')?.state, 'active')
  // A signed but expired replay is answered and not kept either (it can never run).
  const expired = cp.sign('device.revoke', { deviceId: 'valve-1' }, { nowS: now - 10_000, lifetimeS: 60 })
  const got = outcome(cp, expired.jti)
  await cp.publishRaw(expired.jws)
  assert.equal((await got).data.reason, 'expired')
  await gw.store.flush()
  assert.equal(await count(gw, 'jti!cmd!'), before.jtis)
  recordFigure(t, {
    area: 'uplink abuse',
    test: 'unsigned and forged messages published to the command topic',
    size: `${n.toLocaleString('en')} messages (garbage, alg none, unknown kid, forged signature)`,
    result: `${auditAdded} audit entries and ${eventsAdded} events in all (${UNAUTHENTICATED_ANSWERED} answered one by one, the rest in one burst report with count ${String(report.data.count)}); no jti kept`,
    pass: true,
  })
})

const b64 = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url')

function forgedCommand(key: ReturnType<typeof generateKeyPairSync>['privateKey'], kid: string, now: number, i: number): string {
  const cp = new ControlPlane({ broker: 'mqtt://unused', site: 'site1', gateway: 'gw1', key, kid })
  return cp.sign('device.revoke', { deviceId: 'valve-1' }, { nowS: now, jti: `forged-${i}` }).jws
}

async function count(gw: { store: { scan(prefix: string): AsyncIterable<unknown> } }, prefix: string): Promise<number> {
  let n = 0
  for await (const _ of gw.store.scan(prefix)) n++
  return n
}
