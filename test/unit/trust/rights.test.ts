// The one trust decision (agent/trust/rights.ts), state by state and path
// by path, against PROTOCOL §4, §6 and §7 as written: the table below is
// from the spec, never read back from the code.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { DeviceRecord, DeviceState } from '../../../agent/devices/device.ts'
import { currentRights, inService, isCutState, mayDeliver, networkLevel, registersReachable, rightsOf, sessionReachable } from '../../../agent/trust/rights.ts'
import { DEVICE_STATES } from '../../../wire/protocol.ts'

const NOW = 1_800_000_000
const cfg = { config: { renewGraceS: 100 }, nowS: () => NOW }
const record = (state: DeviceState, credentialExpiresAt = NOW + 1000): DeviceRecord => ({
  spec: { id: 'd1', publicKey: 'x' },
  state,
  keys: [{ publicKey: 'x', notBefore: 0, notAfter: null }],
  credentialExpiresAt,
  createdAt: 0,
  updatedAt: 0,
  stateChangedAt: 0,
})

// state -> [own session rights, SCADA proxy / in service, OPC UA session by the gateway, Modbus hook registers, network level, residual use]
const SPEC: Record<DeviceState, [string | null, boolean, boolean, boolean, string, boolean]> = {
  active: ['full', true, true, true, 'open', false],
  quarantined: [null, false, false, true, 'blocked', true],
  revoked: [null, false, false, true, 'blocked', true],
  retiring: ['wipe-only', false, true, true, 'wipe-only', false],
  retired: [null, false, false, false, 'blocked', true],
}

test('every path of every state, as §4, §6 and §7 say', () => {
  assert.deepEqual(Object.keys(SPEC).sort(), [...DEVICE_STATES].sort())
  for (const state of DEVICE_STATES) {
    const [own, service, session, registers, level, cut] = SPEC[state]
    assert.equal(currentRights(cfg, record(state)), own, `${state}: own session`)
    assert.equal(inService(state), service, `${state}: in service`)
    assert.equal(sessionReachable(state), session, `${state}: gateway session`)
    assert.equal(registersReachable(state), registers, `${state}: hook registers`)
    assert.equal(networkLevel(state), level, `${state}: network`)
    assert.equal(isCutState(state), cut, `${state}: residual use`)
  }
})

test('credential expiry: renew-only within the grace, refused after it; retiring delivers the wipe only', () => {
  assert.deepEqual(rightsOf(cfg, record('active', NOW - 50), NOW), { ok: true, rights: 'renew-only' })
  const late = rightsOf(cfg, record('active', NOW - 100), NOW)
  assert.equal(late.ok, false)
  assert.equal(!late.ok && late.reason, 'credential-expired')
  assert.equal(rightsOf(cfg, undefined, NOW).ok, false)
  assert.ok(mayDeliver('retiring', 'wipe'))
  for (const act of ['reenroll', 'renew', 'revoke-notice'] as const) assert.ok(!mayDeliver('retiring', act), act)
  for (const act of ['wipe', 'reenroll', 'renew', 'revoke-notice'] as const) assert.ok(mayDeliver('active', act), act)
})
