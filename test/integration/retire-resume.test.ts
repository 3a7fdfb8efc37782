// A retirement interrupted after the device went `retired` but before its
// evidence was written (the agent killed between the two writes) is finished
// at the next start: evidence audited, keys ended, nothing left open.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { exportAuditLog, verifyAuditLog } from '../../agent/store/audit.ts'
import { RETIRE_PREFIX } from '../../agent/actions/retirement.ts'
import { startTestAgent, tempDir } from '../helpers/agent.ts'
import { enrollDevice, WHO } from '../helpers/mqtt-devices.ts'

test('a retirement cut off between state retired and its evidence is finished at the next start', async (t) => {
  const dataDir = tempDir(t)
  const agent = await startTestAgent(t, { dataDir })
  const gw = agent.gateway
  const dev = await enrollDevice(gw, 'pump-9')
  // The evidence write never happens, as if the process died right before it.
  gw.updateDevice = async () => {
    throw new Error('killed')
  }
  await assert.rejects(
    agent.retirements.start(dev.id, { wipe: false, reason: 'certificate of destruction #42', receivedAt: performance.now(), receivedAtS: gw.nowS() }, WHO),
    /killed/,
  )
  assert.equal(gw.getDevice(dev.id)!.state, 'retired')
  await agent.stop()

  const again = await startTestAgent(t, { dataDir })
  const g2 = again.gateway
  const retired = []
  for await (const e of exportAuditLog(g2.store)) if (e.action === 'device.retired' && e.subject === dev.id) retired.push(e.data as Record<string, unknown>)
  assert.equal(retired.length, 1, 'the evidence is written once')
  assert.deepEqual(retired[0]!.wipe && (retired[0]!.wipe as { status: string; reason: string }).status, 'not-performed')
  assert.equal((retired[0]!.wipe as { reason: string }).reason, 'certificate of destruction #42')
  assert.deepEqual(retired[0]!.network, { backend: 'none', rule: 'blocked' })
  assert.ok(g2.getDevice(dev.id)!.keys.every((k) => k.notAfter !== null && k.notAfter <= g2.nowS()), 'every key ended')
  assert.equal(again.retirements.isOpen(dev.id), false)
  const left = []
  for await (const kv of g2.store.scan(RETIRE_PREFIX)) left.push(kv)
  assert.equal(left.length, 0, 'no open retirement record left')
  assert.equal((await verifyAuditLog(g2.store, [g2.key.publicKeyB64])).ok, true)
})
