// PROTOCOL §4: live and stored MQTT sessions follow every change of a
// device's record, not only its state: a cut identity keeps no stored
// session (subscriptions, queued messages), forwarding judges the receiver's
// rights now, and a new key or a narrower acl closes the sessions the new
// record would not admit. Also the §5 topic and client-id edges found by
// running peer suites (U+0000, empty client id) and a subscriber that stops
// reading.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { startTestAgent } from '../helpers/agent.ts'
import { closed, connectDevice, enrollDevice, Inbox, mqttConnect, tokenFor, WHO } from '../helpers/mqtt-devices.ts'
import { closedWithin, connectPacket, publishPacket, rawExchange, subscribePacket } from '../fuzz/mqtt-wire.ts'
import { until } from '../helpers/wait.ts'

const HISTORIAN = { acl: { subscribe: ['dev/+/tele/#'] } }

test('a cut historian keeps no stored session: nothing published while it was cut reaches it, nothing piles up for it', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const port = agent.mqttPort
  const hist = await enrollDevice(gw, 'historian', HISTORIAN)
  const pump = await enrollDevice(gw, 'pump-1')
  const p = await connectDevice(gw, port, pump)
  t.after(() => p.end(true))

  // clean session off, a QoS 1 subscription to every device's telemetry
  const h1 = await connectDevice(gw, port, hist, { clean: false })
  await h1.subscribeAsync('dev/+/tele/#', { qos: 1 })
  await h1.subscribeAsync(`dev/${hist.id}/cmd`, { qos: 1 })
  const inbox1 = new Inbox(h1)
  await p.publishAsync('dev/pump-1/tele/t', 'before', { qos: 1 })
  await inbox1.waitFor((m) => m.payload === 'before')

  await gw.transition(hist.id, 'quarantine', WHO)
  await closed(h1)
  await agent.broker.storedSessionsSettled()
  for (let i = 0; i < 50; i++) await p.publishAsync('dev/pump-1/tele/t', `while-cut-${i}`, { qos: 1 })
  assert.equal(await agent.broker.storedQueueLength(hist.id), 0, 'no message is queued for a quarantined identity')

  // retire: it may come back wipe-only; it must not get what was published while it was cut
  await gw.transition(hist.id, 'retire', WHO)
  for (let i = 0; i < 10; i++) await p.publishAsync('dev/pump-1/tele/t', `while-retiring-${i}`, { qos: 1 })
  const h2 = await connectDevice(gw, port, hist, { clean: false })
  t.after(() => h2.end(true))
  const inbox2 = new Inbox(h2)
  await h2.subscribeAsync(`dev/${hist.id}/cmd`, { qos: 1 })
  await p.publishAsync('dev/pump-1/tele/t', 'after', { qos: 1 })
  // a message to its own command topic is the proof the session works: everything before it has arrived
  await new Promise<void>((resolve, reject) =>
    agent.broker.aedes.publish({ cmd: 'publish', topic: `dev/${hist.id}/cmd`, payload: Buffer.from('probe'), qos: 1, retain: false, dup: false }, (e?: Error) => (e ? reject(e) : resolve())),
  )
  await inbox2.waitFor((m) => m.payload === 'probe')
  assert.deepEqual(inbox2.topics(), [`dev/${hist.id}/cmd`], `a wipe-only historian receives its own commands only, got ${JSON.stringify(inbox2.messages)}`)
})

test('a revoked offline subscriber: messages published for it are not stored, so memory does not grow', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const port = agent.mqttPort
  const hist = await enrollDevice(gw, 'historian', HISTORIAN)
  const pump = await enrollDevice(gw, 'pump-1')
  const h = await connectDevice(gw, port, hist, { clean: false })
  await h.subscribeAsync('dev/+/tele/#', { qos: 1 })
  h.end(true)
  await closed(h)
  const p = await connectDevice(gw, port, pump)
  t.after(() => p.end(true))
  await p.publishAsync('dev/pump-1/tele/t', 'kept-for-an-active-device', { qos: 1 })
  assert.equal(await agent.broker.storedQueueLength(hist.id), 1, 'an active offline subscriber has its message kept (the stored session works)')
  await gw.transition(hist.id, 'revoke', WHO)
  await agent.broker.storedSessionsSettled()
  assert.equal(await agent.broker.storedQueueLength(hist.id), 0, 'the revoke dropped what was queued')
  const payload = Buffer.alloc(16 * 1024, 'x')
  for (let i = 0; i < 200; i++) await p.publishAsync('dev/pump-1/tele/t', payload, { qos: 1 })
  assert.equal(await agent.broker.storedQueueLength(hist.id), 0, 'and nothing is queued after it')
})

test('re-enrolling with a new key and no acl closes the old-key session; a narrower acl closes the session it no longer covers', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const port = agent.mqttPort
  const hist = await enrollDevice(gw, 'historian', HISTORIAN)
  const pump = await enrollDevice(gw, 'pump-1')
  const p = await connectDevice(gw, port, pump)
  t.after(() => p.end(true))
  const h = await connectDevice(gw, port, hist)
  await h.subscribeAsync('dev/+/tele/#', { qos: 0 })
  const inbox = new Inbox(h)
  await p.publishAsync('dev/pump-1/tele/t', 'one', { qos: 1 })
  await inbox.waitFor((m) => m.payload === 'one')

  // The same id, a new key, no acl: the record would not admit the old-key session.
  const kp = await keygen()
  await gw.enroll({ id: hist.id, publicKey: publicKeyToB64(kp.publicKey) }, WHO)
  await closed(h)
  await p.publishAsync('dev/pump-1/tele/t', 'two', { qos: 1 })
  assert.ok(!inbox.messages.some((m) => m.payload === 'two'))
  const old = await mqttConnect(port, { clientId: hist.id, username: hist.id, password: await tokenFor(gw, hist) })
  assert.equal(old.ok, false, 'the old key is refused')

  // A narrower acl for a live session: closed; a wider one or an unrelated change keeps it.
  const newHist = { ...hist, secretKey: kp.secretKey, publicKey: publicKeyToB64(kp.publicKey) }
  await gw.enroll({ id: hist.id, publicKey: newHist.publicKey, acl: { subscribe: ['dev/+/tele/#'] } }, WHO)
  const h2 = await connectDevice(gw, port, newHist)
  t.after(() => h2.end(true))
  await gw.enroll({ id: hist.id, publicKey: newHist.publicKey, acl: { subscribe: ['dev/#'] }, owner: 'line-2' }, WHO)
  assert.equal(agent.broker.sessionCount(hist.id), 1, 'a wider acl keeps the session')
  await gw.enroll({ id: hist.id, publicKey: newHist.publicKey, acl: { subscribe: ['dev/pump-9/tele/#'] } }, WHO)
  await closed(h2)
  assert.equal(agent.broker.sessionCount(hist.id), 0, 'a narrower acl closes it')
})

test('forwarding judges the receiver\'s rights now: a message in flight to a device that just lost its acl is not delivered', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const hist = await enrollDevice(gw, 'historian', HISTORIAN)
  const pump = await enrollDevice(gw, 'pump-1')
  const h = await connectDevice(gw, agent.mqttPort, hist)
  t.after(() => h.end(true))
  await h.subscribeAsync('dev/+/tele/#', { qos: 0 })
  const client = [...Object.values((agent.broker.aedes as unknown as { clients: Record<string, { id: string }> }).clients)].find((c) => c.id === hist.id)!
  const handlers = agent.mqttPolicy.handlers()
  const pkt = { cmd: 'publish', topic: 'dev/pump-1/tele/t', payload: Buffer.from('x'), qos: 0, retain: false, dup: false } as never
  assert.ok(handlers.authorizeForward!(client as never, pkt), 'delivered while the acl grants it')
  // the registry changes under a live session without the enforcer (as between two events): forwarding alone must refuse
  gw.registry.set({ ...gw.registry.get(hist.id)!, spec: { ...gw.registry.get(hist.id)!.spec, acl: {} } })
  assert.equal(handlers.authorizeForward!(client as never, pkt), null)
  gw.registry.set({ ...gw.registry.get(hist.id)!, state: 'retiring' })
  assert.equal(handlers.authorizeForward!(client as never, pkt), null, 'wipe-only: nothing but its own commands')
  assert.ok(handlers.authorizeForward!(client as never, { ...(pkt as object), topic: `dev/${hist.id}/cmd` } as never))
  void pump
})

test('a renewal keeps the session (the old key stays valid for the overlap); a re-enrollment ends it', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const dev = await enrollDevice(gw, 'dev-1')
  const c = await connectDevice(gw, agent.mqttPort, dev)
  t.after(() => c.end(true))
  const newKey = publicKeyToB64((await keygen()).publicKey)
  const overlapEnd = gw.nowS() + gw.config.renewOverlapS
  await gw.updateDevice(dev.id, (r) => ({ ...r, keys: [{ ...r.keys[0]!, notAfter: overlapEnd }, { publicKey: newKey, notBefore: gw.nowS(), notAfter: null }] }))
  assert.equal(agent.broker.sessionCount(dev.id), 1, 'renewal: the old key is still valid, its session stays')
  await gw.updateDevice(dev.id, (r) => ({ ...r, keys: [{ publicKey: newKey, notBefore: gw.nowS(), notAfter: null }] }))
  await closed(c)
  assert.equal(agent.broker.sessionCount(dev.id), 0, 'the old key ended: its session is closed')
})

test('U+0000 in a topic: the publish is refused and never delivered; the filter gets SUBACK 0x80 (PROTOCOL §5)', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const port = agent.mqttPort
  const dev = await enrollDevice(gw, 'dev-1')
  const all = await enrollDevice(gw, 'all', { acl: { subscribe: ['#'] } })
  const listener = await connectDevice(gw, port, all)
  t.after(() => listener.end(true))
  await listener.subscribeAsync('#', { qos: 0 })
  const inbox = new Inbox(listener)
  const r = await rawExchange(port, connectPacket({ clientId: dev.id, username: dev.id, password: await tokenFor(gw, dev) }), { keep: true })
  assert.equal(r.connack, 0)
  const suback = new Promise<number>((resolve) => r.socket.on('data', (d: Buffer) => d[0] === 0x90 && resolve(d[d.length - 1]!)))
  r.socket.write(subscribePacket(7, 'dev/dev-1/\u0000/#'))
  assert.equal(await suback, 0x80)
  r.socket.write(publishPacket('dev/dev-1/te\u0000le', 'nul'))
  assert.equal(await closedWithin(r.socket, 5000), true, 'the publish is refused (aedes closes the connection)')
  const p = await connectDevice(gw, port, dev)
  t.after(() => p.end(true))
  await p.publishAsync('dev/dev-1/tele', 'marker', { qos: 1 })
  await inbox.waitFor((m) => m.payload === 'marker')
  assert.ok(!inbox.messages.some((m) => m.topic.includes('\u0000')), 'nothing with U+0000 was delivered')
})

test('an empty client id with clean session off gets CONNACK 0x02 (MQTT-3.1.3-8), before any authentication', async (t) => {
  const agent = await startTestAgent(t)
  const bytes = connectPacket({ clientId: '', username: 'x', password: 'y', flags: 0xc0 /* user, password, clean session off */ })
  // rawExchange reads 0x20 (CONNACK), its length, flags, and resolves with the code
  const r = await rawExchange(agent.mqttPort, bytes)
  assert.equal(r.connack, 0x02, 'identifier rejected')
  // clean session on: the server may assign an id [MQTT-3.1.3-6]; authentication then refuses it (not a JWS: 4)
  const clean = await rawExchange(agent.mqttPort, connectPacket({ clientId: '', username: 'x', password: 'y' }))
  assert.equal(clean.connack, 4)
})

test('a subscriber that stops reading is disconnected once its unsent backlog passes the bound', async (t) => {
  const agent = await startTestAgent(t, { flags: { maxPacketBytes: '65536' } })
  const gw = agent.gateway
  const port = agent.mqttPort
  const slow = await enrollDevice(gw, 'slow', HISTORIAN)
  const pump = await enrollDevice(gw, 'pump-1')
  const r = await rawExchange(port, connectPacket({ clientId: slow.id, username: slow.id, password: await tokenFor(gw, slow) }), { keep: true })
  assert.equal(r.connack, 0)
  const subscribed = new Promise<void>((resolve) => r.socket.once('data', () => resolve()))
  r.socket.write(subscribePacket(1, 'dev/+/tele/#', 0))
  await subscribed
  r.socket.pause() // stops reading: the kernel buffers fill, then the agent's
  const p = await connectDevice(gw, port, pump)
  t.after(() => p.end(true))
  const payload = Buffer.alloc(60 * 1024, 'x')
  let sent = 0
  const gone = closedWithin(r.socket, 60_000)
  let cut = false
  void gone.then(() => (cut = true))
  // Publish until the agent cuts the slow subscriber; bounded: far past the bound it must have happened.
  while (!cut && sent < 2000) {
    await p.publishAsync('dev/pump-1/tele/t', payload, { qos: 1 })
    sent++
    if (agent.broker.sessionCount(slow.id) === 0) break
  }
  assert.equal(agent.broker.sessionCount(slow.id), 0, `the slow subscriber was disconnected (after ${sent} messages of 60 KiB)`)
  assert.ok(sent < 2000)
  r.socket.destroy()
})

test('a QoS 1 subscriber that stops reading holds up nobody else: deliveries to others go on while its backlog grows, then it is cut', async (t) => {
  const agent = await startTestAgent(t, { flags: { maxPacketBytes: '65536' } })
  const gw = agent.gateway
  const port = agent.mqttPort
  const slow = await enrollDevice(gw, 'slow-hist', HISTORIAN)
  const watcher = await enrollDevice(gw, 'watcher', { acl: { subscribe: ['dev/pump-1/tele/ping'] } })
  const pump = await enrollDevice(gw, 'pump-1')
  const r = await rawExchange(port, connectPacket({ clientId: slow.id, username: slow.id, password: await tokenFor(gw, slow) }), { keep: true })
  assert.equal(r.connack, 0)
  const subscribed = new Promise<void>((resolve) => r.socket.once('data', () => resolve()))
  r.socket.write(subscribePacket(1, 'dev/+/tele/#', 1))
  await subscribed
  r.socket.pause()
  const w = await connectDevice(gw, port, watcher)
  t.after(() => w.end(true))
  const pings = new Inbox(w)
  await w.subscribeAsync('dev/pump-1/tele/ping', { qos: 0 })
  const p = await connectDevice(gw, port, pump)
  t.after(() => p.end(true))
  // a flood at QoS 1 that the stalled subscriber gets its share of, with a ping between every 100 messages
  const payload = Buffer.alloc(10 * 1024, 'x')
  const flood = (async () => {
    for (let i = 0; i < 3000; i++) {
      if (i % 100 === 0) p.publish('dev/pump-1/tele/ping', String(i), { qos: 0 })
      await p.publishAsync('dev/pump-1/tele/big', payload, { qos: 1 })
    }
  })()
  // every ping reaches the watcher long before aedes' own 60 s drain timeout would free the stalled deliveries
  for (let i = 0; i < 3000; i += 100) await pings.waitFor((m) => m.topic === 'dev/pump-1/tele/ping' && m.payload === String(i), 20_000)
  await flood
  assert.equal(agent.broker.sessionCount(slow.id), 0, 'the stalled subscriber was cut once its backlog passed the bound')
  r.socket.destroy()
})

test('the stored session of an offline subscriber is bounded (messages and bytes), as Mosquitto\'s max_queued_messages; what it kept arrives when it returns', async (t) => {
  const agent = await startTestAgent(t, { flags: { sessionQueueMessages: '50', sessionQueueBytes: '262144' } })
  const gw = agent.gateway
  const port = agent.mqttPort
  const hist = await enrollDevice(gw, 'hist-q', HISTORIAN)
  const pump = await enrollDevice(gw, 'pump-q')
  const first = await connectDevice(gw, port, hist, { clean: false, clientId: hist.id })
  await first.subscribeAsync('dev/+/tele/#', { qos: 1 })
  await first.endAsync()
  const p = await connectDevice(gw, port, pump)
  t.after(() => p.end(true))
  for (let i = 0; i < 120; i++) await p.publishAsync('dev/pump-q/tele/n', String(i), { qos: 1 })
  assert.equal(await agent.broker.storedQueueLength(hist.id), 50, 'messages beyond the bound are not kept for it')
  assert.equal(agent.broker.droppedFromQueues, 70)
  // bytes: 8 KiB messages stop at 256 KiB (the 50 small ones are in it already)
  for (let i = 0; i < 10; i++) await p.publishAsync('dev/pump-q/tele/big', Buffer.alloc(8192, 'y'), { qos: 1 })
  assert.equal(await agent.broker.storedQueueLength(hist.id), 50)
  // back: it gets the 50 it was kept, in order, and its queue is empty again
  const back = await connectDevice(gw, port, hist, { clean: false, clientId: hist.id })
  t.after(() => back.end(true))
  const inbox = new Inbox(back)
  await inbox.waitFor((m) => m.payload === '49', 10_000)
  assert.deepEqual(inbox.messages.map((m) => m.payload).slice(0, 50), Array.from({ length: 50 }, (_, i) => String(i)))
  await until('the queue drains', async () => (await agent.broker.storedQueueLength(hist.id)) === 0, 10_000)
  // and new messages are kept for it again
  await p.publishAsync('dev/pump-q/tele/n', 'after', { qos: 1 })
  await inbox.waitFor((m) => m.payload === 'after', 10_000)
})

test('retained messages a device left are not served while it is cut (quarantined, revoked), and are again once it is released', async (t) => {
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const port = agent.mqttPort
  const stolen = await enrollDevice(gw, 'stolen-1', { acl: { publish: ['site/setpoints/#'] } })
  const reader = await enrollDevice(gw, 'reader-1', { acl: { subscribe: ['dev/+/tele/#', 'site/#'] } })
  const s = await connectDevice(gw, port, stolen)
  await s.publishAsync('dev/stolen-1/tele/temp', 'FAKE-99C', { qos: 1, retain: true })
  await s.publishAsync('site/setpoints/line2', 'FAKE-SETPOINT', { qos: 1, retain: true })
  await s.endAsync()
  const retainedSeen = async (): Promise<string[]> => {
    const c = await connectDevice(gw, port, reader)
    const inbox = new Inbox(c)
    await c.subscribeAsync({ 'dev/+/tele/#': { qos: 1 }, 'site/#': { qos: 1 } })
    // a marker published after the subscribe: everything retained was delivered before it
    const marker = await connectDevice(gw, port, await enrollDevice(gw, `marker-${Date.now()}`, { acl: { publish: ['site/marker'] } }))
    await marker.publishAsync('site/marker', 'm', { qos: 1 })
    await inbox.waitFor((m) => m.topic === 'site/marker', 10_000)
    await marker.endAsync()
    await c.endAsync()
    return inbox.messages.filter((m) => m.retain).map((m) => `${m.topic}=${m.payload}`).sort()
  }
  assert.deepEqual(await retainedSeen(), ['dev/stolen-1/tele/temp=FAKE-99C', 'site/setpoints/line2=FAKE-SETPOINT'])
  await gw.transition('stolen-1', 'quarantine', WHO)
  assert.deepEqual(await retainedSeen(), [], 'nothing of a quarantined device is served')
  await gw.transition('stolen-1', 'release', WHO)
  assert.deepEqual(await retainedSeen(), ['dev/stolen-1/tele/temp=FAKE-99C', 'site/setpoints/line2=FAKE-SETPOINT'], 'released: served again')
  await gw.transition('stolen-1', 'revoke', WHO)
  assert.deepEqual(await retainedSeen(), [])
})
