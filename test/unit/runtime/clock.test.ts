// The guarded system clock (runtime/clock.ts): a forward jump of the wall
// clock that monotonic time did not see is not believed, so a whole fleet's
// credentials do not expire at once; a signed command vouches for it.
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import { GuardedClock } from '../../../agent/runtime/clock.ts'
import { currentRights } from '../../../agent/trust/rights.ts'
import { ControlPlane, publicKeyB64 } from '../../../simulators/control-plane.ts'
import { startTestAgent } from '../../helpers/agent.ts'
import { enrollDevice } from '../../helpers/mqtt-devices.ts'

const DAY = 86400_000

test('GuardedClock: drift and slow steps are believed; a forward jump the monotonic clock did not see is held back; backward is believed; vouching ends the doubt', () => {
  let wall = Date.UTC(2026, 11, 1)
  let mono = 1000
  const c = new GuardedClock({ wall: () => wall, mono: () => mono })
  const jumps: { ms: number; believed: boolean }[] = []
  c.onJump((j) => jumps.push(j))
  wall += 60_000
  mono += 60_000
  c.check()
  assert.equal(c.now(), wall, 'time that passed on both clocks')
  wall += 1000 // NTP slewing a second: no jump
  c.check()
  assert.equal(jumps.length, 0)
  const before = c.now()
  wall += 3650 * DAY // the RTC lost its battery, or a bad NTP answer
  mono += 5000
  c.check()
  assert.equal(jumps.length, 1)
  assert.equal(jumps[0]!.believed, false)
  assert.ok(Math.abs(c.now() - (before + 5000)) < 6000, 'counts on from the time it trusted')
  assert.equal(c.vouch(Math.floor(before / 1000), 300), false, "a command from the old timeline does not vouch for the new one")
  assert.equal(c.vouch(Math.floor(wall / 1000), 300), true)
  assert.equal(c.now(), wall, 'believed once vouched for')
  wall -= 2 * DAY
  c.check()
  assert.equal(jumps.at(-1)!.believed, true, 'a backward step is believed (nothing expires by it)')
  assert.equal(c.now(), wall)
})

test('a gateway whose wall clock jumps ten years does not expire its devices; a command from the control plane with the new time vouches for it', async (t) => {
  let wall = Date.now()
  let mono = performance.now()
  const clock = new GuardedClock({ wall: () => wall, mono: () => mono })
  const cpKey = generateKeyPairSync('ed25519').privateKey
  const agent = await startTestAgent(t, { clock, flags: { cpKey: [`cp1=${publicKeyB64(cpKey)}`] } })
  const gw = agent.gateway
  await enrollDevice(gw, 'pump-1')
  assert.equal(currentRights(gw, gw.getDevice('pump-1')), 'full')
  wall += 3650 * DAY
  mono += 1000
  await agent.maintenance.tick()
  assert.equal(currentRights(gw, gw.getDevice('pump-1')), 'full', 'the jump is not believed: the credential is still valid')
  // a command signed at the new wall time: it verifies at wall time, and vouches
  const cp = new ControlPlane({ broker: 'mqtt://unused', site: 'site1', gateway: 'gw1', key: cpKey, kid: 'cp1' })
  await agent.commands.handle(cp.sign('inventory.report', {}, { nowS: Math.floor(wall / 1000) }).jws)
  await agent.commands.idle()
  assert.equal(clock.heldBackMs, 0)
  assert.equal(currentRights(gw, gw.getDevice('pump-1')), null, 'now the ten years are believed: the credential is past its grace')
})
