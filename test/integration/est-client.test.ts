// The device's EST client (firmware-hooks/est-client.ts, RFC 7030) and the
// certificate device's EST enrollment, against the gateway's real EST server
// (agent/pki/est.ts): simpleenroll with the bootstrap secret (HTTP Basic),
// the chain completed from /cacerts, the device then admitted on the MQTT
// TLS listener; simplereenroll with the current certificate, also after it
// expired within the grace, and the MQTT session moved to the new
// certificate at once (the overlap ends, the old one superseded). A small
// stand-in server covers the answers the real one gives only in situations
// hard to make (202 Retry-After, a wrong content type).
import assert from 'node:assert/strict'
import { createHash, X509Certificate } from 'node:crypto'
import { createServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { test, type TestContext } from 'node:test'
import type { Change } from '../../agent/gateway.ts'
import { ManualClock } from '../../agent/runtime/clock.ts'
import { CertDevice } from '../../firmware-hooks/cert-device.ts'
import { EstClient, EstError } from '../../firmware-hooks/est-client.ts'
import { MqttCertDevice } from '../../firmware-hooks/mqtt-cert-device.ts'
import { freePort, startTestAgent, tempDir } from '../helpers/agent.ts'
import { WHO } from '../helpers/mqtt-devices.ts'

type Agent = Awaited<ReturnType<typeof startTestAgent>>
const sha256Hex = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex')

async function until(what: string, cond: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

async function estSite(t: TestContext, clock?: ManualClock) {
  const mqttsPort = await freePort()
  const agent: Agent = await startTestAgent(t, { flags: { estPort: '0', estHost: '127.0.0.1', mqttsPort: String(mqttsPort), certLifetime: 'medium=3600' }, ...(clock ? { clock } : {}) })
  assert.ok(agent.est, 'the EST server runs with --est-port')
  const events: { type: string; data: Record<string, unknown> }[] = []
  agent.gateway.onCommitted((c: Change) => {
    for (const e of c.events ?? []) events.push({ type: e.type, data: e.data as Record<string, unknown> })
  })
  const est = new EstClient({ url: `https://127.0.0.1:${agent.est.port}`, ca: agent.pki.ca.chainPem })
  return { agent, est, events, mqttsUrl: `mqtts://127.0.0.1:${mqttsPort}` }
}

async function bootstrapped(agent: Agent, id: string, secret: string, alg: 'P-256' | 'Ed25519'): Promise<CertDevice> {
  await agent.gateway.enroll({ id, x509: { bootstrapSecretSha256: sha256Hex(secret) }, mqtt: {} }, WHO)
  const gw = agent.gateway
  return CertDevice.open({ deviceId: id, gatewayId: gw.id, gatewayPublicKey: gw.key.publicKeyB64, alg, nowS: () => gw.nowS() })
}

for (const alg of ['P-256', 'Ed25519'] as const) {
  test(`EST with a ${alg} key: simpleenroll with the bootstrap secret, admitted on MQTT with the certificate; simplereenroll moves the MQTT session to the new one and the old is superseded`, async (t) => {
    const { agent, est, events, mqttsUrl } = await estSite(t)
    const id = `sensor-${alg.toLowerCase()}`
    const device = await bootstrapped(agent, id, 'correct horse battery staple', alg)

    const cacerts = await est.cacerts()
    assert.equal(new X509Certificate(cacerts[0]!).fingerprint256, agent.pki.ca.fingerprint)
    const first = await device.enrollOverEst(est, 'correct horse battery staple')
    assert.equal(first.deviceId, id)
    assert.equal(first.via, 'est')
    assert.equal(device.chain.length, 2, 'the server answers the certificate; the CA came from /cacerts')
    assert.ok(new X509Certificate(device.chain[0]!).verify(new X509Certificate(device.chain[1]!).publicKey))
    const record = agent.gateway.registry.get(id)!
    assert.ok(record.bootstrap?.spentAt !== undefined, 'the secret is spent')
    assert.equal(record.certificates![0]!.pem!.trim(), device.chain[0]!.trim())
    assert.ok(events.some((e) => e.type === 'certificate.issued' && e.data.via === 'est-enroll'))
    // the secret is good for one enrollment
    const again = await CertDevice.open({ deviceId: id, gatewayId: agent.gateway.id, gatewayPublicKey: agent.gateway.key.publicKeyB64, alg })
    await assert.rejects(again.enrollOverEst(est, 'correct horse battery staple'), (err: EstError) => err.code === 'EST_UNAUTHORIZED' && err.status === 401)

    const conn = await MqttCertDevice.connect({ url: mqttsUrl, device, tls: { ca: agent.pki.ca.chainPem } })
    t.after(() => conn.close())
    const second = await device.reenrollOverEst(est)
    assert.notEqual(second.serial, first.serial)
    await until('the MQTT session moved to the new certificate', () => conn.reconnects === 1 && conn.connected)
    await agent.pki.idle()
    const certs = agent.gateway.registry.get(id)!.certificates!
    assert.equal(certs.find((c) => c.role === 'current')!.pem!.trim(), device.chain[0]!.trim())
    assert.equal(certs.find((c) => c.role === 'previous')!.revoked?.reason, 'superseded')
    assert.ok(events.some((e) => e.type === 'certificate.issued' && e.data.via === 'est-reenroll'))
  })
}

test('EST refusals as stable codes: a wrong secret 401, a device the state forbids 403; simplereenroll after expiry, within the grace, is allowed', async (t) => {
  const clock = new ManualClock(Date.now())
  const { agent, est } = await estSite(t, clock)
  const device = await bootstrapped(agent, 'pump-1', 'the right secret', 'P-256')
  await assert.rejects(device.enrollOverEst(est, 'a wrong secret'), (err: EstError) => err instanceof EstError && err.code === 'EST_UNAUTHORIZED' && err.status === 401)
  assert.equal(agent.gateway.requireDevice('pump-1').bootstrap?.spentAt, undefined, 'a refusal spends nothing')
  await device.enrollOverEst(est, 'the right secret')

  // expired for the gateway (not for TLS), within the 30 days of grace: re-enrollment is what renew-only is for
  clock.advance(3600 * 1000 + 600_000)
  const renewed = await device.reenrollOverEst(est)
  assert.ok(renewed.notAfter > agent.gateway.nowS())

  await agent.gateway.transition('pump-1', 'quarantine', { ...WHO, reason: 'test' })
  await assert.rejects(device.reenrollOverEst(est), (err: EstError) => err.code === 'EST_FORBIDDEN' && err.status === 403)
})

test('the EST client reads 202 Retry-After as retry later, and refuses an answer that is not a certs-only PKCS#7', async (t) => {
  const dir = tempDir(t)
  const agent = await startTestAgent(t, { dataDir: dir })
  const tls = await agent.pki.serverCertificate(['127.0.0.1'])
  let answer: { status: number; headers: Record<string, string>; body: string } = { status: 202, headers: { 'retry-after': '120' }, body: '' }
  const seen: { url?: string; type?: string; auth?: string; body: string }[] = []
  const server = createServer({ cert: tls.cert, key: tls.key }, (req, res) => {
    let body = ''
    req.on('data', (c: Buffer) => (body += c.toString('latin1')))
    req.on('end', () => {
      seen.push({ url: req.url ?? '', type: req.headers['content-type'] ?? '', auth: req.headers.authorization ?? '', body })
      res.writeHead(answer.status, answer.headers)
      res.end(answer.body)
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  t.after(() => new Promise<void>((r) => server.close(() => r())))
  const est = new EstClient({ url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`, ca: agent.pki.ca.chainPem })
  const csr = new Uint8Array(64).fill(7)

  await assert.rejects(est.simpleEnroll(csr, { id: 'dev:1', secret: 's3cret' }), (err: EstError) => err.code === 'EST_RETRY_LATER' && err.retryAfterS === 120)
  assert.equal(seen[0]!.url, '/.well-known/est/simpleenroll')
  assert.equal(seen[0]!.type, 'application/pkcs10')
  assert.equal(seen[0]!.auth, `Basic ${Buffer.from('dev:1:s3cret').toString('base64')}`)
  assert.equal(Buffer.from(seen[0]!.body, 'base64').toString('hex'), Buffer.from(csr).toString('hex'), 'base64 DER in the body')

  answer = { status: 200, headers: { 'content-type': 'text/html' }, body: '<html>' }
  await assert.rejects(est.cacerts(), (err: EstError) => err.code === 'EST_BAD_RESPONSE')
  answer = { status: 200, headers: { 'content-type': 'application/pkcs7-mime; smime-type=certs-only' }, body: 'bm90IGEgcGtjczc=' }
  await assert.rejects(est.cacerts(), (err: EstError) => err.code === 'EST_BAD_RESPONSE' && /PKCS#7/.test(err.message))
  await assert.rejects(new EstClient({ url: 'https://127.0.0.1:1', ca: agent.pki.ca.chainPem, timeoutMs: 2000 }).cacerts(), (err: EstError) => err.code === 'EST_UNREACHABLE')
  assert.throws(() => new EstClient({ url: 'http://127.0.0.1:1', ca: '' }), /HTTPS/)
})
