// Property tests of token admission (PROTOCOL §5), the verifier every device
// connect goes through: random passwords, user names and claims signed by
// the device's own key always get a decision (admit never rejects), and a
// device is admitted only when every §5 check holds, once per token.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import fc from 'fast-check'
import type { AdmissionDecision } from '../../agent/trust/admission.ts'
import { signJws } from '../../agent/store/jws.ts'
import { startTestAgent } from '../helpers/agent.ts'
import { testKey } from '../helpers/device-keys.ts'

test('DeviceAdmission.admit on random passwords, user names and signed claims: always a decision, admitted only when §5 holds', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const key = testKey()
  await gw.enroll({ id: 'dev-1', publicKey: key.publicKey }, { actor: 'local:test' })
  const admission = agent.mqttPolicy.admission
  const now = gw.nowS()
  const admit = async (username: string | undefined, password: string | Uint8Array | undefined): Promise<AdmissionDecision> => {
    const d = await admission.admit({ protocol: 'mqtt', clientId: 'dev-1', username, password, remote: '127.0.0.1' })
    assert.equal(typeof d.ok, 'boolean')
    if (!d.ok) assert.ok(typeof d.reason === 'string' && typeof d.detail === 'string')
    return d
  }

  await fc.assert(
    fc.asyncProperty(fc.option(fc.string({ maxLength: 20 }), { nil: undefined }), fc.option(fc.oneof(fc.string({ maxLength: 300 }), fc.uint8Array({ maxLength: 300 })), { nil: undefined }), async (u, p) => {
      assert.equal((await admit(u, p)).ok, false)
    }),
    { numRuns: 500 },
  )

  const claim = <T>(a: fc.Arbitrary<T>): fc.Arbitrary<unknown> => fc.oneof({ weight: 24, arbitrary: a }, fc.jsonValue({ maxDepth: 1 }), fc.constant(undefined))
  const claims = fc.record(
    {
      iss: claim(fc.constant('dev-1')),
      aud: claim(fc.constant(gw.id)),
      iat: claim(fc.integer({ min: now - 700, max: now + 400 })),
      exp: claim(fc.integer({ min: now - 400, max: now + 3200 })),
      jti: claim(fc.stringMatching(/^[A-Za-z0-9._:-]{1,64}$/)),
    },
    { requiredKeys: [] },
  )
  let admitted = 0
  await fc.assert(
    fc.asyncProperty(claims, fc.constantFrom('dev-1', 'dev-1', 'dev-1', 'dev-2', undefined), fc.constantFrom('dev-1', 'dev-1', 'dev-1', 'dev-2'), async (c, username, kid) => {
      const token = signJws(key.privateKey, kid, c)
      const d = await admit(username, token)
      if (!d.ok) return
      admitted++
      assert.ok(username === 'dev-1' && kid === 'dev-1' && c.iss === 'dev-1' && c.aud === gw.id)
      const [iat, exp] = [c.iat as number, c.exp as number]
      assert.ok(exp > iat && exp - iat <= 3600 && exp + gw.config.clockSkewS >= now && iat <= now + gw.config.clockSkewS)
      assert.equal((await admit(username, token)).ok, false, 'a token admits once')
    }),
    { numRuns: 300 },
  )
  t.diagnostic(`${admitted} of 300 random signed tokens admitted`)
})
