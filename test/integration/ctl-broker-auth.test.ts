// `ctl` against a central broker that wants more than an open port: an
// mqtts listener that requires a client certificate (--ca, --cert,
// --cert-key; --key stays the signing key), and a password file with
// anonymous access off (the password from EDGEWARDEN_CTL_PASSWORD, never
// printed). A real Mosquitto so configured, a real agent behind it,
// certificates made by openssl for the test.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { chmodSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { generateKeyPair, writeKeyFile } from '../../agent/store/keys.ts'
import { runCli, startTestAgent, tempDir } from '../helpers/agent.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { makeTestPki } from '../helpers/test-pki.ts'

const makePki = (dir: string): void => makeTestPki(dir, { server: 'subjectAltName=IP:127.0.0.1', gateway: 'extendedKeyUsage=clientAuth', operator: 'extendedKeyUsage=clientAuth' })

function cpKeyFile(dir: string): { file: string; pin: string } {
  const k = generateKeyPair()
  const file = join(dir, 'cp.key')
  writeKeyFile(file, k)
  return { file, pin: `ops=${k.publicKeyB64}` }
}

test('ctl over mqtts with a client certificate: --ca, --cert, --cert-key; refused without the certificate, in bounded time', async (t) => {
  const pki = tempDir(t)
  makePki(pki)
  const m = await Mosquitto.start(t, [`cafile ${join(pki, 'ca.pem')}`, `certfile ${join(pki, 'server.pem')}`, `keyfile ${join(pki, 'server.key')}`, 'require_certificate true', 'allow_anonymous true'])
  const cp = cpKeyFile(pki)
  const agent = await startTestAgent(t, {
    flags: { uplink: m.tlsUrl, uplinkCa: join(pki, 'ca.pem'), uplinkCert: join(pki, 'gateway.pem'), uplinkKey: join(pki, 'gateway.key'), cpKey: [cp.pin] },
  })
  const link = ['--broker', m.tlsUrl, '--site', 'site1', '--gateway', 'gw1', '--key', cp.file, '--kid', 'ops', '--gateway-key', agent.gateway.key.publicKeyB64, '--timeout', '10']
  const tls = ['--ca', join(pki, 'ca.pem'), '--cert', join(pki, 'operator.pem'), '--cert-key', join(pki, 'operator.key')]

  const ok = await runCli(['ctl', 'send', ...link, ...tls, '--wait', '--json', 'inventory.report'])
  assert.equal(ok.code, 0, ok.stderr)
  const v = JSON.parse(ok.stdout.trim()) as { type: string; verified: boolean }
  assert.deepEqual([v.type, v.verified], ['cmd.completed', true])

  // The same through bulk (one connection code for every verb).
  await agent.gateway.enroll({ id: 'pump-1', publicKey: generateKeyPair().publicKeyB64 }, { actor: 'test' })
  const bulk = await runCli(['ctl', 'bulk', ...link, ...tls, '--json', 'device.quarantine'], { input: 'pump-1\n' })
  assert.equal(bulk.code, 0, bulk.stderr)
  assert.equal(agent.gateway.getDevice('pump-1')?.state, 'quarantined')

  // Without the client certificate the broker ends the handshake: one line, exit 1, well before --timeout.
  const t0 = performance.now()
  const refused = await runCli(['ctl', 'send', ...link, '--ca', join(pki, 'ca.pem'), '--wait', 'inventory.report'])
  assert.equal(refused.code, 1, refused.stderr)
  assert.match(refused.stderr, /^edgewarden: cannot connect to mqtts:\/\/127\.0\.0\.1:\d+\/?: .+\n$/)
  assert.ok(performance.now() - t0 < 10_000, 'refused, not timed out')
  // Without the CA the server's certificate is not trusted.
  const untrusted = await runCli(['ctl', 'send', ...link, '--cert', join(pki, 'operator.pem'), '--cert-key', join(pki, 'operator.key'), 'inventory.report'])
  assert.equal(untrusted.code, 1)
  assert.match(untrusted.stderr, /cannot connect to .*(self[- ]signed|unable to verify|certificate)/i)
  // A certificate without its key is a usage error, before any connection.
  const half = await runCli(['ctl', 'send', ...link, '--cert', join(pki, 'operator.pem'), 'inventory.report'])
  assert.equal(half.code, 2)
  assert.match(half.stderr, /--cert and --cert-key go together/)
  const missing = await runCli(['ctl', 'send', ...link, '--ca', join(pki, 'nope.pem'), 'inventory.report'])
  assert.equal(missing.code, 2)
  assert.match(missing.stderr, /--ca .*nope\.pem: ENOENT/)
})

test('EDGEWARDEN_CTL_PASSWORD is the broker password when --password is not given; a refusal is one line; the password is never printed', async (t) => {
  const dir = tempDir(t)
  const pw = join(dir, 'passwd')
  const CP_PASSWORD = 'cp-pw-Hq83nZ'
  const WRONG = 'wrong-pw-Vb27xK'
  execFileSync('mosquitto_passwd', ['-c', '-b', pw, 'gw1-user', 'gw-pw-Jk41'], { stdio: 'pipe' })
  execFileSync('mosquitto_passwd', ['-b', pw, 'ops', CP_PASSWORD], { stdio: 'pipe' })
  chmodSync(dir, 0o755)
  chmodSync(pw, 0o644) // Mosquitto run as root reads it as its own user
  const m = await Mosquitto.start(t, [`password_file ${pw}`, 'allow_anonymous false'])
  const cp = cpKeyFile(dir)
  const agent = await startTestAgent(t, { flags: { uplink: m.url, uplinkUsername: 'gw1-user', uplinkPassword: 'gw-pw-Jk41', cpKey: [cp.pin] } })
  const link = ['--broker', m.url, '--site', 'site1', '--gateway', 'gw1', '--key', cp.file, '--kid', 'ops', '--gateway-key', agent.gateway.key.publicKeyB64, '--username', 'ops', '--timeout', '10']
  const all: string[] = []
  const run = async (args: string[], env: NodeJS.ProcessEnv): Promise<Awaited<ReturnType<typeof runCli>>> => {
    const r = await runCli(args, { env })
    all.push(r.stdout, r.stderr)
    return r
  }

  const ok = await run(['ctl', 'send', ...link, '--wait', '--json', 'inventory.report'], { EDGEWARDEN_CTL_PASSWORD: CP_PASSWORD })
  assert.equal(ok.code, 0, ok.stderr)
  assert.equal((JSON.parse(ok.stdout.trim()) as { type: string }).type, 'cmd.completed')

  const none = await run(['ctl', 'send', ...link, 'inventory.report'], { EDGEWARDEN_CTL_PASSWORD: undefined })
  assert.equal(none.code, 1)
  assert.match(none.stderr, /^edgewarden: cannot connect to mqtt:\/\/127\.0\.0\.1:\d+\/?: .*(Not authorized|Bad user name or password)/i)
  const wrong = await run(['ctl', 'send', ...link, 'inventory.report'], { EDGEWARDEN_CTL_PASSWORD: WRONG })
  assert.equal(wrong.code, 1)
  assert.match(wrong.stderr, /Not authorized|Bad user name or password/i)
  // A flag wins over the environment.
  const flag = await run(['ctl', 'send', ...link, '--password', CP_PASSWORD, 'inventory.report'], { EDGEWARDEN_CTL_PASSWORD: WRONG })
  assert.equal(flag.code, 0, flag.stderr)
  // Nor does a password in the broker URL come back in a message.
  const inUrl = await run(['ctl', 'send', ...link, '--broker', m.url.replace('mqtt://', `mqtt://ops:${WRONG}@`), 'inventory.report'], { EDGEWARDEN_CTL_PASSWORD: undefined })
  assert.equal(inUrl.code, 1)
  const text = all.join('\n')
  for (const secret of [CP_PASSWORD, WRONG]) assert.ok(!text.includes(secret), 'no password in any output')
})
