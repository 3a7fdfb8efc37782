// Last seen (status page, `device show`): set when a protocol sees the device,
// kept across a restart.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ManualClock } from '../../agent/runtime/clock.ts'
import { startTestAgent, tempDir } from '../helpers/agent.ts'
import type { Client } from 'aedes'
import { connectDevice, enrollDevice, eventWhere } from '../helpers/mqtt-devices.ts'

test('an MQTT device is last seen when admitted and when it leaves; the time survives a restart', async (t) => {
  const dataDir = tempDir(t)
  const clock = new ManualClock(Date.UTC(2026, 10, 23, 12, 0, 0))
  const agent = await startTestAgent(t, { dataDir, clock })
  const gw = agent.gateway
  const dev = await enrollDevice(gw, 'meter-1')
  const quiet = await enrollDevice(gw, 'meter-2')
  assert.equal(gw.getDevice(dev.id)!.lastSeenAt, undefined, 'never seen before it connects')

  const client = await connectDevice(gw, agent.mqttPort, dev)
  assert.equal(gw.getDevice(dev.id)!.lastSeenAt, gw.nowS(), 'seen at admission')
  clock.advance(90_000)
  // Our listener was added at start, so it has run when this one runs.
  const left = eventWhere<[Client]>(agent.broker.aedes, 'clientDisconnect', (c) => c.id === dev.id)
  client.end()
  await left
  assert.equal(gw.getDevice(dev.id)!.lastSeenAt, gw.nowS(), 'seen when it left')
  const lastSeen = gw.nowS()
  await agent.stop()

  const again = await startTestAgent(t, { dataDir, clock })
  assert.equal(again.gateway.getDevice(dev.id)!.lastSeenAt, lastSeen, 'written before the store closed')
  assert.equal(again.gateway.getDevice(quiet.id)!.lastSeenAt, undefined)
})
