// The site broker against real clients (mosquitto_pub / mosquitto_sub, which
// nobody here wrote, and mqtt.js): admission by device token (PROTOCOL §5),
// the rights of each state (§4), topic isolation, instant revocation among
// many sessions, the connect/revoke race, residual-use alerts.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import type { Client } from 'aedes'
import { generateKeyPairSync } from 'node:crypto'
import { ManualClock } from '../../agent/runtime/clock.ts'
import { signJws } from '../../agent/store/jws.ts'
import { publicKeyToB64 as nodePublicKeyToB64 } from '../../agent/store/keys.ts'
import type { Gateway } from '../../agent/gateway.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { MqttDevice } from '../../firmware-hooks/mqtt-device.ts'
import { parseJws } from '../../wire/jws.ts'
import { b64urlEncode, utf8 } from '../../wire/base64url.ts'
import { newJti } from '../../wire/ids.ts'
import { runCli, startTestAgent, tempDir } from '../helpers/agent.ts'
import {
  closed,
  connectDevice,
  enrollDevice,
  eventWhere,
  Inbox,
  mosquitto,
  mqttArgs,
  mqttConnect,
  pool,
  subscribeQos,
  tokenFor,
  WHO,
} from '../helpers/mqtt-devices.ts'

/** The gateway's own publish path (actions go out this way): client null, no authorizePublish. */
function gatewayPublish(agent: { broker: { aedes: { publish: Function } } }, topic: string, payload: string, retain = false): Promise<void> {
  return new Promise((resolve, reject) =>
    agent.broker.aedes.publish({ cmd: 'publish', topic, payload: Buffer.from(payload), qos: 1, retain, dup: false }, (err?: Error) => (err ? reject(err) : resolve())),
  )
}

/** An agent with a TLS listener too, on a self-signed server certificate openssl makes (the file `cert` is its own CA). */
async function agentWithTls(t: Parameters<typeof startTestAgent>[0]): Promise<{ agent: Awaited<ReturnType<typeof startTestAgent>>; cert: string }> {
  const dir = tempDir(t)
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'ignore' })
  return { agent: await startTestAgent(t, { flags: { mqttsPort: '0', tlsCert: cert, tlsKey: key } }), cert }
}

async function eventsOf(gw: Gateway, type: string): Promise<Record<string, unknown>[]> {
  await gw.store.flush()
  const stored = await gw.outbox.pending(gw.store, 0, 10_000)
  return stored.filter((e) => e.type === type).map((e) => (parseJws(e.jws).payload.data as Record<string, unknown>))
}

test('mosquitto clients: an enrolled device is admitted and receives its commands; refusals are CONNACK 5, a non-JWS password 4', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const port = agent.mqttPort
  const a = await enrollDevice(gw, 'sensor-a')

  const sub = mosquitto('mosquitto_sub', [...mqttArgs(port, a.id, await tokenFor(gw, a)), '-t', `dev/${a.id}/cmd`, '-q', '1', '-C', '1'])
  t.after(() => sub.kill())
  await eventWhere<[unknown, Client]>(agent.broker.aedes, 'subscribe', (_s, c) => c?.id === a.id)
  await gatewayPublish(agent, `dev/${a.id}/cmd`, 'action-1')
  assert.equal(await sub.exited, 0, sub.stderr())
  assert.equal(sub.stdout().trim(), 'action-1')

  const pub = mosquitto('mosquitto_pub', [...mqttArgs(port, a.id, await tokenFor(gw, a)), '-t', `dev/${a.id}/tele/temp`, '-m', '21.5', '-q', '1'])
  assert.equal(await pub.exited, 0, pub.stderr())

  const other = await enrollDevice(gw, 'sensor-b')
  const wrongKey = mosquitto('mosquitto_pub', [...mqttArgs(port, a.id, await tokenFor(gw, { ...a, secretKey: other.secretKey })), '-t', `dev/${a.id}/tele`, '-m', 'x'])
  assert.notEqual(await wrongKey.exited, 0)
  assert.match(wrongKey.stderr(), /not authori[sz]ed/i)

  const malformed = mosquitto('mosquitto_pub', [...mqttArgs(port, a.id, 'not-a-jws'), '-t', `dev/${a.id}/tele`, '-m', 'x'])
  assert.notEqual(await malformed.exited, 0)
  assert.match(malformed.stderr(), /bad user name or password/i)
})

test('every refusal case of §5 and §4 is CONNACK 5 (4 for a malformed password); renew-only and wipe-only are admitted', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const port = agent.mqttPort
  const now = gw.nowS()
  const d = await enrollDevice(gw, 'dev-ok')
  const stranger = await enrollDevice(gw, 'dev-stranger')
  const code = async (opts: { clientId: string; username?: string; password?: string | Buffer }): Promise<number | 'ok'> => {
    const r = await mqttConnect(port, opts)
    if (r.ok) {
      await r.client.endAsync()
      return 'ok'
    }
    return r.code ?? -1
  }
  const as = (password: string | Buffer, clientId = d.id, username = clientId) => ({ clientId, username, password })

  assert.equal(await code(as(await tokenFor(gw, d))), 'ok', 'a good token')
  assert.equal(await code(as(await tokenFor(gw, { ...d, secretKey: stranger.secretKey }))), 5, 'wrong key')
  assert.equal(await code(as(await tokenFor(gw, d, { gatewayId: 'gw-other' }))), 5, 'wrong audience')
  assert.equal(await code(as(await tokenFor(gw, d, { nowS: now - 4000, lifetimeS: 3600 }))), 5, 'expired (beyond the skew)')
  assert.equal(await code(as(await tokenFor(gw, d, { nowS: now + 3600 }))), 5, 'not yet valid')
  assert.equal(await code(as(await tokenFor(gw, d, { lifetimeS: 3601 }))), 5, 'lifetime over 3600 s')
  assert.equal(await code(as(await tokenFor(gw, d, { lifetimeS: 3600 }))), 'ok', 'lifetime of exactly 3600 s')
  const once = await tokenFor(gw, d)
  assert.equal(await code(as(once)), 'ok', 'first use')
  assert.equal(await code(as(once)), 5, 'reused token')
  const ghost = { id: 'dev-ghost', secretKey: d.secretKey, publicKey: d.publicKey }
  assert.equal(await code(as(await tokenFor(gw, ghost), ghost.id)), 5, 'unknown device')
  assert.equal(await code(as(await tokenFor(gw, d), d.id, 'someone-else')), 5, 'client id ≠ user name')
  // a password without a user name breaks [MQTT-3.1.2-22]: the connection is dropped before any CONNACK
  assert.notEqual(await code({ clientId: d.id, password: await tokenFor(gw, d) }), 'ok', 'no user name')
  assert.equal(await code(as(await tokenFor(gw, stranger), d.id)), 5, "another device's valid token under this client id")
  assert.equal(await code(as('not-a-jws')), 4, 'malformed password')
  assert.equal(await code({ clientId: d.id, username: d.id }), 4, 'no password')
  assert.equal(await code(as(Buffer.from([0xff, 0xfe, 0x2e, 0x2e]))), 4, 'binary garbage')
  const hs = `${b64urlEncode(utf8(JSON.stringify({ alg: 'HS256', kid: d.id })))}.${b64urlEncode(utf8(JSON.stringify({ iss: d.id, aud: gw.id, iat: now, exp: now + 60, jti: newJti() })))}.${b64urlEncode(new Uint8Array(64))}`
  assert.equal(await code(as(hs)), 5, 'alg HS256')
  const noJti = await tokenFor(gw, d, { jti: 'bad jti with spaces' })
  assert.equal(await code(as(noJti)), 5, 'malformed claims')

  // each non-active state
  const q = await enrollDevice(gw, 'dev-quarantined')
  await gw.transition(q.id, 'quarantine', WHO)
  assert.equal(await code(as(await tokenFor(gw, q), q.id)), 5, 'quarantined')
  const r = await enrollDevice(gw, 'dev-revoked')
  await gw.transition(r.id, 'revoke', WHO)
  assert.equal(await code(as(await tokenFor(gw, r), r.id)), 5, 'revoked')
  const x = await enrollDevice(gw, 'dev-retired')
  await gw.transition(x.id, 'retire', WHO)
  await gw.transition(x.id, 'retire-complete', WHO)
  assert.equal(await code(as(await tokenFor(gw, x), x.id)), 5, 'retired')
  const old = await enrollDevice(gw, 'dev-expired-long-ago', { credentialExpiresAt: now - gw.config.renewGraceS - 10 })
  assert.equal(await code(as(await tokenFor(gw, old), old.id)), 5, 'credential expired beyond the grace')

  // released from quarantine: admitted again
  await gw.transition(q.id, 'release', WHO)
  assert.equal(await code(as(await tokenFor(gw, q), q.id)), 'ok', 'released')

  // retiring: admitted wipe-only
  const w = await enrollDevice(gw, 'dev-retiring')
  await gw.transition(w.id, 'retire', WHO)
  const wc = await connectDevice(gw, port, w)
  assert.deepEqual(await subscribeQos(wc, [[`dev/${w.id}/cmd`, 1], [`dev/${w.id}/tele`, 1]]), [1, 128])
  await wc.publishAsync(`dev/${w.id}/ack`, 'done', { qos: 1 }) // PUBACK: allowed
  const gone = closed(wc)
  wc.publish(`dev/${w.id}/tele`, 'beyond wipe-only', { qos: 1 })
  await gone

  // credential expired within the grace: renew-only
  const rn = await enrollDevice(gw, 'dev-renew', { credentialExpiresAt: now - 10 })
  const rc = await connectDevice(gw, port, rn)
  assert.deepEqual(await subscribeQos(rc, [[`dev/${rn.id}/cmd`, 1], [`dev/${rn.id}/tele/#`, 0]]), [1, 128])
  await rc.publishAsync(`dev/${rn.id}/ack`, 'renewed', { qos: 1 })
  const gone2 = closed(rc)
  rc.publish(`dev/${rn.id}/tele`, 'not while renew-only', { qos: 1 })
  await gone2
})

test('topic isolation: publish, subscribe (SUBACK 0x80), will and retained messages; an acl historian sees telemetry, never commands', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const port = agent.mqttPort
  const a = await enrollDevice(gw, 'dev-a')
  const b = await enrollDevice(gw, 'dev-b')
  const c = await enrollDevice(gw, 'dev-c')
  // A historian with the widest acl there is: it still never gets another identity's commands.
  const wide = await enrollDevice(gw, 'app-wide', { acl: { subscribe: ['#'] } })
  const writer = await enrollDevice(gw, 'app-writer', { acl: { publish: ['dev/+/#', '#'] } })
  const lateApp = await enrollDevice(gw, 'app-late', { acl: { subscribe: ['#'] } })
  const hist = await enrollDevice(gw, 'historian', { acl: { subscribe: ['dev/+/tele/#'] } })

  const ac = await connectDevice(gw, port, a)
  const aInbox = new Inbox(ac)
  assert.deepEqual(await subscribeQos(ac, [[`dev/${a.id}/cmd`, 1]]), [1])
  const wc = await connectDevice(gw, port, wide)
  const wideInbox = new Inbox(wc)
  // a named other-device cmd is refused even under `#`; wildcards are granted and stripped on delivery
  assert.deepEqual(await subscribeQos(wc, [['#', 1], [`dev/${a.id}/cmd`, 1], ['dev/+/cmd', 1], ['$SYS/#', 0]]), [1, 128, 1, 128])

  // historian through mosquitto_sub (an outside implementation), acl `dev/+/tele/#`
  const histSub = mosquitto('mosquitto_sub', [...mqttArgs(port, hist.id, await tokenFor(gw, hist)), '-t', 'dev/+/tele/#', '-q', '1', '-v'], 30_000)
  t.after(() => histSub.kill())
  await eventWhere<[unknown, Client]>(agent.broker.aedes, 'subscribe', (_s, cl) => cl?.id === hist.id)

  // device b: subscriptions outside its own cmd are denied, one by one
  const bc = await connectDevice(gw, port, b)
  assert.deepEqual(
    await subscribeQos(bc, [[`dev/${b.id}/cmd`, 1], [`dev/${a.id}/cmd`, 1], ['dev/+/cmd', 1], ['#', 1], ['$SYS/#', 0], [`dev/${b.id}/tele`, 1], ['+/+/cmd', 0]]),
    [1, 128, 128, 128, 128, 128, 128],
  )

  // The gateway's own publish to a's cmd: a receives it, `#` of app-wide does not
  await gatewayPublish(agent, `dev/${a.id}/cmd`, 'action-for-a')
  await aInbox.waitFor((m) => m.payload === 'action-for-a')

  // b publishing to a's cmd: connection closed, never delivered
  let gone = closed(bc)
  bc.publish(`dev/${a.id}/cmd`, 'forged', { qos: 1 })
  await gone
  for (const [topic, retain] of [[`dev/${b.id}/cmd`, false], [`dev/${a.id}/tele/temp`, true], ['$SYS/broker/x', false], ['other/topic', true]] as const) {
    const cl = await connectDevice(gw, port, b)
    gone = closed(cl)
    cl.publish(topic, 'forbidden', { qos: 1, retain })
    await gone
  }
  // app-wide's acl allows publishing to dev/+/#, but never to another's cmd
  const w2 = await connectDevice(gw, port, writer)
  await w2.publishAsync(`dev/${a.id}/tele/temp`, 'from-app', { qos: 1 })
  gone = closed(w2)
  w2.publish(`dev/${a.id}/cmd`, 'forged-by-app', { qos: 1 })
  await gone

  // will messages: b's will to a's cmd and to a's namespace are dropped; c's will to its own namespace is delivered
  const bw = await connectDevice(gw, port, b, { will: { topic: `dev/${a.id}/cmd`, payload: Buffer.from('will-forged'), qos: 1, retain: false } })
  const bw2Token = await tokenFor(gw, { ...b })
  const bwClosed = eventWhere<[Client]>(agent.broker.aedes, 'clientDisconnect', (cl) => cl.id === b.id)
  bw.stream.destroy() // no DISCONNECT: the will fires
  await bwClosed
  const bw2 = await mqttConnect(port, { clientId: b.id, username: b.id, password: bw2Token, will: { topic: `dev/${a.id}/tele/x`, payload: Buffer.from('will-forged-2'), qos: 1, retain: true } })
  assert.ok(bw2.ok)
  const bw2Closed = eventWhere<[Client]>(agent.broker.aedes, 'clientDisconnect', (cl) => cl.id === b.id)
  bw2.client.stream.destroy()
  await bw2Closed
  const cc = await connectDevice(gw, port, c, { will: { topic: `dev/${c.id}/tele/status`, payload: Buffer.from('c-offline'), qos: 1, retain: false } })
  cc.stream.destroy()
  await wideInbox.waitFor((m) => m.payload === 'c-offline')
  await aInbox.waitFor((m) => m.topic === `dev/${a.id}/cmd` && m.payload === 'action-for-a')

  // retained: a's own retained telemetry is kept; the gateway's retained cmd for a reaches only a
  await ac.publishAsync(`dev/${a.id}/tele/state`, 'a-retained', { qos: 1, retain: true })
  await gatewayPublish(agent, `dev/${a.id}/cmd`, 'retained-cmd-for-a', true)
  await aInbox.waitFor((m) => m.payload === 'retained-cmd-for-a')
  const late = await connectDevice(gw, port, lateApp)
  const lateInbox = new Inbox(late)
  assert.deepEqual(await subscribeQos(late, [['#', 1]]), [1])
  await lateInbox.waitFor((m) => m.payload === 'a-retained')
  await ac.publishAsync(`dev/${a.id}/tele/sentinel`, 'sentinel', { qos: 1 })
  await lateInbox.waitFor((m) => m.payload === 'sentinel')
  await wideInbox.waitFor((m) => m.payload === 'sentinel')

  // the historian (mosquitto_sub) received telemetry, in its acl
  const histLines = () => histSub.stdout().trim().split('\n')
  await new Promise<void>((resolve, reject) => {
    const check = (): void => {
      if (histSub.stdout().includes('sentinel')) resolve()
    }
    histSub.proc.stdout!.on('data', check)
    check()
    setTimeout(() => reject(new Error(`historian got: ${histSub.stdout()}`)), 10_000).unref()
  })

  const forbidden = ['forged', 'forged-by-app', 'will-forged', 'will-forged-2', 'forbidden']
  for (const inbox of [aInbox, wideInbox, lateInbox]) {
    for (const m of inbox.messages) assert.ok(!forbidden.includes(m.payload), `delivered a forbidden message ${JSON.stringify(m)}`)
  }
  for (const inbox of [wideInbox, lateInbox]) {
    assert.ok(!inbox.topics().includes(`dev/${a.id}/cmd`), `a's commands leaked: ${JSON.stringify(inbox.messages)}`)
    assert.ok(!inbox.topics().some((x) => x.startsWith('$SYS')), 'a device received $SYS')
  }
  assert.deepEqual(aInbox.messages.filter((m) => m.topic === `dev/${a.id}/cmd`).map((m) => m.payload), ['action-for-a', 'retained-cmd-for-a'])
  assert.ok(histLines().some((l) => l === `dev/${a.id}/tele/temp from-app`), histSub.stdout())
  assert.ok(histLines().some((l) => l === `dev/${c.id}/tele/status c-offline`), histSub.stdout())
  for (const l of histLines()) {
    assert.match(l, /^dev\/[^/]+\/tele\//, `historian got outside its acl: ${l}`)
    assert.ok(!forbidden.includes(l.split(' ')[1] ?? ''), `historian got a forbidden message: ${l}`)
  }
  await Promise.all([ac.endAsync(), late.endAsync(), wc.endAsync()])
})

test('a revoke among 1,000 connected devices closes exactly that device session and no other', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const port = agent.mqttPort
  const N = 1000
  // node:crypto keys and tokens here: the broker cannot tell, and it keeps setup fast
  const devices = Array.from({ length: N }, (_, i) => ({ id: `fleet-${String(i).padStart(4, '0')}`, ...generateKeyPairSync('ed25519') }))
  let t0 = performance.now()
  await pool(devices, 100, (d) => gw.enroll({ id: d.id, publicKey: nodePublicKeyToB64(d.publicKey) }, WHO))
  const enrollMs = performance.now() - t0
  const token = (d: (typeof devices)[number]): string => {
    const iat = gw.nowS()
    return signJws(d.privateKey, d.id, { iss: d.id, aud: gw.id, iat, exp: iat + 300, jti: newJti() })
  }
  t0 = performance.now()
  const clients = await pool(devices, 50, async (d) => {
    const r = await mqttConnect(port, { clientId: d.id, username: d.id, password: token(d), keepalive: 0 })
    if (!r.ok) throw new Error(`${d.id} refused: ${r.code} ${r.message}`)
    return r.client
  })
  const connectMs = performance.now() - t0
  t.after(() => Promise.all(clients.map((c) => c.endAsync(true))).then(() => {}))
  const closes: string[] = []
  clients.forEach((c, i) => c.on('close', () => closes.push(devices[i]!.id)))
  assert.equal(agent.broker.connectedClients, N)

  const victim = devices[517]!
  const victimClient = clients[517]!
  const victimClosed = closed(victimClient)
  t0 = performance.now()
  const revoke = gw.transition(victim.id, 'revoke', { actor: 'local:test', reason: 'stolen' })
  assert.equal(agent.broker.sessionCount(victim.id), 0, 'the session is closed before the revoke is even on disk')
  await victimClosed
  const cutMs = performance.now() - t0
  await revoke
  // every other session is alive: a round trip through each of a sample, and the broker's own count
  assert.equal(agent.broker.connectedClients, N - 1)
  for (const [i, c] of clients.entries()) if (i !== 517) assert.ok(c.connected, `${devices[i]!.id} lost its session`)
  await Promise.all(clients.filter((_, i) => i % 100 === 3).map((c) => c.publishAsync(`dev/${c.options.clientId}/tele/ping`, 'x', { qos: 1 })))
  assert.deepEqual(closes, [victim.id])
  const again = await mqttConnect(port, { clientId: victim.id, username: victim.id, password: token(victim) })
  assert.equal(again.ok, false)
  assert.equal(!again.ok && again.code, 5)
  t.diagnostic(`enroll ${N}: ${enrollMs.toFixed(0)} ms; connect ${N} (concurrency 50): ${connectMs.toFixed(0)} ms (${((N / connectMs) * 1000).toFixed(0)}/s); revoke to client close: ${cutMs.toFixed(1)} ms`)
})

test('a cut closes the device\'s socket in the same step as the state change, before aedes\' own clean-up has run, on the plain and the TLS listener', async (t) => {
  const { agent, cert } = await agentWithTls(t)
  const gw = agent.gateway
  // each device's server-side connection, as aedes holds it
  const serverSide = new Map<string, Client>()
  agent.broker.aedes.on('client', (c: Client) => serverSide.set(c.id, c))
  const session = async (id: string, tls: boolean): Promise<{ conn: { destroyed: boolean }; gone: Promise<void> }> => {
    const dev = await enrollDevice(gw, id)
    const admitted = eventWhere<[Client]>(agent.broker.aedes, 'client', (c) => c.id === id)
    const port = tls ? (agent.broker.describe().mqtts as number) : agent.mqttPort
    const client = await connectDevice(gw, port, dev, tls ? { protocol: 'mqtts', ca: readFileSync(cert) } : {})
    t.after(() => void client.end(true))
    await admitted
    // subscribed, as devices are: aedes' close() unsubscribes before it destroys the socket (with no
    // subscription it destroys it at once, and this test would show nothing)
    const granted = await client.subscribeAsync(`dev/${id}/cmd`, { qos: 1 })
    assert.deepEqual(granted.map((g) => g.qos), [1], 'the subscription is granted')
    const conn = serverSide.get(id)!.conn as unknown as { destroyed: boolean }
    assert.equal(conn.destroyed, false)
    return { conn, gone: closed(client) }
  }
  for (const [id, tls] of [['cut-plain', false], ['cut-tls', true]] as const) {
    const s = await session(id, tls)
    const revoke = gw.transition(id, 'revoke', { actor: 'local:test', reason: 'stolen' })
    // aedes' close() alone destroys its socket only after its unsubscribe callbacks (a setImmediate later)
    assert.equal(s.conn.destroyed, true, `${id}: the socket is destroyed when the state change returns, not a turn of the event loop later`)
    await revoke
    await s.gone
  }
  // a re-enrollment with a new key (the record changes within its state) closes the old key's session the same way
  const s = await session('rekeyed', false)
  const enrolled = gw.enroll({ id: 'rekeyed', publicKey: publicKeyToB64((await keygen()).publicKey) }, WHO)
  assert.equal(s.conn.destroyed, true, "the old key's socket is destroyed when the record changes")
  await enrolled
  await s.gone
})

test('a connect racing a revoke never ends admitted (50 iterations over every point of the connect path)', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const port = agent.mqttPort
  const aedes = agent.broker.aedes
  const original = aedes.authenticate
  // Where the revoke lands, relative to the connect being handled:
  const POINTS = ['before-verify', 'during-verify', 'after-jti-write', 'after-decision', 'on-register', 'on-connack'] as const
  let pending: { id: string; point: (typeof POINTS)[number] } | null = null
  const revokeNow = (id: string): void => void gw.transition(id, 'revoke', WHO)
  aedes.authenticate = (client, username, password, done) => {
    const p = pending
    if (!p || p.id !== client.id) return original(client, username, password, done)
    if (p.point === 'before-verify') revokeNow(p.id)
    original(client, username, password, (err, ok) => {
      if (p.point === 'after-decision') revokeNow(p.id)
      done(err, ok)
    })
    if (p.point === 'during-verify') queueMicrotask(() => revokeNow(p.id)) // while the jti commit is in flight
    if (p.point === 'after-jti-write') setImmediate(() => revokeNow(p.id))
  }
  const onClient = (c: Client): void => {
    if (pending?.point === 'on-register' && c.id === pending.id) revokeNow(c.id)
  }
  const onConnack = (_p: unknown, c: Client): void => {
    if (pending?.point === 'on-connack' && c.id === pending.id) revokeNow(c.id)
  }
  aedes.on('client', onClient)
  aedes.on('connackSent', onConnack)
  t.after(() => {
    aedes.off('client', onClient)
    aedes.off('connackSent', onConnack)
  })
  const outcomes: Record<string, number> = {}
  for (let i = 0; i < 50; i++) {
    const point = POINTS[i % POINTS.length]!
    const dev = await enrollDevice(gw, `race-${i}`)
    pending = { id: dev.id, point }
    const r = await mqttConnect(port, { clientId: dev.id, username: dev.id, password: await tokenFor(gw, dev) })
    if (r.ok) {
      // admitted for an instant at most: the session must end by itself
      const ended = await Promise.race([closed(r.client).then(() => true), new Promise<boolean>((res) => setTimeout(res, 5000, false).unref())])
      if (!ended) r.client.end(true)
      assert.ok(ended, `${dev.id} (${point}) ended admitted`)
    }
    const outcome = `${point}:${r.ok ? 'closed-after-connack' : `refused-${r.code ?? 'closed'}`}`
    outcomes[outcome] = (outcomes[outcome] ?? 0) + 1
    assert.equal(gw.registry.get(dev.id)?.state, 'revoked')
    assert.equal(agent.broker.sessionCount(dev.id), 0, `${dev.id} (${point}) still has a session`)
    assert.equal((aedes as unknown as { clients: Record<string, unknown> }).clients[dev.id], undefined, `${dev.id} (${point}) still registered in aedes`)
    pending = null
  }
  t.diagnostic(`outcomes: ${JSON.stringify(outcomes)}`)
})

test('residual use: refused attempts by quarantined, revoked and retired identities, and a retiring one beyond wipe-only, are rate-limited alerts with a count', async (t) => {
  const clock = new ManualClock(Date.now())
  const agent = await startTestAgent(t, { clock, flags: { residualAlertIntervalS: '60' } })
  const gw = agent.gateway
  const port = agent.mqttPort
  const r = await enrollDevice(gw, 'dev-revoked')
  const q = await enrollDevice(gw, 'dev-quarantined')
  const x = await enrollDevice(gw, 'dev-retired')
  const w = await enrollDevice(gw, 'dev-retiring')
  const ok = await enrollDevice(gw, 'dev-fine')
  await gw.transition(r.id, 'revoke', WHO)
  await gw.transition(q.id, 'quarantine', WHO)
  await gw.transition(x.id, 'retire', WHO)
  await gw.transition(x.id, 'retire-complete', WHO)
  await gw.transition(w.id, 'retire', WHO)
  const attempt = async (d: typeof r, password?: string): Promise<void> => {
    const res = await mqttConnect(port, { clientId: d.id, username: d.id, password: password ?? (await tokenFor(gw, d)) })
    assert.equal(res.ok, false)
  }
  await attempt(r)
  await attempt(r)
  await attempt(r, 'garbage') // even a malformed attempt at a revoked identity is residual use
  await attempt(q)
  await attempt(x)
  // a refusal of an active identity is not residual use
  await attempt(ok, await tokenFor(gw, ok, { gatewayId: 'elsewhere' }))
  let alerts = await eventsOf(gw, 'alert.residual-use')
  assert.deepEqual(
    alerts.map((a) => [a.deviceId, a.count, a.protocol]),
    [
      [r.id, 1, 'mqtt'],
      [q.id, 1, 'mqtt'],
      [x.id, 1, 'mqtt'],
    ],
  )
  assert.match(String(alerts[0]!.detail), /revoked/)
  assert.equal(alerts[0]!.remote, '127.0.0.1')

  // within the interval nothing more; past it, the next attempt carries the folded count
  clock.advance(59_000)
  await attempt(r)
  assert.equal((await eventsOf(gw, 'alert.residual-use')).length, 3)
  clock.advance(1_000)
  await attempt(r)
  alerts = await eventsOf(gw, 'alert.residual-use')
  assert.equal(alerts.length, 4)
  assert.deepEqual([alerts[3]!.deviceId, alerts[3]!.count], [r.id, 4], '2 folded + 1 within the window, + this one')

  // retiring: admitted wipe-only; a step outside is an alert, the ack is not
  const wc = await connectDevice(gw, port, w)
  assert.deepEqual(await subscribeQos(wc, [[`dev/${w.id}/cmd`, 1], ['dev/+/tele', 0]]), [1, 128])
  await wc.publishAsync(`dev/${w.id}/ack`, 'done', { qos: 1 })
  const gone = closed(wc)
  wc.publish(`dev/${w.id}/tele`, 'x', { qos: 1 })
  await gone
  alerts = await eventsOf(gw, 'alert.residual-use')
  assert.deepEqual(alerts.slice(4).map((a) => [a.deviceId, a.count, a.detail]), [[w.id, 1, 'subscribe to dev/+/tele beyond wipe-only rights']])
  // the publish was folded into the window; it is reported once the window closes
  clock.advance(60_000)
  await attempt(x)
  const wc2 = await connectDevice(gw, port, w)
  const gone2 = closed(wc2)
  wc2.publish('elsewhere', 'x', { qos: 1 })
  await gone2
  alerts = await eventsOf(gw, 'alert.residual-use')
  assert.deepEqual(alerts.slice(5).map((a) => [a.deviceId, a.count]), [[x.id, 1], [w.id, 2]])
  assert.match(String(alerts[6]!.detail), /publish to elsewhere beyond wipe-only rights/)
  // each alert is audited too
  const audit: string[] = []
  for await (const [, v] of gw.store.scan('audit!')) if (v.includes('alert.residual-use')) audit.push(v)
  assert.equal(audit.length, alerts.length)
})

test('a token is refused on reuse across an agent restart (same data dir)', async (t) => {
  const dataDir = tempDir(t)
  const first = await startTestAgent(t, { dataDir })
  const dev = await enrollDevice(first.gateway, 'dev-restart')
  const token = await tokenFor(first.gateway, dev)
  const c = await connectDevice(first.gateway, first.mqttPort, dev)
  await c.endAsync()
  const r1 = await mqttConnect(first.mqttPort, { clientId: dev.id, username: dev.id, password: token })
  assert.ok(r1.ok, 'first use')
  await r1.client.endAsync()
  await first.stop()
  const second = await startTestAgent(t, { dataDir })
  const r2 = await mqttConnect(second.mqttPort, { clientId: dev.id, username: dev.id, password: token })
  assert.equal(r2.ok, false)
  assert.equal(!r2.ok && r2.code, 5)
  const fresh = await connectDevice(second.gateway, second.mqttPort, dev)
  await fresh.endAsync()
})

test('TLS listener: a device is admitted with a token over mqtts (mqtt.js device runtime and mosquitto_pub)', async (t) => {
  const { agent, cert } = await agentWithTls(t)
  const gw = agent.gateway
  const tlsPort = agent.broker.describe().mqtts as number
  assert.ok(tlsPort > 0)
  const dev = await enrollDevice(gw, 'dev-tls')
  const device = await MqttDevice.connect({ url: `mqtts://127.0.0.1:${tlsPort}`, deviceId: dev.id, gatewayId: gw.id, secretKey: dev.secretKey, tls: { ca: readFileSync(cert) } })
  t.after(() => device.close())
  const got = new Promise<string>((resolve) => device.onCommand((p) => resolve(p.toString())))
  await gatewayPublish(agent, `dev/${dev.id}/cmd`, 'over-tls')
  assert.equal(await got, 'over-tls')
  await device.publish('tele/temp', '20')
  const pub = mosquitto('mosquitto_pub', [...mqttArgs(tlsPort, dev.id, await tokenFor(gw, dev)), '--cafile', cert, '-t', `dev/${dev.id}/tele/x`, '-m', 'y', '-q', '1'])
  assert.equal(await pub.exited, 0, pub.stderr())
  // and a bad token over TLS is still CONNACK 5
  const bad = await mqttConnect(tlsPort, { url: `mqtts://127.0.0.1:${tlsPort}`, clientId: dev.id, username: dev.id, password: await tokenFor(gw, dev, { gatewayId: 'nope' }), ca: readFileSync(cert) })
  assert.equal(!bad.ok && bad.code, 5)
})

test('`edgewarden token` prints a token mosquitto_pub can connect with', async (t) => {
  const agent = await startTestAgent(t)
  const dir = tempDir(t)
  const keyFile = join(dir, 'device.key')
  const kg = await runCli(['keygen', '--out', keyFile])
  assert.equal(kg.code, 0, kg.stderr)
  await agent.gateway.enroll({ id: 'dev-cli', publicKey: kg.stdout.trim() }, WHO)
  const tok = await runCli(['token', '--key', keyFile, '--device', 'dev-cli', '--gateway', agent.gateway.id, '--lifetime', '120'])
  assert.equal(tok.code, 0, tok.stderr)
  const claims = parseJws(tok.stdout.trim()).payload
  assert.equal((claims.exp as number) - (claims.iat as number), 120)
  const pub = mosquitto('mosquitto_pub', [...mqttArgs(agent.mqttPort, 'dev-cli', tok.stdout.trim()), '-t', 'dev/dev-cli/tele', '-m', 'hi', '-q', '1'])
  assert.equal(await pub.exited, 0, pub.stderr())
  const tooLong = await runCli(['token', '--key', keyFile, '--device', 'dev-cli', '--gateway', 'gw1', '--lifetime', '3601'])
  assert.equal(tooLong.code, 2)
  assert.match(tooLong.stderr, /--lifetime must be 1 to 3600/)
})
