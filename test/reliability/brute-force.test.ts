// Brute force and floods against the site broker: failed authentication
// throttled per client id and per source address without locking out
// legitimate devices, bad-credential storms, half-open connections, packet
// and topic size bounds. Sources other than 127.0.0.1 are other loopback
// addresses (the whole of 127/8 is local on Linux).
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { connect as netConnect, type Socket } from 'node:net'
import { test } from 'node:test'
import { addressKey, AuthThrottle, hasTokenShape } from '../../agent/trust/auth-throttle.ts'
import { ManualClock } from '../../agent/runtime/clock.ts'
import { signJws } from '../../agent/store/jws.ts'
import { newJti } from '../../wire/ids.ts'
import { freePort, startTestAgent } from '../helpers/agent.ts'
import { recordFigure, scaled } from '../helpers/figures.ts'
import { enrollDevice, pool, tokenFor, WHO, type TestDevice } from '../helpers/mqtt-devices.ts'
import { closedWithin, connectPacket, publishPacket, rawExchange, subscribePacket, varint } from '../fuzz/mqtt-wire.ts'
import { MAX_TOPIC_LENGTH } from '../../protocols/mqtt/admission-policy.ts'

test('AuthThrottle: per address (IPv6 by /64) and per id, garbage counts against the source only, windows and blocks expire, memory bounded', () => {
  let now = 1_000_000
  const th = new AuthThrottle({ perClient: 3, perAddress: 5, windowS: 60, blockS: 30 }, () => now)
  // per client id: 3 credential failures block that id (a blocked attempt then needs a token-shaped password)
  for (let i = 0; i < 3; i++) assert.equal(th.check('dev-a', '10.0.0.1'), null), th.failure('dev-a', '10.0.0.1')
  assert.deepEqual(th.check('dev-a', '10.0.0.9'), { scope: 'client', untilS: now + 30 })
  assert.equal(th.check('dev-b', '10.0.0.1'), null, 'another id from the same address is not blocked by dev-a failures')
  now += 30
  assert.equal(th.check('dev-a', '10.0.0.1'), null, 'the block expires')
  // garbage counts against the source, never against the id it named
  const g = new AuthThrottle({ perClient: 2, perAddress: 100, windowS: 60, blockS: 30 }, () => now)
  for (let i = 0; i < 50; i++) g.failure('victim', '10.0.0.7', 'garbage')
  assert.equal(g.check('victim', '10.0.0.8'), null, 'garbage naming an id does not block it')
  // failures spread over more than the window do not add up
  const spread = new AuthThrottle({ perClient: 3, perAddress: 0, windowS: 10, blockS: 30 }, () => now)
  for (let i = 0; i < 10; i++) {
    spread.failure('slow', 'x')
    now += 6
  }
  assert.equal(spread.check('slow', 'x'), null)
  // a success forgets the id's failures
  const s = new AuthThrottle({ perClient: 3, perAddress: 0, windowS: 60, blockS: 30 }, () => now)
  s.failure('d', undefined)
  s.failure('d', undefined)
  s.success('d')
  s.failure('d', undefined)
  assert.equal(s.check('d', undefined), null)
  // per address: 5 failures block every id from it (the block only decides how much work an attempt gets), not other addresses
  for (let i = 0; i < 5; i++) th.failure(`guess-${i}`, '10.0.0.2', 'garbage')
  assert.equal(th.check('newcomer', '10.0.0.2')?.scope, 'address')
  assert.equal(th.check('newcomer', '10.0.0.3'), null)
  now += 31
  assert.equal(th.check('newcomer', '10.0.0.2'), null)
  // IPv6 counts by /64 (one host holds a whole /64); IPv4-mapped IPv6 counts as the IPv4 address
  assert.equal(addressKey('2001:db8:0:1::5'), addressKey('2001:0db8:0:1:aaaa:bbbb:cccc:dddd%eth0'))
  assert.notEqual(addressKey('2001:db8:0:1::5'), addressKey('2001:db8:0:2::5'))
  assert.equal(addressKey('::ffff:10.0.0.7'), '10.0.0.7')
  for (let i = 0; i < 5; i++) th.failure(`v6-${i}`, `2001:db8:0:1::${i + 1}`)
  assert.equal(th.check('newcomer', '2001:db8:0:1:ffff::9')?.scope, 'address', 'another address of the same /64 is blocked')
  assert.equal(th.check('newcomer', '2001:db8:0:2::1'), null)
  now += 31
  // bounded: a flood of distinct ids and addresses keeps at most maxKeys of each
  const b = new AuthThrottle({ perClient: 3, perAddress: 3, windowS: 60, blockS: 30, maxKeys: 100 }, () => now)
  for (let i = 0; i < 10_000; i++) b.failure(`id-${i}`, `a-${i}`)
  assert.deepEqual(b.size, { clients: 100, addresses: 100 })
})

test('hasTokenShape: what a blocked attempt must look like before anything is parsed', async () => {
  const key = generateKeyPairSync('ed25519').privateKey
  const jws = signJws(key, 'dev-1', { iss: 'dev-1', aud: 'gw', iat: 1, exp: 2, jti: 'j' })
  assert.ok(hasTokenShape(jws))
  assert.ok(hasTokenShape(Buffer.from(jws)))
  for (const bad of [undefined, '', 'guess-1', 'a.b.c', `${jws}.x`, jws.replace('.', '+'), 'x'.repeat(20_000)]) assert.ok(!hasTokenShape(bad), String(bad).slice(0, 30))
})

/** A valid connect of `dev` from `localAddress`: the CONNACK code. */
async function admitFrom(agent: Awaited<ReturnType<typeof startTestAgent>>, dev: TestDevice, localAddress: string): Promise<number | null> {
  const token = await tokenFor(agent.gateway, dev)
  const r = await rawExchange(agent.mqttPort, connectPacket({ clientId: dev.id, username: dev.id, password: token }), { localAddress })
  return r.connack
}

test('a storm of bad-credential connects: throttled per address and per id, garbage refused unparsed, valid tokens always admitted, blocks expire', async (t) => {
  const clock = new ManualClock(Date.now())
  const agent = await startTestAgent(t, {
    clock,
    flags: { authFailuresPerClient: '5', authFailuresPerAddress: '50', authThrottleWindowS: '60', authBlockS: '30' },
  })
  const gw = agent.gateway
  const throttle = agent.mqttPolicy.throttle
  const legit = await Promise.all(Array.from({ length: 10 }, (_, i) => enrollDevice(gw, `legit-${i}`)))
  const victim = await enrollDevice(gw, 'victim')
  const newcomer = await enrollDevice(gw, 'newcomer')
  const gone = await enrollDevice(gw, 'gone')
  await gw.transition('gone', 'revoke', WHO)
  const forger = generateKeyPairSync('ed25519').privateKey
  const forged = (id: string): string => signJws(forger, id, { iss: id, aud: gw.id, iat: gw.nowS(), exp: gw.nowS() + 60, jti: newJti() })

  // The storm from 127.0.0.2: unknown ids with forged tokens, garbage passwords, no password.
  const storm = scaled(3000)
  const codes = new Map<string, number>()
  const started = performance.now()
  let legitOk = 0
  let legitTried = 0
  const legitLoop = (async () => {
    // Legitimate devices from 127.0.0.1, all through the storm.
    while (legitTried < 200) {
      const dev = legit[legitTried % legit.length]!
      legitTried++
      if ((await admitFrom(agent, dev, '127.0.0.1')) === 0) legitOk++
    }
  })()
  await pool(Array.from({ length: storm }, (_, i) => i), 64, async (i) => {
    const kind = i % 3
    const id = `intruder-${i}`
    const password = kind === 0 ? forged(id) : kind === 1 ? `guess-${i}` : undefined
    const r = await rawExchange(agent.mqttPort, connectPacket({ clientId: id, username: id, ...(password !== undefined ? { password } : {}) }), { localAddress: '127.0.0.2' })
    const k = String(r.connack)
    codes.set(k, (codes.get(k) ?? 0) + 1)
  })
  await legitLoop
  const stormMs = performance.now() - started
  assert.equal(codes.get('0'), undefined, 'no bad credential got in')
  assert.equal(legitOk, legitTried, 'every legitimate connect during the storm was admitted')
  // the garbage two thirds of the storm (not token-shaped) refused unparsed once the address was blocked
  assert.ok(throttle.refused.address >= (storm * 2) / 3 - 100, `most garbage refused by the address throttle without token work (${throttle.refused.address})`)

  // The address block never keeps out a valid token: a device never admitted before gets in from 127.0.0.2 too.
  const verifies = agent.mqttPolicy.admission.stats.verifies
  const refusedBefore = throttle.refused.address
  for (let i = 0; i < 20; i++) {
    const r = await rawExchange(agent.mqttPort, connectPacket({ clientId: `late-${i}`, username: `late-${i}`, password: `guess-${i}` }), { localAddress: '127.0.0.2' })
    assert.equal(r.connack, 5)
  }
  assert.equal(throttle.refused.address, refusedBefore + 20, 'garbage from a blocked address is refused before parsing')
  assert.equal(agent.mqttPolicy.admission.stats.verifies, verifies, 'and costs no signature check')
  assert.equal(await admitFrom(agent, newcomer, '127.0.0.2'), 0)
  assert.equal(await admitFrom(agent, legit[3]!, '127.0.0.2'), 0)
  assert.equal(await admitFrom(agent, newcomer, '127.0.0.5'), 0)

  // Per client id: 5 wrong-key connects for `victim` from 127.0.0.3 block the id, but its valid token still gets in, from anywhere.
  for (let i = 0; i < 5; i++) {
    const r = await rawExchange(agent.mqttPort, connectPacket({ clientId: victim.id, username: victim.id, password: forged(victim.id) }), { localAddress: '127.0.0.3' })
    assert.equal(r.connack, 5)
  }
  assert.equal(throttle.check(victim.id, '127.0.0.4')?.scope, 'client', 'the id is throttled')
  const garbageForVictim = await rawExchange(agent.mqttPort, connectPacket({ clientId: victim.id, username: victim.id, password: 'guess' }), { localAddress: '127.0.0.4' })
  assert.equal(garbageForVictim.connack, 5, 'garbage for a blocked id is refused unparsed')
  assert.equal(await admitFrom(agent, victim, '127.0.0.4'), 0, "the victim's own token gets in through its id's block")
  assert.equal(await admitFrom(agent, legit[1]!, '127.0.0.3'), 0, 'another id from the same address still gets in')

  // A cut identity that is throttled still counts as residual use (PROTOCOL §4).
  for (let i = 0; i < 5; i++) await rawExchange(agent.mqttPort, connectPacket({ clientId: gone.id, username: gone.id, password: forged(gone.id) }), { localAddress: '127.0.0.6' })
  const residualBefore = agent.mqttPolicy.residual.attempts(gone.id)
  const r = await rawExchange(agent.mqttPort, connectPacket({ clientId: gone.id, username: gone.id, password: 'guess' }), { localAddress: '127.0.0.6' })
  assert.equal(r.connack, 5)
  assert.equal(agent.mqttPolicy.residual.attempts(gone.id), residualBefore + 1, 'the throttled attempt of a revoked device is recorded')

  // Blocks expire.
  clock.advance(31_000)
  assert.equal(throttle.check(victim.id, '127.0.0.3'), null, 'the per-id block expired')
  assert.equal(throttle.check('anyone', '127.0.0.2'), null, 'the per-address block expired')

  const byCode = [...codes].map(([k, n]) => `${n} CONNACK ${k}`).join(', ')
  recordFigure(t, {
    area: 'brute force',
    test: 'bad-credential connect storm from one address while legitimate devices connect',
    size: `${storm.toLocaleString('en')} bad connects, ${legitTried} legitimate`,
    result: `${byCode}; ${throttle.refused.address} refused by the address throttle; ${legitOk}/${legitTried} legitimate admitted; ${Math.round((storm * 1000) / stormMs)} connects/s; blocks expired after 30 s`,
    pass: true,
  })
})

test('lock-out barrage: bad connects from one address with no key, naming every device, then the whole fleet reconnects at once', async (t) => {
  // Default throttle settings: the barrage trips both the address and every id it names.
  const agent = await startTestAgent(t)
  const gw = agent.gateway
  const fleet = await Promise.all(Array.from({ length: 150 }, (_, i) => enrollDevice(gw, `fleet-${i}`)))
  // every device admitted once before (the old throttle exempted such ids from the address block, which the barrage exploited)
  await pool(fleet, 32, async (d) => assert.equal(await admitFrom(agent, d, '127.0.0.1'), 0))
  const forger = generateKeyPairSync('ed25519').privateKey
  const forged = (id: string): string => signJws(forger, id, { iss: id, aud: gw.id, iat: gw.nowS(), exp: gw.nowS() + 60, jti: newJti() })
  const barrage = scaled(1500)
  const verifies0 = agent.mqttPolicy.admission.stats.verifies
  const t0 = performance.now()
  let tokenShaped = 0
  await pool(Array.from({ length: barrage }, (_, i) => i), 64, async (i) => {
    const d = fleet[i % fleet.length]!
    const kind = i % 3
    if (kind === 0) tokenShaped++
    const password = kind === 0 ? forged(d.id) : kind === 1 ? `guess-${i}` : undefined
    const r = await rawExchange(agent.mqttPort, connectPacket({ clientId: d.id, username: d.id, ...(password !== undefined ? { password } : {}) }), { localAddress: '127.0.0.9' })
    assert.notEqual(r.connack, 0)
  })
  const barrageMs = performance.now() - t0
  const verifies = agent.mqttPolicy.admission.stats.verifies - verifies0
  assert.ok(verifies <= tokenShaped, `only token-shaped attempts cost a signature check (${verifies} checks, ${tokenShaped} forged tokens)`)
  const blockedIds = fleet.filter((d) => agent.mqttPolicy.throttle.check(d.id, '127.0.0.1')?.scope === 'client').length
  assert.ok(blockedIds > 0, 'the barrage did trip per-id blocks')
  assert.equal(agent.mqttPolicy.throttle.check('x', '127.0.0.9')?.scope, 'address', 'and the address block')

  // Every device at once, from another address, then from the attacker's own address (a shared NAT, one /64).
  const t1 = performance.now()
  const elsewhere = await pool(fleet, 150, (d) => admitFrom(agent, d, '127.0.0.1'))
  const fromAttacker = await pool(fleet, 150, (d) => admitFrom(agent, d, '127.0.0.9'))
  const reconnectMs = performance.now() - t1
  assert.equal(elsewhere.filter((c) => c === 0).length, fleet.length, 'every device reconnects from another address')
  assert.equal(fromAttacker.filter((c) => c === 0).length, fleet.length, "every device reconnects from the attacker's address")
  recordFigure(t, {
    area: 'brute force',
    test: 'lock-out barrage from one address naming every device, then the fleet reconnects at once',
    size: `${barrage.toLocaleString('en')} bad connects (garbage, no password, forged tokens) against ${fleet.length} devices; ${fleet.length * 2} reconnects`,
    result: `${blockedIds} ids and the address blocked; ${verifies} signature checks for ${barrage} attempts (${Math.round((barrage * 1000) / barrageMs)}/s); ${fleet.length}/${fleet.length} reconnected from another address and ${fleet.length}/${fleet.length} from the attacker's, in ${Math.round(reconnectMs)} ms`,
    pass: true,
  })
})

test('half-open TLS connections are closed after connectTimeoutMs: no ClientHello, or a handshake stopped halfway (not after Node\'s 120 s)', async (t) => {
  // closed before the agent stops (after hooks run in the order added): a socket left open would hold up its stop
  const sockets: Socket[] = []
  t.after(() => {
    for (const s of sockets) s.destroy()
  })
  const port = await freePort()
  await startTestAgent(t, { flags: { connectTimeoutMs: '300', mqttsPort: String(port) } })
  const open = (): Promise<Socket> =>
    new Promise((resolve, reject) => {
      const s = netConnect({ host: '127.0.0.1', port }, () => resolve(s))
      s.once('error', reject)
      sockets.push(s)
    })
  // silent after the TCP handshake
  const silent = await open()
  // the first bytes of a ClientHello, and nothing more: a TLS record header announcing 512 bytes, and 4 of them
  const stalled = await open()
  stalled.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]))
  const [a, b] = await Promise.all([closedWithin(silent, 5000), closedWithin(stalled, 5000)])
  assert.equal(a, true, 'a connection that never starts its TLS handshake is closed')
  assert.equal(b, true, 'a connection whose TLS handshake stops halfway is closed')
})

test('half-open connections are closed after connectTimeoutMs; oversize packets and topics are refused and their connections closed', async (t) => {
  const agent = await startTestAgent(t, { flags: { connectTimeoutMs: '300', maxPacketBytes: '4096' } })
  const gw = agent.gateway
  const port = agent.mqttPort
  const dev = await enrollDevice(gw, 'dev-1')
  const dev2 = await enrollDevice(gw, 'dev-2')

  // Half-open: silent sockets and a CONNECT that never finishes.
  const halfOpen = scaled(50)
  const started = performance.now()
  const sockets = await Promise.all(
    Array.from({ length: halfOpen }, (_, i) => rawExchange(port, i % 2 ? Buffer.alloc(0) : connectPacket({ clientId: 'x', password: 'y' }).subarray(0, 10), { keep: true, timeoutMs: 50 })),
  )
  const closed = await Promise.all(sockets.map((r) => closedWithin(r.socket, 10_000)))
  const halfOpenMs = Math.round(performance.now() - started)
  assert.equal(closed.filter(Boolean).length, halfOpen, 'every half-open connection was closed')
  // A device that completes CONNECT in time stays connected past the timeout.
  const ok = await rawExchange(port, connectPacket({ clientId: dev.id, username: dev.id, password: await tokenFor(gw, dev) }), { keep: true })
  assert.equal(ok.connack, 0)
  assert.equal(await closedWithin(ok.socket, 600), false, 'a connected device is not timed out')

  // Oversize, after a good CONNECT (so no connect timeout is at play): a packet announcing 256 MiB, and a
  // PUBLISH of 5000 B, are cut at their header, before the rest is sent or buffered.
  const c1 = await rawExchange(port, connectPacket({ clientId: dev2.id, username: dev2.id, password: await tokenFor(gw, dev2) }), { keep: true })
  assert.equal(c1.connack, 0)
  c1.socket.write(Buffer.concat([Buffer.from([0x30]), varint(268_435_455)]))
  assert.equal(await closedWithin(c1.socket, 5000), true, 'a packet announcing 256 MiB closes the connection')
  const big = publishPacket(`dev/${dev.id}/up`, Buffer.alloc(5000))
  assert.equal(ok.socket.destroyed, false)
  ok.socket.write(big.subarray(0, 100)) // the header alone is enough
  assert.equal(await closedWithin(ok.socket, 5000), true, 'a PUBLISH over maxPacketBytes closes the connection')
  // Within the bound a publish goes through; a topic over MAX_TOPIC_LENGTH is refused (aedes closes on a refused publish).
  const c2 = await rawExchange(port, connectPacket({ clientId: dev.id, username: dev.id, password: await tokenFor(gw, dev) }), { keep: true })
  assert.equal(c2.connack, 0)
  const suback = new Promise<number>((resolve) => c2.socket.on('data', (d: Buffer) => d[0] === 0x90 && resolve(d[d.length - 1]!)))
  c2.socket.write(subscribePacket(1, `dev/${dev.id}/${'x'.repeat(MAX_TOPIC_LENGTH)}`))
  assert.equal(await suback, 0x80, 'a filter over the topic bound is refused')
  c2.socket.write(publishPacket(`dev/${dev.id}/up`, Buffer.alloc(3000)))
  assert.equal(await closedWithin(c2.socket, 300), false, 'a 3000-byte publish is within the bound')
  c2.socket.write(publishPacket(`dev/${dev.id}/${'x'.repeat(MAX_TOPIC_LENGTH)}`, 'x'))
  assert.equal(await closedWithin(c2.socket, 5000), true, 'a publish to a topic over the bound is refused')
  recordFigure(t, {
    area: 'brute force',
    test: 'half-open connections and oversize packets',
    size: `${halfOpen} half-open sockets, connectTimeoutMs 300; packets of 5000 B and 256 MiB against maxPacketBytes 4096`,
    result: `all half-open sockets closed within ${halfOpenMs} ms; oversize packets closed at their header; topic over ${MAX_TOPIC_LENGTH} refused`,
    pass: true,
  })
})
