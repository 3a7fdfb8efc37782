// The control plane's behaviour, one suite that every storage engine runs
// (pglite.test.ts, postgres.test.ts): real Mosquitto as the central broker,
// real agents as the gateways where the flow needs one, the service in this
// process on the engine under test.
import assert from 'node:assert/strict'
import { createPublicKey, verify } from 'node:crypto'
import { cpSync, mkdtempSync, rmSync } from 'node:fs'
import { createServer, request, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import { generateKeyPair } from '../../agent/store/keys.ts'
import { verifyExport } from '../../control-plane/evidence/verify-export.ts'
import { verifySignature } from '../../control-plane/outward/webhooks.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { SimulatedMqttDevice } from '../../simulators/mqtt-device.ts'
import { b64urlDecode } from '../../wire/base64url.ts'
import { freePort, tempDir } from '../helpers/agent.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { until } from '../helpers/wait.ts'
import { startTestCp, type TestCp } from './helpers/cp.ts'
import { HandGateway, newLedger, register, startGateway, type TestAgent } from './helpers/gateway.ts'

export interface Backend {
  name: 'pglite' | 'postgres'
  /** a database URL for one test (postgres), or undefined (PGlite in the data dir) */
  database(): Promise<string | undefined>
}

const FINAL = new Set(['completed', 'failed', 'rejected', 'expired'])

async function command(c: TestCp, jti: string): Promise<any> {
  return (await c.api('GET', `/v1/commands/${jti}`)).json
}

async function settled(c: TestCp, jtis: readonly string[], boundMs = 15_000): Promise<any[]> {
  let last: any[] = []
  await until(
    `commands ${jtis.length} settled`,
    async () => {
      last = await Promise.all(jtis.map((j) => command(c, j)))
      return last.every((x) => FINAL.has(x.state))
    },
    boundMs,
    50,
  )
  return last
}

async function online(c: TestCp, want: boolean, site = 's1', gw = 'gw1'): Promise<void> {
  await until(`gateway ${site}/${gw} ${want ? 'online' : 'offline'}`, async () => (await c.api('GET', `/v1/gateways/${site}/${gw}`)).json?.online === want, 10_000, 30)
}

async function createOk(c: TestCp, body: unknown, headers: Record<string, string> = {}): Promise<string[]> {
  const r = await c.api('POST', '/v1/commands', body, { headers })
  assert.equal(r.status, 201, r.text)
  return r.json.commands.map((x: { jti: string }) => x.jti)
}

const deviceKey = async (): Promise<{ secretKey: Uint8Array; publicKey: string }> => {
  const k = await keygen()
  return { secretKey: k.secretKey, publicKey: publicKeyToB64(k.publicKey) }
}

/** A JWS verified here with node:crypto alone: what an auditor does offline. */
function verifiesWith(jws: string, publicKey: string): boolean {
  const [h, p, s] = jws.split('.')
  const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: publicKey }, format: 'jwk' })
  return verify(null, Buffer.from(`${h}.${p}`), key, Buffer.from(b64urlDecode(s!)!))
}

function copyDir(src: string, t: TestContext): string {
  const dst = mkdtempSync(join(tmpdir(), 'edgewarden-test-copy-'))
  t.after(() => rmSync(dst, { recursive: true, force: true }))
  cpSync(src, dst, { recursive: true })
  return dst
}

export function controlPlaneSuite(b: Backend): void {
  const cpFor = async (t: TestContext, broker: string, flags: Record<string, string> = {}): Promise<TestCp> => {
    const database = await b.database()
    return startTestCp(t, { broker, ...(database ? { database } : {}), flags })
  }

  test(`${b.name}: a retire through the API on an offline gateway, then back, ends with evidence that re-verifies offline`, async (t) => {
    const m = await Mosquitto.start(t)
    const c = await cpFor(t, m.url)
    const dataDir = tempDir(t)
    let gw: TestAgent = await startGateway(t, { broker: m.url, cpPublicKey: c.key.publicKey, dataDir })
    await register(c, gw)
    const gwKey = gw.gateway.key.publicKeyB64
    const dev = await deviceKey()
    const [enroll] = await createOk(c, { op: 'device.enroll', site: 's1', gateway: 'gw1', device: { id: 'pump-7', publicKey: dev.publicKey, criticality: 'high' } })
    assert.equal((await settled(c, [enroll!]))[0].state, 'completed')
    await online(c, true)

    await gw.stop()
    await online(c, false)
    const r = await c.api('POST', '/v1/devices/pump-7/retire', { reason: 'line 2 refit' }, { headers: { 'idempotency-key': 'itsm-CHG-1042' } })
    assert.equal(r.status, 201, r.text)
    const jti = r.json.commands[0].jti as string
    // The site is away: the API says the command waits, and why.
    await until('retire sent', async () => (await command(c, jti)).state === 'sent', 5000)
    const waiting = await command(c, jti)
    assert.match(waiting.waiting, /offline/)
    const gwView = (await c.api('GET', '/v1/gateways/s1/gw1')).json
    assert.deepEqual(gwView.waiting.map((x: { jti: string }) => x.jti), [jti])
    assert.ok((await c.api('GET', '/v1/commands?waiting=true')).json.items.some((x: { jti: string }) => x.jti === jti))
    assert.equal((await c.api('GET', '/v1/devices/pump-7/offboarding')).json.verdict, 'in-progress')
    // The ITSM retries its call: the same command, not a second one.
    const again = await c.api('POST', '/v1/devices/pump-7/retire', { reason: 'line 2 refit' }, { headers: { 'idempotency-key': 'itsm-CHG-1042' } })
    assert.equal(again.json.commands[0].jti, jti)
    assert.equal(again.headers.get('idempotent-replayed'), 'true')

    gw = await startGateway(t, { broker: m.url, cpPublicKey: c.key.publicKey, dataDir })
    // The device comes back too, gets its wipe and acks it.
    const device = await SimulatedMqttDevice.create({ url: `mqtt://127.0.0.1:${gw.mqttPort}`, deviceId: 'pump-7', gatewayId: 'gw1', gatewayPublicKey: gwKey, secretKey: dev.secretKey })
    t.after(() => device.close())
    await until('device online', () => device.goOnline(), 10_000, 100)
    const [done] = await settled(c, [jti], 20_000)
    assert.equal(done.state, 'completed', JSON.stringify(done))
    assert.equal(done.evidence.wipe.status, 'done')
    assert.ok(device.runtime.wiped, 'the device erased itself')
    assert.ok(done.history.some((h: { state: string }) => h.state === 'accepted'))

    const off = (await c.api('GET', '/v1/devices/pump-7/offboarding')).json
    assert.equal(off.closed, true)
    assert.ok(['closed', 'closed-with-exceptions'].includes(off.verdict), off.verdict)
    assert.equal(off.paths.find((p: { path: string }) => p.path === 'mqtt').closed, true)
    assert.equal(off.wipe.status, 'done')
    assert.equal(off.proof.gatewayPublicKey, gwKey)
    assert.ok(off.proof.events.some((e: { type: string }) => e.type === 'cmd.completed'))
    for (const e of off.proof.events) assert.ok(verifiesWith(e.jws, gwKey), `offboarding proof event ${e.seq} verifies`)

    // The auditor's export, checked with nothing but node:crypto and the pinned key.
    const jsonl = await c.api('GET', '/v1/export/events.jsonl?device=pump-7')
    assert.equal(jsonl.status, 200)
    const lines = jsonl.text.trim().split('\n').map((l) => JSON.parse(l))
    assert.ok(lines.some((l) => l.type === 'cmd.completed' && l.commandJti === jti))
    assert.ok(lines.some((l) => l.type === 'device.state' && JSON.parse(Buffer.from(l.jws.split('.')[1], 'base64url').toString()).data.to === 'retired'))
    for (const l of lines) assert.ok(verifiesWith(l.jws, gwKey), `export line ${l.seq} verifies`)
    const v = verifyExport(jsonl.text, new Map([['s1/gw1', gwKey]]))
    assert.deepEqual({ verified: v.verified, failures: v.failures, selfAsserted: v.selfAsserted }, { verified: lines.length, failures: [], selfAsserted: 0 })
    // One byte changed in what the gateway signed: refused.
    const tampered = jsonl.text.replace(/"jws":"([^.]+)\.([^.])/, (_, h: string, p: string) => `"jws":"${h}.${p === 'A' ? 'B' : 'A'}`)
    assert.equal(verifyExport(tampered, new Map([['s1/gw1', gwKey]])).failures.length, 1)
    const csv = await c.api('GET', '/v1/export/events.csv?device=pump-7')
    const rows = csv.text.trim().split('\r\n')
    assert.equal(rows[0], 'id,site,gateway,gatewayPublicKey,epoch,seq,type,jti,iat,deviceId,commandJti,receivedAt,jws')
    assert.equal(rows.length, lines.length + 1)
    assert.equal(rows[1]!.split(',').at(-1), lines[0].jws)

    const timeline = (await c.api('GET', '/v1/devices/pump-7/timeline')).json.items.map((e: { type: string }) => e.type)
    assert.ok(timeline.includes('device.state') && timeline.includes('action.acked'), timeline.join(' '))
  })

  test(`${b.name}: a command dropped by the broker (queue overflow) is re-sent and runs once`, async (t) => {
    const m = await Mosquitto.start(t, [], { settings: ['max_queued_messages 4', 'max_inflight_messages 20'] })
    // A window above the broker's queue, to make it drop: the re-sends must make up for it.
    const c = await cpFor(t, m.url, { window: '40' })
    const dataDir = tempDir(t)
    const ledger = newLedger()
    let gw = await startGateway(t, { broker: m.url, cpPublicKey: c.key.publicKey, dataDir, ledger })
    await register(c, gw)
    const ids = Array.from({ length: 10 }, (_, i) => `sensor-${i}`)
    const enrolled = await settled(c, await createOk(c, { op: 'device.enroll', site: 's1', gateway: 'gw1', devices: ids.map((id) => ({ id, publicKey: generateKeyPair().publicKeyB64 })) }))
    assert.ok(enrolled.every((x) => x.state === 'completed'), JSON.stringify(enrolled.map((x) => x.reason)))
    await online(c, true)
    await gw.stop()
    await online(c, false)

    const jtis = await createOk(c, { op: 'device.quarantine', deviceIds: ids, args: { reason: 'anomaly' } })
    await until('all sent while away', async () => (await Promise.all(jtis.map((j) => command(c, j)))).every((x) => x.state === 'sent'), 5000)
    gw = await startGateway(t, { broker: m.url, cpPublicKey: c.key.publicKey, dataDir, ledger })
    const done = await settled(c, jtis, 20_000)
    assert.ok(done.every((x) => x.state === 'completed'), JSON.stringify(done.map((x) => [x.state, x.reason, x.sends])))
    const resent = done.filter((x) => x.sends > 1)
    t.diagnostic(`${resent.length} of ${jtis.length} re-sent (broker queue 4); sends ${done.map((x) => x.sends).join(',')}`)
    assert.ok(resent.length >= jtis.length - 4, 'what the broker dropped was re-sent')
    assert.ok(resent[0].history.some((h: { detail: string | null }) => /re-sent/.test(h.detail ?? '')))
    // The gateway's own record: every jti accepted once, every device quarantined once.
    for (const j of jtis) assert.equal(ledger.accepted.get(j), 1, `${j} accepted once`)
    for (const id of ids) assert.deepEqual(ledger.stateChanges.get(id), ['active', 'quarantined'])
    for (const id of ids) assert.equal(gw.gateway.getDevice(id)?.state, 'quarantined')
  })

  test(`${b.name}: a gateway restored from an old data dir is detected and its revocations are re-sent`, async (t) => {
    const m = await Mosquitto.start(t)
    const c = await cpFor(t, m.url)
    const dataDir = tempDir(t)
    let gw = await startGateway(t, { broker: m.url, cpPublicKey: c.key.publicKey, dataDir })
    await register(c, gw)
    const enrolled = await settled(c, await createOk(c, { op: 'device.enroll', site: 's1', gateway: 'gw1', devices: ['cam-1', 'cam-2', 'cam-3'].map((id) => ({ id, publicKey: generateKeyPair().publicKeyB64 })) }))
    assert.ok(enrolled.every((x) => x.state === 'completed'), JSON.stringify(enrolled.map((x) => x.reason)))
    await gw.stop()
    const backup = copyDir(dataDir, t)

    gw = await startGateway(t, { broker: m.url, cpPublicKey: c.key.publicKey, dataDir })
    const revokes = await createOk(c, { op: 'device.revoke', deviceIds: ['cam-1', 'cam-2'], args: { reason: 'reported stolen' } })
    assert.ok((await settled(c, revokes)).every((x) => x.state === 'completed'))
    await gw.stop()

    // Restored from the copy made before the revocations: it would let the stolen cameras in again.
    const ledger = newLedger()
    gw = await startGateway(t, { broker: m.url, cpPublicKey: c.key.publicKey, dataDir: backup, ledger })
    let alert: any
    await until('rollback alert', async () => ((alert = (await c.api('GET', '/v1/alerts?kind=rollback')).json.items[0]), alert !== undefined), 10_000, 50)
    assert.deepEqual([...alert.detail.requeued].sort(), [...revokes].sort())
    await until('revocations applied again', () => gw.gateway.getDevice('cam-1')?.state === 'revoked' && gw.gateway.getDevice('cam-2')?.state === 'revoked', 10_000)
    assert.equal(gw.gateway.getDevice('cam-3')?.state, 'active')
    // (a device's state changes in memory as its command runs; the acceptance is on disk, and in the ledger, a moment later)
    await until('acceptances on disk', () => revokes.every((j) => ledger.accepted.has(j)), 10_000)
    for (const j of revokes) assert.equal(ledger.accepted.get(j), 1, `${j} run again, once`)
    const again = await settled(c, revokes)
    assert.ok(again.every((x) => x.state === 'completed' && x.round === 1))
    const g = (await c.api('GET', '/v1/gateways/s1/gw1')).json
    assert.equal(g.history.epoch, 1)
    assert.equal((await c.api('GET', '/v1/devices/cam-1')).json.state, 'revoked')
  })

  test(`${b.name}: the API: tokens hashed, scopes enforced, bad input refused with specific errors and nothing changed, idempotency keys`, async (t) => {
    const m = await Mosquitto.start(t)
    const c = await cpFor(t, m.url)
    const hand = new HandGateway('s2', 'gw-a')
    await register(c, { site: hand.site, id: hand.id, publicKey: hand.publicKey })
    const key = generateKeyPair().publicKeyB64
    await createOk(c, { op: 'device.enroll', site: 's2', gateway: 'gw-a', devices: [{ id: 'v1', publicKey: key }, { id: 'v2', publicKey: key }] })
    const count = async (): Promise<number> => Number((await c.cp.db.query<{ n: number }>('SELECT COUNT(*) AS n FROM commands'))[0]!.n)
    const before = await count()

    assert.equal((await c.api('GET', '/v1/fleet', undefined, { token: null })).json.error.code, 'CP_UNAUTHORIZED')
    assert.equal((await c.api('GET', '/v1/fleet', undefined, { token: 'ewcp.AAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' })).status, 401)
    const reader = (await c.api('POST', '/v1/tokens', { name: 'dashboard', scopes: ['read'] })).json
    assert.match(reader.token, /^ewcp\./)
    const asReader = { token: reader.token }
    assert.equal((await c.api('GET', '/v1/fleet', undefined, asReader)).status, 200)
    const forbidden = await c.api('POST', '/v1/commands', { op: 'device.revoke', deviceId: 'v1' }, asReader)
    assert.deepEqual([forbidden.status, forbidden.json.error.code], [403, 'CP_FORBIDDEN'])
    assert.equal((await c.api('GET', '/metrics', undefined, asReader)).status, 403)
    // Stored hashed: the secret part is nowhere in the database.
    const secret = reader.token.split('.')[2]
    const rows = await c.cp.db.query('SELECT * FROM tokens')
    assert.ok(!JSON.stringify(rows).includes(secret), 'no token secret in the tokens table')
    assert.equal((await c.api('DELETE', `/v1/tokens/${reader.id}`)).status, 200)
    assert.equal((await c.api('GET', '/v1/fleet', undefined, asReader)).status, 401, 'a revoked token is refused')

    const bad: [unknown, number, string, RegExp][] = [
      [{ op: 'device.nuke', deviceId: 'v1' }, 400, 'CP_BAD_REQUEST', /op "device.nuke" is not one of/],
      [{ op: 'device.revoke' }, 400, 'CP_BAD_REQUEST', /deviceId .* is required/],
      [{ op: 'device.revoke', deviceId: 'v1', colour: 'red' }, 400, 'CP_BAD_REQUEST', /unknown field "colour"/],
      [{ op: 'device.revoke', deviceId: 'v1', args: { reason: 7 } }, 400, 'CP_BAD_REQUEST', /reason must be a string/],
      [{ op: 'device.retire', deviceId: 'v1', args: { wipe: 'no' } }, 400, 'CP_BAD_REQUEST', /wipe must be true or false/],
      [{ op: 'device.release', deviceId: 'v1', args: { reason: 'x' } }, 400, 'CP_BAD_REQUEST', /takes no argument "reason"/],
      [{ op: 'device.revoke', deviceIds: ['v1', 'ghost-9'] }, 404, 'CP_UNKNOWN_DEVICE', /ghost-9/],
      [{ op: 'device.revoke', deviceIds: ['v1', 'v1'] }, 400, 'CP_BAD_REQUEST', /appears twice/],
      [{ op: 'device.revoke', deviceId: '../etc' }, 400, 'CP_BAD_REQUEST', /not device ids/],
      [{ op: 'device.enroll', device: { id: 'new-1', publicKey: key } }, 404, 'CP_UNKNOWN_DEVICE', /give site and gateway/],
      [{ op: 'device.enroll', site: 's2', gateway: 'gw-a', device: { id: 'new-1', publicKey: key, password: '$scrypt$x' } }, 400, 'CP_BAD_REQUEST', /exactly one credential/],
      [{ op: 'device.enroll', site: 's2', gateway: 'gw-a', device: { id: 'new-1', publicKey: 'short' } }, 400, 'CP_BAD_REQUEST', /publicKey is not base64url/],
      [{ op: 'device.enroll', site: 's2', gateway: 'gw-a', device: { id: 'new-1', password: 'hunter2' } }, 400, 'CP_BAD_REQUEST', /PHC scrypt hash/],
      [{ op: 'device.enroll', site: 's2', gateway: 'nowhere', device: { id: 'new-1', publicKey: key } }, 404, 'CP_UNKNOWN_GATEWAY', /not registered/],
      [{ op: 'device.enroll', site: 's2', device: { id: 'new-1', publicKey: key } }, 400, 'CP_BAD_REQUEST', /site and gateway go together/],
      [{ op: 'inventory.report' }, 400, 'CP_BAD_REQUEST', /needs site and gateway/],
      ['not json', 400, 'CP_BAD_REQUEST', /not valid JSON/],
      [[1, 2], 400, 'CP_BAD_REQUEST', /JSON object/],
    ]
    for (const [body, status, code, message] of bad) {
      const r = await c.api('POST', '/v1/commands', body)
      assert.deepEqual([r.status, r.json?.error?.code], [status, code], `${JSON.stringify(body)}: ${r.text}`)
      assert.match(r.json.error.message, message)
    }
    assert.deepEqual((await c.api('POST', '/v1/commands', { op: 'device.revoke', deviceIds: ['v1', 'ghost-9'] })).json.error.detail, { unknown: ['ghost-9'] })
    assert.equal(await count(), before, 'no refused request stored anything')

    // Registration: a key that is not one, or another key for a known gateway.
    assert.equal((await c.api('POST', '/v1/gateways', { site: 's2', id: 'gw-b', publicKey: 'nope' })).json.error.code, 'CP_BAD_REQUEST')
    assert.equal((await c.api('POST', '/v1/gateways', { site: 's2', id: 'gw-a', publicKey: generateKeyPair().publicKeyB64 })).json.error.code, 'CP_CONFLICT')
    assert.equal((await c.api('POST', '/v1/gateways', { site: 's2', id: 'gw-a', publicKey: hand.publicKey })).status, 200, 'the same key again is a no-op')

    // Idempotency: a retried request is the same command; the key reused for another request changes nothing.
    const first = await c.api('POST', '/v1/commands', { op: 'device.quarantine', deviceId: 'v1' }, { headers: { 'idempotency-key': 'k-1' } })
    const retry = await c.api('POST', '/v1/commands', { deviceId: 'v1', op: 'device.quarantine' }, { headers: { 'idempotency-key': 'k-1' } })
    assert.equal(first.status, 201)
    assert.equal(retry.json.commands[0].jti, first.json.commands[0].jti, 'the same request (keys in any order) replays')
    const other = await c.api('POST', '/v1/commands', { op: 'device.revoke', deviceId: 'v1' }, { headers: { 'idempotency-key': 'k-1' } })
    assert.deepEqual([other.status, other.json.error.code], [422, 'CP_IDEMPOTENCY_MISMATCH'])
    assert.equal(await count(), before + 1)

    assert.equal((await c.api('DELETE', '/v1/commands')).status, 405)
    assert.equal((await c.api('GET', '/v1/nothing')).json.error.code, 'CP_NOT_FOUND')
    // A page on another site cannot reach the API by DNS rebinding: a Host that is not loopback is refused.
    const rebound = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: c.cp.http.port, path: '/healthz', headers: { host: 'evil.example:80' } }, resolve)
      req.on('error', reject)
      req.end()
    })
    assert.equal(rebound.statusCode, 403)
    rebound.resume()
  })

  test(`${b.name}: seq gaps, forged events, conflicts and residual use become alerts; webhooks are HMAC-signed and retried`, async (t) => {
    const m = await Mosquitto.start(t)
    const c = await cpFor(t, m.url)
    const hand = new HandGateway('s3', 'gw-h')
    await register(c, { site: hand.site, id: hand.id, publicKey: hand.publicKey })

    // A receiver that fails the first delivery.
    const got: { headers: IncomingMessage['headers']; body: string }[] = []
    const hook = createServer((req, res) => {
      let body = ''
      req.on('data', (d: Buffer) => (body += d))
      req.on('end', () => {
        got.push({ headers: req.headers, body })
        res.writeHead(got.length === 1 ? 500 : 204).end()
      })
    })
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', () => r()))
    t.after(() => new Promise<void>((r) => hook.close(() => r())))
    const wh = await c.api('POST', '/v1/webhooks', { url: `http://127.0.0.1:${(hook.address() as AddressInfo).port}/itsm`, events: ['alert.residual-use'] })
    assert.equal(wh.status, 201, wh.text)
    assert.equal((await c.api('GET', '/v1/webhooks')).json.items[0].secret, undefined, 'a secret is shown once')

    const count = async (): Promise<number> => Number((await c.cp.db.query<{ n: number }>('SELECT COUNT(*) AS n FROM events'))[0]!.n)
    const e1 = hand.event('device.state', { deviceId: 'door-1', from: 'none', to: 'active', cause: 'enroll' })
    const e2 = hand.event('alert.residual-use', { deviceId: 'door-1', protocol: 'mqtt', detail: 'revoked key tried', count: 3 })
    // seq 3 is signed in its turn, and held back on the way
    const e3 = hand.event('action.queued', { deviceId: 'door-1', actionId: 'a1', act: 'wipe' })
    const e4 = hand.event('credential.expiring', { deviceId: 'door-1', expiresAt: Math.floor(Date.now() / 1000) + 3600 })
    const forged = hand.event('device.state', { deviceId: 'door-1', from: 'active', to: 'revoked', cause: 'x' }, { seq: 5, key: generateKeyPair().privateKey })
    await hand.publish(m.url, [e1, e2, e4, e1, forged])
    await until('three events stored', async () => (await count()) === 3, 15_000)
    const alerts = async (kind: string): Promise<any[]> => (await c.api('GET', `/v1/alerts?kind=${kind}`)).json.items
    await until('seq-gap alert', async () => (await alerts('seq-gap')).length === 1, 15_000).catch(async (err: Error) => {
      // what the sweep saw, to tell a slow leader pass from a gap never recorded
      throw new Error(`${err.message}; gateways ${JSON.stringify(await c.cp.db.query('SELECT site, id, gap_since, contiguous_seq, max_seq, epoch FROM gateways'))} at ${Date.now()}; instances ${JSON.stringify(await c.cp.db.query('SELECT id, leader, seen_at FROM instances'))}`)
    })
    const gap = (await alerts('seq-gap'))[0]
    assert.deepEqual([gap.detail.from, gap.detail.to, gap.resolvedAt], [3, 3, null])
    const invalid = (await alerts('invalid-event'))[0]
    assert.equal(invalid.detail.reason, 'bad-signature')
    assert.equal((await alerts('credential-expiring'))[0].deviceId, 'door-1')
    // The late event fills the gap.
    await hand.publish(m.url, [e3])
    await until('gap resolved', async () => (await alerts('seq-gap'))[0].resolvedAt !== null, 15_000)
    // Events from a gateway nobody registered are not evidence.
    const stranger = new HandGateway('s3', 'gw-stranger')
    await stranger.publish(m.url, [stranger.event('device.state', { deviceId: 'x', from: 'none', to: 'active', cause: 'enroll' })])
    await until('unknown-gateway alert', async () => (await alerts('unknown-gateway')).length === 1, 15_000)
    assert.equal(await count(), 4)

    // The residual-use webhook: refused once, delivered on the retry, signed both times.
    await until('webhook retried', () => got.length >= 2, 10_000)
    const [w1, w2] = got
    assert.equal(w1!.body, w2!.body)
    assert.equal(w1!.headers['x-edgewarden-delivery'], w2!.headers['x-edgewarden-delivery'])
    const body = JSON.parse(w2!.body)
    assert.deepEqual([body.type, body.data.deviceId, body.data.protocol], ['alert.residual-use', 'door-1', 'mqtt'])
    assert.ok(verifySignature(wh.json.secret, w2!.body, w2!.headers['x-edgewarden-signature'] as string, Math.floor(Date.now() / 1000)))
    assert.ok(!verifySignature('another secret, another sender', w2!.body, w2!.headers['x-edgewarden-signature'] as string, Math.floor(Date.now() / 1000)))
    await until('delivery recorded', async () => (await c.api('GET', `/v1/webhooks/${wh.json.id}/deliveries`)).json.items[0]?.state === 'delivered', 5000)
    assert.equal((await c.api('GET', `/v1/webhooks/${wh.json.id}/deliveries`)).json.items[0].attempts, 2)

    // Another event at a seq already seen, signed later: two histories, the gateway was restored.
    await hand.publish(m.url, [hand.event('device.state', { deviceId: 'door-1', from: 'active', to: 'quarantined', cause: 'x' }, { seq: 2, iat: Math.floor(Date.now() / 1000) + 5 })])
    await until('rollback alert', async () => (await alerts('rollback')).length === 1, 15_000)
    assert.equal((await alerts('rollback'))[0].detail.what, 'event-seq')
    assert.equal((await c.api('GET', '/v1/gateways/s3/gw-h')).json.history.epoch, 1)

    const fleet = (await c.api('GET', '/v1/fleet')).json
    assert.equal(fleet.residualUse[0].deviceId, 'door-1')
    assert.equal(fleet.expiringCredentials[0].deviceId, 'door-1')
    const metricsToken = (await c.api('POST', '/v1/tokens', { name: 'prometheus', scopes: ['metrics'] })).json.token
    const metrics = await c.api('GET', '/metrics', undefined, { token: metricsToken })
    assert.equal(metrics.status, 200)
    assert.match(metrics.text, /edgewarden_cp_events_ingested_total\{type="device.state",instance_id="[^"]+"\} 2/)
    assert.match(metrics.text, /edgewarden_cp_events_invalid_total\{reason="bad-signature"/)
    assert.match(metrics.text, /edgewarden_cp_alerts_open\{kind="rollback"/)
    assert.match(metrics.text, /edgewarden_cp_leader\{instance_id="[^"]+"\} 1/)
    void freePort
  })
}
