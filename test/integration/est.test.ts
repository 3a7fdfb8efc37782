// The EST server (RFC 7030, PROTOCOL §9) with clients nobody here wrote:
// curl over HTTPS against the site CA, keys and requests made by openssl,
// every answer read back by openssl (pkcs7, verify, crl). Ports are chosen
// free at run time; every curl is bounded by --max-time.
import assert from 'node:assert/strict'
import { execFile, execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import { ManualClock } from '../../agent/runtime/clock.ts'
import { startTestAgent, tempDir } from '../helpers/agent.ts'
import { enrollDevice, WHO } from '../helpers/mqtt-devices.ts'

type Agent = Awaited<ReturnType<typeof startTestAgent>>
type Kind = 'p256' | 'ed25519'

const ssl = (dir: string, ...args: string[]): string => execFileSync('openssl', args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })

/** openssl's verdict, whatever its exit code. */
function sslVerdict(dir: string, ...args: string[]): string {
  try {
    return ssl(dir, ...args)
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string }
    return `${e.stdout ?? ''}${e.stderr ?? ''}`
  }
}

interface Reply {
  status: number
  headers: string
  /** the body, as a file */
  file: string
  body: string
}

let n = 0
/** curl, asynchronously (the agent answering it runs in this process), within 15 s. */
function curl(dir: string, args: string[]): Promise<Reply> {
  const i = ++n
  const file = join(dir, `reply-${i}`)
  const headers = join(dir, `headers-${i}`)
  return new Promise((resolve, reject) => {
    execFile('curl', ['-sS', '--max-time', '15', '-o', file, '-D', headers, '-w', '%{http_code}', ...args], { cwd: dir, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err && !/^\d{3}$/.test(stdout.trim())) return reject(new Error(`curl ${args.join(' ')} failed: ${stderr || err.message}`))
      const read = (f: string): string => {
        try {
          return readFileSync(f, 'latin1')
        } catch {
          return ''
        }
      }
      resolve({ status: Number(stdout.trim()), headers: read(headers), file, body: read(file) })
    })
  })
}

/** A device key and a PKCS#10 request as openssl makes them, base64 in lines of 64 (as `openssl base64` writes it). */
function deviceRequest(dir: string, name: string, kind: Kind, opts: { cn?: string; san?: string } = {}): { key: string; csrB64: string; csrDer: string } {
  const key = join(dir, `${name}.key`)
  if (kind === 'p256') ssl(dir, 'genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key)
  else ssl(dir, 'genpkey', '-algorithm', 'ed25519', '-out', key)
  const csrDer = join(dir, `${name}.csr.der`)
  ssl(dir, 'req', '-new', '-key', key, '-subj', `/CN=${opts.cn ?? name}`, ...(opts.san ? ['-addext', `subjectAltName=${opts.san}`] : []), '-outform', 'DER', '-out', csrDer)
  const csrB64 = join(dir, `${name}.csr.b64`)
  ssl(dir, 'base64', '-in', csrDer, '-out', csrB64)
  return { key, csrB64, csrDer }
}

/** The certificates of a base64 PKCS#7 certs-only answer, as `openssl pkcs7 -print_certs` writes them. */
function certsOf(dir: string, reply: Reply): string {
  const der = `${reply.file}.der`
  ssl(dir, 'base64', '-d', '-in', reply.file, '-out', der)
  const pem = `${reply.file}.pem`
  ssl(dir, 'pkcs7', '-inform', 'DER', '-in', der, '-print_certs', '-out', pem)
  return pem
}

async function estAgent(t: TestContext, opts: { flags?: Record<string, unknown>; clock?: ManualClock } = {}): Promise<{ agent: Agent; dir: string; base: string; caFile: string }> {
  const dir = tempDir(t)
  const agent = await startTestAgent(t, { flags: { estPort: '0', estHost: '127.0.0.1', ...opts.flags }, ...(opts.clock ? { clock: opts.clock } : {}) })
  assert.ok(agent.est, 'the EST server runs with --est-port')
  const caFile = join(dir, 'ca.pem')
  writeFileSync(caFile, agent.pki.ca.chainPem.join(''))
  return { agent, dir, base: `https://127.0.0.1:${agent.est.port}`, caFile }
}

const sha256Hex = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex')

async function enrollBootstrap(agent: Agent, id: string, secret: string): Promise<void> {
  await agent.gateway.enroll({ id, x509: { bootstrapSecretSha256: sha256Hex(secret) }, mqtt: {} }, WHO)
}

const enrollArgs = (caFile: string, id: string, secret: string, csrFile: string, base: string): string[] => [
  '--cacert', caFile, '-u', `${id}:${secret}`, '--data-binary', `@${csrFile}`, '-H', 'Content-Type: application/pkcs10', `${base}/.well-known/est/simpleenroll`,
]

test('cacerts: a base64 PKCS#7 certs-only that openssl reads, the site CA; /pki/ca and /pki/crl on the EST port', async (t) => {
  const { agent, dir, base, caFile } = await estAgent(t)
  const r = await curl(dir, ['--cacert', caFile, `${base}/.well-known/est/cacerts`])
  assert.equal(r.status, 200)
  assert.match(r.headers, /content-type: application\/pkcs7-mime; smime-type=certs-only/i)
  assert.match(r.headers, /content-transfer-encoding: base64/i)
  const certs = readFileSync(certsOf(dir, r), 'utf8')
  assert.match(certs, /subject=CN = edgewarden site CA site1\/gw1, O = edgewarden/)
  const fp = ssl(dir, 'x509', '-in', certsOf(dir, r), '-noout', '-fingerprint', '-sha256').trim()
  assert.equal(fp.split('=')[1], agent.pki.ca.fingerprint)

  const ca = await curl(dir, ['--cacert', caFile, `${base}/pki/ca`])
  assert.equal(ca.status, 200)
  assert.equal(ca.body, agent.pki.ca.chainPem.join(''))

  const crl = await curl(dir, ['--cacert', caFile, `${base}/pki/crl`])
  assert.equal(crl.status, 200)
  assert.match(crl.headers, /content-type: application\/pkix-crl/i)
  const text = ssl(dir, 'crl', '-inform', 'DER', '-in', crl.file, '-noout', '-text')
  assert.match(text, /Issuer: CN = edgewarden site CA site1\/gw1/)
  assert.match(text, /X509v3 CRL Number:\s+\d+/)
  assert.match(ssl(dir, 'crl', '-inform', 'DER', '-in', crl.file, '-CAfile', caFile, '-noout'), /^$/, 'the CRL signature checks against the CA (openssl prints nothing else)')

  // wrong methods and unknown paths: one line, no stack
  const post = await curl(dir, ['--cacert', caFile, '-X', 'POST', `${base}/.well-known/est/cacerts`])
  assert.equal(post.status, 405)
  // RFC 7030 §4.5.2: no CSR attributes asked for
  assert.equal((await curl(dir, ['--cacert', caFile, `${base}/.well-known/est/csrattrs`])).status, 204)
  const none = await curl(dir, ['--cacert', caFile, `${base}/.well-known/est/fullcmc`])
  assert.equal(none.status, 404)
  assert.doesNotMatch(none.body, /at \w+ \(/)
})

for (const kind of ['p256', 'ed25519'] as const) {
  test(`simpleenroll with a ${kind === 'p256' ? 'P-256' : 'Ed25519'} key and the bootstrap secret: a certificate openssl verifies, for the device's id whatever the CSR asks; the secret once only; simplereenroll with it: a new one, the old valid beside it`, async (t) => {
    const { agent, dir, base, caFile } = await estAgent(t)
    const id = `sensor-${kind}`
    const secret = 'correct horse battery staple'
    await enrollBootstrap(agent, id, secret)
    // the request names another device, in its subject and in its SAN: the gateway sets both (PROTOCOL §9)
    const req = deviceRequest(dir, id, kind, { cn: 'intruder', san: 'URI:urn:edgewarden:device:intruder' })
    const r = await curl(dir, enrollArgs(caFile, id, secret, req.csrB64, base))
    assert.equal(r.status, 200, r.body)
    assert.match(r.headers, /content-type: application\/pkcs7-mime; smime-type=certs-only/i)
    const cert = certsOf(dir, r)
    assert.equal(ssl(dir, 'verify', '-CAfile', caFile, cert).trim(), `${cert}: OK`)
    const ext = ssl(dir, 'x509', '-in', cert, '-noout', '-subject', '-ext', 'subjectAltName,extendedKeyUsage')
    assert.match(ext, new RegExp(`URI:urn:edgewarden:device:${id}\\b`))
    assert.doesNotMatch(ext, /intruder/)
    assert.match(ext, new RegExp(`subject=CN = ${id}`))
    assert.match(ext, /TLS Web Client Authentication/)
    const record = agent.gateway.requireDevice(id)
    assert.ok(record.bootstrap?.spentAt !== undefined, 'the secret is spent')
    const first = record.certificates!.find((c) => c.role === 'current')!
    assert.equal(first.via, 'est-enroll')
    assert.equal(ssl(dir, 'x509', '-in', cert, '-noout', '-fingerprint', '-sha256').trim().split('=')[1]!.replace(/:/g, '').toLowerCase(), first.sha256)

    // the same secret a second time: 401, and nothing issued
    const again = await curl(dir, enrollArgs(caFile, id, secret, req.csrB64, base))
    assert.equal(again.status, 401)
    assert.match(again.headers, /www-authenticate: Basic/i)
    assert.match(again.body, /already used/)
    assert.equal(agent.gateway.requireDevice(id).certificates!.length, 1)

    // re-enrollment, authenticated by the certificate just issued (a new key; the request again asks for another name)
    const next = deviceRequest(dir, `${id}-2`, kind, { cn: 'intruder' })
    const re = await curl(dir, ['--cacert', caFile, '--cert', cert, '--key', req.key, '--data-binary', `@${next.csrB64}`, '-H', 'Content-Type: application/pkcs10', `${base}/.well-known/est/simplereenroll`])
    assert.equal(re.status, 200, re.body)
    const cert2 = certsOf(dir, re)
    assert.equal(ssl(dir, 'verify', '-CAfile', caFile, cert2).trim(), `${cert2}: OK`)
    assert.match(ssl(dir, 'x509', '-in', cert2, '-noout', '-ext', 'subjectAltName'), new RegExp(`URI:urn:edgewarden:device:${id}\\b`))
    const certs = agent.gateway.requireDevice(id).certificates!
    const current = certs.find((c) => c.role === 'current')!
    const previous = certs.find((c) => c.role === 'previous')!
    assert.equal(current.via, 'est-reenroll')
    assert.notEqual(current.sha256, first.sha256)
    assert.equal(previous.sha256, first.sha256, 'the old certificate is the previous one')
    assert.equal(previous.revoked, undefined, 'and still valid beside the new one (the overlap)')
    // the old one still authenticates during the overlap: cacerts with it is fine, and it is not on the CRL
    await agent.pki.idle()
    assert.equal(agent.pki.crl.reasonOf(previous.serial), undefined)
  })
}

test('simpleenroll refusals: no or wrong authentication 401 (unknown id alike), a bad CSR 400, a revoked device 403, two uses of one secret at once: one certificate', async (t) => {
  const { agent, dir, base, caFile } = await estAgent(t)
  const secret = 's3cret-one-time'
  await enrollBootstrap(agent, 'pump-1', secret)
  const req = deviceRequest(dir, 'pump-1', 'p256')

  const noAuth = await curl(dir, ['--cacert', caFile, '--data-binary', `@${req.csrB64}`, '-H', 'Content-Type: application/pkcs10', `${base}/.well-known/est/simpleenroll`])
  assert.equal(noAuth.status, 401)
  assert.match(noAuth.headers, /www-authenticate: Basic realm="edgewarden EST"/i)
  const wrong = await curl(dir, enrollArgs(caFile, 'pump-1', 'not-the-secret', req.csrB64, base))
  assert.equal(wrong.status, 401)
  const unknown = await curl(dir, enrollArgs(caFile, 'nobody', secret, req.csrB64, base))
  assert.equal(unknown.status, 401)
  assert.equal(unknown.body, wrong.body, 'an unknown id and a wrong secret read the same')
  assert.equal(agent.gateway.requireDevice('pump-1').bootstrap?.spentAt, undefined, 'failures spend nothing')

  // bad requests: not base64, not PKCS#10, an RSA key, wrong content type, oversize
  const garbage = join(dir, 'garbage.b64')
  writeFileSync(garbage, 'this is not base64 at all!\n')
  const notB64 = await curl(dir, enrollArgs(caFile, 'pump-1', secret, garbage, base))
  assert.equal(notB64.status, 400)
  assert.match(notB64.body, /not base64/)
  const notCsr = join(dir, 'not-csr.b64')
  writeFileSync(notCsr, `${Buffer.from('0123456789abcdef0123456789abcdef').toString('base64')}\n`)
  const bad = await curl(dir, enrollArgs(caFile, 'pump-1', secret, notCsr, base))
  assert.equal(bad.status, 400)
  assert.match(bad.body, /PKCS#10/)
  const rsaKey = join(dir, 'rsa.key')
  ssl(dir, 'genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', rsaKey)
  ssl(dir, 'req', '-new', '-key', rsaKey, '-subj', '/CN=pump-1', '-outform', 'DER', '-out', 'rsa.csr.der')
  ssl(dir, 'base64', '-in', 'rsa.csr.der', '-out', 'rsa.csr.b64')
  const rsa = await curl(dir, enrollArgs(caFile, 'pump-1', secret, join(dir, 'rsa.csr.b64'), base))
  assert.equal(rsa.status, 400)
  assert.match(rsa.body, /only ECDSA P-256 and Ed25519/)
  const form = await curl(dir, ['--cacert', caFile, '-u', `pump-1:${secret}`, '--data-binary', `@${req.csrB64}`, `${base}/.well-known/est/simpleenroll`])
  assert.equal(form.status, 415, 'curl sends application/x-www-form-urlencoded without -H')
  const big = join(dir, 'big')
  writeFileSync(big, 'A'.repeat(70 * 1024))
  const tooBig = await curl(dir, enrollArgs(caFile, 'pump-1', secret, big, base))
  assert.equal(tooBig.status, 413)
  // over the bound and still being sent when the answer is ready (curl held to 128 KB/s): the body is
  // read to its end first, so the 413 is not thrown away by the reset of a connection closed mid-upload
  const huge = join(dir, 'huge')
  writeFileSync(huge, 'A'.repeat(256 * 1024))
  const slow = await curl(dir, [...enrollArgs(caFile, 'pump-1', secret, huge, base), '--limit-rate', '128k'])
  assert.equal(slow.status, 413, `a 256 KiB body sent slowly: ${slow.status} ${slow.body}`)
  assert.equal(agent.gateway.requireDevice('pump-1').bootstrap?.spentAt, undefined, 'refused requests spend nothing')

  // the body may come as PEM, or base64 in one line: both tolerated; two at once with one secret: one certificate
  writeFileSync(join(dir, 'one-line.b64'), readFileSync(req.csrDer).toString('base64'))
  ssl(dir, 'req', '-in', req.csrDer, '-inform', 'DER', '-out', join(dir, 'req.pem'))
  const [a, b] = await Promise.all([curl(dir, enrollArgs(caFile, 'pump-1', secret, join(dir, 'one-line.b64'), base)), curl(dir, enrollArgs(caFile, 'pump-1', secret, join(dir, 'req.pem'), base))])
  assert.deepEqual([a.status, b.status].sort(), [200, 401], `one of two concurrent uses wins: ${a.body} / ${b.body}`)
  assert.equal(agent.gateway.requireDevice('pump-1').certificates!.length, 1)

  // a revoked device: 403 with the right secret, 401 with a wrong one
  await enrollBootstrap(agent, 'pump-2', secret)
  await agent.gateway.transition('pump-2', 'revoke', { ...WHO, reason: 'decommissioned' })
  const revoked = await curl(dir, enrollArgs(caFile, 'pump-2', secret, req.csrB64, base))
  assert.equal(revoked.status, 403)
  assert.match(revoked.body, /revoked/)
  assert.equal((await curl(dir, enrollArgs(caFile, 'pump-2', 'guess', req.csrB64, base))).status, 401, 'the state is told only to who holds the secret')
  // a quarantined one: 403 too
  await enrollBootstrap(agent, 'pump-3', secret)
  await agent.gateway.transition('pump-3', 'quarantine', WHO)
  assert.equal((await curl(dir, enrollArgs(caFile, 'pump-3', secret, req.csrB64, base))).status, 403)
  // a device of another credential kind, or one enrolled with a CSR: no EST enrollment awaits, whatever secret is sent
  await enrollDevice(agent.gateway, 'pump-4')
  assert.equal((await curl(dir, enrollArgs(caFile, 'pump-4', secret, req.csrB64, base))).status, 401)
})

/** A device enrolled over EST, for re-enrollment tests: its key and certificate files. */
async function enrolled(agent: Agent, dir: string, base: string, caFile: string, id: string, kind: Kind = 'p256'): Promise<{ key: string; cert: string }> {
  await enrollBootstrap(agent, id, `secret-${id}`)
  const req = deviceRequest(dir, id, kind)
  const r = await curl(dir, enrollArgs(caFile, id, `secret-${id}`, req.csrB64, base))
  assert.equal(r.status, 200, r.body)
  return { key: req.key, cert: certsOf(dir, r) }
}

const reenrollArgs = (caFile: string, base: string, csrFile: string, cert?: { key: string; cert: string }): string[] => [
  '--cacert', caFile, ...(cert ? ['--cert', cert.cert, '--key', cert.key] : []), '--data-binary', `@${csrFile}`, '-H', 'Content-Type: application/pkcs10', `${base}/.well-known/est/simplereenroll`,
]

test('simplereenroll refusals: no client certificate 401, one of another CA 401, a superseded one 401, a revoked or quarantined device 403, a bad CSR 400', async (t) => {
  const { agent, dir, base, caFile } = await estAgent(t)
  const dev = await enrolled(agent, dir, base, caFile, 'valve-1')
  const next = deviceRequest(dir, 'valve-1-next', 'p256')

  const none = await curl(dir, reenrollArgs(caFile, base, next.csrB64))
  assert.equal(none.status, 401)
  assert.match(none.body, /client certificate/)

  // a certificate of a CA the site does not trust, naming the same device
  ssl(dir, 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'rogue-ca.key', '-out', 'rogue-ca.pem', '-days', '2', '-subj', '/CN=rogue')
  writeFileSync(join(dir, 'rogue.ext'), 'subjectAltName=URI:urn:edgewarden:device:valve-1\nextendedKeyUsage=clientAuth\n')
  ssl(dir, 'req', '-new', '-key', next.key, '-subj', '/CN=valve-1', '-out', 'rogue.csr')
  ssl(dir, 'x509', '-req', '-in', 'rogue.csr', '-CA', 'rogue-ca.pem', '-CAkey', 'rogue-ca.key', '-CAcreateserial', '-out', 'rogue.pem', '-days', '2', '-extfile', 'rogue.ext')
  const rogue = await curl(dir, reenrollArgs(caFile, base, next.csrB64, { cert: join(dir, 'rogue.pem'), key: next.key }))
  assert.equal(rogue.status, 401)

  // a bad request with a good certificate
  const garbage = join(dir, 'garbage.b64')
  writeFileSync(garbage, `${Buffer.from('not a certificate request at all').toString('base64')}\n`)
  const bad = await curl(dir, reenrollArgs(caFile, base, garbage, dev))
  assert.equal(bad.status, 400)

  // renewed twice: the first certificate is gone from the record (superseded), and no longer authenticates
  const r1 = await curl(dir, reenrollArgs(caFile, base, next.csrB64, dev))
  assert.equal(r1.status, 200, r1.body)
  const second = { key: next.key, cert: certsOf(dir, r1) }
  const third = deviceRequest(dir, 'valve-1-third', 'ed25519')
  const r2 = await curl(dir, reenrollArgs(caFile, base, third.csrB64, second))
  assert.equal(r2.status, 200, r2.body)
  const stale = await curl(dir, reenrollArgs(caFile, base, third.csrB64, dev))
  assert.equal(stale.status, 401, stale.body)
  await agent.pki.idle()

  // quarantined, then revoked: 403 with the device's own current certificate
  const current = { key: third.key, cert: certsOf(dir, r2) }
  await agent.gateway.transition('valve-1', 'quarantine', WHO)
  const q = await curl(dir, reenrollArgs(caFile, base, third.csrB64, current))
  assert.equal(q.status, 403)
  assert.match(q.body, /quarantined/)
  await agent.gateway.transition('valve-1', 'revoke', { ...WHO, reason: 'stolen' })
  await agent.pki.idle()
  const rv = await curl(dir, reenrollArgs(caFile, base, third.csrB64, current))
  assert.equal(rv.status, 403)
  assert.match(rv.body, /revoked/)
})

test('simplereenroll with a certificate expired less than renewGraceS ago: renewed (RFC 7030 §4.2.2); beyond the grace: 401', async (t) => {
  // The gateway's clock moves; the TLS stack's does not, so the handshake is the same and the gateway judges expiry itself.
  const clock = new ManualClock(Date.now())
  const { agent, dir, base, caFile } = await estAgent(t, { clock, flags: { certLifetime: 'medium=3600', renewGraceS: '7200' } })
  const dev = await enrolled(agent, dir, base, caFile, 'meter-9', 'ed25519')
  const notAfter = agent.gateway.requireDevice('meter-9').certificates![0]!.notAfter
  clock.set((notAfter + 60) * 1000)
  const next = deviceRequest(dir, 'meter-9-next', 'ed25519')
  const r = await curl(dir, reenrollArgs(caFile, base, next.csrB64, dev))
  assert.equal(r.status, 200, r.body)
  const renewed = agent.gateway.requireDevice('meter-9').certificates!.find((c) => c.role === 'current')!
  assert.ok(renewed.notAfter > notAfter + 3000, 'a fresh lifetime from the gateway time')

  // the previous one, past its grace: refused (it is no credential any more)
  clock.set((notAfter + 7200 + 60) * 1000)
  const late = await curl(dir, reenrollArgs(caFile, base, next.csrB64, dev))
  assert.equal(late.status, 401, late.body)
  assert.match(late.body, /expired/)
})

test('/pki/crl and /pki/ca on the HTTP endpoint: DER CRL that openssl reads, the CA chain; its Host check and read-only rule still hold', async (t) => {
  const agent = await startTestAgent(t, { flags: { httpPort: '0' } })
  const dir = tempDir(t)
  const base = `http://127.0.0.1:${agent.http!.port}`
  const crl = await curl(dir, [`${base}/pki/crl`])
  assert.equal(crl.status, 200)
  assert.match(crl.headers, /content-type: application\/pkix-crl/i)
  assert.match(ssl(dir, 'crl', '-inform', 'DER', '-in', crl.file, '-noout', '-crlnumber', '-nextupdate'), /crlNumber=0x[0-9A-F]+\nnextUpdate=/)
  const ca = await curl(dir, [`${base}/pki/ca`])
  assert.equal(ca.status, 200)
  writeFileSync(join(dir, 'ca.pem'), ca.body)
  assert.match(sslVerdict(dir, 'crl', '-inform', 'DER', '-in', crl.file, '-CAfile', join(dir, 'ca.pem'), '-noout'), /verify OK|^$/)
  assert.equal((await curl(dir, ['-H', 'Host: evil.example', `${base}/pki/crl`])).status, 403)
  assert.equal((await curl(dir, ['-X', 'POST', `${base}/pki/crl`])).status, 405)
})

test('a client certificate the TLS stack calls expired (CERT_HAS_EXPIRED) is judged by the gateway, with its grace', async (t) => {
  // Issued two hours back with a one-hour lifetime: expired for OpenSSL on both sides, within the grace for the gateway.
  const clock = new ManualClock(Date.now() - 2 * 3600_000)
  const { agent, dir, base, caFile } = await estAgent(t, { clock, flags: { certLifetime: 'medium=3600', renewGraceS: '86400' } })
  const dev = await enrolled(agent, dir, base, caFile, 'gauge-3')
  clock.set(Date.now())
  assert.match(sslVerdict(dir, 'verify', '-CAfile', caFile, dev.cert), /certificate has expired/)
  const next = deviceRequest(dir, 'gauge-3-next', 'p256')
  const r = await curl(dir, reenrollArgs(caFile, base, next.csrB64, dev))
  assert.equal(r.status, 200, r.body)
  const cert = certsOf(dir, r)
  assert.equal(ssl(dir, 'verify', '-CAfile', caFile, cert).trim(), `${cert}: OK`)
})
