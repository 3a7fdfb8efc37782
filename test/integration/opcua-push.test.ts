// OPC UA Part 12 push management (PROTOCOL §8, §9) against real node-opcua
// servers on 127.0.0.1: the agent in-process is the client, simulated
// devices (simulators/opcua-device.ts with `pushManagement`) bind
// CreateSigningRequest, UpdateCertificate, ApplyChanges and the TrustList
// file on the standard ServerConfiguration nodes. `renew` of a device with
// `opcua.pushManagement` is the push: a pinned device moves onto a
// certificate of the site CA with one `device.renew`, a second renewal
// supersedes the first on the CRL, and a renewal the schedule queues while
// the device is off is pushed when it comes back. Each new certificate is
// checked with `openssl verify` against the site CA.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import type { RunningAgent } from '../../agent/compose.ts'
import { opTable } from '../../agent/commands/ops.ts'
import type { Change } from '../../agent/gateway.ts'
import { ManualClock } from '../../agent/runtime/clock.ts'
import type { DeliveryReport } from '../../protocols/opcua/relay.ts'
import { SimulatedOpcuaDevice, type SimulatedOpcuaDeviceOptions } from '../../simulators/opcua-device.ts'
import { freePort, startTestAgent, tempDir } from '../helpers/agent.ts'
import { nextEvent, until } from '../helpers/wait.ts'

type Agent = RunningAgent & { config: { dataDir: string } }
type Ev = { type: string; data: Record<string, unknown> }
const WHO = { actor: 'local:test' }
/** a push restarts the device and the gateway reconnects: seconds on a loaded machine (Node 24 with the suite running beside it took over 20 s now and then) */
const WAIT_MS = 60_000

/** Every event the agent commits, and a wait for the next one that passes `pred`. */
function committed(agent: Agent): { all: Ev[]; next(pred: (e: Ev) => boolean, ms?: number): Promise<Ev> } {
  const all: Ev[] = []
  const waiters: { pred: (e: Ev) => boolean; resolve: (e: Ev) => void }[] = []
  agent.gateway.onCommitted((c: Change) => {
    for (const e of c.events ?? []) {
      const ev = { type: e.type, data: e.data as Record<string, unknown> }
      all.push(ev)
      for (const w of waiters.splice(0)) if (w.pred(ev)) w.resolve(ev)
      else waiters.push(w)
    }
  })
  return {
    all,
    next(pred, ms = WAIT_MS) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no matching event within ${ms} ms`)), ms)
        waiters.push({ pred, resolve: (e) => (clearTimeout(timer), resolve(e)) })
      })
    },
  }
}

async function startAgent(t: TestContext, o: { clock?: ManualClock; flags?: Record<string, unknown> } = {}): Promise<Agent> {
  const agent = await startTestAgent(t, { ...o, flags: { certLifetime: 'medium=3600', ...o.flags } })
  agent.opcua.retry.initialMs = 100
  agent.opcua.retry.maxMs = 400
  return agent
}

async function startDevice(t: TestContext, agent: Agent, id: string, o: Partial<SimulatedOpcuaDeviceOptions> = {}): Promise<SimulatedOpcuaDevice> {
  const dev = await SimulatedOpcuaDevice.create({
    deviceId: id,
    gatewayId: agent.gateway.id,
    gatewayPublicKey: agent.gateway.key.publicKeyB64,
    pkiDir: join(tempDir(t), 'device-pki'),
    port: await freePort(),
    pushManagement: true,
    ...o,
  })
  t.after(() => dev.stop())
  await dev.start()
  return dev
}

const ops = (agent: Agent) => opTable({ gw: agent.gateway, enforcer: agent.enforcer, actions: agent.actions, retirements: agent.retirements, pki: agent.pki })
const req = (agent: Agent) => ({ who: WHO, receivedAt: performance.now(), receivedAtS: agent.gateway.nowS() })
const pemOf = (der: Buffer): string => new X509Certificate(der).toString()

/** `openssl verify -CAfile <site CA>` of a certificate (DER): its output, or the failure. */
function opensslVerify(t: TestContext, agent: Agent, der: Buffer): string {
  const dir = tempDir(t)
  writeFileSync(join(dir, 'ca.pem'), agent.pki.ca.chainPem.join(''))
  writeFileSync(join(dir, 'leaf.pem'), pemOf(der))
  try {
    return execFileSync('openssl', ['verify', '-CAfile', join(dir, 'ca.pem'), join(dir, 'leaf.pem')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim()
  } catch (err) {
    return `FAILED: ${String((err as { stderr?: unknown }).stderr ?? err)}`
  }
}

/** The CRL as openssl reads it: the text of the entry of `serial`, or null. */
function crlEntry(t: TestContext, agent: Agent, serial: string): string | null {
  const file = join(tempDir(t), 'crl.pem')
  writeFileSync(file, agent.pki.crl.pem!)
  const text = execFileSync('openssl', ['crl', '-in', file, '-noout', '-text'], { encoding: 'utf8' })
  const want = serial.toLowerCase().replace(/^0+/, '')
  return text.split(/(?=Serial Number:)/).find((b) => b.match(/^Serial Number:\s*([0-9A-Fa-f]+)/)?.[1]?.toLowerCase().replace(/^0+/, '') === want) ?? null
}

test('push management renews end to end: a pinned device moves onto the site CA with one device.renew, a second renewal supersedes the first on the CRL', { timeout: 120_000 }, async (t) => {
  // The gateway's clock stands still: both renewals are asked for in the same second (the second is still a new one)
  const agent = await startAgent(t, { clock: new ManualClock(Date.now()) })
  const ev = committed(agent)
  const dev = await startDevice(t, agent, 'plc-p1')
  const selfSigned = dev.certificate
  const selfSha = dev.certificateSha256
  const connected = nextEvent(agent.opcua.events, 'connected', (id) => id === 'plc-p1', WAIT_MS)
  await agent.gateway.enroll({ id: 'plc-p1', publicKey: dev.runtime.publicKeyB64!, opcua: { endpoint: dev.endpoint, certificateSha256: selfSha, pushManagement: true } }, WHO)
  await connected

  // 1. migration: one device.renew (the control plane's op, `edgewarden device renew plc-p1` locally)
  const delivered = nextEvent<[DeliveryReport]>(agent.opcua.events, 'delivery', (d) => d.deviceId === 'plc-p1' && d.act === 'renew', WAIT_MS)
  const applied = nextEvent<[string]>(dev.events, 'applied', () => true, WAIT_MS)
  // the pinned certificate is superseded once the relay is back with the new one
  const pinSuperseded = ev.next((e) => e.type === 'certificate.revoked' && e.data.deviceId === 'plc-p1' && e.data.reason === 'superseded')
  const r1 = await ops(agent)['device.renew']({ deviceId: 'plc-p1' }, req(agent))
  assert.equal(r1.evidence?.queued, true)
  const [rep] = await delivered
  assert.equal(rep.ok, true, rep.reason)
  t.diagnostic(`push (CreateSigningRequest, issue, UpdateCertificate, TrustList, ApplyChanges): ${rep.ms} ms`)
  const [firstSha] = await applied
  const superseded = await pinSuperseded
  assert.equal(superseded.data.issuer, 'external', 'the pinned self-signed certificate is not the site CA\'s: reported as external')
  assert.equal(superseded.data.sha256, selfSha)
  assert.deepEqual(
    dev.pushCalls.slice(0, 9).map((c) => `${c.method}:${c.status}`),
    ['CreateSigningRequest:Good', 'UpdateCertificate:Good', 'TrustList.Open:Good', 'TrustList.Read:Good', 'TrustList.Close:Good', 'TrustList.Open:Good', 'TrustList.Write:Good', 'TrustList.CloseAndUpdate:Good', 'ApplyChanges:Good'],
  )

  const first = dev.certificate
  assert.equal(dev.certificateSha256, firstSha)
  assert.notEqual(firstSha, selfSha)
  // the device's new certificate chains to the site CA, as openssl sees it
  assert.match(opensslVerify(t, agent, first), /: OK$/)
  assert.match(opensslVerify(t, agent, selfSigned), /FAILED/, 'the old self-signed one does not (the check is real)')
  const x1 = new X509Certificate(first)
  assert.ok(!x1.publicKey.equals(new X509Certificate(selfSigned).publicKey), 'a new key (regeneratePrivateKey)')
  assert.match(x1.subjectAltName ?? '', new RegExp(`URI:${dev.applicationUri}`))
  assert.match(x1.subjectAltName ?? '', /URI:urn:edgewarden:device:plc-p1/)
  assert.match(x1.subjectAltName ?? '', /IP Address:127\.0\.0\.1/)
  const issued = ev.all.filter((e) => e.type === 'certificate.issued' && e.data.deviceId === 'plc-p1')
  assert.deepEqual(issued.map((e) => [e.data.via, e.data.sha256]), [['opcua-push', firstSha]])
  let record = agent.gateway.registry.get('plc-p1')!
  assert.equal(record.certificates?.find((c) => c.role === 'current')?.sha256, firstSha)
  assert.equal(record.certificates?.find((c) => c.sha256 === selfSha)?.revoked?.reason, 'superseded')
  assert.equal(record.credentialExpiresAt, issued[0]!.data.notAfter, 'the renewal schedule follows the application certificate now')
  const acked = ev.all.filter((e) => e.type === 'action.acked' && e.data.deviceId === 'plc-p1').map((e) => [e.data.act, e.data.status])
  assert.deepEqual(acked, [['renew', 'done']])
  // the device trusts the site CA and has its CRL (TrustList); the gateway moved the old pin to rejected
  const tl = await dev.trustList()
  const caDer = agent.pki.caCertificatesDer()[0]!
  assert.ok(tl.trustedCertificates.some((c) => c.equals(caDer)), 'site CA on the device\'s trust list')
  assert.equal(tl.trustedCrls.length, 1)
  assert.ok(await agent.pki.issuedCrl(tl.trustedCrls[0]!), 'the site CRL on the device\'s trust list')
  await agent.opcua.settled('plc-p1')
  assert.equal(await agent.opcua.certificateStatus(selfSigned), 'rejected')
  assert.equal(agent.opcua.sessionCount('plc-p1'), 1)

  // 2. renewal on the site CA: the first site certificate is superseded on the CRL
  const firstSerial = record.certificates!.find((c) => c.role === 'current')!.serial
  const applied2 = nextEvent<[string]>(dev.events, 'applied', () => true, WAIT_MS)
  const firstSuperseded = ev.next((e) => e.type === 'certificate.revoked' && e.data.serial === firstSerial)
  await ops(agent)['device.renew']({ deviceId: 'plc-p1' }, req(agent))
  const [secondSha] = await applied2
  assert.equal((await firstSuperseded).data.reason, 'superseded')
  await agent.pki.idle()
  assert.match(opensslVerify(t, agent, dev.certificate), /: OK$/)
  record = agent.gateway.registry.get('plc-p1')!
  assert.equal(record.certificates?.find((c) => c.role === 'current')?.sha256, secondSha)
  assert.match(crlEntry(t, agent, firstSerial) ?? '', /Superseded/)
  assert.equal(crlEntry(t, agent, record.certificates!.find((c) => c.role === 'current')!.serial), null, 'the new one is not on the CRL')
  // and node-opcua, with the gateway's PKI, refuses the old one by the CRL now
  assert.equal(await agent.opcua.certificateVerdict(Buffer.concat([first, caDer])), 'BadCertificateRevoked')
  assert.equal(await agent.opcua.certificateVerdict(Buffer.concat([dev.certificate, caDer])), 'Good')
  assert.equal(ev.all.filter((e) => e.type === 'certificate.issued' && e.data.via === 'opcua-push').length, 2)

  // 3. every new CRL (here the daily signing) goes onto the device's TrustList too, without a restart of the device
  const crlPushed = nextEvent(agent.opcua.events, 'crl-pushed', (id) => id === 'plc-p1', WAIT_MS)
  await agent.pki.signCrl()
  await crlPushed
  const crlNow = agent.pki.crl.current!.der
  assert.ok((await dev.trustList()).trustedCrls.some((c) => c.equals(crlNow)), 'the device holds the CRL just signed')
  assert.equal((await dev.trustList()).trustedCrls.length, 1, 'in place of the older one')

  // 4. an update of the record (the control plane enrolls it again) keeps its application certificates
  const current = agent.gateway.registry.get('plc-p1')!.certificates!.find((c) => c.role === 'current')!
  await agent.gateway.enroll({ id: 'plc-p1', publicKey: dev.runtime.publicKeyB64!, owner: 'line 3', opcua: { endpoint: dev.endpoint, certificateSha256: selfSha, pushManagement: true } }, WHO)
  await agent.pki.idle()
  assert.equal(agent.gateway.registry.get('plc-p1')!.certificates!.find((c) => c.role === 'current')?.sha256, current.sha256)
  assert.equal(crlEntry(t, agent, current.serial), null)
  assert.equal(await agent.opcua.certificateVerdict(Buffer.concat([dev.certificate, caDer])), 'Good')
})

test('a renewal the schedule queues while the device is off is pushed when it comes back', { timeout: 120_000 }, async (t) => {
  // medium certificates of 3600 s, renewed with 95 % of their lifetime left: 240 s on the clock is past the threshold
  const clock = new ManualClock(Date.now())
  const agent = await startAgent(t, { clock, flags: { renewAt: 'medium=0.95' } })
  const ev = committed(agent)
  const dev = await startDevice(t, agent, 'plc-p2')
  // provisioned with the site CA before enrollment (its request signed by the CA, installed on the device)
  const provisioned = await agent.pki.issueOpcua('plc-p2', await dev.requestCertificate(), { criticality: undefined, host: '127.0.0.1' })
  await dev.installCertificate(Buffer.from(new X509Certificate(provisioned.pem).raw), agent.pki.caCertificatesDer())
  const learnt = nextEvent(agent.opcua.events, 'learnt', (id) => id === 'plc-p2', WAIT_MS)
  const connected = nextEvent(agent.opcua.events, 'connected', (id) => id === 'plc-p2', WAIT_MS)
  await agent.gateway.enroll({ id: 'plc-p2', publicKey: dev.runtime.publicKeyB64!, opcua: { endpoint: dev.endpoint, pushManagement: true } }, WHO)
  await learnt
  await connected
  assert.equal(agent.gateway.registry.get('plc-p2')!.credentialExpiresAt, provisioned.notAfter)

  // the device goes off
  const down = nextEvent(agent.opcua.events, 'down', (id) => id === 'plc-p2', WAIT_MS)
  await dev.stop()
  await down
  clock.advance(240_000)
  await agent.maintenance.tick()
  // (queued by this pass, or already when the device last connected, whichever judged the threshold passed first)
  await until('renewal queued', () => agent.gateway.actions.pending('plc-p2').some((a) => a.act === 'renew'), WAIT_MS)
  assert.ok(ev.all.some((e) => e.type === 'credential.expiring' && e.data.deviceId === 'plc-p2'))
  // probed with backoff while it is off; the renewal waits in the queue
  await nextEvent(agent.opcua.events, 'down', (id) => id === 'plc-p2', WAIT_MS)
  assert.deepEqual(agent.gateway.actions.pending('plc-p2').map((a) => a.act), ['renew'])
  assert.equal(dev.pushCalls.length, 0)

  // back: the push goes through, the provisioned certificate is superseded once the new one is presented
  const delivered = nextEvent<[DeliveryReport]>(agent.opcua.events, 'delivery', (d) => d.deviceId === 'plc-p2' && d.act === 'renew', WAIT_MS)
  const applied = nextEvent<[string]>(dev.events, 'applied', () => true, WAIT_MS)
  const superseded = ev.next((e) => e.type === 'certificate.revoked' && e.data.serial === provisioned.serial)
  await dev.start()
  const [rep] = await delivered
  assert.equal(rep.ok, true, rep.reason)
  const [sha] = await applied
  assert.equal((await superseded).data.reason, 'superseded')
  assert.deepEqual(agent.gateway.actions.pending('plc-p2'), [])
  const issued = ev.all.find((e) => e.type === 'certificate.issued' && e.data.deviceId === 'plc-p2')
  assert.deepEqual([issued?.data.via, issued?.data.sha256], ['opcua-push', sha])
  assert.match(opensslVerify(t, agent, dev.certificate), /: OK$/)
  await agent.pki.idle()
  assert.match(crlEntry(t, agent, provisioned.serial) ?? '', /Superseded/)
  // the new lifetime starts from the (moved) clock: the next pass asks nothing
  await agent.maintenance.tick()
  assert.deepEqual(agent.gateway.actions.pending('plc-p2'), [])
})
