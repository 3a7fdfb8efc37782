// The Modbus side of PROTOCOL §7 against real peers: mbpoll (libmodbus) as
// the SCADA client of the gateway's proxy, modbus-serial ServerTCP devices
// (simulators/modbus-device.ts) behind it, with and without the hook. Trust
// is enforced at the proxy (0x0A for every non-active state, 0x02 for hook
// writes, 0x0B for a dead device); actions are relayed through the hook
// registers; legacy devices can only be cut off. Report Server ID and Read
// Device Identification pass through, and the gateway reads the latter for
// the inventory; answers with a fixed unit id or a wrong transaction id are
// taken (or refused) without losing the device's connection; answers go
// back in request order.
import assert from 'node:assert/strict'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import { describe, test } from 'node:test'
import { exportAuditLog } from '../../agent/store/audit.ts'
import { ManualClock } from '../../agent/runtime/clock.ts'
import modbusSerial from 'modbus-serial'
import type { RelayOutcome } from '../../protocols/modbus/hook-relay.ts'
import { parseDeviceIdAnswer } from '../../protocols/modbus/identification.ts'
import { encodeFrame, MbapReader } from '../../protocols/modbus/mbap.ts'
import { createHookedModbusDevice, createLegacyModbusDevice, DEFAULT_IDENTIFICATION, DEFAULT_SERVER_ID, type SimulatedModbusDevice } from '../../simulators/modbus-device.ts'
import { freePort, runCli, startTestAgent } from '../helpers/agent.ts'
import { eventsOf, eventWhere, MBPOLL_EXCEPTION, mbpoll, RawModbusClient, readHoldingPdu } from '../helpers/modbus.ts'

const WHO = { actor: 'local:test' }
const TIMEOUT_MS = 400

type Agent = Awaited<ReturnType<typeof startTestAgent>>

async function agentWithProxy(t: { after(fn: () => Promise<void> | void): void }, clock?: ManualClock): Promise<Agent & { port: number }> {
  const agent = await startTestAgent(t, { flags: { modbusPort: '0', modbusHost: '127.0.0.1', modbusTimeoutMs: String(TIMEOUT_MS) }, ...(clock ? { clock } : {}) })
  const port = agent.modbus.proxy.port
  assert.ok(port, 'the proxy listens')
  return { ...agent, port }
}

async function started<D extends SimulatedModbusDevice>(t: { after(fn: () => Promise<void> | void): void }, device: D): Promise<D> {
  await device.start()
  t.after(() => device.stop())
  return device
}

async function hooked(t: { after(fn: () => Promise<void> | void): void }, agent: Agent, id: string, unitId: number, opts: { hookBase?: number; start?: boolean } = {}) {
  // A device that is down at first still has its port, so it can come up on it later.
  const later = opts.start === false ? await freePort() : undefined
  const d = await createHookedModbusDevice({
    deviceId: id,
    gatewayId: agent.gateway.id,
    gatewayPublicKey: agent.gateway.key.publicKeyB64,
    ...(opts.hookBase !== undefined ? { hookBase: opts.hookBase } : {}),
    ...(later !== undefined ? { port: later } : {}),
  })
  if (later === undefined) await started(t, d.device)
  const port = d.device.port
  await agent.gateway.enroll({ id, publicKey: d.publicKey, modbus: { host: '127.0.0.1', port, unitId, ...(opts.hookBase !== undefined ? { hookBase: opts.hookBase } : {}) } }, WHO)
  return { ...d, port }
}

async function legacy(t: { after(fn: () => Promise<void> | void): void }, agent: Agent, id: string, unitId: number) {
  const d = await createLegacyModbusDevice()
  await started(t, d.device)
  await agent.gateway.enroll({ id, publicKey: d.publicKey, modbus: { host: '127.0.0.1', port: d.device.port, unitId, hookBase: null } }, WHO)
  return d
}

const retire = (agent: Agent, id: string, o: { wipe?: boolean; reason?: string; deadlineS?: number } = {}) =>
  agent.retirements.start(id, { receivedAt: performance.now(), receivedAtS: agent.gateway.nowS(), ...o }, WHO)

/** Resolves when the relay has settled an action of `deviceId` (and the retirement it closes is written). */
function relaySettled(agent: Agent, deviceId: string, timeoutMs = 20_000): Promise<RelayOutcome> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (off(), reject(new Error(`relay settled nothing for ${deviceId} within ${timeoutMs} ms`))), timeoutMs)
    const off = agent.modbus.relay.onSettled((s) => {
      if (s.deviceId !== deviceId) return
      clearTimeout(timer)
      off()
      resolve(s)
    })
  })
}

async function retiredEvidence(agent: Agent, id: string): Promise<Record<string, unknown>> {
  for await (const e of exportAuditLog(agent.gateway.store)) if (e.action === 'device.retired' && e.subject === id) return e.data as Record<string, unknown>
  throw new Error(`no device.retired audit entry for ${id}`)
}

describe('SCADA through the proxy (mbpoll)', () => {
  test('reads and writes of an active device: FC 3, 4, 1, 2, 6, 16, 5, 15', async (t) => {
    const agent = await agentWithProxy(t)
    const { device } = await hooked(t, agent, 'plc-1', 3)
    device.holding[10] = 4242
    const p = agent.port

    const fc3 = await mbpoll(p, 3, { table: 4, ref: 9, count: 3 })
    assert.equal(fc3.code, 0, fc3.stdout + fc3.stderr)
    assert.deepEqual(fc3.values, [0, 4242, 0])
    const fc4 = await mbpoll(p, 3, { table: 3, ref: 0, count: 4 })
    assert.deepEqual(fc4.values, [1000, 1001, 1002, 1003], 'input registers')
    const fc2 = await mbpoll(p, 3, { table: 1, ref: 0, count: 4 })
    assert.deepEqual(fc2.values, [1, 0, 1, 0], 'discrete inputs')

    assert.equal((await mbpoll(p, 3, { table: 4, ref: 20, values: [777] })).code, 0, 'FC6')
    assert.equal(device.holding[20], 777)
    assert.equal((await mbpoll(p, 3, { table: 4, ref: 30, values: [1, 2, 3] })).code, 0, 'FC16')
    assert.deepEqual([...device.holding.subarray(30, 33)], [1, 2, 3])
    assert.equal((await mbpoll(p, 3, { table: 0, ref: 5, values: [1] })).code, 0, 'FC5')
    assert.equal((await mbpoll(p, 3, { table: 0, ref: 7, values: [1, 0, 1] })).code, 0, 'FC15')
    assert.deepEqual(device.coils.slice(5, 10), [true, false, true, false, true])
    const fc1 = await mbpoll(p, 3, { table: 0, ref: 5, count: 5 })
    assert.deepEqual(fc1.values, [1, 0, 1, 0, 1], 'FC1 reads back the coils')
    // the device's own exception comes through as is
    const beyond = await mbpoll(p, 3, { table: 4, ref: 200 })
    assert.equal(beyond.failure, MBPOLL_EXCEPTION[0x02])
    assert.equal(device.hook?.status, 0, 'the hook was never touched')
  })

  test('many clients at once: all answered, one serialized link to the device', async (t) => {
    const agent = await agentWithProxy(t)
    const { device } = await hooked(t, agent, 'plc-1', 3)
    device.holding.set([11, 22, 33], 0)
    const t0 = performance.now()
    const runs = await Promise.all(Array.from({ length: 24 }, () => mbpoll(agent.port, 3, { table: 4, ref: 0, count: 3 })))
    const ms = performance.now() - t0
    for (const r of runs) assert.deepEqual(r.values, [11, 22, 33], r.stdout + r.stderr)
    assert.equal(agent.modbus.proxy.sessionCount('plc-1'), 1, 'one upstream connection for 24 clients')
    t.diagnostic(`24 concurrent mbpoll processes answered in ${ms.toFixed(0)} ms`)
  })

  test('0x0A for each state but active: quarantined, revoked, retiring, retired; and for a unit id no device claims', async (t) => {
    const agent = await agentWithProxy(t)
    const gw = agent.gateway
    const { device } = await legacy(t, agent, 'old-plc', 4)
    const read = () => mbpoll(agent.port, 4, { table: 4, ref: 0, count: 2 })
    assert.equal((await read()).code, 0)
    assert.equal(agent.modbus.proxy.sessionCount('old-plc'), 1)
    const before = device.requests

    const q = await gw.transition('old-plc', 'quarantine', WHO)
    assert.equal(q.changed, true)
    assert.equal(agent.modbus.proxy.sessionCount('old-plc'), 0, 'the gateway\'s connection to the device is closed at once')
    assert.equal((await read()).failure, MBPOLL_EXCEPTION[0x0a], 'quarantined')
    await gw.transition('old-plc', 'release', WHO)
    assert.deepEqual((await read()).values, [0, 0], 'released: served again')
    await gw.transition('old-plc', 'revoke', WHO)
    assert.equal((await read()).failure, MBPOLL_EXCEPTION[0x0a], 'revoked')
    const r = await retire(agent, 'old-plc')
    assert.equal(r.done, false)
    assert.equal(gw.registry.get('old-plc')?.state, 'retiring')
    assert.equal((await read()).failure, MBPOLL_EXCEPTION[0x0a], 'retiring')
    const closed = await retire(agent, 'old-plc', { wipe: false, reason: 'certificate of destruction #42' })
    assert.equal(closed.done, true)
    assert.equal((await read()).failure, MBPOLL_EXCEPTION[0x0a], 'retired')
    assert.equal(device.requests, before + 2, 'only the two reads while active reached the device')

    assert.equal((await mbpoll(agent.port, 99, { table: 4, ref: 0 })).failure, MBPOLL_EXCEPTION[0x0a], 'unit id of no device')
    // A SCADA request is not the device's own attempt: no residual-use alert.
    assert.deepEqual(await eventsOf(gw, 'alert.residual-use'), [])
    assert.equal(agent.modbus.proxy.refusedByDevice.get('old-plc'), 4)
  })

  test('0x02 for a client write into the hook registers (FC 6, 16, 5, 15); reads of them and writes below them pass', async (t) => {
    const agent = await agentWithProxy(t)
    const { device } = await hooked(t, agent, 'plc-1', 3)
    const { device: low } = await hooked(t, agent, 'plc-low', 5, { hookBase: 50 })
    const p = agent.port
    assert.equal((await mbpoll(p, 3, { table: 4, ref: 61440, values: [1] })).failure, MBPOLL_EXCEPTION[0x02], 'FC6 on cmd')
    assert.equal((await mbpoll(p, 3, { table: 4, ref: 61438, values: [1, 2, 3] })).failure, MBPOLL_EXCEPTION[0x02], 'FC16 ending inside')
    assert.equal((await mbpoll(p, 3, { table: 4, ref: 65535, values: [1] })).failure, MBPOLL_EXCEPTION[0x02], 'FC6 on the last envelope register')
    assert.equal((await mbpoll(p, 3, { table: 0, ref: 61441, values: [1] })).failure, MBPOLL_EXCEPTION[0x02], 'FC5 into the same addresses')
    assert.equal((await mbpoll(p, 3, { table: 0, ref: 61441, values: [1, 1] })).failure, MBPOLL_EXCEPTION[0x02], 'FC15 too')
    const status = await mbpoll(p, 3, { table: 4, ref: 61440, count: 5 })
    assert.deepEqual(status.values, [0, 0, 0, 0, 0], 'the hook registers can be read')
    // hookBase 50: 48..50 touches it and is refused whole; 49 alone is the device's
    assert.equal((await mbpoll(p, 5, { table: 4, ref: 48, values: [9, 9, 9] })).failure, MBPOLL_EXCEPTION[0x02])
    assert.equal(low.holding[48], 0, 'nothing of the refused write reached the device')
    assert.equal((await mbpoll(p, 5, { table: 4, ref: 49, values: [9] })).code, 0)
    assert.equal(low.holding[49], 9)
    assert.equal(device.hook?.status, 0)
  })

  test('0x0B for a device that does not answer: nothing listening, or listening and silent; bounded by modbusTimeoutMs', async (t) => {
    const agent = await agentWithProxy(t)
    const gw = agent.gateway
    const deadPort = await freePort()
    const dead = await createLegacyModbusDevice()
    await gw.enroll({ id: 'dead', publicKey: dead.publicKey, modbus: { host: '127.0.0.1', port: deadPort, unitId: 6, hookBase: null } }, WHO)
    // a device that accepts the connection and never answers
    const held: Socket[] = []
    const silent = createServer((s) => void held.push(s))
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r))
    t.after(() => new Promise<void>((r) => (held.forEach((s) => s.destroy()), silent.close(() => r()))))
    await gw.enroll({ id: 'mute', publicKey: dead.publicKey, modbus: { host: '127.0.0.1', port: (silent.address() as AddressInfo).port, unitId: 7, hookBase: null } }, WHO)

    assert.equal((await mbpoll(agent.port, 6, { table: 4, ref: 0 })).failure, MBPOLL_EXCEPTION[0x0b], 'connection refused')
    const t0 = performance.now()
    const mute = await mbpoll(agent.port, 7, { table: 4, ref: 0 })
    const ms = performance.now() - t0
    assert.equal(mute.failure, MBPOLL_EXCEPTION[0x0b], 'silent device')
    assert.ok(ms >= TIMEOUT_MS && ms < TIMEOUT_MS + 2000, `answered after ${ms.toFixed(0)} ms with a ${TIMEOUT_MS} ms bound`)
    t.diagnostic(`0x0B for a silent device after ${ms.toFixed(0)} ms (modbusTimeoutMs ${TIMEOUT_MS})`)
    // a dead device holds up nobody else
    const { device } = await hooked(t, agent, 'plc-1', 3)
    device.holding[0] = 5
    const [slow, fast] = await Promise.all([mbpoll(agent.port, 7, { table: 4, ref: 0 }), mbpoll(agent.port, 3, { table: 4, ref: 0 })])
    assert.equal(slow.failure, MBPOLL_EXCEPTION[0x0b])
    assert.deepEqual(fast.values, [5])
  })
})

describe('cut-off', () => {
  test('requests waiting for a device when it is cut off are answered 0x0A at once, not after the timeout', async (t) => {
    const agent = await agentWithProxy(t)
    const gw = agent.gateway
    const dev = await createLegacyModbusDevice()
    const held: Socket[] = []
    const silent = createServer((s) => held.push(s))
    const firstRequest = new Promise<void>((resolve) => silent.on('connection', (s: Socket) => s.once('data', () => resolve())))
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r))
    t.after(() => new Promise<void>((r) => (held.forEach((s) => s.destroy()), silent.close(() => r()))))
    await gw.enroll({ id: 'slow', publicKey: dev.publicKey, modbus: { host: '127.0.0.1', port: (silent.address() as AddressInfo).port, unitId: 12, hookBase: null } }, WHO)
    const client = await RawModbusClient.open(agent.port)
    t.after(() => client.end())
    const tids = [1, 2, 3, 4, 5]
    const answers = tids.map((tid) => client.answer(tid))
    const frame = (tid: number): Buffer => Buffer.concat([Buffer.from([0, tid, 0, 0, 0, 6, 12]), readHoldingPdu(0, 1)])
    const frames0 = agent.modbus.proxy.stats.frames
    client.write(frame(1))
    await firstRequest
    client.write(Buffer.concat(tids.slice(1).map(frame)))
    // the proxy reads them in a moment (an in-process counter, polled briefly)
    for (let i = 0; i < 400 && agent.modbus.proxy.stats.frames < frames0 + 5; i++) await new Promise((r) => setTimeout(r, 5))
    assert.equal(agent.modbus.index.link('slow')?.backlog, 5, 'one in flight, four waiting')
    const t0 = performance.now()
    await gw.transition('slow', 'quarantine', WHO)
    const pdus = await Promise.all(answers)
    const ms = performance.now() - t0
    assert.equal((await agent.enforcer.settled('slow')).sessionsClosed.modbus, 1, 'the gateway\'s one connection to the device')
    assert.deepEqual(pdus.map((a) => [...a.pdu]), Array(5).fill([0x83, 0x0a]))
    assert.ok(ms < TIMEOUT_MS, `answered in ${ms.toFixed(0)} ms, before the ${TIMEOUT_MS} ms timeout`)
  })
})

describe('retire over Modbus', () => {
  test('a hooked device: the wipe is relayed through the hook registers, done, evidence signed by the gateway; then 0x0A', async (t) => {
    const agent = await agentWithProxy(t)
    const gw = agent.gateway
    const { device, runtime } = await hooked(t, agent, 'plc-1', 3)
    assert.equal((await mbpoll(agent.port, 3, { table: 4, ref: 0 })).code, 0)
    const settled = relaySettled(agent, 'plc-1')
    const r = await retire(agent, 'plc-1', { reason: 'end of life' })
    assert.ok(!r.done && r.wipeActionId)
    const s = await settled
    assert.deepEqual([s.act, s.actionId, s.status], ['wipe', r.wipeActionId, 'done'])
    assert.equal(gw.registry.get('plc-1')?.state, 'retired')
    assert.equal(runtime.wiped, true, 'the device ran its wipe')
    assert.equal(runtime.getData('recipe'), undefined)
    assert.equal(runtime.secretKey, null)
    assert.equal(device.hook?.status, 2, 'status done')
    const action = gw.actions.pending('plc-1')
    assert.deepEqual(action, [], 'the wipe is no longer queued')
    const ev = await retiredEvidence(agent, 'plc-1')
    const wipe = ev.wipe as Record<string, unknown>
    assert.equal(wipe.status, 'done')
    assert.match(String(wipe.ackJti), /^modbus\.\d+$/)
    assert.deepEqual(ev.sessionsClosed, { mqtt: 0, opcua: 0, modbus: 1 }, 'the SCADA-era connection was closed at retire')
    const acked = await eventsOf(gw, 'action.acked')
    assert.deepEqual(acked.map((a) => [a.act, a.status]), [['wipe', 'done']])
    let ackAudit: Record<string, unknown> | undefined
    for await (const e of exportAuditLog(gw.store)) if (e.action === 'action.acked') ackAudit = { ...(e.data as Record<string, unknown>), signer: e.signer }
    assert.equal(ackAudit?.relay, 'modbus')
    assert.equal(ackAudit?.signedBy, 'gateway')
    assert.equal(ackAudit?.signer, gw.key.publicKeyB64, 'the audit entry with the outcome is the gateway\'s')
    assert.equal(ackAudit?.actionSeq, Number(String(wipe.ackJti).slice('modbus.'.length)))
    assert.equal((await mbpoll(agent.port, 3, { table: 4, ref: 0 })).failure, MBPOLL_EXCEPTION[0x0a])
  })

  test('an unreachable hooked device keeps its wipe queued, is probed with backoff, and is wiped when it comes up', async (t) => {
    const agent = await agentWithProxy(t)
    const gw = agent.gateway
    const d = await hooked(t, agent, 'plc-away', 8, { start: false })
    const down = new Promise<void>((resolve) => {
      const off = agent.modbus.index.onReachability((id, up) => {
        if (id === 'plc-away' && !up) {
          off()
          resolve()
        }
      })
    })
    const settled = relaySettled(agent, 'plc-away')
    await retire(agent, 'plc-away')
    await down
    assert.equal(gw.registry.get('plc-away')?.state, 'retiring')
    assert.equal(gw.actions.pending('plc-away').length, 1, 'the wipe stays queued')
    assert.equal(agent.modbus.relay.reachability('plc-away'), 'down')
    assert.equal(agent.modbus.relay.ready('plc-away'), false)
    // the device comes up on its port; the next probe finds it and the wipe goes out
    const t0 = performance.now()
    await started(t, d.device)
    assert.equal((await settled).status, 'done')
    assert.equal(gw.registry.get('plc-away')?.state, 'retired')
    t.diagnostic(`wiped ${(performance.now() - t0).toFixed(0)} ms after the device came up (probe backoff ${agent.modbus.relay.stats.probes} probes)`)
    assert.equal(d.runtime.wiped, true)
    assert.equal(((await retiredEvidence(agent, 'plc-away')).wipe as { status: string }).status, 'done')
  })

  test('a legacy device: no relay; closed by "wipe": false with the reason, cut off on the proxy', async (t) => {
    const agent = await agentWithProxy(t)
    const gw = agent.gateway
    const { device } = await legacy(t, agent, 'old-plc', 4)
    const r = await retire(agent, 'old-plc')
    assert.deepEqual(r, { done: false, wipeActionId: null }, 'no wipe queued for a device that cannot wipe')
    assert.equal(agent.modbus.relay.ready('old-plc'), false)
    assert.equal((await mbpoll(agent.port, 4, { table: 4, ref: 0 })).failure, MBPOLL_EXCEPTION[0x0a])
    const done = await retire(agent, 'old-plc', { wipe: false, reason: 'certificate of destruction #42' })
    assert.equal(done.done, true)
    const ev = done.done ? done.evidence : {}
    assert.deepEqual({ ...(ev.wipe as object), at: 0 }, { status: 'not-performed', reason: 'certificate of destruction #42', at: 0 })
    assert.equal(gw.registry.get('old-plc')?.state, 'retired')
    assert.equal(device.requests, 0, 'the gateway never wrote to it')
  })

  test('a legacy device: closed at the deadline as wipe unsupported (ManualClock, maintenance tick)', async (t) => {
    const clock = new ManualClock()
    const agent = await agentWithProxy(t, clock)
    const gw = agent.gateway
    await legacy(t, agent, 'old-plc', 4)
    await retire(agent, 'old-plc', { deadlineS: 3600 })
    clock.advance(3599_000)
    await agent.maintenance.tick()
    assert.equal(gw.registry.get('old-plc')?.state, 'retiring', 'not before the deadline')
    clock.advance(2_000)
    await agent.maintenance.tick()
    assert.equal(gw.registry.get('old-plc')?.state, 'retired')
    const ev = await retiredEvidence(agent, 'old-plc')
    assert.equal((ev.wipe as { status: string }).status, 'unsupported')
    assert.equal((await mbpoll(agent.port, 4, { table: 4, ref: 0 })).failure, MBPOLL_EXCEPTION[0x0a])
  })
})

describe('other actions through the hook', () => {
  test('failed and unsupported are reported as such; reenroll on a Modbus-only device is answered unsupported without writing', async (t) => {
    const agent = await agentWithProxy(t)
    const gw = agent.gateway
    const d = await createHookedModbusDevice({
      deviceId: 'plc-2',
      gatewayId: gw.id,
      gatewayPublicKey: gw.key.publicKeyB64,
      hooks: { 'revoke-notice': async () => ({ status: 'failed', detail: 'flash locked' }) },
    })
    await started(t, d.device)
    await gw.enroll({ id: 'plc-2', publicKey: d.publicKey, modbus: { host: '127.0.0.1', port: d.device.port, unitId: 9 } }, WHO)
    const before = d.device.requests
    const acked = eventWhere(gw, 'action.acked', (a) => a.act === 'reenroll')
    await agent.actions.queue('plc-2', 'reenroll', WHO)
    assert.equal((await acked).status, 'unsupported')
    assert.equal(d.device.hook?.status, 0, 'nothing written to the device')
    assert.equal(d.device.requests, before)
    await gw.transition('plc-2', 'quarantine', WHO)
    const notice = eventWhere(gw, 'action.acked', (a) => a.act === 'revoke-notice')
    await agent.actions.queue('plc-2', 'revoke-notice', WHO)
    assert.equal((await notice).status, 'failed', 'the device\'s own hook failed')
    assert.equal(d.device.hook?.status, 3)
  })
})

describe('hostile framing never crashes the proxy nor disturbs another client', () => {
  test('lying length fields, truncated frames, oversize quantities, stray bytes, split frames, unforwarded functions', async (t) => {
    const agent = await agentWithProxy(t)
    const { device } = await hooked(t, agent, 'plc-1', 3)
    device.holding.set([7, 8, 9], 0)
    const p = agent.port
    // a well-behaved client reads all along
    const good = await RawModbusClient.open(p)
    t.after(() => good.end())
    let goodReads = 0
    let stop = false
    const goodLoop = (async () => {
      for (let tid = 1; !stop; tid++) {
        const a = await good.request(tid, 3, readHoldingPdu(0, 3))
        assert.deepEqual([...a.pdu], [3, 6, 0, 7, 0, 8, 0, 9])
        goodReads++
      }
    })()
    const open = async (): Promise<RawModbusClient> => {
      const c = await RawModbusClient.open(p)
      t.after(() => c.end())
      return c
    }
    const header = (tid: number, len: number, unit = 3): Buffer => Buffer.from([tid >> 8, tid & 0xff, 0, 0, len >> 8, len & 0xff, unit])

    // length field above 254: disconnected at once
    const big = await open()
    big.write(Buffer.concat([header(1, 0xffff), Buffer.alloc(100)]))
    await big.closed
    // length field below 2
    const small = await open()
    small.write(header(1, 1))
    await small.closed
    // protocol id not 0 / stray text
    const stray = await open()
    const ok = stray.request(5, 3, readHoldingPdu(0, 1))
    stray.write(Buffer.from('\r\nGET / HTTP/1.1\r\n\r\n'))
    assert.deepEqual([...(await ok).pdu], [3, 2, 0, 7], 'the frame before the stray bytes is answered')
    await stray.closed
    // length field promising more than is sent: it waits (and is dropped later), nobody else waits with it
    const liar = await open()
    liar.write(Buffer.concat([header(1, 200), Buffer.from([3, 0, 0])]))
    // truncated frame and the client goes away
    const trunc = await open()
    trunc.write(header(1, 6).subarray(0, 4))
    trunc.end()
    // oversize quantities: answered 0x03 by the gateway, nothing forwarded
    const q = await open()
    assert.deepEqual([...(await q.request(1, 3, readHoldingPdu(0, 126))).pdu], [0x83, 0x03], 'FC3 126 registers')
    assert.deepEqual([...(await q.request(2, 3, Buffer.from([1, 0, 0, 0x07, 0xd1]))).pdu], [0x81, 0x03], 'FC1 2001 coils')
    assert.deepEqual([...(await q.request(3, 3, Buffer.from([16, 0, 0, 0, 124, 2, 0, 1]))).pdu], [0x90, 0x03], 'FC16 claiming 124 registers')
    assert.deepEqual([...(await q.request(4, 3, Buffer.from([16, 0, 0, 0, 2, 4, 0, 1]))).pdu], [0x90, 0x03], 'FC16 byte count lies')
    assert.deepEqual([...(await q.request(5, 3, Buffer.from([0x2b, 0x0d, 0, 0]))).pdu], [0xab, 0x01], 'FC43 with MEI type 13 (CANopen) not forwarded')
    assert.deepEqual([...(await q.request(8, 3, Buffer.from([0x2b, 0x0e, 1]))).pdu], [0xab, 0x03], 'FC43/14 without its object id')
    assert.deepEqual([...(await q.request(9, 3, Buffer.from([0x11, 0]))).pdu], [0x91, 0x03], 'FC17 with a byte too many')
    assert.deepEqual([...(await q.request(6, 3, Buffer.from([23, 0, 0, 0, 1, 0xf0, 0, 0, 1, 2, 0, 1]))).pdu], [0x97, 0x02], 'FC23 writing the hook')
    assert.deepEqual([...(await q.request(7, 3, Buffer.from([22, 0xf0, 0, 0, 0, 0xff, 0xff]))).pdu], [0x96, 0x02], 'FC22 on cmd')
    // a frame split over many segments, and two frames in one
    const split = await open()
    const a1 = split.answer(21)
    const a2 = split.answer(22)
    const bytes = Buffer.concat([Buffer.from([0, 21, 0, 0, 0, 6, 3]), readHoldingPdu(1, 2)])
    for (const b of bytes) {
      split.write(Buffer.from([b]))
      await new Promise((r) => setTimeout(r, 2))
    }
    assert.deepEqual([...(await a1).pdu], [3, 4, 0, 8, 0, 9])
    split.write(Buffer.concat([Buffer.from([0, 22, 0, 0, 0, 6, 3]), readHoldingPdu(0, 1), Buffer.from([0, 23, 0, 0, 0, 6, 3]), readHoldingPdu(2, 1)]))
    const a3 = split.answer(23)
    assert.deepEqual([...(await a2).pdu], [3, 2, 0, 7])
    assert.deepEqual([...(await a3).pdu], [3, 2, 0, 9])

    stop = true
    await goodLoop
    assert.ok(goodReads > 0)
    t.diagnostic(`${goodReads} reads of the well-behaved client answered during the hostile traffic`)
    // the proxy still serves a new client, and never wrote to the device's hook
    assert.deepEqual((await mbpoll(p, 3, { table: 4, ref: 0, count: 3 })).values, [7, 8, 9])
    assert.equal(device.hook?.status, 0)
    assert.ok(agent.modbus.proxy.stats.framingErrors >= 3)
    liar.end()
  })
})

describe('identification: Report Server ID (17) and Read Device Identification (43/14)', () => {
  test('both pass through the proxy to the device: a modbus-serial client and a raw client get the device\'s answers', async (t) => {
    const agent = await agentWithProxy(t)
    const { device } = await hooked(t, agent, 'plc-1', 3)
    const { device: old } = await createLegacyModbusDevice({ identification: null, serverId: null })
    await started(t, old)
    await agent.gateway.enroll({ id: 'old-plc', publicKey: (await createLegacyModbusDevice()).publicKey, modbus: { host: '127.0.0.1', port: old.port, unitId: 4, hookBase: null } }, WHO)

    // modbus-serial's own client (its FC 43 parser, not ours), through the proxy
    // the package is CommonJS whose module.exports is the client class, also as its .default
    const client = new modbusSerial.default()
    await client.connectTCP('127.0.0.1', { port: agent.port })
    client.setID(3)
    client.setTimeout(5000)
    // closed here, not in an after hook: its close() waits forever on a socket the agent's stop already closed
    const id = await client.readDeviceIdentification(1, 0).finally(() => new Promise<void>((r) => client.close(() => r())))
    assert.deepEqual(id.data, { 0: DEFAULT_IDENTIFICATION.vendorName, 1: DEFAULT_IDENTIFICATION.productCode, 2: DEFAULT_IDENTIFICATION.majorMinorRevision })

    const raw = await RawModbusClient.open(agent.port)
    t.after(() => raw.end())
    // §6.13: byte count, server id, run indicator 0xFF, then the device's text
    const sid = await raw.request(1, 3, Buffer.from([17]))
    const text = DEFAULT_SERVER_ID.additional!
    assert.deepEqual([...sid.pdu.subarray(0, 4)], [17, 2 + text.length, DEFAULT_SERVER_ID.id, 0xff])
    assert.equal(sid.pdu.subarray(4).toString('latin1'), text)
    assert.equal(device.serverIdReads, 1)
    // individual access (code 4) to one object
    const one = await raw.request(2, 3, Buffer.from([0x2b, 0x0e, 4, 1]))
    const parsed = parseDeviceIdAnswer(one.pdu)
    assert.deepEqual(parsed?.objects.map((o) => [o.id, o.value.toString()]), [[1, DEFAULT_IDENTIFICATION.productCode]])
    // a device without either function answers 0x01 itself; the proxy passes that through
    assert.deepEqual([...(await raw.request(3, 4, Buffer.from([17]))).pdu], [0x91, 0x01])
    assert.deepEqual([...(await raw.request(4, 4, Buffer.from([0x2b, 0x0e, 1, 0]))).pdu], [0xab, 0x01])
    assert.equal(old.requestsByFunction.get(17), 1, 'forwarded, not answered by the gateway')
    // still refused by the gateway for a device that is not active
    await agent.gateway.transition('plc-1', 'quarantine', WHO)
    assert.deepEqual([...(await raw.request(5, 3, Buffer.from([17]))).pdu], [0x91, 0x0a])
    assert.deepEqual([...(await raw.request(6, 3, Buffer.from([0x2b, 0x0e, 1, 0]))).pdu], [0xab, 0x0a])
  })

  test('the gateway reads a device\'s identification once, after its link first answers, for inventory(); not again after a reconnect, nor from a device that refused it', async (t) => {
    const agent = await agentWithProxy(t)
    const proxy = agent.modbus.proxy
    const { device } = await hooked(t, agent, 'plc-1', 3)
    const { device: old } = await createLegacyModbusDevice({ identification: null })
    await started(t, old)
    await agent.gateway.enroll({ id: 'old-plc', publicKey: (await createLegacyModbusDevice()).publicKey, modbus: { host: '127.0.0.1', port: old.port, unitId: 4, hookBase: null } }, WHO)
    assert.equal(proxy.inventory('plc-1'), undefined, 'nothing known before the device first answered')
    assert.equal(device.requestsByFunction.get(43), undefined)

    const read = (unit: number) => mbpoll(agent.port, unit, { table: 4, ref: 0 })
    assert.equal((await read(3)).code, 0)
    // The identification read went into the link's queue behind that answer; a second read queues behind it.
    assert.equal((await read(3)).code, 0)
    const inv = proxy.inventory('plc-1')
    assert.deepEqual({ ...inv, identifiedAt: 0 }, { ...DEFAULT_IDENTIFICATION, identifiedAt: 0 })
    assert.ok(typeof inv?.identifiedAt === 'number' && Math.abs(inv.identifiedAt - agent.gateway.nowS()) < 5)
    assert.equal(device.requestsByFunction.get(43), 1)
    // what the core puts in the inventory event (PROTOCOL §3 inventory, `seen` by protocol)
    assert.deepEqual(agent.enforcer.inventoryOf('plc-1'), { modbus: inv })
    // and what device show says of it, as the docs promise
    const show = await runCli(['device', 'show', 'plc-1', '--data-dir', agent.gateway.config.dataDir])
    assert.equal(show.code, 0, show.stderr)
    assert.match(show.stdout, new RegExp(`^identified {4}modbus: .*${DEFAULT_IDENTIFICATION.vendorName}`, 'm'))
    const shown = JSON.parse((await runCli(['device', 'show', 'plc-1', '--json', '--data-dir', agent.gateway.config.dataDir])).stdout) as { identification?: { modbus?: Record<string, unknown> } }
    assert.deepEqual(shown.identification?.modbus, inv)
    // the device goes down and comes back: a new connection, but the identification is known
    await device.stop()
    assert.equal((await read(3)).failure, MBPOLL_EXCEPTION[0x0b])
    await device.start()
    assert.equal((await read(3)).code, 0)
    assert.equal((await read(3)).code, 0)
    assert.ok(device.connections >= 2, 'the gateway reconnected')
    assert.equal(device.requestsByFunction.get(43), 1, 'not asked again')

    // a device that answers 0x01: asked once, not after each answer, and nothing in the inventory
    for (let i = 0; i < 3; i++) assert.equal((await read(4)).code, 0)
    assert.equal(old.requestsByFunction.get(43), 1)
    assert.equal(proxy.inventory('old-plc'), undefined)
    assert.equal(proxy.inventory('no-such-device'), undefined)
  })
})

describe('answers from field devices that bend the rules', () => {
  test('an answer under a fixed unit id: accepted with strictUnitId false; with the default, 0x0B for that request at once, and the device connection stays up', async (t) => {
    const agent = await agentWithProxy(t)
    const lax = await createLegacyModbusDevice({ quirks: { unitId: 1 } })
    const strict = await createLegacyModbusDevice({ quirks: { unitId: 1 } })
    await started(t, lax.device)
    await started(t, strict.device)
    lax.device.holding.set([31, 32], 0)
    await agent.gateway.enroll({ id: 'fixed-lax', publicKey: lax.publicKey, modbus: { host: '127.0.0.1', port: lax.device.port, unitId: 7, hookBase: null, strictUnitId: false } }, WHO)
    await agent.gateway.enroll({ id: 'fixed-strict', publicKey: strict.publicKey, modbus: { host: '127.0.0.1', port: strict.device.port, unitId: 8, hookBase: null } }, WHO)

    for (let i = 0; i < 3; i++) assert.deepEqual((await mbpoll(agent.port, 7, { table: 4, ref: 0, count: 2 })).values, [31, 32])
    assert.equal(lax.device.connections, 1)

    const raw = await RawModbusClient.open(agent.port)
    t.after(() => raw.end())
    for (let tid = 1; tid <= 3; tid++) {
      const t0 = performance.now()
      const a = await raw.request(tid, 8, readHoldingPdu(0, 2))
      const ms = performance.now() - t0
      assert.deepEqual([a.transactionId, a.unitId, ...a.pdu], [tid, 8, 0x83, 0x0b])
      assert.ok(ms < TIMEOUT_MS, `0x0B after ${ms.toFixed(0)} ms, not after the ${TIMEOUT_MS} ms timeout`)
    }
    assert.equal(strict.device.connections, 1, 'one connection to the device for all of it')
    assert.equal(agent.modbus.proxy.sessionCount('fixed-strict'), 1)
    assert.equal(strict.device.requestsByFunction.get(3), 3, 'each request reached the device, which answered it')
  })

  test('an answer with another transaction id: each request answered at once with its data, under the client\'s own transaction id', async (t) => {
    const agent = await agentWithProxy(t)
    const odd = await createLegacyModbusDevice({ quirks: { transactionId: (tid) => tid + 1000 } })
    await started(t, odd.device)
    odd.device.holding.set([10, 11, 12, 13, 14], 0)
    await agent.gateway.enroll({ id: 'odd-tid', publicKey: odd.publicKey, modbus: { host: '127.0.0.1', port: odd.device.port, unitId: 9, hookBase: null } }, WHO)
    const raw = await RawModbusClient.open(agent.port)
    t.after(() => raw.end())
    const t0 = performance.now()
    for (let i = 0; i < 5; i++) {
      const a = await raw.request(500 + i, 9, readHoldingPdu(i, 1))
      assert.deepEqual([a.transactionId, ...a.pdu], [500 + i, 3, 2, 0, 10 + i], `request ${i}: its own answer`)
    }
    const ms = performance.now() - t0
    assert.ok(ms < TIMEOUT_MS, `five answers in ${ms.toFixed(0)} ms, none waited for the ${TIMEOUT_MS} ms timeout`)
    assert.deepEqual(raw.received.map((f) => f.transactionId), [500, 501, 502, 503, 504], 'no stray 0x0B between them')
    assert.deepEqual((await mbpoll(agent.port, 9, { table: 4, ref: 2, count: 3 })).values, [12, 13, 14], 'libmodbus checks transaction ids: it gets its own')
    assert.equal(odd.device.connections, 1)
  })

  test('a device that repeats each answer: the repeat, arriving while the next request waits, is not taken for its answer', async (t) => {
    const agent = await agentWithProxy(t)
    // Each request is answered with its registers' addresses as values; before each answer, the previous answer again.
    const conns: Socket[] = []
    const echo = createServer((s) => {
      conns.push(s)
      const reader = new MbapReader()
      let last: Buffer | null = null
      s.on('data', (c: Buffer) => {
        for (const f of reader.push(c).frames) {
          // FC 3 only (the gateway's identification read gets 0x01)
          if (f.pdu[0] !== 3 || f.pdu.length !== 5) {
            s.write(encodeFrame(f.transactionId, f.unitId, Buffer.from([f.pdu[0]! | 0x80, 1])))
            continue
          }
          const start = f.pdu.readUInt16BE(1)
          const qty = f.pdu.readUInt16BE(3)
          const pdu = Buffer.alloc(2 + 2 * qty)
          pdu[0] = 3
          pdu[1] = 2 * qty
          for (let i = 0; i < qty; i++) pdu.writeUInt16BE(start + i, 2 + 2 * i)
          if (last) s.write(last)
          last = encodeFrame(f.transactionId, f.unitId, pdu)
          s.write(last)
        }
      })
    })
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r))
    t.after(() => new Promise<void>((r) => (conns.forEach((s) => s.destroy()), echo.close(() => r()))))
    await agent.gateway.enroll({ id: 'echo', publicKey: (await createLegacyModbusDevice()).publicKey, modbus: { host: '127.0.0.1', port: (echo.address() as AddressInfo).port, unitId: 5, hookBase: null } }, WHO)
    const raw = await RawModbusClient.open(agent.port)
    t.after(() => raw.end())
    for (const reg of [40, 41, 42, 43]) assert.deepEqual([...(await raw.request(reg, 5, readHoldingPdu(reg, 1))).pdu], [3, 2, 0, reg], `register ${reg}`)
  })

  test('answers to one connection go out in request order: a slow unit\'s 0x0B before a fast unit\'s data', async (t) => {
    const agent = await agentWithProxy(t)
    const { device } = await hooked(t, agent, 'plc-1', 3)
    device.holding[0] = 77
    const held: Socket[] = []
    const silent = createServer((s) => void held.push(s))
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r))
    t.after(() => new Promise<void>((r) => (held.forEach((s) => s.destroy()), silent.close(() => r()))))
    await agent.gateway.enroll({ id: 'mute', publicKey: (await createLegacyModbusDevice()).publicKey, modbus: { host: '127.0.0.1', port: (silent.address() as AddressInfo).port, unitId: 12, hookBase: null } }, WHO)
    const raw = await RawModbusClient.open(agent.port)
    t.after(() => raw.end())
    const slow = raw.answer(1)
    const fast = raw.answer(2)
    raw.write(Buffer.concat([encodeFrame(1, 12, readHoldingPdu(0, 1)), encodeFrame(2, 3, readHoldingPdu(0, 1))]))
    assert.deepEqual([...(await slow).pdu], [0x83, 0x0b])
    assert.deepEqual([...(await fast).pdu], [3, 2, 0, 77])
    assert.deepEqual(raw.received.map((f) => f.transactionId), [1, 2], 'in the order asked')
    // A client that sends its requests and then its FIN (a script piping into nc) still gets every answer.
    const scripted = await RawModbusClient.open(agent.port)
    t.after(() => scripted.end())
    const answers = [scripted.answer(7), scripted.answer(8)]
    scripted.socket.end(Buffer.concat([encodeFrame(7, 3, readHoldingPdu(0, 1)), encodeFrame(8, 99, readHoldingPdu(0, 1))]))
    assert.deepEqual((await Promise.all(answers)).map((a) => [...a.pdu]), [[3, 2, 0, 77], [0x83, 0x0a]])
    await scripted.closed
  })
})
