// The site PKI from the command line (PROTOCOL §9) against the real agent
// as a child process: `ca show` running and stopped, `device add --csr` and
// `--bootstrap-secret`, an enterprise intermediate, and a CA rollover as
// docs/operations.md describes it. The other side is always a client nobody
// here wrote: openssl for keys, requests and verification, curl for EST.
import assert from 'node:assert/strict'
import { execFile, execFileSync } from 'node:child_process'
import { chmodSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { runCli, spawnAgent, tempDir, type SpawnedAgent } from '../helpers/agent.ts'

const ssl = (dir: string, ...args: string[]): string => execFileSync('openssl', args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
const NO_STACK = /\n\s+at .+:\d+:\d+/

const agentArgs = (dir: string, extra: string[] = [], estPort = '0'): string[] => [
  '--data-dir', dir, '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--site', 's1', '--gateway', 'g1', '--est-port', estPort, '--est-host', '127.0.0.1', ...extra,
]

async function started(t: { after(fn: () => Promise<unknown>): void }, dir: string, extra: string[] = []): Promise<SpawnedAgent & { estPort: number }> {
  const agent = await spawnAgent(agentArgs(dir, extra))
  t.after(() => agent.stop())
  const est = agent.ready.est as { host: string; port: number } | null
  assert.ok(est && est.port > 0, 'the ready line names the EST port')
  return Object.assign(agent, { estPort: est.port })
}

interface CaShow {
  origin: string
  source: string
  subject: string
  fingerprint: string
  notAfter: number
  chainPem: string
  chain: { subject: string }[]
  previous: { subject: string; fingerprint: string }[]
  crl: { number: number; thisUpdate: number; nextUpdate: number } | null
  warning?: string
}

async function caShow(dir: string, extra: string[] = []): Promise<CaShow> {
  const r = await runCli(['ca', 'show', '--json', '--data-dir', dir, ...extra], { timeoutMs: 20_000 })
  assert.equal(r.code, 0, r.stderr)
  return JSON.parse(r.stdout) as CaShow
}

const fingerprintOf = (dir: string, pemFile: string): string => ssl(dir, 'x509', '-in', pemFile, '-noout', '-fingerprint', '-sha256').trim().split('=')[1]!

function request(dir: string, name: string, kind: 'p256' | 'ed25519', form: 'DER' | 'PEM'): { key: string; csr: string } {
  const key = join(dir, `${name}.key`)
  if (kind === 'p256') ssl(dir, 'genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key)
  else ssl(dir, 'genpkey', '-algorithm', 'ed25519', '-out', key)
  const csr = join(dir, `${name}.csr`)
  ssl(dir, 'req', '-new', '-key', key, '-subj', `/CN=${name}`, '-outform', form, '-out', csr)
  return { key, csr }
}

/** curl, asynchronously, bounded: status and body file. */
function curl(dir: string, args: string[]): Promise<{ status: number; file: string }> {
  const file = join(dir, `curl-${Math.random().toString(36).slice(2)}`)
  return new Promise((resolve, reject) => {
    execFile('curl', ['-sS', '--max-time', '15', '-o', file, '-w', '%{http_code}', ...args], { cwd: dir, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err && !/^\d{3}$/.test(stdout.trim())) return reject(new Error(`curl failed: ${stderr || err.message}`))
      resolve({ status: Number(stdout.trim()), file })
    })
  })
}

/** The certificate of a base64 PKCS#7 EST answer, as PEM. */
function certOf(dir: string, file: string): string {
  ssl(dir, 'base64', '-d', '-in', file, '-out', `${file}.der`)
  ssl(dir, 'pkcs7', '-inform', 'DER', '-in', `${file}.der`, '-print_certs', '-out', `${file}.pem`)
  return `${file}.pem`
}

test('ca show --json: through the running agent (created), then from the data dir once it stopped (loaded); the same CA and CRL', async (t) => {
  const dir = tempDir(t)
  const agent = await started(t, dir)
  const running = await caShow(dir)
  const caFile = join(dir, 'pki', 'ca.pem')
  assert.equal(running.source, 'agent')
  assert.equal(running.origin, 'created')
  assert.equal(running.fingerprint, fingerprintOf(dir, caFile), 'the fingerprint openssl computes')
  assert.equal(running.chainPem, readFileSync(caFile, 'utf8'))
  assert.equal(running.subject, 'CN=edgewarden site CA s1/g1, O=edgewarden')
  assert.ok(running.notAfter > Date.now() / 1000 + 10 * 365 * 86400)
  assert.ok(running.crl && running.crl.number >= 1, 'the CRL is signed at start')
  const nowS = Math.floor(Date.now() / 1000)
  assert.ok(running.crl.nextUpdate > nowS && running.crl.nextUpdate <= nowS + 7 * 86400 + 60, 'nextUpdate ahead, at most 7 days (PROTOCOL §9)')
  const human = await runCli(['ca', 'show', '--data-dir', dir], { timeoutMs: 20_000 })
  assert.equal(human.code, 0, human.stderr)
  assert.match(human.stdout, new RegExp(`fingerprint\\s+SHA256 ${running.fingerprint}`))
  assert.match(human.stdout, new RegExp(`CRL\\s+number ${running.crl.number}, signed .+, next update \\d{4}-`))
  assert.match(human.stdout, /-----BEGIN CERTIFICATE-----/)

  assert.equal(await agent.stop(), 0)
  const stopped = await caShow(dir)
  assert.equal(stopped.source, 'data-dir')
  assert.equal(stopped.origin, 'loaded')
  assert.equal(stopped.fingerprint, running.fingerprint)
  assert.deepEqual(stopped.crl, running.crl, 'the CRL as the agent last signed it')
  assert.equal(stopped.warning, undefined)

  // a data dir where no agent ever ran: one clear line, exit 1
  const empty = await runCli(['ca', 'show', '--data-dir', tempDir(t)], { timeoutMs: 20_000 })
  assert.equal(empty.code, 1)
  assert.match(empty.stderr, /no site CA in .+pki: the agent creates one on its first start/)
  assert.doesNotMatch(empty.stderr, NO_STACK)
})

test('device add --csr (DER and PEM, P-256 and Ed25519) prints the certificate chain; --bootstrap-secret prints a secret once that EST simpleenroll takes', async (t) => {
  const dir = tempDir(t)
  const agent = await started(t, dir)
  const caFile = join(dir, 'pki', 'ca.pem')

  for (const [kind, form] of [['p256', 'DER'], ['ed25519', 'PEM']] as const) {
    const id = `cam-${kind}`
    const req = request(dir, id, kind, form)
    const r = await runCli(['device', 'add', id, '--csr', req.csr, '--data-dir', dir], { timeoutMs: 20_000 })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stderr, new RegExp(`enrolled ${id} \\(active\\)`))
    const chain = join(dir, `${id}.chain.pem`)
    writeFileSync(chain, r.stdout)
    assert.equal((r.stdout.match(/-----BEGIN CERTIFICATE-----/g) ?? []).length, 2, 'the device certificate, then the CA')
    assert.equal(ssl(dir, 'verify', '-CAfile', caFile, chain).trim(), `${chain}: OK`)
    assert.match(ssl(dir, 'x509', '-in', chain, '-noout', '-ext', 'subjectAltName'), new RegExp(`URI:urn:edgewarden:device:${id}`))
  }
  const json = request(dir, 'cam-json', 'p256', 'PEM')
  const rj = await runCli(['device', 'add', 'cam-json', '--csr', json.csr, '--json', '--data-dir', dir], { timeoutMs: 20_000 })
  assert.equal(rj.code, 0, rj.stderr)
  const view = JSON.parse(rj.stdout) as { id: string; credentialKind: string; certificatePem: string; certificate: { serial: string } }
  assert.equal(view.credentialKind, 'x509')
  assert.match(view.certificatePem, /-----BEGIN CERTIFICATE-----/)
  assert.ok(view.certificate.serial)

  // a bootstrap secret: printed once on stdout, the agent keeps only its hash; curl enrolls with it over EST
  const b = await runCli(['device', 'add', 'plc-7', '--bootstrap-secret', '--criticality', 'high', '--data-dir', dir], { timeoutMs: 20_000 })
  assert.equal(b.code, 0, b.stderr)
  const secret = b.stdout.trim()
  assert.match(secret, /^[A-Za-z0-9_-]{43}$/, '32 random bytes, base64url')
  assert.match(b.stderr, /shown this once and never stored/)
  const shown = await runCli(['device', 'show', 'plc-7', '--json', '--data-dir', dir], { timeoutMs: 20_000 })
  assert.ok(!shown.stdout.includes(secret), 'the secret is nowhere in the record')
  const req = request(dir, 'plc-7', 'p256', 'DER')
  ssl(dir, 'base64', '-in', req.csr, '-out', 'plc-7.b64')
  const est = `https://127.0.0.1:${agent.estPort}/.well-known/est/simpleenroll`
  const enroll = (s: string) => curl(dir, ['--cacert', caFile, '-u', `plc-7:${s}`, '--data-binary', '@plc-7.b64', '-H', 'Content-Type: application/pkcs10', est])
  assert.equal((await enroll('wrong')).status, 401)
  const ok = await enroll(secret)
  assert.equal(ok.status, 200)
  const cert = certOf(dir, ok.file)
  assert.equal(ssl(dir, 'verify', '-CAfile', caFile, cert).trim(), `${cert}: OK`)
  assert.equal((await enroll(secret)).status, 401, 'spent')
  const logs = JSON.stringify(agent.lines) + agent.stderr()
  assert.ok(!logs.includes(secret), 'the secret is in no log line')

  // usage: exactly one credential
  const none = await runCli(['device', 'add', 'x1', '--data-dir', dir], { timeoutMs: 20_000 })
  assert.equal(none.code, 2)
  assert.match(none.stderr, /exactly one credential/)
  const two = await runCli(['device', 'add', 'x1', '--csr', json.csr, '--bootstrap-secret', '--data-dir', dir], { timeoutMs: 20_000 })
  assert.equal(two.code, 2)
  assert.match(two.stderr, /got --csr and --bootstrap-secret/)
  const missing = await runCli(['device', 'add', 'x1', '--csr', join(dir, 'nope.csr'), '--data-dir', dir], { timeoutMs: 20_000 })
  assert.equal(missing.code, 2)
  assert.match(missing.stderr, /--csr .+nope\.csr: no such file/)
  const notCsr = join(dir, 'not.csr')
  writeFileSync(notCsr, Buffer.concat([Buffer.from([0x30, 0x20]), Buffer.alloc(32, 1)]))
  const refused = await runCli(['device', 'add', 'x1', '--csr', notCsr, '--data-dir', dir], { timeoutMs: 20_000 })
  assert.equal(refused.code, 1)
  assert.match(refused.stderr, /PKCS#10/)
  assert.doesNotMatch(refused.stderr, NO_STACK)

  const help = await runCli(['--help'])
  for (const s of ['--csr FILE', '--bootstrap-secret', 'edgewarden ca show']) assert.ok(help.stdout.includes(s), `${s} in --help`)
})

test('an enterprise intermediate (--ca-cert/--ca-key): ca show says enterprise, issued certificates chain to the enterprise root', async (t) => {
  const dir = tempDir(t)
  const pki = tempDir(t)
  ssl(pki, 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'root.key', '-out', 'root.pem', '-days', '30', '-subj', '/CN=Plant Root CA/O=Example')
  writeFileSync(join(pki, 'int.ext'), 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n')
  ssl(pki, 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'int.key', '-out', 'int.csr', '-subj', '/CN=Site 1 Issuing CA/O=Example')
  ssl(pki, 'x509', '-req', '-in', 'int.csr', '-CA', 'root.pem', '-CAkey', 'root.key', '-CAcreateserial', '-out', 'int.pem', '-days', '20', '-extfile', 'int.ext')
  writeFileSync(join(pki, 'chain.pem'), readFileSync(join(pki, 'int.pem'), 'utf8') + readFileSync(join(pki, 'root.pem'), 'utf8'))
  chmodSync(join(pki, 'int.key'), 0o600)
  const agent = await started(t, dir, ['--ca-cert', join(pki, 'chain.pem'), '--ca-key', join(pki, 'int.key')])
  const shown = await caShow(dir)
  assert.equal(shown.origin, 'enterprise')
  assert.equal(shown.subject, 'CN=Site 1 Issuing CA, O=Example')
  assert.deepEqual(shown.chain.map((c) => c.subject), ['CN=Site 1 Issuing CA, O=Example', 'CN=Plant Root CA, O=Example'])
  assert.equal(shown.fingerprint, fingerprintOf(pki, join(pki, 'int.pem')))

  const req = request(pki, 'rtu-1', 'p256', 'DER')
  const r = await runCli(['device', 'add', 'rtu-1', '--csr', req.csr, '--data-dir', dir], { timeoutMs: 20_000 })
  assert.equal(r.code, 0, r.stderr)
  writeFileSync(join(pki, 'rtu-1.pem'), r.stdout)
  assert.equal(ssl(pki, 'verify', '-CAfile', 'root.pem', '-untrusted', 'int.pem', 'rtu-1.pem').trim(), 'rtu-1.pem: OK')
  // EST cacerts serves the whole chain, root included
  const cacerts = await curl(pki, ['--cacert', join(pki, 'root.pem'), `https://127.0.0.1:${agent.estPort}/.well-known/est/cacerts`])
  assert.equal(cacerts.status, 200, 'the EST server certificate chains to the enterprise root')
  assert.match(readFileSync(certOf(pki, cacerts.file), 'utf8'), /subject=CN = Plant Root CA/)

  assert.equal(await agent.stop(), 0)
  // stopped: the data dir holds no CA of its own; --ca-cert names it
  const bare = await runCli(['ca', 'show', '--json', '--data-dir', dir], { timeoutMs: 20_000 })
  assert.equal(bare.code, 1)
  assert.match(bare.stderr, /--ca-cert FILE/)
  const withFile = await caShow(dir, ['--ca-cert', join(pki, 'chain.pem')])
  assert.equal(withFile.origin, 'enterprise')
  assert.equal(withFile.fingerprint, shown.fingerprint)
  assert.equal(withFile.warning, undefined, 'the CRL in the store is this CA’s')
})

test('CA rollover as docs/operations.md says: the old CA in pki/previous-ca.pem stays trusted; a device renews onto the new CA over EST', async (t) => {
  const dir = tempDir(t)
  const first = await started(t, dir)
  const oldCa = join(dir, 'old-ca.pem')
  writeFileSync(oldCa, readFileSync(join(dir, 'pki', 'ca.pem')))
  const req = request(dir, 'hmi-1', 'p256', 'DER')
  const r = await runCli(['device', 'add', 'hmi-1', '--csr', req.csr, '--data-dir', dir], { timeoutMs: 20_000 })
  assert.equal(r.code, 0, r.stderr)
  const oldCert = join(dir, 'hmi-1.pem')
  writeFileSync(oldCert, r.stdout)
  assert.equal(await first.stop(), 0)

  // the rollover: the old CA certificate becomes previous-ca.pem, its key leaves the data dir
  renameSync(join(dir, 'pki', 'ca.pem'), join(dir, 'pki', 'previous-ca.pem'))
  renameSync(join(dir, 'pki', 'ca.key'), join(dir, 'old-ca.key'))
  const second = await started(t, dir)
  const shown = await caShow(dir)
  assert.equal(shown.origin, 'created')
  assert.notEqual(shown.fingerprint, fingerprintOf(dir, oldCa))
  assert.deepEqual(shown.previous.map((p) => p.fingerprint), [fingerprintOf(dir, oldCa)])
  // /pki/ca and cacerts carry both: a device trusting only the old CA can still reach the gateway, and learns the new one
  const both = join(dir, 'both.pem')
  const ca = await curl(dir, ['--cacert', oldCa, `https://127.0.0.1:${second.estPort}/pki/ca`])
  assert.equal(ca.status, 200)
  writeFileSync(both, readFileSync(ca.file))
  assert.equal((readFileSync(both, 'utf8').match(/-----BEGIN CERTIFICATE-----/g) ?? []).length, 2)

  // the device renews with its old-CA certificate and gets one of the new CA
  const next = request(dir, 'hmi-1-next', 'p256', 'DER')
  ssl(dir, 'base64', '-in', next.csr, '-out', 'next.b64')
  const re = await curl(dir, ['--cacert', both, '--cert', oldCert, '--key', req.key, '--data-binary', '@next.b64', '-H', 'Content-Type: application/pkcs10', `https://127.0.0.1:${second.estPort}/.well-known/est/simplereenroll`])
  assert.equal(re.status, 200)
  const newCert = certOf(dir, re.file)
  writeFileSync(join(dir, 'new-ca.pem'), readFileSync(join(dir, 'pki', 'ca.pem')))
  assert.equal(ssl(dir, 'verify', '-CAfile', 'new-ca.pem', newCert).trim(), `${newCert}: OK`, 'issued by the new CA')
})

test('start with the EST port taken: one line naming the port and --est-port, exit 1', async (t) => {
  const { createServer } = await import('node:net')
  const blocker = createServer()
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise<void>((resolve) => blocker.close(() => resolve())))
  const port = (blocker.address() as { port: number }).port
  const dir = tempDir(t)
  const r = await runCli(['start', ...agentArgs(dir, [], String(port))], { timeoutMs: 20_000 })
  assert.equal(r.code, 1, r.stderr)
  assert.match(r.stderr, new RegExp(`port ${port} on 127\\.0\\.0\\.1 is already in use \\(--est-port\\)`))
  assert.doesNotMatch(r.stderr, NO_STACK)
})
