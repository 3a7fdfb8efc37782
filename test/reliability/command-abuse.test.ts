// Abuse of the command topic with valid structure: commands held back on the
// way and released later (PROTOCOL §3 `superseded`), and junk from anyone who
// can publish to …/cmd, which must cost next to nothing and keep nothing.
// A real Mosquitto as the central broker, a real agent.
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import { JUNK_WINDOW_MAX_S, UNAUTHENTICATED_ANSWERED } from '../../agent/commands/processor.ts'
import { ManualClock } from '../../agent/runtime/clock.ts'
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

test('an iat ahead of the gateway (within the skew) does not make a later revoke look stale; a local decision is not undone by an older command', async (t) => {
  const { agent, cp } = await setup(t)
  const gw = agent.gateway
  const now = gw.nowS()
  // a control plane whose clock runs 240 s ahead enrolls; one whose clock is right revokes a moment later
  assert.equal((await cp.run('device.enroll', { device: { id: 'pump-1', publicKey: devKey() } }, { nowS: now + 240 })).type, 'cmd.completed')
  const revoke = await cp.run('device.revoke', { deviceId: 'pump-1', reason: 'stolen' }, { nowS: now + 1 })
  assert.equal(revoke.type, 'cmd.completed', JSON.stringify(revoke.data))
  assert.equal(gw.getDevice('pump-1')?.state, 'revoked')

  // enrolled by command, revoked by an operator at the gateway, then an enroll the control plane signed before that arrives
  assert.equal((await cp.run('device.enroll', { device: { id: 'pump-2', publicKey: devKey() } }, { nowS: now - 100 })).type, 'cmd.completed')
  const { adminRequest } = await import('../../agent/cli/admin-client.ts')
  assert.equal((await adminRequest(agent.config.dataDir, 'POST', '/v1/devices/pump-2/revoke', { reason: 'found on the loading dock' })).status, 200)
  const stale = await cp.run('device.enroll', { device: { id: 'pump-2', publicKey: devKey() } }, { nowS: now - 50 })
  assert.equal(stale.type, 'cmd.rejected')
  assert.equal(stale.data.reason, 'superseded')
  assert.equal(gw.getDevice('pump-2')?.state, 'revoked', 'the local revoke stands')
  // a command signed after the local decision runs
  assert.equal((await cp.run('device.enroll', { device: { id: 'pump-2', publicKey: devKey() } }, { nowS: gw.nowS() + 1 })).type, 'cmd.completed')
  assert.equal(gw.getDevice('pump-2')?.state, 'active')
})

test('a captured command replayed in a loop is answered as a duplicate now and then, not once per copy', async (t) => {
  const { agent, cp } = await setup(t)
  const gw = agent.gateway
  const done = await cp.run('device.enroll', { device: { id: 'valve-7', publicKey: devKey() } })
  assert.equal(done.type, 'cmd.completed')
  const captured = cp.sign('device.quarantine', { deviceId: 'valve-7' })
  assert.equal((await (async () => {
    const got = outcome(cp, captured.jti)
    await cp.publishRaw(captured.jws)
    return got
  })()).type, 'cmd.completed')
  await gw.store.flush()
  const before = gw.outbox.lastSeq
  const duplicates: number[] = []
  cp.onEvent((e) => void (e.type === 'cmd.duplicate' && e.data.jti === captured.jti && e.seq > before && duplicates.push(e.seq)))
  const n = scaled(500)
  for (let i = 0; i < n; i++) await cp.publishRaw(captured.jws)
  // the replays are all read: the last one is followed by a fresh command's answer
  const fresh = await cp.run('device.release', { deviceId: 'valve-7' })
  assert.equal(fresh.type, 'cmd.completed')
  assert.ok(duplicates.length >= 1 && duplicates.length <= 3, `${duplicates.length} duplicate answers for ${n} replays`)
  assert.ok(agent.commands.stats.duplicatesUnanswered >= n - 3)
  assert.equal(gw.getDevice('valve-7')?.state, 'active', 'the replays ran nothing')
  recordFigure(t, { area: 'uplink abuse', test: 'a captured command replayed in a loop', size: `${n} copies`, result: `${duplicates.length} cmd.duplicate answers; nothing run again`, pass: true })
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

test('a steady trickle of junk is folded into ever longer windows, not answered ten at a time per window; a quiet spell restores the first window\'s terms', async (t) => {
  const clock = new ManualClock(Date.now())
  const agent = await startTestAgent(t, { clock, flags: { httpPort: '0' } })
  const gw = agent.gateway
  const commands = agent.commands
  const rejected = (): number => gw.outbox.lastSeq
  const start = rejected()
  const junk = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      await commands.handle(`not a jws ${i}`)
      clock.advance(500) // two a second
    }
  }
  // the first window: ten answered one by one, the rest folded into one report
  await junk(20)
  await commands.flushUnauthenticated()
  assert.equal(rejected() - start, UNAUTHENTICATED_ANSWERED + 1)
  // the trickle goes on for windows of 20, 40, 80 ... s: one report each, none answered alone
  const windows = [20, 40, 80, 160, 320]
  for (const w of windows) {
    await junk(w * 2)
    await commands.flushUnauthenticated()
  }
  const reports = rejected() - start
  assert.equal(reports, UNAUTHENTICATED_ANSWERED + 1 + windows.length, `${20 + windows.reduce((a, w) => a + 2 * w, 0)} junk messages over ${10 + windows.reduce((a, b) => a + b, 0)} s`)
  assert.ok(JUNK_WINDOW_MAX_S >= 640)
  // quiet for longer than the last window: the next junk is answered alone again
  clock.advance(700_000)
  const before = rejected()
  await commands.handle('junk after a quiet spell')
  assert.equal(rejected() - before, 1)
  // the metric counts every message, folded or not, by its reason
  const text = await (await fetch(`http://127.0.0.1:${agent.http!.port}/metrics`)).text()
  const counted = [...text.matchAll(/^edgewarden_commands_total\{outcome="rejected",reason="[\w-]+"\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0)
  assert.equal(counted, 1261)
  recordFigure(t, { area: 'uplink abuse', test: 'a steady trickle of junk (2 a second)', size: '1,260 messages over 630 s', result: `${reports} events and audit entries (before: 11 per 10 s window, ~690)`, pass: true })
})
