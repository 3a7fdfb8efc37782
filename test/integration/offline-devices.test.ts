// Issue 5 end to end: the durable action queue, the retire workflow of §6
// with its evidence, re-enrollment and renewal, and the reconnect-and-renew
// procedure, with the real device runtime (firmware-hooks) over the real
// site broker, and a real Mosquitto for the control plane.
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test, type TestContext } from 'node:test'
import { adminRequest } from '../../agent/cli/admin-client.ts'
import { ManualClock } from '../../agent/runtime/clock.ts'
import type { DeviceState } from '../../agent/devices/device.ts'
import type { Gateway } from '../../agent/gateway.ts'
import { keygen, sign } from '../../firmware-hooks/crypto.ts'
import { MqttDevice } from '../../firmware-hooks/mqtt-device.ts'
import { utf8 } from '../../wire/base64url.ts'
import { assembleJws, jwsSigningInput, parseJws } from '../../wire/jws.ts'
import { ControlPlane, publicKeyB64 } from '../../simulators/control-plane.ts'
import { ManualSimClock, SimulatedMqttDevice, type SimClock } from '../../simulators/mqtt-device.ts'
import { freePort, spawnAgent, startTestAgent, tempDir } from '../helpers/agent.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { until as untilWithin } from '../helpers/wait.ts'

const DAY = 86400
type Agent = Awaited<ReturnType<typeof startTestAgent>>

function untilState(gw: Gateway, id: string, state: DeviceState, timeoutMs = 20_000): Promise<void> {
  if (gw.getDevice(id)?.state === state) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (off(), reject(new Error(`${id} did not reach ${state} (is ${gw.getDevice(id)?.state})`))), timeoutMs)
    const off = gw.onDeviceChange((c) => {
      if (c.record.spec.id === id && c.to === state) {
        clearTimeout(timer)
        off()
        resolve()
      }
    })
  })
}

async function simDevice(
  t: { after(fn: () => Promise<void>): void },
  url: string,
  gw: { id: string; key: { publicKeyB64: string } },
  id: string,
  clock?: SimClock,
): Promise<SimulatedMqttDevice> {
  const d = await SimulatedMqttDevice.create({
    url,
    deviceId: id,
    gatewayId: gw.id,
    gatewayPublicKey: gw.key.publicKeyB64,
    mqtt: { reconnectMs: 20, connectTimeoutMs: 5000 },
    ...(clock ? { clock } : {}),
  })
  t.after(() => d.close())
  return d
}

const mqttUrl = (agent: Agent): string => `mqtt://127.0.0.1:${agent.mqttPort}`

async function eventsOf(agent: Agent): Promise<{ type: string; data: Record<string, unknown> }[]> {
  return (await agent.gateway.outbox.pending(agent.gateway.store, 0, 100_000)).map((e) => {
    const p = parseJws(e.jws).payload
    return { type: p.type as string, data: p.data as Record<string, unknown> }
  })
}

/** A Mosquitto uplink, an agent trusting control-plane key cp1 on it, and that control plane, connected. */
async function agentWithControlPlane(t: TestContext): Promise<{ agent: Agent; gw: Gateway; cp: ControlPlane }> {
  const m = await Mosquitto.start(t)
  const cpKey = generateKeyPairSync('ed25519').privateKey
  const agent = await startTestAgent(t, { flags: { uplink: m.url, cpKey: [`cp1=${publicKeyB64(cpKey)}`] } })
  const gw = agent.gateway
  const cp = new ControlPlane({ broker: m.url, site: 'site1', gateway: 'gw1', key: cpKey, kid: 'cp1', gatewayKey: gw.key.publicKeyB64 })
  await cp.connect()
  t.after(() => cp.close())
  return { agent, gw, cp }
}

test('retire of a connected device over the control plane: access removed at once, wiped, retired, with measured evidence', async (t) => {
  const { agent, gw, cp } = await agentWithControlPlane(t)
  const seen: string[] = []
  cp.onEvent((e) => e.data.deviceId === 'press-4' && seen.push(e.type))
  const dev = await simDevice(t, mqttUrl(agent), gw, 'press-4')
  assert.equal((await cp.run('device.enroll', { device: { id: 'press-4', publicKey: dev.runtime.publicKeyB64!, criticality: 'safety' } })).type, 'cmd.completed')
  assert.equal(await dev.goOnline(), true)
  assert.equal(agent.broker.sessionCount('press-4'), 1)

  const done = await cp.run('device.retire', { deviceId: 'press-4', reason: 'line decommissioned' }, { timeoutMs: 20_000 })
  assert.equal(done.type, 'cmd.completed', JSON.stringify(done.data))
  const ev = done.data.evidence as Record<string, any>
  assert.equal(ev.deviceId, 'press-4')
  assert.equal(ev.state, 'retired')
  assert.equal(typeof ev.accessRemovedMs, 'number')
  assert.ok(ev.accessRemovedMs >= 0 && ev.accessRemovedMs < 5000, `accessRemovedMs ${ev.accessRemovedMs}`)
  assert.equal(ev.sessionsClosed.mqtt, 1, 'the live session was closed when access was removed')
  // The wipe-only session it came back on is closed at the end, unless the wiped device already hung up.
  assert.ok(ev.wipeOnlySessionsClosed.mqtt <= 1)
  assert.deepEqual(ev.network, { backend: 'none', rule: 'blocked' })
  assert.equal(ev.wipe.status, 'done')
  assert.equal(typeof ev.wipe.ackJti, 'string')
  assert.equal(ev.credentialsRevoked, 1)
  assert.equal(ev.residualUse, 0)
  assert.equal(ev.reason, 'line decommissioned')
  assert.equal(dev.runtime.wiped, true, 'the device erased its keys and data')
  assert.equal(dev.stats.wipesDone, 1)
  assert.equal(gw.getDevice('press-4')?.state, 'retired')
  assert.equal(gw.actions.pending('press-4').length, 0)
  for (const ty of ['action.queued', 'action.delivered', 'action.acked', 'device.state']) assert.ok(seen.includes(ty), `${ty} reported to the control plane`)
})

test('retire of an offline device: the command completes only when the device returns and is wiped', async (t) => {
  const { agent, gw, cp } = await agentWithControlPlane(t)
  const dev = await simDevice(t, mqttUrl(agent), gw, 'pump-9')
  await gw.enroll({ id: 'pump-9', publicKey: dev.runtime.publicKeyB64! }, { actor: 'test' })
  const signed = cp.sign('device.retire', { deviceId: 'pump-9' })
  const completed = cp.waitFor((e) => e.type === 'cmd.completed' && e.data.jti === signed.jti, 30_000)
  const accepted = cp.waitFor((e) => e.type === 'cmd.accepted' && e.data.jti === signed.jti)
  await cp.publishRaw(signed.jws)
  await accepted
  await untilState(gw, 'pump-9', 'retiring')
  await until(() => gw.actions.pending('pump-9').length > 0)
  assert.equal(gw.actions.pending('pump-9')[0]?.act, 'wipe', 'the wipe waits in the queue')
  assert.equal(await dev.goOnline(), true, 'a retiring device is admitted wipe-only')
  const ev = (await completed).data.evidence as Record<string, any>
  assert.equal(ev.wipe.status, 'done')
  assert.equal(ev.sessionsClosed.mqtt, 0, 'no session was open when the command arrived')
  assert.equal(dev.runtime.wiped, true)
  assert.equal(gw.getDevice('pump-9')?.state, 'retired')
})

test('the gateway is killed -9 between queueing a wipe and delivering it; the device returns later and is wiped', async (t) => {
  const dataDir = tempDir(t)
  const port = await freePort()
  const args = ['--data-dir', dataDir, '--mqtt-port', String(port), '--mqtt-host', '127.0.0.1', '--gateway', 'gw1', '--site', 'site1']
  let agent = await spawnAgent(args)
  t.after(() => agent.stop('SIGKILL').then(() => {}))
  const gwInfo = { id: 'gw1', key: { publicKeyB64: String(agent.ready.publicKey) } }
  const dev = await simDevice(t, `mqtt://127.0.0.1:${port}`, gwInfo, 'valve-3')
  const add = await adminRequest(dataDir, 'POST', '/v1/devices', { device: { id: 'valve-3', publicKey: dev.runtime.publicKeyB64 } })
  assert.equal(add.status, 200)
  const retire = await adminRequest(dataDir, 'POST', '/v1/devices/valve-3/retire', { reason: 'replaced' })
  assert.equal(retire.status, 200, retire.text)
  const wipeId = (retire.body as { result: { wipeActionId: string } }).result.wipeActionId
  assert.match(wipeId, /^act\./)
  await agent.stop('SIGKILL')
  agent = await spawnAgent(args)
  assert.equal(await dev.goOnline(), true)
  const ack = await dev.waitForAck(wipeId, 20_000)
  assert.equal(ack.status, 'done')
  assert.equal(dev.runtime.wiped, true)
  // The gateway settles it: the device ends retired with the wipe on record
  // (polling another process: no event crosses the process boundary here).
  let retired: { action: string; data: any } | undefined
  for (let i = 0; i < 200 && !retired; i++) {
    const audit = await adminRequest(dataDir, 'GET', '/v1/audit/export')
    retired = audit.text.trim().split('\n').map((l) => JSON.parse(l) as { action: string; data: any }).find((e) => e.action === 'device.retired')
    if (!retired) await new Promise((r) => setTimeout(r, 50))
  }
  assert.equal(retired?.data.wipe.status, 'done')
  const show = await adminRequest(dataDir, 'GET', '/v1/devices/valve-3')
  assert.equal((show.body as { device: { state: string } }).device.state, 'retired')
})

test('1,000 devices retired while offline: each is wiped exactly once as it returns', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const N = 1000
  const devices: SimulatedMqttDevice[] = []
  for (let i = 0; i < N; i++) devices.push(await simDevice(t, mqttUrl(agent), gw, `s-${i}`))
  await Promise.all(devices.map((d) => gw.enroll({ id: d.id, publicKey: d.runtime.publicKeyB64! }, { actor: 'test' })))
  await Promise.all(devices.map((d) => agent.retirements.start(d.id, { receivedAt: performance.now(), receivedAtS: gw.nowS() }, { actor: 'test' })))
  assert.equal([...gw.actions.all()].filter((a) => a.act === 'wipe').length, N)
  const wipeOf = new Map(devices.map((d) => [d.id, gw.actions.pending(d.id)[0]!.id]))
  // They come back in waves of 50; some of them twice (a flapping link).
  for (let i = 0; i < N; i += 50) {
    const wave = devices.slice(i, i + 50)
    await Promise.all(
      wave.map(async (d, j) => {
        assert.equal(await d.goOnline(), true, `${d.id}: ${d.lastError?.message}`)
        if (j % 10 === 0) {
          await d.goOffline()
          await d.goOnline()
        }
        await d.waitForAck(wipeOf.get(d.id)!, 20_000)
      }),
    )
  }
  await Promise.all(devices.map((d) => untilState(gw, d.id, 'retired')))
  for (const d of devices) {
    assert.equal(d.stats.wipesDone, 1, `${d.id} wiped once`)
    assert.equal(d.stats.actionsHandled, 1, `${d.id} acted once`)
  }
  assert.equal([...gw.actions.all()].length, 0)
  const acked = (await eventsOf(agent)).filter((e) => e.type === 'action.acked')
  assert.equal(acked.length, N, 'one settled ack per device')
})

/** A device clock that follows the agent's ManualClock (tokens are minted in agent time). */
const followClock = (clock: ManualClock): SimClock => {
  const sim = new ManualSimClock()
  return { now: () => clock.now(), sleep: (ms, signal) => sim.sleep(ms, signal) }
}

test('renewal with overlap and re-enrollment, through the real device runtime', async (t) => {
  const clock = new ManualClock(Date.now())
  const agent = await startTestAgent(t, { clock, flags: { renewOverlapS: String(2 * DAY) } })
  const gw = agent.gateway
  const dev = await simDevice(t, mqttUrl(agent), gw, 'robot-1', followClock(clock))
  await gw.enroll({ id: 'robot-1', publicKey: dev.runtime.publicKeyB64! }, { actor: 'test' })
  const oldKey = dev.runtime.secretKey!
  const oldPub = dev.runtime.publicKeyB64!
  assert.equal(await dev.goOnline(), true)
  const renew = await agent.actions.queue('robot-1', 'renew', { actor: 'test' })
  await dev.waitForAck(renew.id)
  await untilKeys(gw, 'robot-1', 2)
  const newPub = dev.runtime.publicKeyB64!
  assert.notEqual(newPub, oldPub)
  assert.deepEqual(gw.getDevice('robot-1')!.keys.map((k) => k.publicKey), [oldPub, newPub])
  // The device reconnects with its new key; within the overlap the old key still gets in.
  await dev.goOffline()
  assert.equal(await dev.goOnline(), true)
  const withOld = await SimulatedMqttDevice.create({ url: mqttUrl(agent), deviceId: 'robot-1', gatewayId: 'gw1', gatewayPublicKey: gw.key.publicKeyB64, secretKey: oldKey, clock: followClock(clock) })
  t.after(() => withOld.close())
  await dev.goOffline()
  assert.equal(await withOld.goOnline(), true, 'old key valid during the overlap')
  await withOld.goOffline()
  clock.advance(2 * DAY * 1000 + 1000)
  await agent.maintenance.tick()
  assert.equal(await withOld.goOnline(), false, 'old key refused after the overlap')
  assert.equal(await dev.goOnline(), true)
  // Re-enrollment replaces the key at once.
  const reenroll = await agent.actions.queue('robot-1', 'reenroll', { actor: 'test' })
  const before = dev.runtime.secretKey!
  await dev.waitForAck(reenroll.id)
  await untilKeys(gw, 'robot-1', 1, (k) => k !== newPub)
  const previous = await SimulatedMqttDevice.create({ url: mqttUrl(agent), deviceId: 'robot-1', gatewayId: 'gw1', gatewayPublicKey: gw.key.publicKeyB64, secretKey: before, clock: followClock(clock) })
  t.after(() => previous.close())
  await dev.goOffline()
  assert.equal(await previous.goOnline(), false, 'the replaced key is refused at once')
  assert.equal(await dev.goOnline(), true, 'the new key is admitted')
})

/** Once the ack is settled (its signature is checked on the crypto pool first, a worker's round trip away). */
async function untilKeys(gw: Gateway, id: string, n: number, pred: (k: string) => boolean = () => true): Promise<void> {
  await untilWithin(
    `${id} has ${n} keys`,
    () => {
      const keys = gw.getDevice(id)!.keys.map((k) => k.publicKey)
      return keys.length === n && keys.some(pred)
    },
    10_000,
    5,
  )
}

test('reconnect-and-renew: a device offline past its expiry renews within the grace; beyond the grace it is refused', async (t) => {
  const clock = new ManualClock(Date.now())
  const agent = await startTestAgent(t, { clock, flags: { credentialLifetimeS: String(30 * DAY), renewGraceS: String(10 * DAY) } })
  const gw = agent.gateway
  const sim = followClock(clock)
  const late = await simDevice(t, mqttUrl(agent), gw, 'meter-1', sim)
  const lost = await simDevice(t, mqttUrl(agent), gw, 'meter-2', sim)
  await gw.enroll({ id: 'meter-1', publicKey: late.runtime.publicKeyB64! }, { actor: 'test' })
  await gw.enroll({ id: 'meter-2', publicKey: lost.runtime.publicKeyB64! }, { actor: 'test' })
  const expiresAt = gw.getDevice('meter-1')!.credentialExpiresAt
  // Away for 35 days: expired 5 days ago, within the 10-day grace.
  clock.advance(35 * DAY * 1000)
  assert.equal(await late.goOnline(), true, 'admitted renew-only')
  assert.equal(await late.publishTelemetry('{"t":1}'), true)
  // renew-only: telemetry is beyond its rights (the connection is closed); the renewal comes first.
  const renewed = await untilNewCredential(gw, 'meter-1', expiresAt)
  assert.ok(renewed > gw.nowS() + 29 * DAY, 'a fresh lifetime')
  await late.goOffline()
  assert.equal(await late.goOnline(), true, 'full rights again with the renewed key')
  // meter-2 stays away 41 days: beyond the grace, refused, and reported.
  clock.advance(6 * DAY * 1000)
  await agent.maintenance.tick()
  assert.equal(await lost.goOnline(), false)
  const expired = (await eventsOf(agent)).filter((e) => e.type === 'credential.expired' && e.data.deviceId === 'meter-2')
  assert.deepEqual(expired.map((e) => e.data.withinGrace), [false])
  const r1 = (await eventsOf(agent)).filter((e) => e.data.deviceId === 'meter-1').map((e) => e.type)
  assert.ok(r1.includes('credential.expired'))
  assert.ok(r1.includes('action.acked'))
})

async function untilNewCredential(gw: Gateway, id: string, old: number): Promise<number> {
  if (gw.getDevice(id)!.credentialExpiresAt !== old) return gw.getDevice(id)!.credentialExpiresAt
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${id} was not renewed`)), 20_000)
    const poll = (): void => {
      const now = gw.getDevice(id)!.credentialExpiresAt
      if (now !== old) {
        clearTimeout(timer)
        resolve(now)
      } else setImmediate(poll)
    }
    poll()
  })
}

/** Wait for in-process state that changes on the agent's own event loop, or its crypto pool's answer (bounded in time). */
async function until(pred: () => boolean, what = 'condition'): Promise<void> {
  await untilWithin(what, pred, 10_000, 5)
}

test('a forged ack over MQTT changes nothing; the real ack settles the action; a repeat is harmless', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const dev = await simDevice(t, mqttUrl(agent), gw, 'cam-2')
  await gw.enroll({ id: 'cam-2', publicKey: dev.runtime.publicKeyB64! }, { actor: 'test' })
  const action = await agent.actions.queue('cam-2', 'renew', { actor: 'test' })
  // A second connection as cam-2 (it holds the device key: a compromised copy) publishes an ack signed by another key.
  const raw = await MqttDevice.connect({ url: mqttUrl(agent), deviceId: 'cam-2', gatewayId: 'gw1', secretKey: dev.runtime.secretKey! })
  t.after(() => raw.close())
  const forger = await keygen()
  const claims = { iss: 'cam-2', aud: 'gw1', iat: gw.nowS(), jti: 'forged-1', ref: action.id, status: 'done' }
  const input = jwsSigningInput('cam-2', claims)
  const forged = assembleJws(input, await sign(utf8(input), forger.secretKey))
  const stray = agent.actions.strayAcks
  await raw.publish('ack', forged)
  await until(() => agent.actions.strayAcks > stray, 'forged ack refused')
  assert.ok(gw.actions.find('cam-2', action.id), 'the action is still pending')
  await raw.close()
  // The device itself answers: settled, new key installed.
  assert.equal(await dev.goOnline(), true)
  const real = await dev.waitForAck(action.id)
  await until(() => gw.actions.find('cam-2', action.id) === undefined, 'real ack settled')
  await gw.store.flush() // the settling batch was queued as the action left memory
  const keys = gw.getDevice('cam-2')!.keys.length
  // The same real ack again: harmless.
  assert.deepEqual(await agent.actions.ack('cam-2', real.ack, 'mqtt'), { ok: false, reason: 'repeated' })
  assert.equal(gw.getDevice('cam-2')!.keys.length, keys)
  const acked = (await eventsOf(agent)).filter((e) => e.type === 'action.acked')
  assert.equal(acked.length, 1)
})
