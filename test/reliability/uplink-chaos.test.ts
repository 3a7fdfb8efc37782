// Uplink chaos: the central Mosquitto is killed with SIGKILL and
// restarted again and again while the control plane sends commands and the
// gateway produces events, then stays down for a long outage (many backoff
// periods) during which the gateway keeps deciding from its own registry.
// Afterwards every event has arrived (seq gapless, redeliveries identical),
// every command ran exactly once, and the reconnect backoff stayed bounded.
import assert from 'node:assert/strict'
import { generateKeyPair } from '../../agent/store/keys.ts'
import { test } from 'node:test'
import { ControlPlane, publicKeyB64, TERMINAL, type GatewayEvent } from '../../simulators/control-plane.ts'
import { startTestAgent } from '../helpers/agent.ts'
import { recordFigure, scaled } from '../helpers/figures.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { closed, enrollDevice, mqttConnect, tokenFor, WHO } from '../helpers/mqtt-devices.ts'

const BACKOFF = { minMs: 100, maxMs: 800 }
/** The long outage: many times the longest backoff. */
const OUTAGE_MS = 6 * BACKOFF.maxMs

interface LogLine {
  msg?: string
  time?: string
  delayMs?: number
  attempt?: number
}

test('central broker killed and restarted during bursts, then a long outage: nothing lost, local decisions go on, backoff bounded', { timeout: 180_000 }, async (t) => {
  const seed = Number(process.env.EDGEWARDEN_TEST_SEED ?? Math.floor(Math.random() * 2 ** 31))
  t.diagnostic(`seed ${seed} (replay with EDGEWARDEN_TEST_SEED=${seed})`)
  let x = seed >>> 0 || 1
  const rand = (): number => ((x = Math.imul(x ^ (x >>> 16), 0x45d9f3b) + 0x6b43a9b5) >>> 0) / 4294967296

  const m = await Mosquitto.start(t)
  const cpKey = generateKeyPair().privateKey
  const logs: LogLine[] = []
  const logWaiters = new Set<(l: LogLine) => void>()
  const agent = await startTestAgent(t, {
    flags: { uplink: m.url, cpKey: [`cp1=${publicKeyB64(cpKey)}`], uplinkBackoffMinMs: BACKOFF.minMs, uplinkBackoffMaxMs: BACKOFF.maxMs },
    logLevel: 'info',
    logSink: (line) => {
      const l = JSON.parse(line) as LogLine
      logs.push(l)
      for (const w of logWaiters) w(l)
    },
  })
  const nextLog = (msg: string, timeoutMs = 20_000): Promise<LogLine> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => (logWaiters.delete(w), reject(new Error(`no "${msg}" in the agent log within ${timeoutMs} ms`))), timeoutMs)
      const w = (l: LogLine): void => {
        if (l.msg !== msg) return
        clearTimeout(timer)
        logWaiters.delete(w)
        resolve(l)
      }
      logWaiters.add(w)
    })
  const gw = agent.gateway
  const cp = new ControlPlane({ broker: m.url, site: 'site1', gateway: 'gw1', key: cpKey, kid: 'cp1', gatewayKey: gw.key.publicKeyB64, clientId: 'cp-chaos' })
  await cp.connect()
  t.after(() => cp.close())
  await cp.waitOnline()

  // Events by seq; a redelivered seq must be the very same signed event.
  const bySeq = new Map<number, GatewayEvent>()
  const differing: number[] = []
  let redelivered = 0
  const arrived = new Set<() => void>()
  cp.onEvent((e) => {
    const before = bySeq.get(e.seq)
    if (before) {
      redelivered++
      if (before.raw !== e.raw || e.verified !== true) differing.push(e.seq)
    } else bySeq.set(e.seq, e)
    for (const f of arrived) f()
  })
  /** Resolves true once `cond` holds (checked on each event), false after `timeoutMs`. */
  const until = (cond: () => boolean, timeoutMs: number): Promise<boolean> =>
    new Promise((resolve) => {
      if (cond()) return resolve(true)
      const timer = setTimeout(() => (arrived.delete(check), resolve(false)), timeoutMs)
      const check = (): void => {
        if (!cond()) return
        clearTimeout(timer)
        arrived.delete(check)
        resolve(true)
      }
      arrived.add(check)
    })
  const missingUpTo = (n: number): number[] => Array.from({ length: n }, (_, i) => i + 1).filter((s) => !bySeq.has(s))
  const allUpTo = async (n: number): Promise<void> => {
    if (!(await until(() => missingUpTo(n).length === 0, 30_000))) {
      const missing = missingUpTo(n)
      assert.fail(`${missing.length} events of 1..${n} never arrived: ${missing.slice(0, 10).join(', ')}`)
    }
  }

  // A graceful restart saves both persistent sessions (the gateway's command
  // subscription, the control plane's event subscription) to Mosquitto's
  // persistence file; every SIGKILL below restarts from that file, as a
  // central broker with persistence would.
  const reconnected = nextLog('uplink connected')
  await m.restart()
  await reconnected
  await cp.waitOnline()

  // --- Part 1: SIGKILL and restart during bursts of commands and events.
  const CYCLES = scaled(6)
  const BURST = 20
  const commands = new Map<string, string>() // jti -> signed command, sent again until answered
  const publishes: Promise<void>[] = []
  let kills = 0
  for (let c = 0; c < CYCLES; c++) {
    for (let i = 0; i < BURST; i++) {
      const { jti, jws } = cp.sign('device.enroll', { device: { id: `cp-${c}-${i}`, publicKey: publicKeyB64(generateKeyPair().privateKey) } })
      commands.set(jti, jws)
      publishes.push(cp.publishRaw(jws).catch(() => {}))
    }
    const local = Array.from({ length: BURST }, (_, i) => gw.enroll({ id: `loc-${c}-${i}`, publicKey: publicKeyB64(generateKeyPair().privateKey) }, WHO))
    await new Promise((resolve) => setTimeout(resolve, Math.floor(rand() * 150)))
    await m.stop('SIGKILL')
    kills++
    await Promise.all(local)
    await new Promise((resolve) => setTimeout(resolve, 100 + Math.floor(rand() * 500)))
    await m.restart()
    // What a broker holds for a disconnected subscriber dies with it: the
    // next kill comes once the control plane is back (its status read again).
    await cp.waitOnline()
  }
  // The control plane's side of exactly-once: a command not yet answered is
  // sent again, the same signed bytes; the gateway's jti memory does the rest.
  const answered = (): Set<string> => new Set([...bySeq.values()].filter((e) => TERMINAL.has(e.type)).map((e) => String(e.data.jti)))
  const resent = new Set<string>()
  for (let round = 0; round < 20; round++) {
    const missing = [...commands].filter(([jti]) => !answered().has(jti))
    if (missing.length === 0) break
    if (round > 0) {
      for (const [jti] of missing) resent.add(jti)
      for (const [, jws] of missing) publishes.push(cp.publishRaw(jws).catch(() => {}))
    }
    await until(() => [...commands.keys()].every((jti) => answered().has(jti)), 2000)
  }
  await Promise.all(publishes)
  await agent.commands.idle()
  const lastPart1 = gw.outbox.lastSeq
  await allUpTo(lastPart1)
  for (const jti of commands.keys()) {
    const answers = [...bySeq.values()].filter((e) => e.data.jti === jti)
    assert.equal(answers.filter((e) => e.type === 'cmd.accepted').length, 1, `${jti} accepted once`)
    assert.equal(answers.filter((e) => e.type === 'cmd.completed').length, 1, `${jti} completed once`)
  }
  assert.equal([...gw.registry.values()].filter((d) => d.spec.id.startsWith('cp-')).length, CYCLES * BURST, 'every command enrolled its device')
  assert.deepEqual(differing, [], 'redelivered events are identical')
  recordFigure(t, {
    area: 'uplink chaos',
    test: 'central Mosquitto SIGKILLed and restarted during bursts of commands and events',
    size: `${kills} kills, ${commands.size} commands, ${lastPart1} events`,
    result: `every event arrived (seq 1..${lastPart1} gapless, ${redelivered} identical redeliveries); every command accepted and completed once (${resent.size} not answered within 2 s were re-sent by the control plane, same jti); seed ${seed}`,
    pass: true,
  })

  // --- Part 2: a long outage; the gateway decides alone from its registry.
  const good = await enrollDevice(gw, 'good-1')
  const stolen = await enrollDevice(gw, 'stolen-1')
  const lost = await enrollDevice(gw, 'lost-1')
  const revoked = await cp.run('device.revoke', { deviceId: stolen.id, reason: 'reported stolen' })
  assert.equal(revoked.type, 'cmd.completed')
  const port = agent.mqttPort
  const before = gw.outbox.lastSeq
  const down = nextLog('uplink down; events stay in the outbox')
  const outageStart = Date.now()
  await m.stop('SIGKILL')
  await down

  const refusedStolen = await mqttConnect(port, { clientId: stolen.id, username: stolen.id, password: await tokenFor(gw, stolen) })
  assert.equal(refusedStolen.ok, false, 'a device revoked by the control plane stays refused while it is unreachable')
  const admitted = await mqttConnect(port, { clientId: good.id, username: good.id, password: await tokenFor(gw, good) })
  assert.ok(admitted.ok, 'a good device is admitted during the outage')
  const lostSession = await mqttConnect(port, { clientId: lost.id, username: lost.id, password: await tokenFor(gw, lost) })
  assert.ok(lostSession.ok)
  const cut = closed(lostSession.client)
  await gw.transition(lost.id, 'revoke', { actor: 'local:operator', reason: 'lost during the outage' })
  await cut
  const refusedLost = await mqttConnect(port, { clientId: lost.id, username: lost.id, password: await tokenFor(gw, lost) })
  assert.equal(refusedLost.ok, false, 'a device revoked locally during the outage is cut off and refused')
  const renew = await agent.actions.queue(good.id, 'renew', WHO)
  assert.ok(gw.actions.pending(good.id).some((a) => a.id === renew.id), 'a device action queues during the outage')
  const OUTAGE_EVENTS = scaled(200)
  await Promise.all(Array.from({ length: OUTAGE_EVENTS }, (_, i) => gw.enroll({ id: `outage-${i}`, publicKey: publicKeyB64(generateKeyPair().privateKey) }, WHO)))
  admitted.client.end(true)
  const during = gw.outbox.lastSeq
  // The outage lasts its full length: the point is how the gateway behaves across many backoff periods.
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, OUTAGE_MS - (Date.now() - outageStart))))
  const up = nextLog('uplink connected')
  const restartedAt = Date.now()
  await m.restart()
  await up
  const reconnectMs = Date.now() - restartedAt
  const outageMs = Date.now() - outageStart
  await allUpTo(during)
  await agent.uplink!.drained()

  const duringOutage = [...bySeq.values()].filter((e) => e.seq > before && e.seq <= during)
  assert.equal(duringOutage.length, during - before, 'every event produced during the outage arrived')
  assert.ok(duringOutage.some((e) => e.type === 'device.state' && e.data.deviceId === lost.id && e.data.to === 'revoked'))
  assert.ok(duringOutage.some((e) => e.type === 'action.queued' && e.data.actionId === renew.id))
  assert.deepEqual(differing, [], 'redelivered events are identical')
  // Backoff: every delay logged during the outage is within the configured bound, and the gateway kept trying.
  const attempts = logs.filter((l) => l.msg === 'uplink reconnecting' && Date.parse(l.time ?? '') >= outageStart && Date.parse(l.time ?? '') <= outageStart + outageMs)
  const delays = attempts.map((l) => l.delayMs ?? Infinity)
  assert.ok(delays.every((d) => d <= BACKOFF.maxMs), `reconnect delays ${delays.join(', ')} stay within ${BACKOFF.maxMs} ms`)
  assert.ok(delays.some((d) => d > BACKOFF.maxMs / 2), 'the backoff grew to its cap during the outage')
  assert.ok(attempts.length >= Math.floor(OUTAGE_MS / BACKOFF.maxMs) - 1, `${attempts.length} reconnect attempts in ${outageMs} ms`)
  recordFigure(t, {
    area: 'uplink chaos',
    test: 'long outage of the central broker (SIGKILL, restart after many backoff periods)',
    size: `${outageMs} ms outage (backoff ${BACKOFF.minMs}..${BACKOFF.maxMs} ms), ${during - before} events produced meanwhile`,
    result: `revoked device refused, good device admitted, local revocation cut a live session, action queued; all ${during - before} events arrived; ${attempts.length} reconnect attempts, longest delay ${Math.max(...delays)} ms; reconnected ${reconnectMs} ms after the broker returned`,
    pass: true,
  })
})
