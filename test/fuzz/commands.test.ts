// Property tests of command verification (PROTOCOL §3): it never throws, its
// refusals are the spec's reasons, a valid command comes back as it was
// signed, and no single-byte change of a signed command is accepted.
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import fc from 'fast-check'
import { OPS, REJECT_REASONS, verifyCommand, type Verification, type VerifyContext } from '../../agent/commands/processor.ts'
import { signJws } from '../../agent/store/jws.ts'
import { publicKeyFromB64, publicKeyToB64 } from '../../agent/store/keys.ts'

const cp = generateKeyPairSync('ed25519')
const NOW = 1_800_000_000
const ctx: VerifyContext = {
  gatewayId: 'gw1',
  cpKeys: new Map([['cp1', publicKeyFromB64(publicKeyToB64(cp.publicKey))!]]),
  nowS: NOW,
  skewS: 300,
  deviceExists: (id) => id.startsWith('known'),
}
const UNSIGNED = new Set(['malformed', 'bad-alg', 'unknown-key', 'bad-signature'])

function verify(input: string | Uint8Array): Verification {
  const v = verifyCommand(input, ctx) // throwing fails the property
  if (!v.ok) assert.ok((REJECT_REASONS as readonly string[]).includes(v.reason), `reason ${v.reason}`)
  return v
}

const deviceId = fc.oneof(fc.constant('known-1'), fc.stringMatching(/^known-[a-z0-9]{1,8}$/), fc.string({ maxLength: 70 }))
const anyArgs = fc.oneof(
  fc.record({ deviceId, reason: fc.option(fc.string({ maxLength: 1100 }), { nil: undefined }) }, { requiredKeys: ['deviceId'] }),
  fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }),
  fc.record({ device: fc.jsonValue({ maxDepth: 3 }) }),
  fc.jsonValue({ maxDepth: 2 }),
)
const claim = <T>(a: fc.Arbitrary<T>): fc.Arbitrary<T | number | string | null | undefined> => fc.oneof({ weight: 12, arbitrary: a }, fc.integer(), fc.string({ maxLength: 10 }), fc.constant(null), fc.constant(undefined))
const commandClaims = fc.record(
  {
    iss: claim(fc.constant('cp')),
    aud: claim(fc.constant('gw1')),
    iat: claim(fc.integer({ min: NOW - 1000, max: NOW + 1000 })),
    exp: claim(fc.integer({ min: NOW - 1000, max: NOW + 40 * 86400 })),
    jti: claim(fc.stringMatching(/^[A-Za-z0-9._:-]{1,64}$/)),
    // inherited names too: '__proto__' and 'constructor' once made verifyCommand throw
    op: claim(fc.constantFrom(...OPS, 'device.explode', '__proto__', 'constructor', 'toString', 'hasOwnProperty')),
    args: anyArgs,
  },
  { requiredKeys: [] },
)

test('verifyCommand on random text and bytes: never throws, refused as unsigned', () => {
  fc.assert(
    fc.property(fc.oneof(fc.string({ maxLength: 300 }), fc.uint8Array({ maxLength: 300 })), (input) => {
      const v = verify(input)
      assert.equal(v.ok, false)
      if (!v.ok) assert.ok(UNSIGNED.has(v.reason) && !v.signed)
    }),
    { numRuns: 1000 },
  )
})

test('verifyCommand on random claims signed by the pinned key: never throws; accepted only when every §3 check holds', () => {
  fc.assert(
    fc.property(commandClaims, (c) => {
      const v = verify(signJws(cp.privateKey, 'cp1', c))
      if (!v.ok) {
        assert.ok(v.signed, 'the signature verified, so the refusal is a signed one')
        if (typeof c.op === 'string' && !(OPS as readonly string[]).includes(c.op) && c.aud === 'gw1' && v.reason !== 'malformed' && !['expired', 'not-yet-valid', 'lifetime-too-long'].includes(v.reason)) {
          assert.equal(v.reason, 'unknown-op')
        }
        return
      }
      assert.equal(c.aud, 'gw1')
      assert.ok(OPS.includes(v.cmd.op))
      assert.equal(v.cmd.jti, c.jti)
      assert.ok(v.cmd.exp > v.cmd.iat && v.cmd.exp + 300 >= NOW && v.cmd.iat <= NOW + 300)
      if (typeof v.cmd.args.deviceId === 'string') assert.ok(ctx.deviceExists(v.cmd.args.deviceId))
    }),
    { numRuns: 600 },
  )
})

const validCommand = fc.record({
  jti: fc.stringMatching(/^[A-Za-z0-9._:-]{1,64}$/),
  op: fc.constantFrom('device.revoke', 'device.quarantine', 'device.release', 'device.wipe', 'device.retire'),
  id: fc.stringMatching(/^known-[A-Za-z0-9._:-]{0,50}$/),
  lifetime: fc.integer({ min: 1, max: 30 * 86400 }),
})

test('a valid signed command round-trips; any single-byte change of it is refused as unsigned', () => {
  fc.assert(
    fc.property(validCommand, fc.nat(), fc.integer({ min: 1, max: 255 }), ({ jti, op, id, lifetime }, at, delta) => {
      const claims = { iss: 'cp', aud: 'gw1', iat: NOW - 5, exp: NOW - 5 + lifetime, jti, op, args: { deviceId: id } }
      const jws = signJws(cp.privateKey, 'cp1', claims)
      const v = verify(jws)
      assert.ok(v.ok, JSON.stringify(v))
      assert.deepEqual(v.cmd, { jti, iss: 'cp', iat: claims.iat, exp: claims.exp, op, args: { deviceId: id } })
      const bytes = Buffer.from(jws)
      const i = at % bytes.length
      bytes[i] = (bytes[i]! + delta) & 0xff
      const m = verify(bytes)
      assert.ok(!m.ok && UNSIGNED.has(m.reason) && !m.signed, `byte ${i} changed: ${JSON.stringify(m)}`)
    }),
    { numRuns: 600 },
  )
})
