// One credential, one identity, for certificates (the token key and password
// hash cases are in device-story.test.ts): a pinned certificate, a
// certificate request, or a new request for the key of a certificate the
// site CA already issued to another id is refused for a second id, through
// the admin socket and the real CLI, naming the holder; nothing changes.
// Requests are made by openssl.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { test } from 'node:test'
import { adminRequest } from '../../agent/cli/admin-client.ts'
import { runCli, startTestAgent, tempDir } from '../helpers/agent.ts'

const ssl = (dir: string, ...args: string[]): Buffer => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })

test('the same pinned certificate, certificate request or certified key for a second id is refused, naming the holder', async (t) => {
  const dir = tempDir(t)
  const agent = await startTestAgent(t)
  const dataDir = agent.config.dataDir
  const add = (device: Record<string, unknown>) => adminRequest(dataDir, 'POST', '/v1/devices', { device })

  const pin = randomBytes(32).toString('hex')
  assert.equal((await add({ id: 'cam-a', x509: { certificateSha256: pin } })).status, 200)
  const twin = await add({ id: 'cam-b', x509: { certificateSha256: pin.toUpperCase() } })
  assert.equal(twin.status, 409)
  assert.match(twin.text, /DUPLICATE_CREDENTIAL.*device cam-b: its certificate is already the credential of device cam-a \(active\)/)

  ssl(dir, 'genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'k.pem')
  const csr = (cn: string): string => ssl(dir, 'req', '-new', '-key', 'k.pem', '-subj', `/CN=${cn}`, '-outform', 'DER').toString('base64url')
  ssl(dir, 'req', '-new', '-key', 'k.pem', '-subj', '/CN=cam-c', '-out', 'cam-c.csr')
  const issued = await runCli(['device', 'add', 'cam-c', '--csr', join(dir, 'cam-c.csr'), '--data-dir', dataDir])
  assert.equal(issued.code, 0, issued.stderr)
  assert.match(issued.stdout, /^-----BEGIN CERTIFICATE-----/)

  const same = await runCli(['device', 'add', 'cam-d', '--csr', join(dir, 'cam-c.csr'), '--data-dir', dataDir])
  assert.equal(same.code, 1)
  assert.equal(same.stderr, 'edgewarden: device cam-d: its certificate request is already the credential of device cam-c (active); every device needs its own\n')
  assert.equal(same.stdout, '', 'no certificate issued')

  // another request, for the same key: the certificate cam-c holds already certifies it
  const sameKey = await add({ id: 'cam-e', x509: { csr: csr('cam-e') } })
  assert.equal(sameKey.status, 409)
  assert.match(sameKey.text, /device cam-e: its certificate key is already the credential of device cam-c/)

  const ls = await runCli(['device', 'ls', '--json', '--data-dir', dataDir])
  assert.deepEqual((JSON.parse(ls.stdout) as { id: string }[]).map((d) => d.id), ['cam-a', 'cam-c'], 'nothing enrolled by a refusal')
})
