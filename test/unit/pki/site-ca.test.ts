// SiteCa.issued(): whether a certificate was signed by a CA devices may
// chain to. It remembers each yes by the certificate's SHA-256 (a device
// reconnects with the same certificate); a CA of the same name but another
// key is no issuer, on the first question and on every one after. (That
// the memo saves the signature check is the benchmark's to show.)
import assert from 'node:assert/strict'
import { X509Certificate } from 'node:crypto'
import { join } from 'node:path'
import { test } from 'node:test'
import { SiteCa } from '../../../agent/pki/ca.ts'
import { certificateRequest, generateCertKey } from '../../../firmware-hooks/x509-keys.ts'
import { tempDir } from '../../helpers/agent.ts'

const NOW = Math.floor(Date.now() / 1000)

test('issued(): the site CA\'s own certificates yes, those of a CA with the same name and another key no, asked once or many times', async (t) => {
  const dir = tempDir(t)
  // two CAs made alike: the same site and gateway, so the same subject name
  const [a, b] = await Promise.all(['a', 'b'].map((d) => SiteCa.open({ dataDir: join(dir, d), site: 'site1', gateway: 'gw1', nowS: NOW })))
  assert.equal(a!.certificate.subject, b!.certificate.subject)
  const issue = async (ca: SiteCa, id: string) => new X509Certificate((await ca.issueDevice({ deviceId: id, csr: await ca.parseCsr(await certificateRequest(await generateCertKey('P-256'), id)), lifetimeS: 3600, nowS: NOW })).pem)
  const ofA = await issue(a!, 'cam-a')
  const ofB = await issue(b!, 'cam-b')
  for (let i = 0; i < 3; i++) {
    assert.equal(a!.issued(ofA), true, `round ${i}: A issued its own`)
    assert.equal(b!.issued(ofA), false, `round ${i}: B did not issue A's`)
    assert.equal(a!.issued(ofB), false, `round ${i}: A did not issue B's`)
    assert.equal(b!.issued(ofB), true, `round ${i}: B issued its own`)
    // the same certificate parsed again (a new connection's copy) gets the same answer
    assert.equal(a!.issued(new X509Certificate(ofA.raw)), true)
    assert.equal(a!.issued(new X509Certificate(ofB.raw)), false)
  }
})
