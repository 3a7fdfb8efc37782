// Certificate renewal end to end (PROTOCOL §5, §9): the device side of
// firmware-hooks/ (cert-device.ts on WebCrypto, mqtt-cert-device.ts on the
// TLS listener) against a real agent: real TLS, real LevelDB, a ManualClock
// where time must pass. renew → an ack carrying a request for a new key
// (signed ES256 or EdDSA by the current key) → the gateway issues and
// queues install-cert → the device stores it and reconnects with it → the
// certificate it replaced goes on the CRL as superseded and is refused from
// then on. Also: the renewal the gateway queues on its own, the overlap
// ending by time, renew-only admission within the grace (for the gateway's
// clock and for the TLS stack's), forged ES256 acks, a fleet with
// certificate devices.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import type { Client } from 'aedes'
import type { MqttClient } from 'mqtt'
import { opTable } from '../../agent/commands/ops.ts'
import type { VerifiedAck } from '../../agent/actions/ack.ts'
import type { Change } from '../../agent/gateway.ts'
import { ManualClock } from '../../agent/runtime/clock.ts'
import { CertDevice, type CertDeviceOptions, type TlsCredentials } from '../../firmware-hooks/cert-device.ts'
import { MqttCertDevice } from '../../firmware-hooks/mqtt-cert-device.ts'
import { certificateRequest, generateCertKey, signWith, type CertKeyAlg } from '../../firmware-hooks/x509-keys.ts'
import { Fleet } from '../../simulators/fleet.ts'
import { b64urlEncode, utf8 } from '../../wire/base64url.ts'
import { assembleJws, jwsSigningInput, type JwsAlg } from '../../wire/jws.ts'
import { freePort, startTestAgent, tempDir } from '../helpers/agent.ts'
import { closed, Inbox, mqttConnect, subscribeQos, WHO } from '../helpers/mqtt-devices.ts'

type Agent = Awaited<ReturnType<typeof startTestAgent>>
const LIFETIME_S = 3600

async function until(what: string, cond: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

interface Site {
  agent: Agent
  url: string
  ca: string[]
  dir: string
  /** every event committed, in order */
  events: { type: string; data: Record<string, unknown> }[]
  /** every verified ack settled */
  acks: VerifiedAck[]
}

/** An agent with the TLS listener, device certificates of LIFETIME_S (criticality medium). */
async function site(t: TestContext, o: { clock?: ManualClock; flags?: Record<string, unknown> } = {}): Promise<Site> {
  const port = await freePort()
  const agent = await startTestAgent(t, { flags: { mqttsPort: String(port), certLifetime: `medium=${LIFETIME_S}`, ...o.flags }, ...(o.clock ? { clock: o.clock } : {}) })
  const events: Site['events'] = []
  agent.gateway.onCommitted((c: Change) => {
    for (const e of c.events ?? []) events.push({ type: e.type, data: e.data as Record<string, unknown> })
  })
  const acks: VerifiedAck[] = []
  agent.actions.onAck((a) => void acks.push(a))
  return { agent, url: `mqtts://127.0.0.1:${port}`, ca: agent.pki.ca.chainPem, dir: tempDir(t), events, acks }
}

/** A certificate device enrolled through the op table with its CSR (as the control plane and `device add --csr` do). */
async function enrolledDevice(s: Site, id: string, alg: CertKeyAlg, over: Partial<CertDeviceOptions> = {}): Promise<CertDevice> {
  const gw = s.agent.gateway
  const device = await CertDevice.open({ deviceId: id, gatewayId: gw.id, gatewayPublicKey: gw.key.publicKeyB64, alg, nowS: () => gw.nowS(), ...over })
  const ops = opTable({ gw, enforcer: s.agent.enforcer, actions: s.agent.actions, retirements: s.agent.retirements, pki: s.agent.pki })
  const csr = b64urlEncode(await device.requestCertificate())
  const r = await ops['device.enroll']({ device: { id, x509: { csr }, mqtt: {} } }, { who: WHO, receivedAt: performance.now(), receivedAtS: gw.nowS() })
  await device.installChain(r.evidence!.certificate as string)
  return device
}

async function online(t: TestContext, s: Site, device: CertDevice, o: { reconnectOnInstall?: boolean } = {}): Promise<MqttCertDevice> {
  const conn = await MqttCertDevice.connect({ url: s.url, device, tls: { ca: s.ca }, connectTimeoutMs: 10_000, ...o })
  t.after(() => conn.close())
  return conn
}

/** A bare mqtt.js client presenting a certificate (a copy of a device's, or an old one it no longer uses). */
const certClient = (s: Site, id: string, tls: TlsCredentials) => mqttConnect(0, { url: s.url, clientId: id, key: tls.key, cert: tls.cert, ca: s.ca })

const serialOf = (pem: string): string => new X509Certificate(pem).serialNumber.toLowerCase().replace(/^0+/, '')

/** The CRL as openssl reads it: the entry of `serial`, with its reason. */
function crlEntry(s: Site, serial: string): string | null {
  const file = join(s.dir, 'crl.pem')
  writeFileSync(file, s.agent.pki.crl.pem!)
  const text = execFileSync('openssl', ['crl', '-in', file, '-noout', '-text'], { encoding: 'utf8' })
  const want = serial.toLowerCase().replace(/^0+/, '')
  const blocks = text.split(/(?=Serial Number:)/)
  return blocks.find((b) => b.match(/^Serial Number:\s*([0-9A-Fa-f]+)/)?.[1]?.toLowerCase().replace(/^0+/, '') === want) ?? null
}

/** Publishes the broker delivered (aedes 'publish'), by topic. */
function delivered(s: Site): string[] {
  const topics: string[] = []
  s.agent.broker.aedes.on('publish', (packet: { topic: string }, client: Client | null) => void (client && topics.push(packet.topic)))
  return topics
}

for (const alg of ['P-256', 'Ed25519'] as const) {
  test(`renewal over MQTT, ${alg}: renew → ack with a CSR → install-cert → the device reconnects with the new certificate → the old one is on the CRL as superseded and refused`, async (t) => {
    const s = await site(t)
    const id = `cam-${alg.toLowerCase()}`
    const device = await enrolledDevice(s, id, alg)
    const oldTls = device.tlsCredentials()!
    const oldSerial = device.certificate!.serial
    const conn = await online(t, s, device)

    const renew = await s.agent.actions.queue(id, 'renew', WHO)
    await conn.waitForAck(renew.id)
    // the gateway verified the ack (signed by the current key, with the alg its key calls for) and issued from its CSR
    await until('install-cert acked', () => s.acks.some((a) => a.deviceId === id && a.action.act === 'install-cert'))
    const renewAck = s.acks.find((a) => a.action.id === renew.id)!
    assert.equal(renewAck.status, 'done')
    assert.ok(renewAck.csr, 'the ack carried a request')
    const installAck = s.acks.find((a) => a.action.act === 'install-cert')!
    assert.equal(installAck.status, 'done')
    assert.deepEqual(installAck.action.args.chain, [...s.agent.gateway.registry.get(id)!.certificates!.filter((c) => c.role === 'current').map((c) => c.pem), ...s.ca])

    await until('reconnected with the new certificate', () => conn.reconnects === 1 && conn.connected)
    await s.agent.pki.idle()
    const record = s.agent.gateway.registry.get(id)!
    const current = record.certificates!.find((c) => c.role === 'current')!
    assert.equal(serialOf(current.pem!), device.certificate!.serial.replace(/^0+/, ''), 'the device holds the certificate the gateway issued')
    assert.notEqual(device.certificate!.serial, oldSerial)
    assert.equal(new X509Certificate(current.pem!).publicKey.asymmetricKeyType, alg === 'P-256' ? 'ec' : 'ed25519')
    const previous = record.certificates!.find((c) => serialOf(c.pem!) === oldSerial.replace(/^0+/, ''))!
    assert.deepEqual(previous.revoked?.reason, 'superseded', 'superseded once the device connected with the new one')
    assert.ok(s.events.some((e) => e.type === 'certificate.issued' && e.data.deviceId === id && e.data.via === 'mqtt-renew' && e.data.serial === current.serial))
    assert.ok(s.events.some((e) => e.type === 'certificate.revoked' && e.data.reason === 'superseded' && e.data.serial === previous.serial))
    const entry = crlEntry(s, previous.serial)
    assert.ok(entry, `serial ${previous.serial} is on the CRL`)
    assert.match(entry, /Superseded/)
    assert.equal(crlEntry(s, current.serial), null, 'the new one is not')

    // refused from then on (CONNACK 5); the new one has full rights
    const old = await certClient(s, id, oldTls)
    assert.deepEqual([old.ok, !old.ok && old.code], [false, 5])
    await conn.publish('tele', 'after renewal', { qos: 1 })
    assert.ok(conn.connected)
  })
}

test('renewal queued by the gateway at the renewAt threshold: the clock passes it, a maintenance pass queues renew, the device renews on its own', async (t) => {
  const clock = new ManualClock(Date.now())
  const s = await site(t, { clock })
  const device = await enrolledDevice(s, 'meter-1', 'P-256')
  const first = device.certificate!
  const conn = await online(t, s, device)
  await s.agent.maintenance.tick()
  assert.equal(s.agent.gateway.actions.pending('meter-1').length, 0, 'nothing to do yet')

  // medium: renewAt 0.2, so with 20 % of the lifetime left (a little less) the gateway renews
  clock.advance((LIFETIME_S * 0.8 + 60) * 1000)
  await s.agent.maintenance.tick()
  assert.ok(s.events.some((e) => e.type === 'credential.expiring' && e.data.deviceId === 'meter-1'))
  await until('renewed and reconnected', () => conn.reconnects === 1 && conn.connected)
  const renewAck = s.acks.find((a) => a.action.act === 'renew')!
  assert.equal(renewAck.status, 'done')
  assert.ok(device.certificate!.notAfter > first.notAfter, 'a new lifetime from now')
  await s.agent.pki.idle()
  assert.equal(s.agent.gateway.registry.get('meter-1')!.certificates!.find((c) => c.role === 'previous')?.revoked?.reason, 'superseded')
  // the new certificate is comfortably valid: the next pass asks nothing
  await s.agent.maintenance.tick()
  assert.equal(s.agent.gateway.actions.pending('meter-1').length, 0)
})

test('the overlap ends by time: a device that never uses its new certificate has the old one superseded after renewOverlapS, and is cut off', async (t) => {
  const clock = new ManualClock(Date.now())
  const s = await site(t, { clock, flags: { renewOverlapS: '3600' } })
  // its storage is full: it acks install-cert failed, and goes on with the old certificate
  const device = await enrolledDevice(s, 'plc-7', 'Ed25519', { hooks: { 'install-cert': async () => ({ status: 'failed', detail: 'certificate storage full' }) } })
  const oldTls = device.tlsCredentials()!
  const conn = await online(t, s, device)
  const renew = await s.agent.actions.queue('plc-7', 'renew', WHO)
  await conn.waitForAck(renew.id)
  await until('install-cert acked failed', () => s.acks.some((a) => a.action.act === 'install-cert' && a.status === 'failed'))
  const record = s.agent.gateway.registry.get('plc-7')!
  const previous = record.certificates!.find((c) => c.role === 'previous')!
  assert.equal(previous.revoked, undefined, 'valid beside the new one during the overlap')
  await s.agent.maintenance.tick()
  assert.ok(conn.connected, 'still connected with the old one within the overlap')

  clock.advance(3601 * 1000)
  await s.agent.maintenance.tick()
  await s.agent.pki.idle()
  assert.equal(s.agent.gateway.registry.get('plc-7')!.certificates!.find((c) => c.serial === previous.serial)!.revoked?.reason, 'superseded')
  assert.match(crlEntry(s, previous.serial) ?? '', /Superseded/)
  await until('the session of the old certificate is closed', () => !conn.connected)
  const again = await certClient(s, 'plc-7', oldTls)
  assert.deepEqual([again.ok, !again.ok && again.code], [false, 5])
})

test('reconnect-and-renew: expired while offline, within renewGraceS the device is admitted renew-only, renews and has full rights after; past the grace it is refused', async (t) => {
  const clock = new ManualClock(Date.now())
  const s = await site(t, { clock, flags: { renewGraceS: '7200' } })
  const seen = delivered(s)
  const a = await enrolledDevice(s, 'valve-a', 'P-256')
  const b = await enrolledDevice(s, 'valve-b', 'Ed25519')
  const aOld = a.certificate!
  clock.advance((LIFETIME_S + 600) * 1000) // both expired 10 minutes ago, for the gateway (not for TLS)

  // renew-only: dev/<id>/cmd and dev/<id>/ack, nothing else
  const probe = await certClient(s, 'valve-a', a.tlsCredentials()!)
  assert.ok(probe.ok, 'admitted within the grace')
  const client = (probe as { client: MqttClient }).client
  const inbox = new Inbox(client)
  assert.deepEqual(await subscribeQos(client, [['dev/valve-a/cmd', 1]]), [1])
  await inbox.waitFor((m) => m.topic === 'dev/valve-a/cmd', 10_000) // its renew, queued as it came back
  const renew = s.agent.gateway.actions.pending('valve-a').find((x) => x.act === 'renew')
  assert.ok(renew, 'the gateway queued the renewal when the device came back')
  await client.publishAsync('dev/valve-a/ack', 'not an ack', { qos: 1 }) // allowed on the broker (refused as an ack)
  assert.ok(client.connected)
  const gone = closed(client)
  client.publish('dev/valve-a/tele', 'beyond renew-only', { qos: 1 })
  await gone
  assert.ok(!seen.includes('dev/valve-a/tele'), 'never delivered')

  // the device itself: gets the same renew, renews, reconnects with full rights
  const conn = await online(t, s, a)
  await conn.waitForAck(renew.id)
  await until('renewed and reconnected', () => conn.reconnects === 1 && conn.connected)
  assert.ok(a.certificate!.notAfter > s.agent.gateway.nowS(), 'valid now')
  assert.notEqual(a.certificate!.serial, aOld.serial)
  await conn.publish('tele', 'full rights again', { qos: 1 })
  await until('telemetry delivered', () => seen.includes('dev/valve-a/tele'))
  assert.ok(conn.connected)

  // past the grace: refused
  clock.advance(7200 * 1000)
  const late = await certClient(s, 'valve-b', b.tlsCredentials()!)
  assert.deepEqual([late.ok, !late.ok && late.code], [false, 5])
})

test('expired for the TLS stack too (CERT_HAS_EXPIRED): still admitted renew-only within the grace, renews; the replaced (revoked) expired certificate is refused', async (t) => {
  // the agent's clock starts two hours back, so a one-hour certificate it issues is behind wall time
  const clock = new ManualClock(Date.now() - 2 * 3600_000)
  const s = await site(t, { clock })
  const seen = delivered(s)
  const device = await enrolledDevice(s, 'door-1', 'P-256')
  const oldTls = device.tlsCredentials()!
  assert.ok(device.certificate!.notAfter * 1000 < Date.now(), 'expired by wall time')
  clock.advance((LIFETIME_S + 600) * 1000) // the agent, too, is past it now (and within the 30 days of grace)

  const conn = await online(t, s, device)
  await until('renewed over the renew-only session and reconnected', () => conn.reconnects === 1 && conn.connected, 20_000)
  assert.ok(device.certificate!.notAfter * 1000 > Date.now(), 'the new one is valid by wall time')
  await conn.publish('tele', 'hello', { qos: 1 })
  await until('telemetry delivered', () => seen.includes('dev/door-1/tele'))
  await s.agent.pki.idle()
  const previous = s.agent.gateway.registry.get('door-1')!.certificates!.find((c) => c.role === 'previous')!
  assert.equal(previous.revoked?.reason, 'superseded')
  // expired and revoked: the TLS stack says expired first; the gateway still refuses it as revoked
  const old = await certClient(s, 'door-1', oldTls)
  assert.deepEqual([old.ok, !old.ok && old.code], [false, 5])
})

test('the ES256 ack signature is verified by the gateway: forged acks are refused and the action stays queued; the genuine one settles it', async (t) => {
  const s = await site(t)
  const device = await enrolledDevice(s, 'cam-es', 'P-256')
  // a bare client with the device's certificate, so nothing answers by itself
  const r = await certClient(s, 'cam-es', device.tlsCredentials()!)
  assert.ok(r.ok)
  const client = (r as { client: MqttClient }).client
  t.after(() => client.end(true))
  const inbox = new Inbox(client)
  assert.deepEqual(await subscribeQos(client, [['dev/cam-es/cmd', 1]]), [1])
  const renew = await s.agent.actions.queue('cam-es', 'renew', WHO)
  await inbox.waitFor((m) => m.topic === 'dev/cam-es/cmd')
  const envelope = inbox.messages.find((m) => m.topic === 'dev/cam-es/cmd')!.payload

  const gw = s.agent.gateway
  const attacker = await generateCertKey('P-256')
  const claims = { iss: 'cam-es', aud: gw.id, iat: gw.nowS(), jti: 'forged-1', ref: renew.id, status: 'done', csr: b64urlEncode(await certificateRequest(attacker, 'cam-es')) }
  const sign = async (alg: JwsAlg, c: Record<string, unknown>, key = attacker): Promise<string> => {
    const input = jwsSigningInput('cam-es', c, alg)
    return assembleJws(input, await signWith(key, utf8(input)))
  }
  const forged = [
    await sign('ES256', claims), // another key
    await sign('EdDSA', { ...claims, jti: 'forged-2' }), // the alg does not match the certificate's key
    `${b64urlEncode(utf8('{"alg":"none","kid":"cam-es"}'))}.${b64urlEncode(utf8(JSON.stringify({ ...claims, jti: 'forged-3' })))}.${b64urlEncode(new Uint8Array(64))}`,
  ]
  const stray = s.agent.actions.strayAcks
  for (const f of forged) await client.publishAsync('dev/cam-es/ack', f, { qos: 1 })
  await until('all three refused', () => s.agent.actions.strayAcks === stray + 3)
  assert.deepEqual(gw.actions.pending('cam-es').map((a) => a.id), [renew.id], 'the action stays queued')
  assert.equal(s.acks.length, 0)
  assert.equal(gw.registry.get('cam-es')!.certificates!.length, 1, 'nothing issued')

  // the device's own ack of the same action, ES256 by its certificate's key: accepted
  const genuine = await device.runtime.handle(envelope)
  assert.equal(genuine.kind, 'ack')
  const ack = (genuine as { ack: string }).ack
  assert.equal(JSON.parse(Buffer.from(ack.split('.')[0]!, 'base64url').toString()).alg, 'ES256')
  await client.publishAsync('dev/cam-es/ack', ack, { qos: 1 })
  await until('settled', () => s.acks.some((a) => a.action.id === renew.id))
  assert.ok(s.events.some((e) => e.type === 'certificate.issued' && e.data.via === 'mqtt-renew'))
  assert.ok(gw.actions.pending('cam-es').some((a) => a.act === 'install-cert'))
})

test('wipe over MQTT: acked done, signed by the certificate\'s key; then key and chain are erased and the device leaves', async (t) => {
  const s = await site(t)
  const device = await enrolledDevice(s, 'hmi-3', 'Ed25519')
  await device.runtime.setData('recipe', 'secret')
  const conn = await online(t, s, device)
  const wipe = await s.agent.actions.queue('hmi-3', 'wipe', WHO)
  const sent = await conn.waitForAck(wipe.id)
  assert.equal(sent.status, 'done')
  await until('settled by the gateway', () => s.acks.some((a) => a.action.id === wipe.id && a.status === 'done'))
  await until('the device left', () => !conn.connected)
  assert.equal(device.tlsCredentials(), null)
  assert.deepEqual(device.chain, [])
  assert.equal(device.runtime.getData('recipe'), undefined)
  assert.equal(conn.stats.wipesDone, 1)
})

test('a fleet with certificate devices beside token devices (mix mqtt-x509): enrolled with a CSR, they renew over MQTT and come back with the new certificate', async (t) => {
  const s = await site(t)
  const gw = s.agent.gateway
  const ops = opTable({ gw, enforcer: s.agent.enforcer, actions: s.agent.actions, retirements: s.agent.retirements, pki: s.agent.pki })
  const fleet = await Fleet.create({
    size: 4,
    mix: { mqtt: 1, modbus: 0, opcua: 0, 'mqtt-x509': 1 },
    prefix: 'f',
    gatewayId: gw.id,
    gatewayPublicKey: gw.key.publicKeyB64,
    mqttUrl: `mqtt://127.0.0.1:${s.agent.mqttPort}`,
    mqttsUrl: s.url,
    caPem: s.ca,
    workDir: s.dir,
    onlineFraction: 1,
    enroll: async (device) => {
      const r = await ops['device.enroll']({ device }, { who: WHO, receivedAt: performance.now(), receivedAtS: gw.nowS() })
      return typeof r.evidence?.certificate === 'string' ? { certificate: r.evidence.certificate } : undefined
    },
  })
  t.after(() => fleet.close())
  assert.deepEqual(fleet.members.map((m) => `${m.kind}:${m.id}`), ['mqtt:f-mqtt-1', 'mqtt:f-mqtt-2', 'mqtt-x509:f-mqtt-x509-1', 'mqtt-x509:f-mqtt-x509-2'])
  const x509 = fleet.members.filter((m) => m.kind === 'mqtt-x509')
  assert.deepEqual(x509.map((m) => new X509Certificate(gw.registry.get(m.id)!.certificates![0]!.pem!).publicKey.asymmetricKeyType), ['ec', 'ed25519'])
  const storm = await fleet.storm()
  assert.deepEqual([storm.online, storm.failed], [4, 0])
  await until('every device connected', () => s.agent.broker.connectedClients === 4)

  for (const m of x509) await s.agent.actions.queue(m.id, 'renew', WHO)
  await until('both renewed and installed', () => x509.every((m) => s.acks.some((a) => a.deviceId === m.id && a.action.act === 'install-cert' && a.status === 'done')))
  await until('both back with the new certificate, old ones superseded', () =>
    x509.every((m) => gw.registry.get(m.id)!.certificates!.some((c) => c.role === 'previous' && c.revoked?.reason === 'superseded')),
  )
  await until('every device connected', () => s.agent.broker.connectedClients === 4)
  assert.deepEqual(x509.map((m) => m.actions), [2, 2], 'renew and install-cert, each acted on once')
  assert.equal(fleet.stats().online, 4)
})
