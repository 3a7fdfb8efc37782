// The status page names a credential as device ls and device show do: a
// certificate device that has no certificate yet (enrolled with a bootstrap
// secret, waiting for its EST enrollment) reads "certificate", not "x509".
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { test } from 'node:test'
import { statusSnapshot } from '../../agent/observe/status-page.ts'
import { startTestAgent } from '../helpers/agent.ts'

test('a certificate device without its certificate yet is a "certificate" on the status page, as in device ls', async (t) => {
  const agent = await startTestAgent(t)
  const sha = createHash('sha256').update('one-time secret').digest('hex')
  await agent.gateway.enroll({ id: 'cam-9', x509: { bootstrapSecretSha256: sha }, mqtt: {} }, { actor: 'local:test' })
  const s = await statusSnapshot({ gateway: agent.gateway, adapters: [], uplink: null })
  const d = s.devices.find((x) => x.id === 'cam-9')
  assert.equal(d?.credential, 'certificate')
})
