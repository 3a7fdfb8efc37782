// PROTOCOL §3: commands run in the order they arrive, across devices too:
// a command for device B that needs the credential an earlier command for
// device A gives up runs after it (and completes).
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import { ControlPlane, publicKeyB64 } from '../../simulators/control-plane.ts'
import { startTestAgent } from '../helpers/agent.ts'

const cpKey = generateKeyPairSync('ed25519').privateKey
const devKey = (): string => publicKeyB64(generateKeyPairSync('ed25519').privateKey)

test('a key moved from device A to device B in arrival order: B\'s enroll runs after A gave the key up', async (t) => {
  const agent = await startTestAgent(t, { flags: { cpKey: [`cp1=${publicKeyB64(cpKey)}`] } })
  const cp = new ControlPlane({ broker: 'mqtt://unused', site: 'site1', gateway: 'gw1', key: cpKey, kid: 'cp1' })
  const now = Math.floor(Date.now() / 1000)
  const k1 = devKey()
  const k2 = devKey()
  const first = cp.sign('device.enroll', { device: { id: 'press-a', publicKey: k1 } }, { nowS: now - 100 })
  await agent.commands.handle(first.jws)
  await agent.commands.idle()
  assert.equal(agent.commands.stateOf(first.jti), 'completed')

  // One burst, in this order (as a control plane's window delivers them):
  const q = cp.sign('device.quarantine', { deviceId: 'press-a' }, { nowS: now - 50 })
  const rekeyA = cp.sign('device.enroll', { device: { id: 'press-a', publicKey: k2 } }, { nowS: now - 40 })
  const enrollB = cp.sign('device.enroll', { device: { id: 'press-b', publicKey: k1 } }, { nowS: now - 30 })
  await Promise.all([agent.commands.handle(q.jws), agent.commands.handle(rekeyA.jws), agent.commands.handle(enrollB.jws)])
  await agent.commands.idle()

  assert.equal(agent.commands.stateOf(rekeyA.jti), 'completed')
  // Run one after another, A holds k2 only by the time B's enroll runs: B must be enrolled.
  assert.equal(agent.commands.stateOf(enrollB.jti), 'completed', 'press-b enrolled with the key press-a gave up before it (arrival order)')
})
