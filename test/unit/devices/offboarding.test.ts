// Which devices' offboarding cannot be proven end to end (agent/devices/offboarding.ts),
// and the wipe path retirement goes by.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { hasWipePath, offboardingExceptions } from '../../../agent/devices/offboarding.ts'
import type { DeviceSpec } from '../../../agent/devices/device.ts'

const KEY = 'A'.repeat(43)
const PHC = '$scrypt$ln=10,r=8,p=1$c2FsdA$aGFzaA'
const codes = (spec: DeviceSpec, certificates?: { role: 'current'; issuer: 'site' | 'external' }[]) =>
  offboardingExceptions({ spec, certificates: certificates as never }).map((x) => x.code)

test('a wipe path: MQTT or OPC UA with a key, Modbus with the hook; a password device only through a hook', () => {
  assert.equal(hasWipePath({ id: 'a', publicKey: KEY, mqtt: {} }), true)
  assert.equal(hasWipePath({ id: 'a', publicKey: KEY, modbus: { host: 'h', port: 502, unitId: 1 } }), true, 'hookBase absent: the default hook registers')
  assert.equal(hasWipePath({ id: 'a', publicKey: KEY, modbus: { host: 'h', port: 502, unitId: 1, hookBase: null } }), false)
  assert.equal(hasWipePath({ id: 'a', publicKey: KEY, mqtt: {}, modbus: { host: 'h', port: 502, unitId: 1, hookBase: null } }), true, 'MQTT reaches it')
  assert.equal(hasWipePath({ id: 'a', password: PHC, mqtt: {} }), false, 'no key to sign an ack')
  assert.equal(hasWipePath({ id: 'a', password: PHC, modbus: { host: 'h', port: 502, unitId: 1 } }), true)
})

test('exceptions: no wipe path, OPC UA without push management, a certificate of an outside CA; none for a token device on MQTT', () => {
  assert.deepEqual(codes({ id: 'a', publicKey: KEY, mqtt: {} }), [])
  assert.deepEqual(codes({ id: 'a', password: PHC, mqtt: {} }), ['no-wipe-path'])
  assert.deepEqual(codes({ id: 'a', publicKey: KEY, modbus: { host: 'h', port: 502, unitId: 1, hookBase: null } }), ['no-wipe-path'])
  assert.deepEqual(codes({ id: 'a', publicKey: KEY, opcua: { endpoint: 'opc.tcp://h:4840' } }), ['opcua-no-push'])
  assert.deepEqual(codes({ id: 'a', publicKey: KEY, opcua: { endpoint: 'opc.tcp://h:4840', pushManagement: true } as DeviceSpec['opcua'] }), [])
  assert.deepEqual(codes({ id: 'a', x509: { certificateSha256: 'a'.repeat(64) }, mqtt: {} }, [{ role: 'current', issuer: 'external' }]), ['external-certificate'])
  assert.deepEqual(codes({ id: 'a', x509: { certificateSha256: 'a'.repeat(64) }, mqtt: {} }, [{ role: 'current', issuer: 'site' }]), [])
  for (const x of offboardingExceptions({ spec: { id: 'a', password: PHC, opcua: { endpoint: 'opc.tcp://h:4840' } } })) assert.ok(x.reason.length > 20, 'a reason a person can read')
})
