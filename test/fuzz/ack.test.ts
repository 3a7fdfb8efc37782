// Property tests of ack verification (PROTOCOL §5): whatever a device (or
// anyone) sends as an ack, verifyAck answers a verdict and never throws; an
// ack is accepted only when every check holds; a valid ack round-trips and
// no single-byte change of it is accepted.
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import fc from 'fast-check'
import { ACK_STATUSES, verifyAck, type AckVerdict } from '../../agent/actions/ack.ts'
import type { QueuedAction } from '../../agent/actions/action-queue.ts'
import type { Gateway } from '../../agent/gateway.ts'
import { PublicKeyCache } from '../../agent/store/keys.ts'
import { ackFor, rekeyProof, signAs, testKey } from '../helpers/device-keys.ts'

const NOW = Math.floor(Date.now() / 1000)
const dev = testKey()
const stranger = testKey()
const action = (id: string, act: QueuedAction['act']): QueuedAction => ({ id, deviceId: 'dev-1', act, args: {}, jws: '', seq: 1, queuedAt: NOW, deadline: NOW + 3600 })
const actions = new Map([
  ['act-wipe', action('act-wipe', 'wipe')],
  ['act-rekey', action('act-rekey', 'reenroll')],
])
// Only what verifyAck reads of a gateway.
const gw = {
  id: 'gw1',
  nowS: () => NOW,
  config: { clockSkewS: 300 },
  registry: new Map([['dev-1', { spec: { id: 'dev-1' }, state: 'active', keys: [{ publicKey: dev.publicKey, notBefore: 0, notAfter: null }] }]]),
  actions: { find: (d: string, ref: string) => (d === 'dev-1' ? actions.get(ref) : undefined) },
} as unknown as Gateway
const keys = new PublicKeyCache()

function verify(deviceId: string, input: string | Uint8Array): AckVerdict {
  const v = verifyAck(gw, deviceId, input, keys) // throwing fails the property
  if (!v.ok) assert.equal(typeof v.reason, 'string')
  return v
}

test('verifyAck on random text and bytes never throws and never accepts', () => {
  fc.assert(
    fc.property(fc.constantFrom('dev-1', 'dev-2', ''), fc.oneof(fc.string({ maxLength: 300 }), fc.uint8Array({ maxLength: 300 })), (id, input) => {
      assert.equal(verify(id, input).ok, false)
    }),
    { numRuns: 1000 },
  )
})

const claim = <T>(a: fc.Arbitrary<T>): fc.Arbitrary<unknown> => fc.oneof({ weight: 10, arbitrary: a }, fc.jsonValue({ maxDepth: 1 }), fc.constant(undefined))
const ackClaims = fc.record(
  {
    iss: claim(fc.constant('dev-1')),
    aud: claim(fc.constant('gw1')),
    iat: claim(fc.integer({ min: NOW - 100, max: NOW + 100 })),
    jti: claim(fc.stringMatching(/^[A-Za-z0-9._:-]{1,64}$/)),
    ref: claim(fc.constantFrom('act-wipe', 'act-rekey', 'act-none')),
    status: claim(fc.constantFrom(...ACK_STATUSES, 'maybe')),
    detail: claim(fc.string({ maxLength: 2000 })),
    newPublicKey: claim(fc.constant(testKey().publicKey)),
    newKeyProof: claim(fc.base64String()),
  },
  { requiredKeys: [] },
)

test('verifyAck on random claims, signed by the device or a stranger: never throws; accepted only when every check holds', () => {
  fc.assert(
    fc.property(ackClaims, fc.boolean(), (c, byDevice) => {
      const v = verify('dev-1', signAs((byDevice ? dev : stranger).privateKey, 'dev-1', c))
      if (!v.ok) return
      assert.ok(byDevice, 'only the device key signs an accepted ack')
      assert.equal(c.aud, 'gw1')
      assert.equal(v.ack.action.id, c.ref)
      assert.ok((ACK_STATUSES as readonly string[]).includes(v.ack.status))
      assert.ok(v.ack.detail === undefined || v.ack.detail.length <= 1024)
      if (v.ack.status === 'done') assert.equal(v.ack.action.act, 'wipe', 'a done re-key needs a proof no random claim carries')
    }),
    { numRuns: 600 },
  )
})

test('a valid ack round-trips (a done re-key with its proof too); any single-byte change of it is refused', () => {
  fc.assert(
    fc.property(fc.constantFrom(...ACK_STATUSES), fc.boolean(), fc.option(fc.string({ maxLength: 100 }), { nil: undefined }), fc.nat(), fc.integer({ min: 1, max: 255 }), (status, rekey, detail, at, delta) => {
      const ref = rekey ? 'act-rekey' : 'act-wipe'
      const newKey = testKey()
      const extra = { ...(detail !== undefined ? { detail } : {}), ...(rekey && status === 'done' ? rekeyProof(newKey, ref) : {}) }
      const ack = ackFor(dev.privateKey, 'dev-1', 'gw1', ref, status, extra)
      const v = verify('dev-1', ack)
      assert.ok(v.ok, JSON.stringify(v))
      assert.equal(v.ack.status, status)
      assert.equal(v.ack.action.id, ref)
      assert.equal(v.ack.detail, detail)
      assert.equal(v.ack.newPublicKey, rekey && status === 'done' ? newKey.publicKey : undefined)
      assert.equal(verify('dev-2', ack).ok, false, 'the ack of another device')
      const bytes = Buffer.from(ack)
      const i = at % bytes.length
      bytes[i] = (bytes[i]! + delta) & 0xff
      assert.equal(verify('dev-1', bytes).ok, false, `byte ${i} changed and the ack is still accepted`)
    }),
    { numRuns: 300 },
  )
})
