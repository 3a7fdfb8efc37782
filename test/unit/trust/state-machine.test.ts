// PROTOCOL §4: every (state, transition) pair, against a table written here
// from the spec, never read back from agent/state-machine.ts.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { AUDIT_HEAD_KEY } from '../../../agent/store/audit.ts'
import { DEVICE_STATES, type DeviceRecord } from '../../../agent/devices/device.ts'
import { IllegalTransitionError, isEdgewardenError } from '../../../agent/runtime/errors.ts'
import { Gateway } from '../../../agent/gateway.ts'
import { generateKeyPair } from '../../../agent/store/keys.ts'
import { createLogger } from '../../../agent/observe/logger.ts'
import { applyTransition, nextState, TRANSITIONS, type FromState, type Transition } from '../../../agent/trust/state-machine.ts'
import { tempDir, testConfig } from '../../helpers/agent.ts'

type Expected = Record<string, Record<string, string | null>>

// Rows: the state a device is in ('none': not enrolled). Columns: the
// transition. A cell is the state it leads to, or null where §4 forbids it.
// Repeating the state a device is already in (quarantine a quarantined one,
// revoke a revoked one, release an active one, retire a retiring one) is
// accepted as a no-op so a retried command is harmless; §6 relies on retire
// of a retiring device. Enrolling a quarantined device updates its record
// but keeps the quarantine: only release lifts it (see the report note: §3
// says enroll gives `active`).
const EXPECTED: Expected = {
  //            enroll          quarantine      release   revoke     retire       retire-complete
  none: { enroll: 'active', quarantine: null, release: null, revoke: null, retire: null, 'retire-complete': null },
  active: { enroll: 'active', quarantine: 'quarantined', release: 'active', revoke: 'revoked', retire: 'retiring', 'retire-complete': null },
  quarantined: { enroll: 'quarantined', quarantine: 'quarantined', release: 'active', revoke: 'revoked', retire: 'retiring', 'retire-complete': null },
  // §4: enroll of a revoked id re-admits it; releasing a revoked one is forbidden.
  revoked: { enroll: 'active', quarantine: null, release: null, revoke: 'revoked', retire: 'retiring', 'retire-complete': null },
  // §4: enrolling a retiring id is forbidden; retiring only goes on to retired.
  retiring: { enroll: null, quarantine: null, release: null, revoke: null, retire: 'retiring', 'retire-complete': 'retired' },
  // §4: retired is final.
  retired: { enroll: null, quarantine: null, release: null, revoke: null, retire: null, 'retire-complete': null },
}

test('the expected table covers exactly the exported states and transitions', () => {
  assert.deepEqual(Object.keys(EXPECTED).sort(), ['none', ...DEVICE_STATES].sort())
  for (const row of Object.values(EXPECTED)) assert.deepEqual(Object.keys(row).sort(), [...TRANSITIONS].sort())
})

test('every (state, transition) pair of PROTOCOL §4', async (t) => {
  const from: FromState[] = ['none', ...DEVICE_STATES]
  let legal = 0
  let illegal = 0
  for (const s of from) {
    for (const tr of TRANSITIONS) {
      const want = EXPECTED[s]?.[tr]
      assert.notEqual(want, undefined, `no expectation for ${s} + ${tr}`)
      await t.test(`${s} + ${tr} -> ${want ?? 'ILLEGAL'}`, () => {
        assert.equal(nextState(s, tr), want)
        if (want) {
          assert.equal(applyTransition('dev-1', s, tr), want)
          legal++
        } else {
          assert.throws(
            () => applyTransition('dev-1', s, tr),
            (err: unknown) => {
              assert.ok(err instanceof IllegalTransitionError, `expected IllegalTransitionError, got ${String(err)}`)
              assert.equal(err.code, 'ILLEGAL_TRANSITION')
              assert.ok(isEdgewardenError(err, 'ILLEGAL_TRANSITION'))
              assert.equal(err.from, s === 'none' ? null : s)
              assert.match(err.message, /dev-1/)
              assert.ok(err.message.includes(tr), `message names the transition: ${err.message}`)
              return true
            },
          )
          illegal++
        }
      })
    }
  }
  assert.equal(legal + illegal, from.length * TRANSITIONS.length)
  assert.equal(legal, 16)
})

// ---------------------------------------------------------------------------
// Through the Gateway: an illegal transition changes nothing and audits nothing.

async function openGateway(t: { after(fn: () => Promise<void> | void): void }): Promise<Gateway> {
  const dataDir = tempDir(t)
  const gw = await Gateway.open(testConfig(dataDir), { log: createLogger('silent') })
  t.after(() => gw.close())
  return gw
}

interface Snapshot {
  memory: DeviceRecord | undefined
  disk: string | undefined
  auditHead: string | undefined
  auditEntries: number
  allKeys: number
}

async function snapshot(gw: Gateway, id: string): Promise<Snapshot> {
  let auditEntries = 0
  for await (const _ of gw.store.scan('audit!')) auditEntries++
  let allKeys = 0
  for await (const _ of gw.store.scan('')) allKeys++ // nothing at all may be written: no record, audit entry or event
  return {
    memory: structuredClone(gw.getDevice(id)),
    disk: await gw.store.get(`dev!${id}`),
    auditHead: await gw.store.get(AUDIT_HEAD_KEY),
    auditEntries,
    allKeys,
  }
}

const deviceSpec = (id: string, publicKey = generateKeyPair().publicKeyB64) => ({ id, publicKey, criticality: 'high' as const, mqtt: {} })
const who = { actor: 'local:test', reason: 'test' }

async function assertRefused(gw: Gateway, id: string, attempt: () => Promise<unknown>): Promise<void> {
  const before = await snapshot(gw, id)
  assert.ok(before.memory, 'device exists before the attempt')
  await assert.rejects(attempt, (err: unknown) => isEdgewardenError(err, 'ILLEGAL_TRANSITION') && err instanceof IllegalTransitionError)
  await gw.store.flush()
  assert.deepEqual(await snapshot(gw, id), before)
}

async function driveTo(gw: Gateway, id: string, path: Transition[]): Promise<void> {
  await gw.enroll(deviceSpec(id), who)
  for (const tr of path) await gw.transition(id, tr, who)
}

test('Gateway: release of a revoked device is refused and changes nothing', async (t) => {
  const gw = await openGateway(t)
  await driveTo(gw, 'd-revoked', ['revoke'])
  assert.equal(gw.getDevice('d-revoked')?.state, 'revoked')
  await assertRefused(gw, 'd-revoked', () => gw.transition('d-revoked', 'release', { actor: 'local:test', reason: 'nope' }))
  await assertRefused(gw, 'd-revoked', () => gw.transition('d-revoked', 'quarantine', who))
  assert.equal(gw.getDevice('d-revoked')?.state, 'revoked')
})

test('Gateway: enroll of a retiring or retired device is refused and changes nothing', async (t) => {
  const gw = await openGateway(t)
  await driveTo(gw, 'd-retiring', ['retire'])
  await driveTo(gw, 'd-retired', ['quarantine', 'retire', 'retire-complete'])
  assert.equal(gw.getDevice('d-retiring')?.state, 'retiring')
  assert.equal(gw.getDevice('d-retired')?.state, 'retired')
  // Even under a new key: re-admission is for revoked ids only.
  await assertRefused(gw, 'd-retiring', () => gw.enroll(deviceSpec('d-retiring'), who))
  await assertRefused(gw, 'd-retired', () => gw.enroll(deviceSpec('d-retired'), who))
  await assertRefused(gw, 'd-retired', () => gw.transition('d-retired', 'retire', who))
  await assertRefused(gw, 'd-retiring', () => gw.transition('d-retiring', 'release', who))
})

test('Gateway: legal transitions are written and audited (the refusals above are not vacuous)', async (t) => {
  const gw = await openGateway(t)
  await gw.enroll(deviceSpec('d1'), who)
  const before = await snapshot(gw, 'd1')
  const r = await gw.transition('d1', 'quarantine', { actor: 'local:test', reason: 'suspicious' })
  assert.equal(r.changed, true)
  assert.equal(r.from, 'active')
  const after = await snapshot(gw, 'd1')
  assert.equal(after.memory?.state, 'quarantined')
  assert.equal((JSON.parse(after.disk!) as DeviceRecord).state, 'quarantined')
  assert.equal(after.auditEntries, before.auditEntries + 1)
  // enroll of a revoked id re-admits it under the new key
  await gw.transition('d1', 'revoke', who)
  const newKey = generateKeyPair().publicKeyB64
  const re = await gw.enroll(deviceSpec('d1', newKey), who)
  assert.equal(re.state, 'active')
  assert.deepEqual(re.keys.map((k) => k.publicKey), [newKey])
})
