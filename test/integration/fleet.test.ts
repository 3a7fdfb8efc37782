// The fleet simulator (simulators/fleet.ts) against a real agent in this
// process: 20 devices on all three protocols (MQTT on the site broker,
// Modbus TCP servers with the hook registers, node-opcua servers with the
// EdgeWarden hook), the intermittency model stepped on a manual clock, and a
// reconnect storm that delivers a queued action to every device.
import assert from 'node:assert/strict'
import { rmSync } from 'node:fs'
import { after, describe, test } from 'node:test'
import type { VerifiedAck } from '../../agent/actions/ack.ts'
import { Fleet, nextPeriod, seededRandom, splitMix, type FleetEnrollment } from '../../simulators/fleet.ts'
import { ManualSimClock } from '../../simulators/mqtt-device.ts'
import { startTestAgent, tempDir } from '../helpers/agent.ts'

type T = { after(fn: () => Promise<void> | void): void }
/** the OPC UA devices' PKI folders (their certificates, slow to make) are shared by the tests of this file */
const shared = tempDir()
after(() => rmSync(shared, { recursive: true, force: true }))

async function until(what: string, cond: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

async function fleetOnAgent(t: T, o: { onlineFraction: number; meanOfflineS: number; clock?: ManualSimClock }) {
  const agent = await startTestAgent(t)
  agent.opcua.retry.initialMs = 100
  agent.opcua.retry.maxMs = 400
  const enrolled: FleetEnrollment[] = []
  const fleet = await Fleet.create({
    size: 20,
    mix: { mqtt: 14, modbus: 4, opcua: 2 },
    prefix: 'f',
    gatewayId: agent.gateway.id,
    gatewayPublicKey: agent.gateway.key.publicKeyB64,
    mqttUrl: `mqtt://127.0.0.1:${agent.mqttPort}`,
    workDir: shared,
    enroll: async (e) => {
      enrolled.push(e)
      await agent.gateway.enroll(e, { actor: 'local:test' })
    },
    onlineFraction: o.onlineFraction,
    meanOfflineS: o.meanOfflineS,
    random: seededRandom(7),
    ...(o.clock ? { clock: o.clock } : {}),
  })
  t.after(() => fleet.close())
  return { agent, fleet, enrolled }
}

describe('fleet simulator', () => {
  test('mix split and intermittency periods', () => {
    assert.deepEqual(splitMix(20, { mqtt: 80, modbus: 15, opcua: 5 }), { mqtt: 16, modbus: 3, opcua: 1 })
    assert.deepEqual(splitMix(7, { mqtt: 1, modbus: 1, opcua: 1 }), { mqtt: 3, modbus: 2, opcua: 2 })
    assert.deepEqual(splitMix(5, { mqtt: 1 }), { mqtt: 5, modbus: 0, opcua: 0 })
    assert.throws(() => splitMix(5, { mqtt: 0 }), /weights/)
    assert.throws(() => splitMix(-1), /whole number/)
    // online 25 % of the time, absent 60 s on average: online periods average 20 s
    const r = seededRandom(1)
    const n = 20_000
    let on = 0
    let off = 0
    for (let i = 0; i < n; i++) {
      on += nextPeriod({ onlineFraction: 0.25, meanOfflineS: 60 }, true, r)
      off += nextPeriod({ onlineFraction: 0.25, meanOfflineS: 60 }, false, r)
    }
    assert.ok(Math.abs(on / n - 20) < 1.5, `mean online ${on / n}`)
    assert.ok(Math.abs(off / n - 60) < 4, `mean offline ${off / n}`)
    assert.equal(nextPeriod({ onlineFraction: 1, meanOfflineS: 60 }, true, r), Infinity)
    assert.equal(nextPeriod({ onlineFraction: 0, meanOfflineS: 60 }, false, r), Infinity)
  })

  test('20 devices on MQTT, Modbus and OPC UA come and go as the model says; the agent sees the MQTT ones', async (t) => {
    // device tokens carry this clock's time: it starts 2 min behind the agent's and ends 2 min ahead, within the skew allowed
    const clock = new ManualSimClock(Date.now() - 120_000)
    const t0 = performance.now()
    const { agent, fleet, enrolled } = await fleetOnAgent(t, { onlineFraction: 0.5, meanOfflineS: 60, clock })
    assert.equal(fleet.size, 20)
    assert.deepEqual(
      enrolled.map((e) => (e.mqtt ? 'mqtt' : e.modbus ? 'modbus' : 'opcua')).reduce<Record<string, number>>((c, p) => ({ ...c, [p]: (c[p] ?? 0) + 1 }), {}),
      { mqtt: 14, modbus: 4, opcua: 2 },
    )
    assert.equal(agent.gateway.registry.size, 20)
    assert.equal(fleet.stats().online, 0, 'made offline')

    t.diagnostic(`fleet made and enrolled in ${Math.round(performance.now() - t0)} ms`)
    fleet.start()
    const seen = new Map(fleet.members.map((m) => [m.id, new Set<boolean>()]))
    const onlineShare: number[] = []
    for (let step = 0; step < 8; step++) {
      await fleet.idle()
      for (const m of fleet.members) seen.get(m.id)!.add(m.online)
      onlineShare.push(fleet.stats().online / fleet.size)
      // the agent's broker has exactly the MQTT devices the model has online
      const mqttOnline = fleet.byProtocol('mqtt').filter((m) => m.online).length
      await until(`broker clients = ${mqttOnline}`, () => agent.broker.connectedClients === mqttOnline)
      await clock.advance(30_000)
    }
    await fleet.pause()
    const s = fleet.stats()
    t.diagnostic(`after 4 simulated minutes: ${s.ups} ups, ${s.downs} downs, ${s.failures} failures; online share per step ${onlineShare.map((x) => x.toFixed(2)).join(' ')}`)
    assert.equal(s.failures, 0, 'every device came online when the model said so')
    for (const p of ['mqtt', 'modbus', 'opcua'] as const) {
      const both = fleet.byProtocol(p).filter((m) => seen.get(m.id)!.size === 2).length
      assert.ok(both >= 1, `${p}: some device was seen both online and offline`)
    }
    const mean = onlineShare.reduce((a, b) => a + b, 0) / onlineShare.length
    assert.ok(mean > 0.2 && mean < 0.8, `online share ${mean} near the model's 0.5`)
  })

  test('reconnect storm: 20 offline devices, each with a queued wipe, come back at once; every ack is recorded', async (t) => {
    const { agent, fleet } = await fleetOnAgent(t, { onlineFraction: 1, meanOfflineS: 60 })
    const acks: VerifiedAck[] = []
    agent.actions.onAck((a) => void acks.push(a))
    await fleet.allOffline()
    for (const m of fleet.members) await agent.actions.queue(m.id, 'wipe', { actor: 'local:test' })
    assert.equal([...agent.gateway.actions.all()].length, 20)

    const storm = await fleet.storm()
    t.diagnostic(`storm: ${storm.online} devices back in ${storm.ms.toFixed(0)} ms`)
    assert.deepEqual([storm.online, storm.failed], [20, 0])
    await until('every ack recorded', () => acks.length === 20, 30_000)
    assert.deepEqual([...agent.gateway.actions.all()], [], 'no action left queued')
    assert.deepEqual(new Set(acks.map((a) => a.deviceId)), new Set(fleet.members.map((m) => m.id)))
    assert.ok(acks.every((a) => a.status === 'done' && a.action.act === 'wipe'))
    const s = fleet.stats()
    assert.equal(s.actions, 20, 'each device acted on its wipe once')
    assert.equal(s.wiped, 20)
  })
})
