// OPC UA devices trusted through the site CA (PROTOCOL §8, §9), against real
// node-opcua servers on 127.0.0.1: a device whose application certificate
// the site CA issued is admitted with no pin (the CA in the gateway's
// issuer and trusted stores, the current CRL in issuers/crl), and from a
// revoke or a quarantine on it is the CRL that refuses it
// (BadCertificateRevoked): no certificate file is moved, and a plain
// node-opcua client with a copy of the gateway's PKI folder refuses it the
// same way. A release lifts the hold in the running PKI, no restart. The
// gateway's own OPC UA certificate comes from the site CA too.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { cpSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import { MessageSecurityMode, OPCUACertificateManager, OPCUAClient, SecurityPolicy } from 'node-opcua'
import type { RunningAgent } from '../../agent/compose.ts'
import { exportAuditLog } from '../../agent/store/audit.ts'
import { parseJws } from '../../wire/jws.ts'
import { SimulatedOpcuaDevice } from '../../simulators/opcua-device.ts'
import { freePort, startTestAgent, tempDir } from '../helpers/agent.ts'
import { nextEvent, stateReached } from '../helpers/wait.ts'

type Agent = RunningAgent & { config: { dataDir: string } }
const WHO = { actor: 'local:test' }

async function startAgent(t: TestContext): Promise<Agent> {
  const agent = await startTestAgent(t)
  agent.opcua.retry.initialMs = 100
  agent.opcua.retry.maxMs = 400
  return agent
}

const der = (pem: string): Buffer => Buffer.from(new X509Certificate(pem).raw)

/**
 * A device provisioned with the site CA before it is enrolled (an operator
 * had its request signed): its certificate names it
 * (`urn:edgewarden:device:<id>`), and the record pins nothing.
 */
async function provisionedDevice(t: TestContext, agent: Agent, id: string, o: { certifiedAs?: string; applicationUri?: string } = {}): Promise<SimulatedOpcuaDevice> {
  const dev = await SimulatedOpcuaDevice.create({
    deviceId: id,
    ...(o.applicationUri ? { applicationUri: o.applicationUri } : {}),
    gatewayId: agent.gateway.id,
    gatewayPublicKey: agent.gateway.key.publicKeyB64,
    pkiDir: join(tempDir(t), 'device-pki'),
    port: await freePort(),
  })
  t.after(() => dev.stop())
  await dev.start()
  const issued = await agent.pki.issueOpcua(o.certifiedAs ?? id, await dev.requestCertificate(), { criticality: undefined, host: '127.0.0.1' })
  await dev.installCertificate(der(issued.pem), agent.pki.caCertificatesDer())
  return dev
}

/** The files of a folder of the gateway's OPC UA PKI. */
const filesIn = (agent: Agent, sub: string): string[] => readdirSync(join(agent.config.dataDir, 'opcua-pki', sub)).filter((f) => /\.(pem|der)$/.test(f))

/** The DER of every certificate in a folder of the gateway's OPC UA PKI. */
function certsIn(agent: Agent, sub: string): Buffer[] {
  return filesIn(agent, sub).flatMap((f) => [...readFileSync(join(agent.config.dataDir, 'opcua-pki', sub, f), 'utf8').matchAll(/-----BEGIN CERTIFICATE-----([\s\S]+?)-----END CERTIFICATE-----/g)].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64')))
}

/**
 * A plain node-opcua client, not the relay, with a copy of the gateway's PKI
 * folder as its certificate manager, connecting without being told the
 * server's certificate: node-opcua checks it against that PKI on its own.
 * Resolves 'connected' or the error's message.
 */
async function plainClientVerdict(t: TestContext, agent: Agent, endpoint: string): Promise<string> {
  const copy = join(tempDir(t), 'gateway-pki-copy')
  cpSync(join(agent.config.dataDir, 'opcua-pki'), copy, { recursive: true })
  const cm = new OPCUACertificateManager({ rootFolder: copy, automaticallyAcceptUnknownCertificate: false, disableFileWatchers: true })
  await cm.initialize()
  const client = OPCUAClient.create({
    applicationName: 'plain-client',
    clientCertificateManager: cm,
    securityMode: MessageSecurityMode.SignAndEncrypt,
    securityPolicy: SecurityPolicy.Basic256Sha256,
    endpointMustExist: false,
    connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
  })
  try {
    await client.connect(endpoint)
    return 'connected'
  } catch (err) {
    return (err as Error).message
  } finally {
    await client.disconnect().catch(() => {})
    await cm.dispose().catch(() => {})
  }
}

async function events(agent: Agent): Promise<{ type: string; data: Record<string, unknown> }[]> {
  return (await agent.gateway.outbox.pending(agent.gateway.store, 0, 10_000)).map((e) => {
    const p = parseJws(e.jws).payload as { type: string; data: Record<string, unknown> }
    return { type: p.type, data: p.data }
  })
}

async function audit(agent: Agent, action: string): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = []
  for await (const e of exportAuditLog(agent.gateway.store)) if (e.action === action) out.push((e.data ?? {}) as Record<string, unknown>)
  return out
}

test('a device certificate of the site CA is trusted through the CA, no pin; after a revoke the CRL refuses it with BadCertificateRevoked', { timeout: 120_000 }, async (t) => {
  const agent = await startAgent(t)
  const dev = await provisionedDevice(t, agent, 'plc-c1')
  const chain = Buffer.concat([dev.certificate, ...agent.pki.caCertificatesDer()])
  const learnt = nextEvent<[string, string]>(agent.opcua.events, 'learnt', (id) => id === 'plc-c1')
  const connected = nextEvent(agent.opcua.events, 'connected', (id) => id === 'plc-c1')
  // no certificateSha256, no trustOnFirstUse: the CA is the only reason to trust it
  await agent.gateway.enroll({ id: 'plc-c1', publicKey: dev.runtime.publicKeyB64!, opcua: { endpoint: dev.endpoint } }, WHO)
  const [, sha] = await learnt
  await connected
  assert.equal(sha, dev.certificateSha256)
  assert.equal(agent.opcua.sessionCount('plc-c1'), 1)
  assert.ok(agent.gateway.registry.get('plc-c1')!.lastSeenAt! > 0, 'a session up is the device seen (status page, device show)')
  const rec = agent.gateway.registry.get('plc-c1')!
  assert.equal(rec.opcuaPin, undefined, 'nothing pinned')
  assert.deepEqual(rec.certificates?.map((c) => [c.issuer, c.role, c.sha256]), [['site', 'current', sha]], 'recorded, so that the CRL can list it')
  // trusted through the CA: the CA is in the issuer and trusted stores, the device's certificate in neither trusted nor rejected
  const caDer = agent.pki.caCertificatesDer()[0]!
  assert.ok(certsIn(agent, 'issuers/certs').some((c) => c.equals(caDer)))
  assert.ok(certsIn(agent, 'trusted/certs').some((c) => c.equals(caDer)))
  assert.equal(filesIn(agent, 'issuers/crl').length, 1, 'the site CRL in issuers/crl')
  assert.equal(await agent.opcua.certificateStatus(dev.certificate), 'unknown')
  assert.equal(await agent.opcua.certificateVerdict(chain), 'Good')
  const before = { trusted: filesIn(agent, 'trusted/certs').sort(), rejected: filesIn(agent, 'rejected').sort() }
  // the gateway's own OPC UA application certificate is the site CA's too (OPC 10000-6 §6.2.2 names and usages)
  const own = readFileSync(join(agent.config.dataDir, 'opcua-pki', 'own', 'certs', 'client_certificate.pem'), 'utf8')
  const ownCert = new X509Certificate(own)
  assert.ok(agent.pki.ca.issued(ownCert), 'issued by the site CA')
  assert.match(ownCert.subjectAltName ?? '', /^URI:urn:edgewarden:gateway:site1:gw1/)
  assert.equal(ownCert.publicKey.asymmetricKeyType, 'rsa')
  const ownFile = join(tempDir(t), 'own.pem')
  writeFileSync(ownFile, own)
  const caFile = join(tempDir(t), 'ca.pem')
  writeFileSync(caFile, agent.pki.ca.chainPem.join(''))
  assert.match(execFileSync('openssl', ['verify', '-CAfile', caFile, '-purpose', 'sslclient', ownFile], { encoding: 'utf8' }), /: OK/)
  assert.equal(await plainClientVerdict(t, agent, dev.endpoint), 'connected', 'a plain node-opcua client with the gateway\'s PKI trusts it too')

  // revoke: the session closes, the serial goes on the CRL, and the CRL is what refuses it
  const closed = nextEvent(agent.opcua.events, 'closed', (id) => id === 'plc-c1')
  await agent.gateway.transition('plc-c1', 'revoke', WHO)
  assert.equal((await agent.enforcer.settled('plc-c1')).sessionsClosed.opcua, 1)
  await closed
  await agent.pki.idle()
  assert.equal(agent.pki.crl.reasonOf(rec.certificates![0]!.serial), 'cessationOfOperation')
  assert.equal(await agent.opcua.certificateVerdict(chain), 'BadCertificateRevoked')
  await agent.opcua.settled('plc-c1')
  assert.deepEqual({ trusted: filesIn(agent, 'trusted/certs').sort(), rejected: filesIn(agent, 'rejected').sort() }, before, 'no certificate file moved')
  assert.equal(await agent.opcua.certificateStatus(dev.certificate), 'unknown')
  // a client nobody here wrote, with the gateway's PKI as it is on disk, refuses the server for the same reason
  assert.match(await plainClientVerdict(t, agent, dev.endpoint), /BadCertificateRevoked/)

  // re-admitted (a deliberate enroll of the revoked id): the relay tries again, and the CRL refuses the revoked certificate
  const refused = nextEvent<[string, string]>(agent.opcua.events, 'refused', (id) => id === 'plc-c1')
  const active = stateReached(agent.gateway, 'plc-c1', 'active')
  await agent.gateway.enroll({ id: 'plc-c1', publicKey: dev.runtime.publicKeyB64!, opcua: { endpoint: dev.endpoint } }, WHO)
  await active
  const [, why] = await refused
  assert.match(why, /BadCertificateRevoked/)
  assert.equal(agent.opcua.sessionCount('plc-c1'), 0)
  assert.equal(dev.sessionCount, 0)
  assert.deepEqual(agent.gateway.registry.get('plc-c1')!.certificates ?? [], [], 'not learnt again')
  await agent.mqttPolicy.residual.idle()
  assert.equal((await audit(agent, 'opcua.certificate-learned')).length, 1)
  assert.ok((await events(agent)).some((e) => e.type === 'alert.residual-use' && e.data.deviceId === 'plc-c1'), 'a revoked certificate presented again is residual use')
})

test('quarantine holds the certificate on the CRL and release lifts the hold, in the running PKI', { timeout: 120_000 }, async (t) => {
  const agent = await startAgent(t)
  const dev = await provisionedDevice(t, agent, 'plc-c2')
  const chain = Buffer.concat([dev.certificate, ...agent.pki.caCertificatesDer()])
  let connected = nextEvent(agent.opcua.events, 'connected', (id) => id === 'plc-c2')
  await agent.gateway.enroll({ id: 'plc-c2', publicKey: dev.runtime.publicKeyB64!, opcua: { endpoint: dev.endpoint } }, WHO)
  await connected
  const serial = agent.gateway.registry.get('plc-c2')!.certificates![0]!.serial
  const crlNumber = agent.pki.crl.current!.number

  const closed = nextEvent(agent.opcua.events, 'closed', (id) => id === 'plc-c2')
  await agent.gateway.transition('plc-c2', 'quarantine', WHO)
  await closed
  await agent.pki.idle()
  assert.equal(agent.pki.crl.reasonOf(serial), 'certificateHold')
  assert.equal(await agent.opcua.certificateVerdict(chain), 'BadCertificateRevoked')
  assert.equal(dev.sessionCount, 0)

  connected = nextEvent(agent.opcua.events, 'connected', (id) => id === 'plc-c2')
  await agent.gateway.transition('plc-c2', 'release', WHO)
  await connected
  assert.equal(agent.pki.crl.reasonOf(serial), undefined)
  assert.ok(agent.pki.crl.current!.number > crlNumber + 1, 'signed again for the hold and for its release')
  assert.equal(await agent.opcua.certificateVerdict(chain), 'Good')
  assert.equal(agent.opcua.sessionCount('plc-c2'), 1)
})

test('a certificate of the site CA that names another device is refused, with alert.residual-use', { timeout: 120_000 }, async (t) => {
  const agent = await startAgent(t)
  // plc-c3's server presents a certificate the site CA issued for plc-c9
  const dev = await provisionedDevice(t, agent, 'plc-c3', { certifiedAs: 'plc-c9', applicationUri: 'urn:test:plc-c3' })
  const refused = nextEvent<[string, string]>(agent.opcua.events, 'refused', (id) => id === 'plc-c3')
  await agent.gateway.enroll({ id: 'plc-c3', publicKey: dev.runtime.publicKeyB64!, opcua: { endpoint: dev.endpoint } }, WHO)
  const [, why] = await refused
  assert.match(why, /names device plc-c9, not plc-c3/)
  await agent.mqttPolicy.residual.idle()
  const alert = (await events(agent)).find((e) => e.type === 'alert.residual-use' && e.data.deviceId === 'plc-c3')
  assert.equal(alert?.data.protocol, 'opcua')
  assert.equal(agent.opcua.sessionCount('plc-c3'), 0)
  assert.equal(dev.sessionCount, 0)
  assert.deepEqual(agent.gateway.registry.get('plc-c3')!.certificates ?? [], [])
})
