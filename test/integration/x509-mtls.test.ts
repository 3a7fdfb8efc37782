// X.509 device certificates on the site broker's TLS listener (PROTOCOL §5,
// §9), with clients nobody here wrote: keys and requests made by openssl,
// mosquitto_sub/mosquitto_pub connecting with them, openssl verify against
// the CRL the gateway serves, openssl s_client resuming a session.
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import type { Client } from 'aedes'
import { freePort, startTestAgent, tempDir } from '../helpers/agent.ts'
import { eventWhere, mosquitto, WHO } from '../helpers/mqtt-devices.ts'
import { b64urlEncode } from '../../wire/base64url.ts'
import { opTable } from '../../agent/commands/ops.ts'

type Agent = Awaited<ReturnType<typeof startTestAgent>>

const ssl = (dir: string, ...args: string[]): string => execFileSync('openssl', args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })

/** A device key and PKCS#10 request made by openssl: P-256 or Ed25519. */
function deviceRequest(dir: string, id: string, kind: 'p256' | 'ed25519'): { key: string; csrDer: Buffer } {
  const key = join(dir, `${id}.key`)
  if (kind === 'p256') ssl(dir, 'genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key)
  else ssl(dir, 'genpkey', '-algorithm', 'ed25519', '-out', key)
  const csr = join(dir, `${id}.csr`)
  ssl(dir, 'req', '-new', '-key', key, '-subj', `/CN=${id}`, '-outform', 'DER', '-out', csr)
  return { key, csrDer: readFileSync(csr) }
}

async function mtlsAgent(t: TestContext, flags: Record<string, unknown> = {}): Promise<{ agent: Agent; dir: string; port: number; caFile: string }> {
  const dir = tempDir(t)
  const port = await freePort()
  const agent = await startTestAgent(t, { flags: { mqttsPort: String(port), ...flags } })
  const caFile = join(dir, 'ca.pem')
  writeFileSync(caFile, agent.pki.ca.chainPem.join(''))
  return { agent, dir, port, caFile }
}

/** Enroll through the op table (as the control plane and `device add --csr` do); returns the certificate file. */
async function enrollWithCsr(agent: Agent, dir: string, id: string, csrDer: Buffer): Promise<string> {
  const ops = opTable({ gw: agent.gateway, enforcer: agent.enforcer, actions: agent.actions, retirements: agent.retirements, pki: agent.pki })
  const r = await ops['device.enroll']({ device: { id, x509: { csr: b64urlEncode(csrDer) } } }, { who: WHO, receivedAt: performance.now(), receivedAtS: agent.gateway.nowS() })
  const pem = r.evidence!.certificate as string
  assert.match(pem, /-----BEGIN CERTIFICATE-----[\s\S]+-----BEGIN CERTIFICATE-----/, 'the device certificate, then the CA chain')
  const file = join(dir, `${id}.pem`)
  writeFileSync(file, pem)
  return file
}

const tlsArgs = (port: number, caFile: string, id: string, certFile: string, keyFile: string): string[] => ['-h', '127.0.0.1', '-p', String(port), '--cafile', caFile, '--cert', certFile, '--key', keyFile, '-i', id]

for (const kind of ['p256', 'ed25519'] as const) {
  test(`mosquitto clients with a ${kind === 'p256' ? 'P-256' : 'Ed25519'} certificate of the site CA: admitted; wrong client id refused; revoked live: dropped, and openssl finds it on the CRL`, async (t) => {
    const { agent, dir, port, caFile } = await mtlsAgent(t)
    const id = `cam-${kind}`
    const { key, csrDer } = deviceRequest(dir, id, kind)
    const certFile = await enrollWithCsr(agent, dir, id, csrDer)
    assert.equal(ssl(dir, 'verify', '-CAfile', caFile, certFile).trim(), `${certFile}: OK`)

    // admitted with its certificate alone (no user name, no password), and it gets its commands
    const sub = mosquitto('mosquitto_sub', [...tlsArgs(port, caFile, id, certFile, key), '-t', `dev/${id}/cmd`, '-q', '1'], 30_000)
    t.after(() => sub.kill())
    await eventWhere<[unknown, Client]>(agent.broker.aedes, 'subscribe', (_s, c) => c?.id === id, 15_000)
    await new Promise<void>((resolve, reject) =>
      agent.broker.aedes.publish({ cmd: 'publish', topic: `dev/${id}/cmd`, payload: Buffer.from('hello'), qos: 1, retain: false, dup: false }, (e?: Error) => (e ? reject(e) : resolve())),
    )
    const deadline = Date.now() + 10_000
    while (!sub.stdout().includes('hello') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    assert.match(sub.stdout(), /hello/)

    // the same certificate under another client id: refused (CONNACK 5)
    const other = mosquitto('mosquitto_pub', [...tlsArgs(port, caFile, 'someone-else', certFile, key), '-t', `dev/someone-else/tele`, '-m', 'x'])
    assert.notEqual(await other.exited, 0)
    assert.match(other.stderr(), /not authori[sz]ed/i)

    // revoked: the live session drops at once, and the served CRL lists it with a grown CRL Number
    const crlBefore = agent.pki.crl.current!.number
    await agent.gateway.transition(id, 'revoke', { ...WHO, reason: 'stolen' })
    assert.equal(await Promise.race([sub.exited.then(() => 'dropped'), new Promise((r) => setTimeout(() => r('still up'), 10_000))]), 'dropped')
    await agent.pki.idle()
    const crl = agent.pki.crl.current!
    assert.ok(crl.number > crlBefore, `CRL Number ${crl.number} > ${crlBefore}`)
    const crlFile = join(dir, 'crl.pem')
    writeFileSync(crlFile, agent.pki.crl.pem!)
    const verdict = spawnSyncText('openssl', ['verify', '-crl_check', '-CAfile', caFile, '-CRLfile', crlFile, certFile], dir)
    assert.match(verdict, /certificate revoked/)
    assert.match(ssl(dir, 'crl', '-in', crlFile, '-noout', '-text'), /Key Compromise/, 'revoked as stolen: keyCompromise')
    // and it is refused from then on
    const again = mosquitto('mosquitto_pub', [...tlsArgs(port, caFile, id, certFile, key), '-t', `dev/${id}/tele`, '-m', 'x'])
    assert.notEqual(await again.exited, 0)
  })
}

test('on an mTLS-only listener (--mqtt-port off) a device without its certificate is refused; a token device still connects with its token', async (t) => {
  const { agent, dir, port, caFile } = await mtlsAgent(t, { mqttPort: 'off' })
  assert.equal(agent.broker.describe().mqtt, undefined, 'no plain listener')
  const id = 'meter-1'
  const { key, csrDer } = deviceRequest(dir, id, 'p256')
  await enrollWithCsr(agent, dir, id, csrDer)
  const noCert = mosquitto('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(port), '--cafile', caFile, '-i', id, '-u', id, '-P', 'not-a-token', '-t', `dev/${id}/tele`, '-m', 'x'])
  assert.notEqual(await noCert.exited, 0, 'refused')
  void key
})

function spawnSyncText(cmd: string, args: string[], cwd: string): string {
  try {
    return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string }
    return `${e.stdout ?? ''}${e.stderr ?? ''}`
  }
}

test('quarantine puts the certificate on hold (openssl sees certificateHold), release lifts it; retirement evidence names the serials on the CRL', async (t) => {
  const { agent, dir, port, caFile } = await mtlsAgent(t)
  const id = 'pump-h'
  const { key, csrDer } = deviceRequest(dir, id, 'p256')
  const certFile = await enrollWithCsr(agent, dir, id, csrDer)
  const serial = agent.gateway.getDevice(id)!.certificates![0]!.serial
  const crlText = async (): Promise<string> => {
    await agent.pki.idle()
    const f = join(dir, 'crl.pem')
    writeFileSync(f, agent.pki.crl.pem!)
    return ssl(dir, 'crl', '-in', f, '-noout', '-text')
  }
  await agent.gateway.transition(id, 'quarantine', WHO)
  const held = await crlText()
  assert.match(held, new RegExp(serial, 'i'))
  assert.match(held, /Certificate Hold/)
  await agent.gateway.transition(id, 'release', WHO)
  assert.doesNotMatch(await crlText(), new RegExp(serial, 'i'), 'release lifts the hold')
  const pub = mosquitto('mosquitto_pub', [...tlsArgs(port, caFile, id, certFile, key), '-t', `dev/${id}/tele`, '-m', 'x'])
  assert.equal(await pub.exited, 0, `admitted again after the release: ${pub.stderr()}`)
  // retire without a wipe (the device was destroyed): the evidence names the certificate, on the CRL as cessationOfOperation
  const r = await agent.retirements.start(id, { wipe: false, reason: 'destroyed', receivedAt: performance.now(), receivedAtS: agent.gateway.nowS() }, WHO)
  assert.ok(r.done)
  assert.deepEqual((r as unknown as { evidence: { certificatesRevoked: string[] } }).evidence.certificatesRevoked, [serial])
  assert.match(await crlText(), /Cessation Of Operation/)
})

test('a TLS session resumed (openssl s_client -sess_out, then -sess_in) after the certificate was revoked is not admitted', async (t) => {
  const { agent, dir, port, caFile } = await mtlsAgent(t)
  const id = 'plc-r'
  const { key, csrDer } = deviceRequest(dir, id, 'p256')
  const certFile = await enrollWithCsr(agent, dir, id, csrDer)
  const { connectPacket } = await import('../fuzz/mqtt-wire.ts')
  const connect = connectPacket({ clientId: id })
  const sess = join(dir, 'sess.pem')
  const sclient = (extra: string[]): Promise<{ out: Buffer; err: string }> =>
    new Promise((resolve) => {
      const p = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-CAfile', caFile, '-cert', certFile, '-key', key, '-tls1_2', '-ign_eof', ...extra], { stdio: ['pipe', 'pipe', 'pipe'] })
      const out: Buffer[] = []
      let err = ''
      p.stdout.on('data', (c: Buffer) => {
        out.push(c)
        // the CONNACK (4 bytes) has come: end the session
        if (Buffer.concat(out).includes(Buffer.from([0x20, 0x02]))) p.stdin.end()
      })
      p.stderr.on('data', (c: Buffer) => (err += c.toString()))
      const timer = setTimeout(() => p.kill('SIGKILL'), 10_000)
      p.on('exit', () => (clearTimeout(timer), resolve({ out: Buffer.concat(out), err })))
      // after the handshake, the MQTT CONNECT
      setTimeout(() => p.stdin.write(connect), 300)
    })
  const connackOf = (b: Buffer): number => {
    const i = b.indexOf(Buffer.from([0x20, 0x02]))
    return i < 0 ? -1 : b[i + 3]!
  }
  const first = await sclient(['-sess_out', sess])
  assert.equal(connackOf(first.out), 0, `admitted at first: ${first.err}`)
  await agent.gateway.transition(id, 'revoke', WHO)
  const second = await sclient(['-sess_in', sess])
  assert.match(second.out.toString('latin1'), /Reused, TLSv1\.2/, 'the TLS session itself was resumed')
  assert.equal(connackOf(second.out), 5, 'but the revoked certificate is not admitted')
})

test("a certificate of another CA (--device-ca), pinned by its SHA-256: admitted; revoked: refused at once, and reported with issuer external so the control plane revokes it at its source", async (t) => {
  const dir = tempDir(t)
  // a manufacturer's CA and a device certificate it issued, all by openssl
  ssl(dir, 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'mfr.key', '-out', 'mfr.pem', '-days', '30', '-subj', '/CN=ACME device CA/O=ACME')
  ssl(dir, 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'dev.key', '-out', 'dev.csr', '-subj', '/CN=acme-sensor-77')
  writeFileSync(join(dir, 'dev.ext'), 'extendedKeyUsage=clientAuth\n')
  ssl(dir, 'x509', '-req', '-in', 'dev.csr', '-CA', 'mfr.pem', '-CAkey', 'mfr.key', '-CAcreateserial', '-out', 'dev.pem', '-days', '10', '-extfile', 'dev.ext')
  const sha256 = ssl(dir, 'x509', '-in', 'dev.pem', '-noout', '-fingerprint', '-sha256').split('=')[1]!.trim().replace(/:/g, '').toLowerCase()
  const port = await freePort()
  const agent = await startTestAgent(t, { flags: { mqttsPort: String(port), deviceCa: [join(dir, 'mfr.pem')] } })
  const caFile = join(dir, 'site-ca.pem')
  writeFileSync(caFile, agent.pki.ca.chainPem.join(''))
  const id = 'acme-sensor-77'
  await agent.gateway.enroll({ id, x509: { certificateSha256: sha256 } }, WHO)
  const args = tlsArgs(port, caFile, id, join(dir, 'dev.pem'), join(dir, 'dev.key'))
  const ok = mosquitto('mosquitto_pub', [...args, '-t', `dev/${id}/tele`, '-m', 'x'])
  assert.equal(await ok.exited, 0, ok.stderr())
  await agent.pki.idle()
  assert.match(agent.gateway.getDevice(id)!.certificates![0]!.issuerName ?? '', /ACME device CA/, 'learnt at first sight')
  // another certificate of the same CA is not this device's
  ssl(dir, 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'other.key', '-out', 'other.csr', '-subj', '/CN=acme-sensor-77')
  ssl(dir, 'x509', '-req', '-in', 'other.csr', '-CA', 'mfr.pem', '-CAkey', 'mfr.key', '-CAcreateserial', '-out', 'other.pem', '-days', '10', '-extfile', 'dev.ext')
  const other = mosquitto('mosquitto_pub', [...tlsArgs(port, caFile, id, join(dir, 'other.pem'), join(dir, 'other.key')), '-t', `dev/${id}/tele`, '-m', 'x'])
  assert.notEqual(await other.exited, 0, 'not the pinned certificate')
  await agent.gateway.transition(id, 'revoke', { ...WHO, reason: 'reported lost' })
  await agent.pki.idle()
  const refused = mosquitto('mosquitto_pub', [...args, '-t', `dev/${id}/tele`, '-m', 'x'])
  assert.notEqual(await refused.exited, 0)
  const events = (await agent.gateway.outbox.pending(agent.gateway.store, 0, 1000)).map((e) => JSON.parse(Buffer.from(e.jws.split('.')[1]!, 'base64url').toString()) as { type: string; data: Record<string, unknown> })
  const revoked = events.find((e) => e.type === 'certificate.revoked')!
  assert.equal(revoked.data.issuer, 'external')
  assert.match(String(revoked.data.issuerName), /ACME device CA/)
  assert.equal(revoked.data.reason, 'keyCompromise', 'lost: its key may be in other hands')
})

test('the CRL is never past its nextUpdate: signed again daily while running, and at start after days off (test clock); its number only grows', async (t) => {
  const { ManualClock } = await import('../../agent/runtime/clock.ts')
  const clock = new ManualClock(Date.now())
  const dataDir = tempDir(t)
  let agent = await startTestAgent(t, { dataDir, clock })
  const first = agent.pki.crl.current!
  assert.ok(first.nextUpdate - agent.gateway.nowS() <= 7 * 86400, 'at most 7 days ahead')
  for (let day = 0; day < 3; day++) {
    clock.advance(86400_000 + 1000)
    await agent.maintenance.tick()
    const c = agent.pki.crl.current!
    assert.ok(c.nextUpdate > agent.gateway.nowS(), `day ${day}: not lapsed`)
    assert.ok(c.thisUpdate >= agent.gateway.nowS() - 86400)
  }
  const beforeStop = agent.pki.crl.current!.number
  await agent.stop()
  clock.advance(20 * 86400_000) // off for twenty days: its last CRL lapsed meanwhile
  agent = await startTestAgent(t, { dataDir, clock })
  const after = agent.pki.crl.current!
  assert.ok(after.nextUpdate > agent.gateway.nowS(), 'signed again at start')
  assert.ok(after.number > beforeStop, `CRL Number ${after.number} > ${beforeStop}`)
})

test('cross-check: a stock Mosquitto with the site CA, the served CRL and require_certificate accepts and refuses the same certificates as the gateway', async (t) => {
  const { Mosquitto } = await import('../helpers/mosquitto.ts')
  const { agent, dir, port, caFile } = await mtlsAgent(t)
  const devices = ['x-good', 'x-gone'].map((id) => ({ id, ...deviceRequest(dir, id, 'p256') }))
  const certs: Record<string, string> = {}
  for (const d of devices) certs[d.id] = await enrollWithCsr(agent, dir, d.id, d.csrDer)
  await agent.gateway.transition('x-gone', 'revoke', WHO)
  await agent.pki.idle()
  const crlFile = join(dir, 'served.crl.pem')
  writeFileSync(crlFile, agent.pki.crl.pem!)
  // the broker's own server certificate, from the site CA too
  const server = await agent.pki.ca.issueServer({ sans: ['127.0.0.1'], lifetimeS: 86400, nowS: agent.gateway.nowS(), commonName: 'mosquitto' })
  writeFileSync(join(dir, 'm.pem'), server.certPem)
  writeFileSync(join(dir, 'm.key'), server.keyPem)
  const { chmodSync } = await import('node:fs')
  chmodSync(dir, 0o755)
  for (const f of ['m.key', 'm.pem', 'ca.pem', 'served.crl.pem']) chmodSync(join(dir, f), 0o644)
  const m = await Mosquitto.start(t, [`cafile ${caFile}`, `certfile ${join(dir, 'm.pem')}`, `keyfile ${join(dir, 'm.key')}`, `crlfile ${crlFile}`, 'require_certificate true', 'use_identity_as_username true', 'allow_anonymous false'])
  const verdict = async (brokerPort: number, id: string): Promise<boolean> => {
    const d = devices.find((x) => x.id === id)!
    const p = mosquitto('mosquitto_pub', [...tlsArgs(brokerPort, caFile, id, certs[id]!, d.key), '-t', `dev/${id}/tele`, '-m', 'x'])
    return (await p.exited) === 0
  }
  for (const id of ['x-good', 'x-gone']) {
    const gateway = await verdict(port, id)
    const stock = await verdict(m.port, id)
    assert.equal(stock, gateway, `${id}: Mosquitto ${stock ? 'accepts' : 'refuses'}, the gateway ${gateway ? 'accepts' : 'refuses'}`)
  }
  assert.equal(await verdict(port, 'x-good'), true)
  assert.equal(await verdict(port, 'x-gone'), false)
})
