// PROTOCOL §3, re-sends and the window: a central broker drops QoS 1
// messages beyond its per-client queue (Mosquitto's max_queued_messages).
// Published all at once, most of a large bulk is lost there; through
// `ctl bulk`'s bounded window, with re-sends of what got no answer (same
// jti), every command completes, and the gateway runs each one once.
// A real Mosquitto with a small queue, a real agent as its uplink client.
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import { COMMANDS_WAITING_MAX } from '../../agent/commands/processor.ts'
import { generateKeyPair, writeKeyFile } from '../../agent/store/keys.ts'
import { ControlPlane } from '../../simulators/control-plane.ts'
import { holdChain, runCli, startTestAgent, tempDir } from '../helpers/agent.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'

const N = 2000
/** Small enough that a burst overflows it at once; Mosquitto's default is 1000. */
const QUEUE = 100

/** What the gateway itself committed, per command and per device: the ground truth of "ran once", whatever reached us. */
function ledger(agent: Awaited<ReturnType<typeof startTestAgent>>): {
  accepted: Map<string, number>
  completed: Map<string, number>
  duplicate: Map<string, string[]>
  /** device id -> jtis accepted for it */
  jtisOf: Map<string, Set<string>>
  stateChanges: Map<string, number>
} {
  const l = { accepted: new Map<string, number>(), completed: new Map<string, number>(), duplicate: new Map<string, string[]>(), jtisOf: new Map<string, Set<string>>(), stateChanges: new Map<string, number>() }
  const bump = (m: Map<string, number>, k: string): void => void m.set(k, (m.get(k) ?? 0) + 1)
  agent.gateway.onCommitted((change) => {
    for (const e of change.events ?? []) {
      const jti = String(e.data.jti)
      if (e.type === 'cmd.accepted') bump(l.accepted, jti)
      else if (e.type === 'cmd.completed') {
        bump(l.completed, jti)
        const id = String(e.data.deviceId)
        l.jtisOf.set(id, (l.jtisOf.get(id) ?? new Set()).add(jti))
      } else if (e.type === 'cmd.duplicate') l.duplicate.set(jti, [...(l.duplicate.get(jti) ?? []), String(e.data.state)])
      else if (e.type === 'device.state') bump(l.stateChanges, String(e.data.deviceId))
    }
  })
  return l
}

async function setup(t: TestContext) {
  const m = await Mosquitto.start(t, [], { settings: [`max_queued_messages ${QUEUE}`, 'max_inflight_messages 20'] })
  const dir = tempDir(t)
  const cpKey = generateKeyPair()
  const keyFile = join(dir, 'cp.key')
  writeKeyFile(keyFile, cpKey)
  const agent = await startTestAgent(t, { flags: { uplink: m.url, cpKey: [`ops=${cpKey.publicKeyB64}`] } })
  const l = ledger(agent)
  const cp = new ControlPlane({ broker: m.url, site: 'site1', gateway: 'gw1', key: keyFile, kid: 'ops', gatewayKey: agent.gateway.key.publicKeyB64 })
  await cp.connect()
  t.after(() => cp.close())
  await cp.waitOnline()
  const link = ['--broker', m.url, '--site', 'site1', '--gateway', 'gw1', '--key', keyFile, '--kid', 'ops', '--gateway-key', agent.gateway.key.publicKeyB64]
  return { m, dir, agent, l, cp, link, devicePublicKey: generateKeyPair().publicKeyB64 }
}

/**
 * Keep the gateway answering other commands while `more()` says so: each a
 * device.release of no enrolled device, refused at once (outside the chain),
 * one after another, `pauseMs` apart.
 */
async function answerOthers(cp: ControlPlane, more: () => boolean, pauseMs: number, publish = (p: string): Promise<void> => cp.publishRaw(p)): Promise<void> {
  for (let i = 0; more(); i++) {
    const other = cp.sign('device.release', { deviceId: `nobody-${i}` })
    const answered = cp.waitFor((e) => e.type === 'cmd.rejected' && e.data.jti === other.jti)
    await publish(other.jws)
    await answered
    await new Promise((r) => setTimeout(r, pauseMs))
  }
}

const ids = (prefix: string): string[] => Array.from({ length: N }, (_, i) => `${prefix}-${i}`)
/** one device record a line, each with a key of its own (one credential, one identity: a shared key is refused) */
const records = (prefix: string): string => ids(prefix).map((id) => JSON.stringify({ id, publicKey: generateKeyPair().publicKeyB64 })).join('\n')

test(`ctl bulk: ${N} enrolls through a broker queue of ${QUEUE} all complete, each run once; published at once, most are lost`, async (t) => {
  const { dir, agent, l, cp, link } = await setup(t)
  const completedFor = (prefix: string): number => [...l.jtisOf.keys()].filter((id) => id.startsWith(`${prefix}-`)).length

  // Without the window, as ctl bulk did: every command published at once.
  const burst = ids('a').map((id) => cp.sign('device.enroll', { device: { id, publicKey: generateKeyPair().publicKeyB64 } }))
  await Promise.all(burst.map((c) => cp.publishRaw(c.jws)))
  // Commands run in arrival order: once a later one completes, every burst
  // command the broker kept has run too. (It is re-sent until it gets in.)
  const sentinel = cp.sign('inventory.report', {})
  const s = await cp.sendAll([sentinel], { window: 1, resendAfterMs: 500, timeoutMs: 30_000 })
  assert.equal(s.results[0]!.outcome, 'completed')
  const lost = N - completedFor('a')
  t.diagnostic(`published at once: ${completedFor('a')} of ${N} completed, ${lost} lost at the broker (queue ${QUEUE})`)
  assert.ok(lost > N / 2, `most of the burst is lost at the broker: ${lost}`)

  // Through the window, below the queue: nothing is lost, nothing needs re-sending.
  const bFile = join(dir, 'b.txt')
  writeFileSync(bFile, records('b'))
  const b = await runCli(['ctl', 'bulk', ...link, '--file', bFile, '--window', '50', '--json', 'device.enroll'])
  assert.equal(b.code, 0, b.stderr + b.stdout)
  const bOut = JSON.parse(b.stdout.trim()) as Record<string, unknown>
  assert.equal(bOut.completed, N)
  assert.equal(bOut.unanswered, 0)
  t.diagnostic(`window 50: ${N} completed, ${bOut.resent ?? 0} re-sent`)

  // The default window (200) is above this small queue: some are dropped, and re-sent with their jti until answered.
  const cFile = join(dir, 'c.txt')
  writeFileSync(cFile, records('c'))
  const c = await runCli(['ctl', 'bulk', ...link, '--file', cFile, '--resend-after', '0.5', '--json', 'device.enroll'])
  assert.equal(c.code, 0, c.stderr + c.stdout)
  const cOut = JSON.parse(c.stdout.trim()) as Record<string, unknown>
  assert.equal(cOut.completed, N)
  assert.ok(Number(cOut.resent) > 0, `the dropped ones were re-sent: ${c.stdout}`)
  t.diagnostic(`window 200 over a queue of ${QUEUE}: ${N} completed, ${cOut.resent} re-sent, ${cOut.duplicate} answered cmd.duplicate`)

  // Once each, on the gateway: one jti per device (a re-send is the same command), accepted once, completed once, one state change.
  for (const prefix of ['b', 'c']) {
    const devices = ids(prefix)
    assert.equal(completedFor(prefix), N)
    for (const id of devices) {
      const jtis = [...l.jtisOf.get(id)!]
      assert.equal(jtis.length, 1, `${id}: one command`)
      assert.equal(l.accepted.get(jtis[0]!), 1, `${id}: accepted once`)
      assert.equal(l.completed.get(jtis[0]!), 1, `${id}: completed once`)
      assert.equal(l.stateChanges.get(id), 1, `${id}: enrolled once`)
      assert.equal(agent.gateway.getDevice(id)?.state, 'active')
    }
  }
  const cDuplicates = [...l.jtisOf.entries()].filter(([id]) => id.startsWith('c-')).flatMap(([, j]) => l.duplicate.get([...j][0]!) ?? [])
  assert.ok(cDuplicates.every((state) => state === 'accepted' || state === 'completed'), 'a copy that got in as well is answered cmd.duplicate')
})

test('a re-send is harmless: answered cmd.duplicate with the state, run once; an accepted one is waited for; a refused one stays refused', async (t) => {
  const { agent, l, cp, link, devicePublicKey } = await setup(t)

  // Completed, then sent again by hand: cmd.duplicate "completed", nothing runs again.
  const enroll = cp.sign('device.enroll', { device: { id: 'pump-1', publicKey: devicePublicKey, mqtt: {} } })
  const first = await cp.sendAll([enroll], { timeoutMs: 15_000 })
  assert.equal(first.results[0]!.outcome, 'completed')
  const dup = cp.waitFor((e) => e.type === 'cmd.duplicate' && e.data.jti === enroll.jti)
  await cp.publishRaw(enroll.jws)
  assert.equal((await dup).data.state, 'completed')
  const again = await cp.sendAll([enroll], { timeoutMs: 15_000 })
  assert.deepEqual([again.results[0]!.outcome, again.results[0]!.reason], ['completed', 'answered cmd.duplicate: completed'])
  assert.equal(l.accepted.get(enroll.jti), 1)
  assert.equal(l.completed.get(enroll.jti), 1)
  assert.equal(l.stateChanges.get('pump-1'), 1)

  // Accepted, its outcome far off (a retirement waits for the device's wipe ack): re-sends are answered
  // cmd.duplicate "accepted", which is not an outcome; ctl keeps waiting, and says so at its timeout.
  const r = await runCli(['ctl', 'send', ...link, '--wait', '--json', '--resend-after', '0.2', '--timeout', '2', 'device.retire', '{"deviceId":"pump-1"}'])
  assert.equal(r.code, 1, r.stderr)
  assert.match(r.stderr, /accepted, but no outcome within 2 s/)
  const out = JSON.parse(r.stdout.trim()) as { jti: string; outcome: string; sends: number }
  assert.equal(out.outcome, 'accepted')
  assert.ok(out.sends >= 2, `re-sent while waiting: ${r.stdout}`)
  assert.equal(l.accepted.get(out.jti), 1, 'accepted once')
  assert.ok((l.duplicate.get(out.jti) ?? []).every((s) => s === 'accepted') && (l.duplicate.get(out.jti) ?? []).length >= 1)
  assert.equal(agent.gateway.getDevice('pump-1')?.state, 'retiring')
  assert.equal(l.stateChanges.get('pump-1'), 2, 'one transition, to retiring')

  // Refused, then re-sent: still refused (state "rejected"), never run.
  const bad = cp.sign('device.release', { deviceId: 'nobody' })
  const refused = await cp.sendAll([bad], { timeoutMs: 15_000 })
  assert.deepEqual([refused.results[0]!.outcome, refused.results[0]!.reason], ['rejected', 'unknown-device'])
  const replay = await cp.sendAll([bad], { timeoutMs: 15_000 })
  assert.deepEqual([replay.results[0]!.outcome, replay.results[0]!.reason], ['rejected', 'answered cmd.duplicate: rejected'])
  assert.equal(l.accepted.get(bad.jti), undefined)
})

test('an accepted command is not sent again while the gateway\'s events keep coming in order; once they stop, it is checked', async (t) => {
  const { agent, l, cp, devicePublicKey } = await setup(t)
  await agent.gateway.enroll({ id: 'pump-0', publicKey: devicePublicKey }, { actor: 'test' })
  // Hold the command chain, as a bulk of slow ops ahead would: what is accepted from here on waits its turn.
  const release = holdChain(agent)
  try {
    await acceptedWhileHeld(cp, l, release)
  } finally {
    // before the agent stops (t.after hooks run in order): it waits for the chain
    release()
  }
})

async function acceptedWhileHeld(cp: ControlPlane, l: ReturnType<typeof ledger>, release: () => void): Promise<void> {
  const hold = cp.sign('inventory.report', {})
  const holding = cp.waitFor((e) => e.type === 'cmd.accepted' && e.data.jti === hold.jti)
  await cp.publishRaw(hold.jws)
  await holding
  const DELAY = 1000
  const enrolls = Array.from({ length: 20 }, (_, i) => cp.sign('device.enroll', { device: { id: `late-${i}`, publicKey: generateKeyPair().publicKeyB64 } }))
  const resent: string[] = []
  let onResend = (): void => {}
  const firstResend = new Promise<void>((r) => (onResend = r))
  const all = cp.sendAll(enrolls, { window: 50, resendAfterMs: DELAY, timeoutMs: 60_000, onResend: (jti) => (resent.push(jti), onResend()) })
  await Promise.all(enrolls.map((c) => cp.waitFor((e) => e.type === 'cmd.accepted' && e.data.jti === c.jti)))

  // Other commands' answers flow meanwhile (each refused at once, outside the chain): the gateway is
  // alive and nothing it sent was lost, so the outcomes not come yet were not sent yet.
  const until = performance.now() + 2.5 * DELAY
  await answerOthers(cp, () => performance.now() < until, DELAY / 10)
  assert.deepEqual(resent, [], `nothing re-sent while events kept coming for ${2.5 * DELAY} ms, 2.5 times the delay`)

  // Silent for a whole delay: its cmd.completed could have been the last event, lost on the way; it is checked.
  await firstResend
  assert.ok(resent.length > 0)
  release()
  const report = await all
  assert.deepEqual(report.results.map((r) => r.outcome), enrolls.map(() => 'completed'))
  for (const c of enrolls) {
    assert.equal(l.accepted.get(c.jti), 1)
    assert.equal(l.completed.get(c.jti), 1)
  }
}

test('commands waiting in the broker\'s queue behind slow ones are not sent again while the gateway works through them', async (t) => {
  const { agent, l, cp } = await setup(t)
  // Each op takes a tenth of the re-send delay: the gateway takes COMMANDS_WAITING_MAX of them at
  // once and the rest wait their turn on the broker, longer than the delay, while its events keep coming.
  const DELAY = 1000
  agent.commands.register('device.enroll', async () => (await new Promise((r) => setTimeout(r, DELAY / 10)), {}))
  const n = COMMANDS_WAITING_MAX + 30
  const enrolls = Array.from({ length: n }, (_, i) => cp.sign('device.enroll', { device: { id: `slow-${i}`, publicKey: generateKeyPair().publicKeyB64 } }))
  const resent: string[] = []
  const report = await cp.sendAll(enrolls, { window: n, resendAfterMs: DELAY, timeoutMs: 60_000, onResend: (jti) => void resent.push(jti) })
  assert.deepEqual(report.results.map((r) => r.outcome), enrolls.map(() => 'completed'))
  assert.deepEqual(resent, [], `nothing re-sent: the last waited ~${(30 * DELAY) / 10} ms for its turn`)
  for (const c of enrolls) assert.equal(l.accepted.get(c.jti), 1)
})

test('a command lost on the way is sent again while other commands\' events keep the gateway busy', async (t) => {
  const { l, cp } = await setup(t)
  const DELAY = 500
  const lost = cp.sign('device.enroll', { device: { id: 'lost-1', publicKey: generateKeyPair().publicKeyB64 } })
  // Its first copy never reaches the broker (dropped from a full queue, say).
  const publish = cp.publishRaw.bind(cp)
  let copies = 0
  cp.publishRaw = async (payload) => (payload === lost.jws && copies++ === 0 ? undefined : publish(payload))
  const resent: string[] = []
  let settled = false
  const all = cp.sendAll([lost], { resendAfterMs: DELAY, timeoutMs: 10_000, onResend: (jti) => void resent.push(jti) }).finally(() => (settled = true))
  // Meanwhile the gateway answers others (each refused at once): its events say nothing about ours.
  let rounds = 0
  await answerOthers(cp, () => !settled && rounds++ < 200, DELAY / 10, publish)
  const report = await all
  assert.equal(report.results[0]!.outcome, 'completed', JSON.stringify(report.results[0]))
  assert.deepEqual(resent, [lost.jti])
  assert.equal(l.accepted.get(lost.jti), 1)
})

test('ctl bulk names every device that did not complete: in text one line each with outcome and reason, with --json in arrays', async (t) => {
  const { dir, agent, link, devicePublicKey } = await setup(t)
  for (const id of ['q-1', 'q-2']) await agent.gateway.enroll({ id, publicKey: devicePublicKey }, { actor: 'test' })
  const file = join(dir, 'ids.txt')
  writeFileSync(file, 'q-1\nghost-1\nq-2\nghost-2\n')
  const text = await runCli(['ctl', 'bulk', ...link, '--file', file, 'device.quarantine'])
  assert.equal(text.code, 1, text.stderr + text.stdout)
  const lines = text.stdout.trim().split('\n')
  assert.deepEqual(lines.slice(0, -1).sort(), ['ghost-1: rejected (unknown-device: no device ghost-1 is enrolled)', 'ghost-2: rejected (unknown-device: no device ghost-2 is enrolled)'])
  assert.equal(lines.at(-1), '2 completed, 2 failed, 0 duplicate')

  // Gateway gone (status offline): its queue at the broker keeps what was sent, nothing is re-sent into it, the rest is unanswered.
  await agent.stop()
  const json = await runCli(['ctl', 'bulk', ...link, '--file', file, '--window', '1', '--resend-after', '0.2', '--timeout', '2', '--json', 'device.release'])
  assert.equal(json.code, 1)
  const v = JSON.parse(json.stdout.trim()) as { completed: number; unanswered: number; unansweredDevices: { id: string; outcome: string; reason: string }[]; resent?: number }
  assert.equal(v.completed, 0)
  assert.equal(v.unanswered, 4)
  assert.deepEqual(v.unansweredDevices.map((d) => [d.id, d.outcome]), [['q-1', 'unanswered'], ['ghost-1', 'unanswered'], ['q-2', 'unanswered'], ['ghost-2', 'unanswered']])
  assert.match(v.unansweredDevices[0]!.reason, /no answer within 2000 ms \(sent once\)/)
  assert.match(v.unansweredDevices[1]!.reason, /not sent within 2000 ms/)
  assert.equal(v.resent, undefined, 'nothing re-sent while the gateway is offline')
})
