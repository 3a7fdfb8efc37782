// Property tests of the JWS codec and parser (PROTOCOL §1) and the gateway's
// verifier: whatever arrives, only JwsFormatError comes out; what is signed
// round-trips; no single-byte change of a signed JWS still verifies.
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import fc from 'fast-check'
import { signJws, verifyParsed } from '../../agent/store/jws.ts'
import { b64urlDecode, b64urlEncode, b64urlEncodeJs, utf8 } from '../../wire/base64url.ts'
import { checkTimeClaims, JwsFormatError, MAX_JWS_BYTES, parseJws } from '../../wire/jws.ts'

const key = generateKeyPairSync('ed25519')
const RUNS = 1000

/** Run `fn`; the only thing it may throw is JwsFormatError. Returns the parse or null. */
function parseOrRefuse(input: string | Uint8Array): ReturnType<typeof parseJws> | null {
  try {
    return parseJws(input)
  } catch (err) {
    assert.ok(err instanceof JwsFormatError, `threw ${String(err)}`)
    assert.ok(err.reason === 'malformed' || err.reason === 'bad-alg')
    return null
  }
}

const b64part = fc.uint8Array({ maxLength: 200 }).map(b64urlEncode)
const jsonPart = fc.jsonValue({ maxDepth: 3 }).map((v) => b64urlEncode(utf8(JSON.stringify(v) ?? 'null')))
const headerPart = fc
  .record({ alg: fc.oneof(fc.constant('EdDSA'), fc.constant('none'), fc.constant('HS256'), fc.jsonValue()), kid: fc.oneof(fc.string({ maxLength: 80 }), fc.jsonValue()), typ: fc.option(fc.jsonValue()), crit: fc.option(fc.jsonValue()) }, { requiredKeys: [] })
  .map((h) => b64urlEncode(utf8(JSON.stringify(h))))
const claims = fc.dictionary(fc.string({ maxLength: 12 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 8 })

test('base64url: every byte string round-trips; any text decodes to null or to bytes that encode back to it', () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => assert.deepEqual(b64urlDecode(b64urlEncode(bytes)), bytes)), { numRuns: RUNS })
  fc.assert(
    fc.property(fc.oneof(fc.string({ maxLength: 200 }), fc.string({ unit: fc.constantFrom(...'ABCxyz019-_=+/. '.split('')), maxLength: 50 })), (text) => {
      const bytes = b64urlDecode(text)
      if (bytes) assert.equal(b64urlEncode(bytes), text, 'one encoding per byte string')
    }),
    { numRuns: RUNS },
  )
})

test('base64url: the native encoder (the Buffer of Node) and the plain-JS one (other runtimes) give the same text, for views into larger buffers too', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 20_000 }), fc.nat(16), fc.nat(16), (bytes, head, tail) => {
      const view = bytes.subarray(Math.min(head, bytes.length), Math.max(Math.min(head, bytes.length), bytes.length - tail))
      const text = b64urlEncodeJs(view)
      assert.equal(b64urlEncode(view), text)
      assert.match(text, /^[A-Za-z0-9_-]*$/)
      assert.deepEqual(b64urlDecode(text), new Uint8Array(view))
    }),
    { numRuns: RUNS },
  )
  assert.equal(b64urlEncodeJs(utf8('\u00ff\u00fe?>')), 'w7_Dvj8-', 'the two characters beyond base64 (- and _) and no padding')
})

test('parseJws: random text, random bytes and JWS-shaped junk only ever raise JwsFormatError', () => {
  const input = fc.oneof(
    fc.string({ maxLength: 400 }),
    fc.string({ unit: 'binary', maxLength: 400 }),
    fc.uint8Array({ maxLength: 400 }),
    fc.tuple(fc.oneof(headerPart, jsonPart, b64part), fc.oneof(jsonPart, b64part), fc.oneof(b64part, fc.uint8Array({ minLength: 64, maxLength: 64 }).map(b64urlEncode))).map((p) => p.join('.')),
    fc.array(fc.oneof(b64part, fc.constant('')), { maxLength: 5 }).map((p) => p.join('.')),
  )
  fc.assert(
    fc.property(input, (i) => {
      const p = parseOrRefuse(i)
      if (p) {
        assert.equal(p.header.alg, 'EdDSA')
        assert.equal(p.signature.length, 64)
        assert.ok(!verifyParsed(p, key.publicKey), 'random input does not verify')
      }
    }),
    { numRuns: RUNS },
  )
  // Oversize is refused before anything is decoded.
  assert.equal(parseOrRefuse('a'.repeat(MAX_JWS_BYTES + 1)), null)
  assert.equal(parseOrRefuse(new Uint8Array(MAX_JWS_BYTES + 1)), null)
})

test('signed JWS round-trip: header kid and every claim come back, and the signature verifies', () => {
  fc.assert(
    fc.property(fc.stringMatching(/^[A-Za-z0-9._:-]{1,64}$/), claims, (kid, c) => {
      const jws = signJws(key.privateKey, kid, c)
      const p = parseOrRefuse(jws)
      assert.ok(p, 'a signed JWS parses')
      assert.equal(p.header.kid, kid)
      assert.deepEqual(p.payload, JSON.parse(JSON.stringify(c)))
      assert.ok(verifyParsed(p, key.publicKey))
      assert.deepEqual(parseOrRefuse(utf8(jws))?.payload, p.payload, 'bytes and text parse alike')
    }),
    { numRuns: 300 },
  )
})

test('any single-byte change of a signed JWS fails to parse or to verify', () => {
  fc.assert(
    fc.property(claims, fc.nat(), fc.integer({ min: 1, max: 255 }), (c, at, delta) => {
      const bytes = Buffer.from(signJws(key.privateKey, 'k1', c))
      const i = at % bytes.length
      bytes[i] = (bytes[i]! + delta) & 0xff
      const p = parseOrRefuse(bytes)
      if (p) assert.equal(verifyParsed(p, key.publicKey), false, `byte ${i} changed and it still verifies`)
    }),
    { numRuns: RUNS },
  )
})

test('checkTimeClaims never throws and passes only well-formed, current, bounded claims', () => {
  const num = fc.oneof(fc.integer({ min: 1_799_990_000, max: 1_800_010_000 }), fc.double(), fc.jsonValue(), fc.constant(undefined))
  fc.assert(
    fc.property(fc.record({ iat: num, exp: num, jti: fc.oneof(fc.string({ maxLength: 70 }), fc.jsonValue()) }), fc.boolean(), (c, requireExp) => {
      const now = 1_800_000_000
      const r = checkTimeClaims(c, now, { skewS: 300, maxLifetimeS: 3600, requireExp })
      if (r === null) {
        assert.ok(Number.isSafeInteger(c.iat) && (c.iat as number) <= now + 300)
        if (c.exp !== undefined || requireExp) {
          assert.ok(Number.isSafeInteger(c.exp) && (c.exp as number) > (c.iat as number) && (c.exp as number) + 300 >= now && (c.exp as number) - (c.iat as number) <= 3600)
        }
      }
    }),
    { numRuns: RUNS },
  )
})
