// PROTOCOL §3 command verification: every refusal reason, and the order in
// which the checks apply.
import assert from 'node:assert/strict'
import { generateKeyPairSync, sign, type KeyObject } from 'node:crypto'
import { test } from 'node:test'
import { MAX_COMMAND_LIFETIME_S, verifyCommand, type VerifyContext } from '../../../agent/commands/processor.ts'
import { publicKeyFromB64, publicKeyToB64 } from '../../../agent/store/keys.ts'
import { b64urlEncode, utf8 } from '../../../wire/base64url.ts'
import { MqttUplinkTransport } from '../../../protocols/mqtt/uplink-transport.ts'

const cp = generateKeyPairSync('ed25519')
const other = generateKeyPairSync('ed25519')
const NOW = 1_800_000_000
const device = publicKeyToB64(generateKeyPairSync('ed25519').publicKey)

const ctx: VerifyContext = {
  gatewayId: 'gw1',
  cpKeys: new Map([['cp1', publicKeyFromB64(publicKeyToB64(cp.publicKey))!]]),
  nowS: NOW,
  skewS: 300,
  deviceExists: (id) => id === 'known',
}

const enc = (o: unknown): string => b64urlEncode(utf8(JSON.stringify(o)))
function jws(header: Record<string, unknown>, claims: Record<string, unknown>, key: KeyObject = cp.privateKey): string {
  const input = `${enc(header)}.${enc(claims)}`
  return `${input}.${b64urlEncode(new Uint8Array(sign(null, utf8(input), key)))}`
}
const base = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  iss: 'cp',
  aud: 'gw1',
  iat: NOW - 10,
  exp: NOW + 600,
  jti: 'cmd-1',
  op: 'device.revoke',
  args: { deviceId: 'known' },
  ...over,
})
const H = { alg: 'EdDSA', kid: 'cp1' }
const reasonOf = (token: string): string => {
  const v = verifyCommand(token, ctx)
  return v.ok ? 'ok' : v.reason
}

test('a well-formed command signed by a pinned key verifies', () => {
  const v = verifyCommand(jws(H, base()), ctx)
  assert.equal(v.ok, true)
  if (v.ok) assert.deepEqual(v.cmd, { jti: 'cmd-1', iss: 'cp', iat: NOW - 10, exp: NOW + 600, op: 'device.revoke', args: { deviceId: 'known' } })
})

test('each refusal reason of PROTOCOL §3', () => {
  const good = jws(H, base())
  const [h, p, s] = good.split('.') as [string, string, string]
  const cases: [string, string][] = [
    ['not a jws', 'malformed'],
    [`${h}.${p}`, 'malformed'],
    [`${h}.${p}.${s}.x`, 'malformed'],
    [`${h}.!!!.${s}`, 'malformed'],
    [`${enc({ alg: 'EdDSA', kid: 'cp1' })}.${b64urlEncode(utf8('{not json'))}.${s}`, 'malformed'],
    [`${h}.${enc([1, 2])}.${s}`, 'malformed'],
    [`${h}.${p}.${s.slice(0, 20)}`, 'malformed'],
    [`${h}.${enc({ ...base(), pad: 'x'.repeat(17 * 1024) })}.${s}`, 'malformed'],
    [`${enc({ alg: 'none', kid: 'cp1' })}.${p}.`, 'bad-alg'],
    [`${enc({ alg: 'none', kid: 'cp1' })}.${p}.${s}`, 'bad-alg'],
    [jws({ alg: 'HS256', kid: 'cp1' }, base()), 'bad-alg'],
    [jws({ alg: 'EdDSA', kid: 'cp-unknown' }, base()), 'unknown-key'],
    [jws(H, base(), other.privateKey), 'bad-signature'],
    [`${h}.${enc(base({ op: 'device.release' }))}.${s}`, 'bad-signature'],
    [jws(H, base({ aud: 'gw2' })), 'wrong-audience'],
    [jws(H, base({ iat: NOW - 4000, exp: NOW - 3600 })), 'expired'],
    [jws(H, base({ iat: NOW + 3600, exp: NOW + 7200 })), 'not-yet-valid'],
    [jws(H, base({ exp: NOW - 10 + MAX_COMMAND_LIFETIME_S + 1 })), 'lifetime-too-long'],
    [jws(H, base({ op: 'device.explode' })), 'unknown-op'],
    [jws(H, base({ args: { deviceId: 'known', extra: 1 } })), 'invalid-args'],
    [jws(H, base({ args: { deviceId: 'has space' } })), 'invalid-args'],
    [jws(H, base({ op: 'device.enroll', args: { device: { id: 'x', publicKey: 'short' } } })), 'invalid-args'],
    [jws(H, base({ args: { deviceId: 'nobody' } })), 'unknown-device'],
  ]
  for (const [token, reason] of cases) assert.equal(reasonOf(token), reason, `${token.slice(0, 60)}… should be ${reason}`)
})

test('bad-alg is decided before any key lookup: alg none with an unknown kid is bad-alg, not unknown-key', () => {
  assert.equal(reasonOf(jws({ alg: 'none', kid: 'nobody-knows' }, base())), 'bad-alg')
})

test('checks apply in the order of PROTOCOL §3', () => {
  // wrong audience AND expired AND unknown op: wrong-audience comes first
  assert.equal(reasonOf(jws(H, base({ aud: 'gw2', iat: NOW - 9000, exp: NOW - 8000, op: 'nope' }))), 'wrong-audience')
  // expired AND lifetime too long: expired first
  assert.equal(reasonOf(jws(H, base({ iat: NOW - MAX_COMMAND_LIFETIME_S * 3, exp: NOW - 1000 }))), 'expired')
  // unknown op AND unknown device: unknown-op first
  assert.equal(reasonOf(jws(H, base({ op: 'x', args: { deviceId: 'nobody' } }))), 'unknown-op')
  // invalid args AND unknown device: invalid-args first
  assert.equal(reasonOf(jws(H, base({ args: { deviceId: 'nobody', bogus: true } }))), 'invalid-args')
  // skew is tolerated
  assert.equal(reasonOf(jws(H, base({ iat: NOW - 900, exp: NOW - 200 }))), 'ok')
  assert.equal(reasonOf(jws(H, base({ iat: NOW + 200, exp: NOW + 900 }))), 'ok')
})

test('a rejection carries the jti where one could be read, and says whether the signature verified', () => {
  const v = verifyCommand(jws(H, base({ aud: 'gw2' })), ctx)
  assert.equal(v.ok, false)
  if (!v.ok) {
    assert.equal(v.jti, 'cmd-1')
    assert.equal(v.signed, true)
  }
  const f = verifyCommand(jws(H, base(), other.privateKey), ctx)
  assert.equal(!f.ok && f.signed, false)
})

test('uplink reconnect backoff grows, is capped, and is jittered', () => {
  const lo = (n: number): number => MqttUplinkTransport.backoffMs(n, 500, 30_000, () => 0)
  const hi = (n: number): number => MqttUplinkTransport.backoffMs(n, 500, 30_000, () => 1)
  assert.deepEqual([0, 1, 2, 3].map(hi), [500, 1000, 2000, 4000])
  assert.deepEqual([0, 1, 2, 3].map(lo), [250, 500, 1000, 2000])
  assert.equal(hi(50), 30_000)
  assert.equal(lo(50), 15_000)
})
