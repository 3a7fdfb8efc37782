// Live fuzzing of a running agent (the real command, a child process):
// tens of thousands of random and mutated MQTT packets over many raw TCP
// connections, the inputs that crashed MQTT brokers and parsers before
// (huge remaining lengths, SUBSCRIBE pipelined before CONNACK, zero-length
// topics, invalid protocol levels, MQTT 5 property floods, malformed
// CONNECTs), forged acks from an admitted device, garbage on the Modbus
// proxy, and garbage, forged and replayed commands on the uplink through a
// real Mosquitto. Afterwards the agent is alive, admits devices, serves a
// Modbus read and runs a signed command; its RSS stayed bounded; its logs
// show no uncaught or unhandled error.
// Random choices come from a seeded generator: the seed is in the diagnostics
// (EDGEWARDEN_FUZZ_SEED replays a run).
import assert from 'node:assert/strict'
import { sign } from 'node:crypto'
import { generateKeyPair } from '../../agent/store/keys.ts'
import { readFileSync } from 'node:fs'
import { connect } from 'node:net'
import { test } from 'node:test'
import mqtt from 'mqtt'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { mintToken } from '../../firmware-hooks/token.ts'
import { assembleJws, jwsSigningInput } from '../../wire/jws.ts'
import { utf8 } from '../../wire/base64url.ts'
import { encodeFrame } from '../../protocols/modbus/mbap.ts'
import { ControlPlane, publicKeyB64 } from '../../simulators/control-plane.ts'
import { seededRandom } from '../../simulators/fleet.ts'
import { createLegacyModbusDevice } from '../../simulators/modbus-device.ts'
import { spawnAgent, tempDir } from '../helpers/agent.ts'
import { recordFigure, scaled } from '../helpers/figures.ts'
import { RawModbusClient, readHoldingPdu } from '../helpers/modbus.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { mqttConnect, pool } from '../helpers/mqtt-devices.ts'
import { connectPacket, publishPacket, subscribePacket, userProperties, varint } from '../fuzz/mqtt-wire.ts'

const SEED = Number(process.env.EDGEWARDEN_FUZZ_SEED ?? Date.now() % 2 ** 31)
const rand = seededRandom(SEED)
const int = (lo: number, hi: number): number => lo + Math.floor(rand() * (hi - lo + 1))
const pick = <T>(xs: readonly T[]): T => xs[int(0, xs.length - 1)]!
const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => int(0, 255)))

/** Flip, insert or drop a few bytes, or cut the tail; never the input unchanged. */
function mutate(b: Buffer): Buffer {
  const out = change(b)
  if (!out.equals(b)) return out
  return Buffer.concat([b, Buffer.from([int(0, 255)])])
}

function change(b: Buffer): Buffer {
  const out = Buffer.from(b)
  switch (int(0, 3)) {
    case 0:
      for (let i = int(1, 3); i > 0 && out.length; i--) out[int(0, out.length - 1)] = int(0, 255)
      return out
    case 1:
      return out.subarray(0, int(0, out.length))
    case 2: {
      const at = int(0, out.length)
      return Buffer.concat([out.subarray(0, at), bytes(int(1, 8)), out.subarray(at)])
    }
    default: {
      const at = int(0, out.length)
      return Buffer.concat([out.subarray(0, at), out.subarray(Math.min(out.length, at + int(1, 8)))])
    }
  }
}

const randomTopic = (): string => pick(['', '#', '+', '$SYS/#', 'dev/sensor-1/up', 'dev/other/cmd', 'dev/+/cmd', '/', '//', 'a/\u0000/b', 'x'.repeat(int(1, 3000)), 'dev/sensor-1/#', '\uffff'])

const ackForger = generateKeyPair().privateKey

/** What lands on an ack topic: bytes, JWS-shaped junk, acks signed by a key that is not the device's. */
function ackPayload(): Buffer {
  const claims = { iss: 'sensor-1', aud: 'gw1', iat: Math.floor(Date.now() / 1000), jti: `a.${int(0, 1e9)}`, ref: pick(['act-1', '', '__proto__']), status: pick(['done', 'failed', 'x']) }
  const input = jwsSigningInput('sensor-1', claims)
  return pick([() => bytes(int(0, 300)), () => Buffer.from(assembleJws(input, new Uint8Array(sign(null, utf8(input), ackForger)))), () => Buffer.from(`${input}.${bytes(64).toString('base64url')}`)])()
}

/** Packets to follow a CONNECT with (before or after the CONNACK: they are written at once). */
function followUp(): Buffer {
  switch (int(0, 8)) {
    case 8:
      return publishPacket('dev/sensor-1/ack', ackPayload(), int(0, 1), int(1, 65535))
    case 0:
      return subscribePacket(int(0, 65535), randomTopic(), int(0, 3))
    case 1:
      return publishPacket(randomTopic(), bytes(int(0, 200)), int(0, 2), int(0, 65535))
    case 2:
      return publishPacket('', 'zero-length topic', 0) // [MQTT-4.7.3-1]
    case 3:
      return Buffer.from([0xc0, 0x00]) // PINGREQ
    case 4:
      return Buffer.from([pick([0x40, 0x50, 0x62, 0x70, 0xa2, 0xe0, 0xf0, 0x00]), 0x02, int(0, 255), int(0, 255)])
    case 5:
      return mutate(subscribePacket(1, 'dev/sensor-1/cmd'))
    case 6:
      return bytes(int(1, 64))
    default:
      return mutate(publishPacket('dev/sensor-1/up', bytes(int(0, 50)), int(0, 2), 7))
  }
}

const garbagePassword = (): string | Buffer => pick<() => string | Buffer>([() => bytes(int(0, 100)), () => 'x.y.z', () => `${bytes(30).toString('base64url')}.${bytes(60).toString('base64url')}.${bytes(64).toString('base64url')}`])()

interface Script {
  kind: string
  writes: Buffer[]
}

/**
 * One connection's worth of hostile MQTT. `token` mints real tokens: of
 * sensor-1, to fuzz a session after admission, and of sensor-m, to mutate
 * (sensor-m's id also takes the bad credentials, so it ends up throttled).
 */
async function mqttScript(token: (id: 'sensor-1' | 'sensor-m') => Promise<string>): Promise<Script> {
  const id = pick(['sensor-m', 'ghost', `fz-${int(0, 1e6)}`, '', 'a'.repeat(int(24, 300))])
  const tail = (n: number): Buffer[] => Array.from({ length: n }, followUp)
  switch (int(0, 9)) {
    case 0:
      return { kind: 'random bytes', writes: Array.from({ length: int(1, 20) }, () => bytes(int(1, 300))) }
    case 1:
      // SUBSCRIBE (and more) pipelined before the CONNACK
      return { kind: 'pipelined before CONNACK', writes: [Buffer.concat([connectPacket({ clientId: id, username: id, password: garbagePassword() }), ...tail(int(1, 60))])] }
    case 2: {
      const first = pick([0x10, 0x30, 0x82, 0xc0])
      const huge = pick([varint(268_435_455), Buffer.from([0xff, 0xff, 0xff, 0xff, 0x7f]), Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), varint(int(70_000, 10_000_000))])
      return { kind: 'huge remaining length', writes: [Buffer.concat([Buffer.from([first]), huge]), bytes(int(0, 2000))] }
    }
    case 3:
      return {
        kind: 'invalid protocol level or name',
        writes: [connectPacket({ clientId: id, username: id, password: garbagePassword(), level: pick([0, 1, 2, 3, 6, 7, 128, 255]), protocolName: pick(['MQTT', 'MQIsdp', '', 'MQTT\u0000', 'HTTP']) }), ...tail(int(0, 5))],
      }
    case 4:
      // MQTT 5 property floods: thousands of user properties, within and over the packet bound
      return { kind: 'MQTT 5 property flood', writes: [connectPacket({ clientId: id, username: id, password: garbagePassword(), level: 5, properties: userProperties(int(100, 4000), int(1, 12)) }), ...tail(int(0, 5))] }
    case 5: {
      // malformed CONNECT: reserved flag, will QoS 3 without a will, password without user name, a lying client id length, keep-alive 0
      const c = connectPacket({ clientId: id, username: id, password: garbagePassword(), flags: pick([0x01, 0x1c, 0x04, 0x42, 0xff, 0x00, 0x20]), keepaliveS: int(0, 65535) })
      const lying = Buffer.from(c)
      if (lying.length > 13) lying.writeUInt16BE(int(0, 65535), 12)
      return { kind: 'malformed CONNECT', writes: [pick([c, lying]), ...tail(int(0, 5))] }
    }
    case 6:
      return { kind: 'mutated CONNECT with a real token', writes: [mutate(connectPacket({ clientId: 'sensor-m', username: 'sensor-m', password: await token('sensor-m') })), ...tail(int(0, 10))] }
    case 7:
      return { kind: 'admitted device, then hostile packets', writes: [connectPacket({ clientId: 'sensor-1', username: 'sensor-1', password: await token('sensor-1') }), ...tail(int(1, 40))] }
    case 8:
      return { kind: 'second CONNECT and oversize packet', writes: [connectPacket({ clientId: id, username: id, password: garbagePassword() }), connectPacket({ clientId: id }), publishPacket('dev/x', bytes(int(66_000, 120_000)))] }
    default:
      return { kind: 'mutated packets', writes: [mutate(connectPacket({ clientId: id, username: id, password: garbagePassword() })), ...tail(int(1, 30)).map(mutate)] }
  }
}

/** Connect (from `localAddress`), write everything, then wait for the close or `lingerMs`. */
function play(port: number, writes: Buffer[], localAddress: string, lingerMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress })
    let closedByPeer = false
    const timer = setTimeout(() => s.destroy(), lingerMs)
    s.on('error', () => {})
    s.on('data', () => {})
    s.on('end', () => (closedByPeer = true))
    s.on('connect', () => {
      for (const w of writes) if (!s.destroyed) s.write(w)
    })
    s.on('close', () => {
      clearTimeout(timer)
      resolve(closedByPeer)
    })
  })
}

function modbusScript(unit: number): Buffer[] {
  const frames: Buffer[] = []
  for (let i = int(1, 25); i > 0; i--) {
    switch (int(0, 5)) {
      case 0:
        frames.push(bytes(int(1, 300)))
        break
      case 1: {
        const f = encodeFrame(int(0, 65535), pick([unit, int(0, 255)]), bytes(int(1, 253)))
        f.writeUInt16BE(pick([0, 1, 255, 256, 65535, int(0, 65535)]), 4) // a lying length
        frames.push(f)
        break
      }
      case 2:
        frames.push(encodeFrame(int(0, 65535), unit, bytes(int(1, 253))).subarray(0, int(1, 12))) // truncated
        break
      case 3:
        frames.push(encodeFrame(int(0, 65535), pick([unit, int(0, 255)]), bytes(int(1, 253))))
        break
      case 4:
        frames.push(encodeFrame(int(0, 65535), unit, Buffer.from([pick([1, 2, 3, 4, 5, 6, 15, 16, 22, 23, 43, 8, 0x80]), ...bytes(int(0, 12))])))
        break
      default:
        frames.push(mutate(encodeFrame(int(0, 65535), unit, readHoldingPdu(int(0, 65535), int(0, 200)))))
    }
  }
  return frames
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return Number(m?.[1] ?? NaN)
}

test('live fuzzing: hostile MQTT, Modbus and uplink input; the agent stays up, bounded, and keeps working', async (t) => {
  t.diagnostic(`seed ${SEED}`)
  const central = await Mosquitto.start(t)
  const cpKey = generateKeyPair().privateKey
  const forger = generateKeyPair().privateKey
  const plc = await createLegacyModbusDevice()
  await plc.device.start()
  t.after(() => plc.device.stop())
  const agent = await spawnAgent([
    '--data-dir', tempDir(t), '--site', 'site1', '--gateway', 'gw1',
    '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--modbus-host', '127.0.0.1', '--modbus-port', '0', '--modbus-timeout', '300',
    '--uplink', central.url, '--cp-key', `cp1=${publicKeyB64(cpKey)}`, '--log-level', 'info', '--reject-report-interval', '1',
  ]) // prettier-ignore
  t.after(async () => void (await agent.stop('SIGKILL')))
  const pid = agent.proc.pid!
  const mqttPort = (agent.ready.mqtt as { mqtt: number }).mqtt
  const modbusPort = agent.ready.modbus as number
  const cp = new ControlPlane({ broker: central.url, site: 'site1', gateway: 'gw1', key: cpKey, kid: 'cp1', gatewayKey: agent.ready.publicKey as string })
  await cp.connect()
  t.after(() => cp.close())
  await cp.waitOnline()

  const keys = { 'sensor-1': await keygen(), 'sensor-2': await keygen(), 'sensor-m': await keygen() }
  const enroll = cp.sign('device.enroll', { device: { id: 'sensor-1', publicKey: publicKeyToB64(keys['sensor-1'].publicKey) } })
  const done = cp.waitFor((e) => e.data.jti === enroll.jti && e.type === 'cmd.completed')
  await cp.publishRaw(enroll.jws)
  await done
  for (const id of ['sensor-2', 'sensor-m'] as const) assert.equal((await cp.run('device.enroll', { device: { id, publicKey: publicKeyToB64(keys[id].publicKey) } })).type, 'cmd.completed')
  assert.equal((await cp.run('device.enroll', { device: { id: 'plc-1', publicKey: plc.publicKey, modbus: { host: '127.0.0.1', port: plc.device.port, unitId: 3, hookBase: null } } })).type, 'cmd.completed')
  const token = (id: keyof typeof keys): Promise<string> => mintToken({ deviceId: id, gatewayId: 'gw1', secretKey: keys[id].secretKey })
  const rssBefore = rssKiB(pid)
  let rssPeak = rssBefore
  const sampler = setInterval(() => (rssPeak = Math.max(rssPeak, rssKiB(pid))), 100)
  t.after(() => clearInterval(sampler))
  // The uplink: garbage, forgeries, refusable signed commands and replays on the command topic.
  const nowS = Math.floor(Date.now() / 1000)
  const forged = (claims: Record<string, unknown>, kid = 'cp1', key = forger): string => {
    const input = jwsSigningInput(kid, claims)
    return assembleJws(input, new Uint8Array(sign(null, utf8(input), key)))
  }
  const claims = (over: Record<string, unknown> = {}): Record<string, unknown> => ({ iss: 'cp', aud: 'gw1', iat: nowS, exp: nowS + 600, jti: `fz.${int(0, 1e9)}`, op: 'device.revoke', args: { deviceId: 'sensor-1' }, ...over })
  const uplinkCases: [string, () => Buffer | string][] = [
    ['random bytes', () => bytes(int(0, 400))],
    ['not a JWS', () => pick(['', '{}', 'a.b.c', 'null', '...', 'x'.repeat(int(1, 20_000))])],
    ['mutated valid command', () => mutate(Buffer.from(cp.sign('device.quarantine', { deviceId: 'sensor-1' }).jws))],
    ['forged signature', () => forged(claims())],
    ['unknown kid', () => forged(claims(), 'cp-9', cpKey)],
    ['alg none', () => `${Buffer.from('{"alg":"none","kid":"cp1"}').toString('base64url')}.${Buffer.from(JSON.stringify(claims())).toString('base64url')}.`],
    ['wrong audience', () => forged(claims({ aud: 'gw2' }), 'cp1', cpKey)],
    ['expired', () => forged(claims({ iat: nowS - 7200, exp: nowS - 3600 }), 'cp1', cpKey)],
    ['unknown op', () => forged(claims({ op: pick(['device.explode', '', '__proto__', 'constructor']) }), 'cp1', cpKey)],
    ['invalid args', () => forged(claims({ args: pick([null, [], { deviceId: 5 }, { deviceId: '../../x' }, { device: { id: 'x' } }, { __proto__: { deviceId: 'sensor-1' } }]) }), 'cp1', cpKey)],
    ['unknown device', () => forged(claims({ args: { deviceId: `nobody-${int(0, 1e6)}` } }), 'cp1', cpKey)],
    ['replay', () => enroll.jws],
  ]
  const raw = await mqtt.connectAsync(central.url, { protocolVersion: 4, reconnectPeriod: 0 })
  t.after(() => raw.endAsync(true))
  let answered = 0
  /** a replayed command is answered cmd.duplicate at most once per jti every 2 s (the rest only counted), not once per copy */
  let duplicates = 0
  let allAnswered: (() => void) | null = null
  const answers = new Map<string, number>()
  const offAnswers = cp.onEvent((e) => {
    const k = `${e.type} ${String(e.data.reason ?? e.data.state ?? '')}`
    // a burst report of unauthenticated messages answers `count` of them at once
    const n = typeof e.data.count === 'number' ? e.data.count : 1
    answers.set(k, (answers.get(k) ?? 0) + n)
    if (e.type === 'cmd.rejected') answered += n
    if (e.type === 'cmd.duplicate') duplicates++
    if (answered >= uplinkSent - (uplinkKinds.get('replay') ?? 0)) allAnswered?.()
  })

  const kinds = new Map<string, number>()
  const uplinkKinds = new Map<string, number>()
  let mqttPackets = 0
  let mqttConnections = 0
  let modbusFrames = 0
  let modbusConnections = 0
  let uplinkSent = 0
  /** One round of all three at once, `share` of the sizes. */
  const round = async (share: number): Promise<void> => {
    // MQTT: many connections from many loopback addresses (the address throttle sees a crowd, not one source).
    const mqttUntil = mqttPackets + scaled(20_000) * share
    const mqttFuzz = (async () => {
      while (mqttPackets < mqttUntil) {
        const scripts = await Promise.all(Array.from({ length: 64 }, () => mqttScript(token)))
        await pool(scripts, 32, async (s, i) => {
          mqttPackets += s.writes.length + s.writes.reduce((n, w) => n + (s.kind === 'random bytes' || s.kind === 'mutated packets' ? 0 : Math.max(0, countPackets(w) - 1)), 0)
          kinds.set(s.kind, (kinds.get(s.kind) ?? 0) + 1)
          mqttConnections++
          await play(mqttPort, s.writes, `127.0.1.${((mqttConnections + i) % 250) + 1}`, 150)
        })
      }
    })()
    // Modbus proxy garbage.
    const modbusUntil = modbusFrames + scaled(5000) * share
    const modbusFuzz = (async () => {
      while (modbusFrames < modbusUntil) {
        await pool(Array.from({ length: 32 }, () => modbusScript(3)), 16, async (frames) => {
          modbusFrames += frames.length
          modbusConnections++
          await play(modbusPort, frames, '127.0.0.1', 150)
        })
      }
    })()
    const uplinkFuzz = (async () => {
      for (let i = scaled(1500) * share; i > 0; i--) {
        const [kind, make] = pick(uplinkCases)
        uplinkKinds.set(kind, (uplinkKinds.get(kind) ?? 0) + 1)
        uplinkSent++
        await raw.publishAsync(cp.topics.cmd, make(), { qos: 1 })
      }
    })()
    await Promise.all([mqttFuzz, modbusFuzz, uplinkFuzz])
    // A valid signed command runs behind every uplink message sent before it.
    const barrier = await cp.run('inventory.report', {}, { timeoutMs: 60_000 })
    assert.equal(barrier.type, 'cmd.completed')
    await new Promise((r) => setTimeout(r, 500)) // settle: closed sockets and timers drain (a bound, not a wait on an event)
  }

  // Rounds of the same work: the first ones grow the heap to its working size (one on Node 20, two on
  // Node 24, whose V8 grows its heap in larger steps: 150 → 220 → 295 → 330 → 331 → 333 MiB measured);
  // a leak shows as growth from the next to last round to the last.
  const started = performance.now()
  const warmUpRounds = Number(process.versions.node.split('.')[0]) >= 22 ? 2 : 1
  for (let i = 0; i < warmUpRounds; i++) await round(0.5)
  const rssRound1 = rssKiB(pid)
  await round(0.5)
  const rssRound2 = rssKiB(pid)
  const fuzzMs = performance.now() - started
  // The last burst report comes when its interval (1 s here) ends.
  const replays = uplinkKinds.get('replay') ?? 0
  if (answered < uplinkSent - replays) await new Promise<void>((resolve) => ((allAnswered = resolve), setTimeout(resolve, 15_000).unref()))
  offAnswers()
  assert.equal(answered, uplinkSent - replays, 'every uplink message but the replays was answered cmd.rejected (unsigned ones in burst reports)')
  assert.ok(replays === 0 || (duplicates >= 1 && duplicates <= Math.ceil(fuzzMs / 2000) + 2), `the ${replays} replays of one command were answered cmd.duplicate now and then, not each: ${duplicates}`)
  // ... devices with valid tokens are admitted (the one whose session was fuzzed, and one left alone), and their sessions work ...
  for (const id of ['sensor-1', 'sensor-2'] as const) {
    const c = await mqttConnect(mqttPort, { clientId: id, username: id, password: await token(id) })
    assert.ok(c.ok, `${id} admitted after the fuzzing: ${c.ok ? '' : `${c.code} ${c.message}`}`)
    await c.client.subscribeAsync(`dev/${id}/cmd`, { qos: 1 })
    await c.client.endAsync()
  }
  // (sensor-m, whose id took thousands of bad credentials, is throttled, but its valid token still gets in.)
  const m = await mqttConnect(mqttPort, { clientId: 'sensor-m', username: 'sensor-m', password: await token('sensor-m') })
  assert.ok(m.ok, `the id under attack is still admitted with its valid token: ${m.ok ? '' : `${m.code} ${m.message}`}`)
  await m.client.endAsync()
  // ... the proxy serves a Modbus read ...
  const mb = await RawModbusClient.open(modbusPort)
  const answer = await mb.request(4242, 3, readHoldingPdu(0, 2))
  mb.end()
  assert.equal(answer.pdu[0], 3, `a read through the proxy: ${answer.pdu.toString('hex')}`)
  // ... and a command that changes something completes.
  const q = await cp.run('device.quarantine', { deviceId: 'sensor-1', reason: 'fuzz done' })
  assert.equal(q.type, 'cmd.completed', JSON.stringify(q))

  const mib = (k: number): string => (k / 1024).toFixed(1)
  // Memory: the second round must not grow what the first settled at. RSS moves by ±20 MiB with the
  // garbage collector (six rounds in a row settled at 158-171 MiB, the first round adds ~50 MiB of
  // heap warm-up); a leak proportional to the work would add about that much again.
  clearInterval(sampler)
  const growthMiB = (rssRound2 - rssRound1) / 1024
  t.diagnostic(`RSS ${rssBefore} KiB before, ${rssRound1} after the warm-up (${warmUpRounds} round(s)), ${rssRound2} after one more, peak ${rssPeak}`)
  assert.equal(agent.proc.exitCode, null, 'the agent is alive')
  assert.equal(agent.proc.signalCode, null)
  const logs = agent.lines.map((l) => JSON.stringify(l)).join('\n') + agent.stderr()
  assert.doesNotMatch(logs, /uncaught|unhandled/i, 'no uncaught exception or unhandled rejection')
  const errors = agent.lines.filter((l) => typeof l.level === 'number' && l.level >= 50)
  assert.deepEqual(errors, [], 'no error-level log line')
  assert.ok(growthMiB < 48, `RSS grew ${growthMiB.toFixed(1)} MiB in the round after the warm-up`)
  assert.ok(rssPeak - rssBefore < 256 * 1024, `RSS peaked ${mib(rssPeak - rssBefore)} MiB over its start`)

  const fmt = (m: Map<string, number>): string => [...m].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ${n}`).join(', ')
  t.diagnostic(`MQTT connections by kind: ${fmt(kinds)}`)
  t.diagnostic(`uplink messages by kind: ${fmt(uplinkKinds)}`)
  t.diagnostic(`uplink answers: ${fmt(answers)}`)
  recordFigure(t, {
    area: 'fuzzing',
    test: 'live fuzzing of the running agent (MQTT, Modbus proxy, uplink)',
    size: `${mqttPackets.toLocaleString('en')} MQTT packets over ${mqttConnections.toLocaleString('en')} connections, ${modbusFrames.toLocaleString('en')} Modbus frames over ${modbusConnections} connections, ${uplinkSent.toLocaleString('en')} uplink messages, in two rounds, in ${(fuzzMs / 1000).toFixed(1)} s`,
    result: `alive, no uncaught/unhandled error, every uplink message answered, then admitted devices (the id under attack too, with its valid token), served a Modbus read, completed a signed command; RSS ${mib(rssBefore)} MiB at start, ${mib(rssRound1)} after round 1, ${mib(rssRound2)} after round 2 (${growthMiB >= 0 ? '+' : ''}${growthMiB.toFixed(1)} MiB), peak ${mib(rssPeak)}`,
    pass: true,
  })
})

/** How many MQTT packets a well-framed write holds (best effort: stops at the first that does not fit). */
function countPackets(b: Buffer): number {
  let n = 0
  let i = 0
  while (i < b.length) {
    let len = 0
    let mul = 1
    let j = i + 1
    for (; j < b.length && j < i + 5; j++) {
      len += (b[j]! & 0x7f) * mul
      mul *= 128
      if ((b[j]! & 0x80) === 0) break
    }
    n++
    i = j + 1 + len
  }
  return Math.max(n, 1)
}
