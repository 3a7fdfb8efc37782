// The control-plane link against a real Mosquitto: commands in, events out,
// across broker restarts, agent restarts and kill -9.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { adminRequest } from '../../agent/cli/admin-client.ts'
import { ControlPlane, publicKeyB64, type GatewayEvent } from '../../simulators/control-plane.ts'
import { BIN, runCli, spawnAgent, startTestAgent, tempDir } from '../helpers/agent.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'

const cp1 = generateKeyPairSync('ed25519').privateKey
const cp2 = generateKeyPairSync('ed25519').privateKey
const pin = (kid: string, k: KeyObject): string => `${kid}=${publicKeyB64(k)}`
const devKey = (): string => publicKeyB64(generateKeyPairSync('ed25519').privateKey)

async function controlPlane(
  t: { after(fn: () => Promise<void>): void },
  broker: string,
  gatewayKey: string,
  opts: { key?: KeyObject; kid?: string; clientId?: string } = {},
): Promise<ControlPlane> {
  const cp = new ControlPlane({ broker, site: 'site1', gateway: 'gw1', key: opts.key ?? cp1, kid: opts.kid ?? 'cp1', gatewayKey, ...(opts.clientId ? { clientId: opts.clientId } : {}) })
  await cp.connect()
  t.after(() => cp.close())
  return cp
}

/** Collect events by seq (de-duplicated), and wait until a count is reached. */
function collector(cp: ControlPlane): { bySeq: Map<number, GatewayEvent>; until(n: number, timeoutMs?: number): Promise<void>; all: GatewayEvent[] } {
  const bySeq = new Map<number, GatewayEvent>()
  const all: GatewayEvent[] = []
  const waiters: { n: number; resolve(): void }[] = []
  cp.onEvent((e) => {
    all.push(e)
    bySeq.set(e.seq, e)
    for (const w of [...waiters]) if (bySeq.size >= w.n) (waiters.splice(waiters.indexOf(w), 1), w.resolve())
  })
  return {
    bySeq,
    all,
    until: (n, timeoutMs = 30_000) =>
      bySeq.size >= n
        ? Promise.resolve()
        : new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`only ${bySeq.size} of ${n} events arrived`)), timeoutMs)
            waiters.push({ n, resolve: () => (clearTimeout(timer), resolve()) })
          }),
  }
}

const assertGapless = (bySeq: Map<number, GatewayEvent>, n: number): void => {
  const seqs = [...bySeq.keys()].sort((a, b) => a - b)
  assert.equal(seqs.length, n)
  assert.deepEqual(seqs, Array.from({ length: n }, (_, i) => i + 1))
}

test('every refusal of §3 becomes a signed cmd.rejected with its reason; valid commands run and are answered', async (t) => {
  const m = await Mosquitto.start(t)
  const agent = await startTestAgent(t, { flags: { uplink: m.url, cpKey: [pin('cp1', cp1), pin('cp2', cp2)] } })
  const cp = await controlPlane(t, m.url, agent.gateway.key.publicKeyB64)
  const unpinned = await controlPlane(t, m.url, agent.gateway.key.publicKeyB64, { key: generateKeyPairSync('ed25519').privateKey, kid: 'cp1' })
  const unknownKid = await controlPlane(t, m.url, agent.gateway.key.publicKeyB64, { kid: 'cp-9' })

  const enrolled = await cp.run('device.enroll', { device: { id: 'pump-1', publicKey: devKey(), criticality: 'high' } })
  assert.equal(enrolled.type, 'cmd.completed')
  assert.equal(agent.gateway.getDevice('pump-1')?.state, 'active')

  const now = Math.floor(Date.now() / 1000)
  const header = Buffer.from(JSON.stringify({ alg: 'none', kid: 'cp1' })).toString('base64url')
  const body = Buffer.from(JSON.stringify({ iss: 'cp', aud: 'gw1', iat: now, exp: now + 60, jti: 'alg-none-1', op: 'device.revoke', args: { deviceId: 'pump-1' } })).toString('base64url')
  const expectReject = async (send: () => Promise<unknown>, reason: string): Promise<void> => {
    const got = cp.waitFor((e) => e.type === 'cmd.rejected' && e.data.reason === reason)
    await send()
    const e = await got
    assert.equal(e.verified, true, 'events are signed by the gateway key')
  }
  await expectReject(() => cp.publishRaw('garbage'), 'malformed')
  await expectReject(() => cp.publishRaw(Buffer.alloc(20 * 1024, 'a')), 'malformed')
  await expectReject(() => cp.publishRaw(`${header}.${body}.`), 'bad-alg')
  await expectReject(() => unknownKid.send('device.revoke', { deviceId: 'pump-1' }), 'unknown-key')
  await expectReject(() => unpinned.send('device.revoke', { deviceId: 'pump-1' }), 'bad-signature')
  await expectReject(() => cp.send('device.revoke', { deviceId: 'pump-1' }, { aud: 'gw-other' }), 'wrong-audience')
  await expectReject(() => cp.send('device.revoke', { deviceId: 'pump-1' }, { nowS: now - 10_000, lifetimeS: 600 }), 'expired')
  await expectReject(() => cp.send('device.revoke', { deviceId: 'pump-1' }, { nowS: now + 10_000 }), 'not-yet-valid')
  await expectReject(() => cp.send('device.revoke', { deviceId: 'pump-1' }, { lifetimeS: 31 * 86400 }), 'lifetime-too-long')
  await expectReject(() => cp.send('device.selfdestruct', { deviceId: 'pump-1' }), 'unknown-op')
  await expectReject(() => cp.send('device.revoke', { device: 'pump-1' }), 'invalid-args')
  await expectReject(() => cp.send('device.revoke', { deviceId: 'ghost' }), 'unknown-device')
  assert.equal(agent.gateway.getDevice('pump-1')?.state, 'active', 'no refused command changed anything')

  // Both pinned keys are accepted (rotation overlap).
  const q = await cp.run('device.quarantine', { deviceId: 'pump-1', reason: 'suspect' })
  assert.equal(q.type, 'cmd.completed')
  const cpB = await controlPlane(t, m.url, agent.gateway.key.publicKeyB64, { key: cp2, kid: 'cp2' })
  assert.equal((await cpB.run('device.release', { deviceId: 'pump-1' })).type, 'cmd.completed')
  const r = await cp.run('device.revoke', { deviceId: 'pump-1', reason: 'stolen' })
  assert.equal(r.type, 'cmd.completed')
  const ev = r.data.evidence as Record<string, unknown>
  assert.equal(ev.state, 'revoked')
  assert.equal(typeof ev.accessRemovedMs, 'number')
  assert.deepEqual(ev.network, { backend: 'none', rule: 'blocked' })
  // A state the command forbids: cmd.failed illegal-transition, nothing changes.
  const rel = await cp.run('device.release', { deviceId: 'pump-1' })
  assert.equal(rel.type, 'cmd.failed')
  assert.equal(rel.data.reason, 'illegal-transition')
  assert.equal(agent.gateway.getDevice('pump-1')?.state, 'revoked')
  const inv = await cp.run('inventory.report', {})
  assert.equal(inv.type, 'cmd.completed')
  assert.deepEqual(inv.data.evidence, { devices: 1, parts: 1 })
  assert.equal(cp.gaps.length, 0)
})

test('a repeated jti runs nothing and is answered cmd.duplicate with the command state, also after a restart', async (t) => {
  const m = await Mosquitto.start(t)
  const dataDir = tempDir(t)
  const flags = { uplink: m.url, cpKey: [pin('cp1', cp1)] }
  let agent = await startTestAgent(t, { dataDir, flags })
  const cp = await controlPlane(t, m.url, agent.gateway.key.publicKeyB64)
  await cp.run('device.enroll', { device: { id: 'valve-1', publicKey: devKey() } })
  const signed = cp.sign('device.quarantine', { deviceId: 'valve-1' })
  const first = cp.waitFor((e) => e.type === 'cmd.completed' && e.data.jti === signed.jti)
  await cp.publishRaw(signed.jws)
  await first
  await cp.run('device.release', { deviceId: 'valve-1' })
  const states: GatewayEvent[] = []
  cp.onEvent((e) => e.type === 'device.state' && states.push(e))
  const dup = cp.waitFor((e) => e.type === 'cmd.duplicate' && e.data.jti === signed.jti)
  await cp.publishRaw(signed.jws)
  assert.deepEqual((await dup).data, { jti: signed.jti, state: 'completed' })
  assert.equal(agent.gateway.getDevice('valve-1')?.state, 'active', 'the replay did not quarantine again')
  await agent.stop()
  agent = await startTestAgent(t, { dataDir, flags })
  const dup2 = cp.waitFor((e) => e.type === 'cmd.duplicate' && e.data.jti === signed.jti)
  await cp.publishRaw(signed.jws)
  assert.equal((await dup2).data.state, 'completed')
  assert.equal(agent.gateway.getDevice('valve-1')?.state, 'active')
  assert.equal(states.length, 0, 'no state changed on either replay')
})

test('pinned keys rotate: a key unpinned at restart is refused as unknown-key', async (t) => {
  const m = await Mosquitto.start(t)
  const dataDir = tempDir(t)
  let agent = await startTestAgent(t, { dataDir, flags: { uplink: m.url, cpKey: [pin('cp1', cp1)] } })
  const cpA = await controlPlane(t, m.url, agent.gateway.key.publicKeyB64)
  const cpB = await controlPlane(t, m.url, agent.gateway.key.publicKeyB64, { key: cp2, kid: 'cp2' })
  assert.equal((await cpA.run('device.enroll', { device: { id: 'd1', publicKey: devKey() } })).type, 'cmd.completed')
  assert.equal((await cpB.run('device.quarantine', { deviceId: 'd1' })).data.reason, 'unknown-key')
  await agent.stop()
  agent = await startTestAgent(t, { dataDir, flags: { uplink: m.url, cpKey: [pin('cp1', cp1), pin('cp2', cp2)] } })
  assert.equal((await cpB.run('device.quarantine', { deviceId: 'd1' })).type, 'cmd.completed')
  await agent.stop()
  agent = await startTestAgent(t, { dataDir, flags: { uplink: m.url, cpKey: [pin('cp2', cp2)] } })
  assert.equal((await cpA.run('device.release', { deviceId: 'd1' })).data.reason, 'unknown-key')
  assert.equal((await cpB.run('device.release', { deviceId: 'd1' })).type, 'cmd.completed')
})

test('a command sent while the agent was stopped runs when it starts (persistent session)', async (t) => {
  const m = await Mosquitto.start(t)
  const dataDir = tempDir(t)
  const flags = { uplink: m.url, cpKey: [pin('cp1', cp1)] }
  let agent = await startTestAgent(t, { dataDir, flags })
  const cp = await controlPlane(t, m.url, agent.gateway.key.publicKeyB64)
  await cp.run('device.enroll', { device: { id: 'robot-7', publicKey: devKey() } })
  const status = await statusOf(m.url)
  assert.equal(status.online, true)
  await agent.stop()
  assert.equal((await statusOf(m.url)).online, false, 'a clean stop publishes offline status')
  const jti = await cp.send('device.revoke', { deviceId: 'robot-7', reason: 'sent while the site was offline' })
  const done = cp.waitFor((e) => e.type === 'cmd.completed' && e.data.jti === jti)
  agent = await startTestAgent(t, { dataDir, flags })
  await done
  assert.equal(agent.gateway.getDevice('robot-7')?.state, 'revoked')
})

async function statusOf(url: string): Promise<Record<string, unknown>> {
  const { default: mqtt } = await import('mqtt')
  const c = await mqtt.connectAsync(url, { protocolVersion: 4 })
  try {
    const got = new Promise<Record<string, unknown>>((resolve) => c.once('message', (_t, p) => resolve(JSON.parse(p.toString()) as Record<string, unknown>)))
    await c.subscribeAsync('edgewarden/v1/site1/gw1/status', { qos: 1 })
    return await got
  } finally {
    await c.endAsync()
  }
}

test('the MQTT will marks the gateway offline when it dies without a clean stop', async (t) => {
  const m = await Mosquitto.start(t)
  const dataDir = tempDir(t)
  const gw = await spawnAgent(['--data-dir', dataDir, '--mqtt-port', '0', '--mqtt-host', '127.0.0.1', '--gateway', 'gw1', '--site', 'site1', '--uplink', m.url, '--cp-key', pin('cp1', cp1)])
  t.after(() => gw.stop('SIGKILL').then(() => {}))
  const cp = await controlPlane(t, m.url, String(gw.ready.publicKey))
  // `ready` comes before the uplink is connected; a fresh broker has no session for the gateway yet.
  await cp.waitOnline()
  await cp.run('inventory.report', {})
  assert.equal((await statusOf(m.url)).online, true)
  await gw.stop('SIGKILL')
  // Mosquitto publishes the will once it notices the dead connection (at once: the socket closed).
  const c = await (await import('mqtt')).default.connectAsync(m.url, { protocolVersion: 4 })
  t.after(() => c.endAsync())
  const offline = new Promise<void>((resolve) => c.on('message', (_t, p) => JSON.parse(p.toString()).online === false && resolve()))
  await c.subscribeAsync('edgewarden/v1/site1/gw1/status', { qos: 1 })
  await offline
})

test('1,000 events through a Mosquitto restart all arrive, gapless, in order by seq', async (t) => {
  const m = await Mosquitto.start(t)
  const agent = await startTestAgent(t, { flags: { uplink: m.url, cpKey: [pin('cp1', cp1)] } })
  // A persistent CP session, so events published while it reconnects are kept for it.
  const cp = await controlPlane(t, m.url, agent.gateway.key.publicKeyB64, { clientId: 'cp-observer' })
  const c = collector(cp)
  const gw = agent.gateway
  const N = 1000
  const writes: Promise<unknown>[] = []
  for (let i = 0; i < N; i++) {
    writes.push(gw.enroll({ id: `dev-${i}`, publicKey: devKey() }, { actor: 'test' }))
    if (i === 300) {
      await Promise.all(writes)
      await m.restart()
    }
  }
  await Promise.all(writes)
  await c.until(N, 60_000)
  assertGapless(c.bySeq, N)
  assert.ok(c.all.every((e) => e.verified === true))
  await agent.uplink!.drained()
  assert.equal(gw.outbox.depth, 0, 'acknowledged events are removed from the outbox')
})

test('events survive an agent kill -9: all arrive after restart, gapless, none lost', async (t) => {
  const m = await Mosquitto.start(t)
  const dataDir = tempDir(t)
  const args = ['--data-dir', dataDir, '--mqtt-port', '0', '--mqtt-host', '127.0.0.1', '--gateway', 'gw1', '--site', 'site1', '--uplink', m.url, '--cp-key', pin('cp1', cp1)]
  let gw = await spawnAgent(args)
  t.after(() => gw.stop('SIGKILL').then(() => {}))
  const cp = await controlPlane(t, m.url, String(gw.ready.publicKey), { clientId: 'cp-observer-2' })
  const c = collector(cp)
  // Enroll through the admin socket; kill -9 while requests are in flight.
  let acknowledged = 0
  const requests: Promise<void>[] = []
  for (let i = 0; i < 600; i++) {
    requests.push(
      adminRequest(dataDir, 'POST', '/v1/devices', { device: { id: `k-${i}`, publicKey: devKey() } }).then(
        (r) => void (r.status === 200 && acknowledged++),
        () => {},
      ),
    )
    if (i === 400) {
      await gw.stop('SIGKILL')
    }
  }
  await Promise.all(requests)
  gw = await spawnAgent(args)
  // Every enroll the admin API acknowledged made one device.state event; the
  // restart adds none. Everything stored must arrive, with no gap.
  const more = await Promise.all(Array.from({ length: 400 }, (_, i) => adminRequest(dataDir, 'POST', '/v1/devices', { device: { id: `after-${i}`, publicKey: devKey() } })))
  assert.ok(more.every((r) => r.status === 200))
  const list = (await adminRequest(dataDir, 'GET', '/v1/devices')).body as { devices: unknown[] }
  const total = list.devices.length
  assert.ok(total >= acknowledged + 400, `${total} devices, ${acknowledged} acknowledged before the kill`)
  await c.until(total, 60_000)
  assertGapless(c.bySeq, total)
  assert.equal(c.all.filter((e) => e.type === 'device.state').length >= total, true)
  assert.ok(c.all.every((e) => e.verified === true))
})

test('edgewarden ctl send --wait and ctl watch against a live gateway', async (t) => {
  const m = await Mosquitto.start(t)
  const dir = tempDir(t)
  const keyFile = join(dir, 'cp.key')
  const kg = await runCli(['ctl', 'keygen', '--out', keyFile])
  assert.equal(kg.code, 0, kg.stderr)
  const cpPub = kg.stdout.trim()
  const agent = await startTestAgent(t, { flags: { uplink: m.url, cpKey: [`ops=${cpPub}`] } })
  const gwKey = agent.gateway.key.publicKeyB64
  const link = ['--broker', m.url, '--site', 'site1', '--gateway', 'gw1']
  const watchProc = spawn(process.execPath, [BIN, 'ctl', 'watch', ...link, '--gateway-key', gwKey, '--count', '3', '--json', '--state', join(tempDir(t), 'watch.json')], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(() => void watchProc.kill('SIGKILL'))
  let watchOut = ''
  watchProc.stdout.on('data', (c: Buffer) => (watchOut += c.toString()))
  const watcher = new Promise<{ code: number | null; stdout: string }>((resolve) => watchProc.once('exit', (code) => resolve({ code, stdout: watchOut })))
  // It says so on stderr once its subscription is in place.
  await new Promise<void>((resolve) => watchProc.stderr.on('data', (c: Buffer) => c.toString().includes('watching ') && resolve()))
  const dk = devKey()
  const sent = await runCli(['ctl', 'send', ...link, '--key', keyFile, '--kid', 'ops', '--wait', '--gateway-key', gwKey, 'device.enroll', JSON.stringify({ device: { id: 'hmi-1', publicKey: dk } })])
  assert.equal(sent.code, 0, sent.stderr)
  assert.match(sent.stdout, /cmd.accepted/)
  assert.match(sent.stdout, /completed: .*"deviceId":"hmi-1"/)
  assert.equal(agent.gateway.getDevice('hmi-1')?.state, 'active')
  const w = await watcher
  assert.equal(w.code, 0, w.stdout)
  const lines = w.stdout.trim().split('\n').map((l) => JSON.parse(l) as { seq: number; type: string; verified: boolean })
  assert.deepEqual(lines.map((l) => l.type), ['cmd.accepted', 'device.state', 'cmd.completed'])
  assert.ok(lines.every((l) => l.verified === true))
  // A failing command exits 1 with its reason.
  const bad = await runCli(['ctl', 'send', ...link, '--key', keyFile, '--kid', 'ops', '--wait', 'device.release', '{"deviceId":"nobody"}'])
  assert.equal(bad.code, 1)
  assert.match(bad.stdout, /rejected: .*unknown-device/)
  // bulk: three devices quarantined, with ids on stdin
  for (const id of ['b1', 'b2', 'b3']) await agent.gateway.enroll({ id, publicKey: devKey() }, { actor: 'test' })
  const idsFile = join(dir, 'ids.txt')
  writeFileSync(idsFile, 'b1\nb2\nb3\n')
  const bulk = await runCli(['ctl', 'bulk', ...link, '--key', keyFile, '--kid', 'ops', '--file', idsFile, 'device.quarantine', '--args', '{"reason":"audit"}', '--json'])
  assert.equal(bulk.code, 0, bulk.stderr)
  assert.deepEqual(JSON.parse(bulk.stdout.trim().split('\n').at(-1)!), { completed: 3, failed: 0, rejected: 0, duplicate: 0, unanswered: 0 })
  for (const id of ['b1', 'b2', 'b3']) assert.equal(agent.gateway.getDevice(id)?.state, 'quarantined')
})

test('the retained status carries the last event seq and the audit head as on disk, follows them, and never goes back across a restart', async (t) => {
  const m = await Mosquitto.start(t)
  const dataDir = tempDir(t)
  const flags = { uplink: m.url, cpKey: [pin('cp1', cp1)] }
  let agent = await startTestAgent(t, { dataDir, flags })
  const cp = await controlPlane(t, m.url, agent.gateway.key.publicKeyB64)
  const mqtt = (await import('mqtt')).default
  const watcher = await mqtt.connectAsync(m.url, { protocolVersion: 4 })
  t.after(() => watcher.endAsync())
  const statuses: { online: boolean; seq?: number; audit?: { seq: number; hash: string } }[] = []
  const waiters: (() => void)[] = []
  watcher.on('message', (_topic, payload) => {
    statuses.push(JSON.parse(payload.toString()) as (typeof statuses)[number])
    for (const w of waiters.splice(0)) w()
  })
  await watcher.subscribeAsync(cp.topics.status, { qos: 1 })
  const statusWhere = async (pred: (s: (typeof statuses)[number]) => boolean, timeoutMs = 10_000): Promise<(typeof statuses)[number]> => {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const hit = statuses.find(pred)
      if (hit) return hit
      if (Date.now() > deadline) throw new Error(`no such status; got ${JSON.stringify(statuses)}`)
      await new Promise<void>((resolve) => {
        waiters.push(resolve)
        setTimeout(resolve, deadline - Date.now()).unref()
      })
    }
  }
  const done = await cp.run('device.enroll', { device: { id: 'valve-1', publicKey: devKey() } })
  const head = () => agent.gateway.durableHead
  const s1 = await statusWhere((s) => s.online && (s.seq ?? 0) >= done.seq)
  assert.equal(typeof s1.audit?.hash, 'string')
  await statusWhere((s) => s.online && s.seq === head().seq && s.audit?.seq === head().audit.seq && s.audit.hash === head().audit.hash)
  const before = head()
  await agent.stop()
  const offline = await statusWhere((s) => !s.online)
  assert.equal(offline.seq, before.seq, 'a clean stop says offline, with the head it stopped at')
  statuses.length = 0
  agent = await startTestAgent(t, { dataDir, flags })
  const back = await statusWhere((s) => s.online)
  assert.ok((back.seq ?? 0) >= before.seq && (back.audit?.seq ?? 0) >= before.audit.seq, `after a restart the status does not go back: ${JSON.stringify(back)} vs ${JSON.stringify(before)}`)
})
