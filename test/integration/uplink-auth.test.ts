// The uplink to a central broker that wants TLS, a client certificate and a
// user name and password (PROTOCOL §3: any standard broker): a real
// Mosquitto configured so, certificates made by openssl for the test.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { chmodSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { ControlPlane, publicKeyB64 } from '../../simulators/control-plane.ts'
import { startTestAgent, tempDir } from '../helpers/agent.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { makeTestPki } from '../helpers/test-pki.ts'

const makePki = (dir: string): void => makeTestPki(dir, { server: 'subjectAltName=IP:127.0.0.1', client: 'extendedKeyUsage=clientAuth' })

test('uplink over mqtts with a client certificate and a password; a wrong password is refused and retried, never logged', async (t) => {
  const pki = tempDir(t)
  makePki(pki)
  execFileSync('mosquitto_passwd', ['-c', '-b', join(pki, 'passwd'), 'gw1-user', 's3cret-uplink-pw'], { stdio: 'pipe' })
  execFileSync('mosquitto_passwd', ['-b', join(pki, 'passwd'), 'cp', 'cp-pw'], { stdio: 'pipe' })
  chmodSync(join(pki, 'passwd'), 0o644)
  const m = await Mosquitto.start(t, [
    `cafile ${join(pki, 'ca.pem')}`,
    `certfile ${join(pki, 'server.pem')}`,
    `keyfile ${join(pki, 'server.key')}`,
    'require_certificate true',
    `password_file ${join(pki, 'passwd')}`,
    'allow_anonymous false',
  ])
  const cpKey = generateKeyPairSync('ed25519').privateKey
  const lines: string[] = []
  const flags = {
    uplink: m.tlsUrl,
    uplinkCa: join(pki, 'ca.pem'),
    uplinkCert: join(pki, 'client.pem'),
    uplinkKey: join(pki, 'client.key'),
    uplinkUsername: 'gw1-user',
    uplinkPassword: 's3cret-uplink-pw',
    cpKey: [`cp1=${publicKeyB64(cpKey)}`],
  }
  const agent = await startTestAgent(t, { flags, logLevel: 'debug', logSink: (l) => lines.push(l) })
  // The control plane is another client of the same broker, with its own credentials.
  const cp = new ControlPlane({
    broker: m.tlsUrl,
    site: 'site1',
    gateway: 'gw1',
    key: cpKey,
    kid: 'cp1',
    gatewayKey: agent.gateway.key.publicKeyB64,
    username: 'cp',
    password: 'cp-pw',
    tls: { ca: readFileSync(join(pki, 'ca.pem')), cert: readFileSync(join(pki, 'client.pem')), key: readFileSync(join(pki, 'client.key')) },
  })
  await cp.connect()
  t.after(() => cp.close())
  await cp.waitOnline()
  const r = await cp.run('inventory.report', {}, { timeoutMs: 30_000 })
  assert.equal(r.type, 'cmd.completed')
  assert.equal(r.verified, true)
  await agent.stop()

  // A wrong password: refused by the broker, the agent keeps running standalone and retries; the password is in no log line.
  let retrying!: () => void
  const retried = new Promise<void>((resolve) => (retrying = resolve))
  const bad = await startTestAgent(t, {
    flags: { ...flags, uplinkPassword: 'wrong-pw-0000' },
    logLevel: 'debug',
    logSink: (l) => {
      lines.push(l)
      if (l.includes('uplink reconnecting')) retrying()
    },
  })
  await retried
  assert.equal(bad.uplink!.connected, false)
  assert.ok(lines.some((l) => /Not authorized|not authori[sz]ed|Bad username or password/i.test(l)), 'the refusal is logged')
  await bad.stop()
  const all = lines.join('\n')
  assert.ok(all.length > 0)
  assert.ok(!all.includes('s3cret-uplink-pw'), 'the uplink password never appears in a log line')
  assert.ok(!all.includes('wrong-pw-0000'))
})
