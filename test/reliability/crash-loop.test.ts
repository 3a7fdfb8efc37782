// Crash consistency: the real agent, as a child process, is killed
// with SIGKILL at random moments (seeded) while a control-plane simulator
// sends it signed commands over a real Mosquitto (bulk enroll, bulk retire,
// bursts of state changes and inventory reports) and the admin socket adds
// its own changes. Between each kill and the restart the store is opened
// directly and checked; at the end every accepted command has completed
// exactly once, the registry matches the events, the audit verifies and the
// event seq is gapless. A second test checks that the writes carrying an
// acceptance or a revocation are synced, and measures what syncing costs.
import assert from 'node:assert/strict'
import { generateKeyPair } from '../../agent/store/keys.ts'
import { test } from 'node:test'
import { ACTION_PREFIX, type QueuedAction } from '../../agent/actions/action-queue.ts'
import { AUDIT_PREFIX, verifyAuditLog, type AuditEntry } from '../../agent/store/audit.ts'
import { adminRequest } from '../../agent/cli/admin-client.ts'
import { DEVICE_STATES, type DeviceRecord, type DeviceState } from '../../agent/devices/device.ts'
import { DEVICE_PREFIX } from '../../agent/devices/registry.ts'
import { nextState, type FromState, type Transition } from '../../agent/trust/state-machine.ts'
import { Store, type WriteOp } from '../../agent/store/store.ts'
import { ControlPlane, publicKeyB64, TERMINAL, type GatewayEvent } from '../../simulators/control-plane.ts'
import { holdChain, spawnAgent, startTestAgent, tempDir, type SpawnedAgent } from '../helpers/agent.ts'
import { recordFigure, scaled } from '../helpers/figures.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'

const CMD_JTI_PREFIX = 'jti!cmd!'
const GROUP_WRITERS = 32
const devKey = (): string => publicKeyB64(generateKeyPair().privateKey)

/** xorshift32, seeded: a failing run is replayed with EDGEWARDEN_TEST_SEED. */
function seeded(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9
  return () => {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    return x / 4294967296
  }
}

interface Sent {
  op: string
  args: Record<string, unknown>
  /** a retire that waits for a wipe: its answer comes only when the retirement closes */
  waitsForWipe: boolean
}

/** What the control plane saw, checked as it arrives. */
class Observed {
  readonly bySeq = new Map<number, GatewayEvent>()
  readonly problems: string[] = []
  readonly accepted = new Map<string, Set<number>>()
  readonly terminal = new Map<string, Map<number, string>>()
  /** latest device state seen, by device */
  readonly state = new Map<string, { seq: number; to: DeviceState }>()
  /** op of each accepted jti */
  readonly ops = new Map<string, string>()
  redelivered = 0
  count = 0
  #waiters = new Set<() => void>()

  constructor(cp: ControlPlane) {
    cp.onEvent((e) => this.#on(e))
  }

  #on(e: GatewayEvent): void {
    this.count++
    if (e.verified !== true) this.problems.push(`event ${e.seq} does not verify with the gateway key`)
    const before = this.bySeq.get(e.seq)
    if (before) {
      this.redelivered++
      if (before.raw !== e.raw) this.problems.push(`seq ${e.seq} arrived twice with different content (${before.type}, ${e.type})`)
      return
    }
    this.bySeq.set(e.seq, e)
    const jti = typeof e.data.jti === 'string' ? e.data.jti : undefined
    if (e.type === 'cmd.accepted' && jti) {
      add(this.accepted, jti, e.seq)
      this.ops.set(jti, String(e.data.op))
    }
    if (TERMINAL.has(e.type) && e.type !== 'cmd.duplicate' && jti) {
      const m = this.terminal.get(jti) ?? new Map<number, string>()
      m.set(e.seq, e.type)
      this.terminal.set(jti, m)
    }
    if (e.type === 'device.state') {
      const id = String(e.data.deviceId)
      const cur = this.state.get(id)
      if (!cur || cur.seq < e.seq) this.state.set(id, { seq: e.seq, to: e.data.to as DeviceState })
    }
    for (const w of this.#waiters) w()
  }

  /** Resolve once `done()` holds, re-checked on every event. */
  until(done: () => boolean, what: () => string, timeoutMs = 30_000): Promise<void> {
    if (done()) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!done()) return
        clearTimeout(timer)
        this.#waiters.delete(check)
        resolve()
      }
      const timer = setTimeout(() => {
        this.#waiters.delete(check)
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what()}`))
      }, timeoutMs)
      this.#waiters.add(check)
    })
  }

  devicesIn(states: readonly DeviceState[]): string[] {
    return [...this.state].filter(([, s]) => states.includes(s.to)).map(([id]) => id).sort()
  }
}

function add<K, V>(m: Map<K, Set<V>>, k: K, v: V): void {
  const s = m.get(k) ?? new Set<V>()
  s.add(v)
  m.set(k, s)
}

/** With the agent dead: open its store and check what must hold after any crash. */
async function checkAfterKill(dataDir: string, gwKey: string, seen: Observed): Promise<{ auditEntries: number }> {
  const store = await Store.open(dataDir)
  try {
    const verdict = await verifyAuditLog(store, [gwKey])
    assert.equal(verdict.ok, true, `audit verifies after the kill: ${JSON.stringify(verdict)}`)
    for await (const [key, value] of store.scan(DEVICE_PREFIX)) {
      const rec = JSON.parse(value) as DeviceRecord
      assert.ok((DEVICE_STATES as readonly string[]).includes(rec.state), `${key}: legal state ${rec.state}`)
    }
    // No device holds the same kind of action twice (a resumed command must not queue it again).
    const acts = new Set<string>()
    for await (const [, value] of store.scan(ACTION_PREFIX)) {
      const a = JSON.parse(value) as QueuedAction
      const k = `${a.deviceId} ${a.act}`
      assert.ok(!acts.has(k), `${a.deviceId} has two ${a.act} actions queued`)
      acts.add(k)
    }
    // Every acceptance and every answer the control plane saw is on disk.
    for (const jti of seen.accepted.keys()) {
      const e = await store.getJson<{ data: { state: string } }>(CMD_JTI_PREFIX + jti)
      assert.ok(e, `accepted command ${jti} is remembered after the kill`)
      const answered = seen.terminal.get(jti)
      if (answered?.size) assert.equal(`cmd.${e.data.state}`, [...answered.values()][0], `${jti} (${seen.ops.get(jti) ?? '?'}): stored state ${e.data.state} matches the answers sent (${[...answered.values()].join(', ')})`)
    }
    return { auditEntries: verdict.ok ? verdict.entries : 0 }
  } finally {
    await store.close()
  }
}

/** At the end, from the audit log: nothing a command caused happened twice. */
async function checkAuditOnce(dataDir: string, gwKey: string): Promise<{ entries: number; commands: number }> {
  const store = await Store.open(dataDir)
  try {
    const verdict = await verifyAuditLog(store, [gwKey])
    assert.equal(verdict.ok, true, JSON.stringify(verdict))
    const accepted = new Map<string, number>()
    const answered = new Map<string, number>()
    const effects = new Map<string, number>()
    for await (const [, v] of store.scan(AUDIT_PREFIX)) {
      const e = JSON.parse(v) as AuditEntry
      const data = (e.data ?? {}) as { jti?: string; from?: string; to?: string; act?: string }
      if (!data.jti) continue
      const bump = (m: Map<string, number>, k: string): void => void m.set(k, (m.get(k) ?? 0) + 1)
      if (e.action === 'command.accepted') bump(accepted, data.jti)
      else if (e.action === 'command.completed' || e.action === 'command.failed') bump(answered, data.jti)
      else if (e.action === 'action.queued') bump(effects, `${data.jti} queued ${data.act}`)
      else if (e.action.startsWith('device.') && data.from !== undefined && data.from !== data.to) bump(effects, `${data.jti} ${e.subject} ${data.from}->${data.to}`)
    }
    for (const [jti, n] of accepted) assert.equal(n, 1, `${jti} accepted ${n} times`)
    for (const jti of accepted.keys()) assert.equal(answered.get(jti), 1, `${jti} answered ${answered.get(jti) ?? 0} times in the audit log`)
    for (const [what, n] of effects) assert.equal(n, 1, `${what} happened ${n} times`)
    for await (const [key, v] of store.scan(CMD_JTI_PREFIX)) {
      const state = (JSON.parse(v) as { data: { state: string } }).data.state
      assert.notEqual(state, 'accepted', `${key} is still only accepted at the end`)
    }
    return { entries: verdict.ok ? verdict.entries : 0, commands: accepted.size }
  } finally {
    await store.close()
  }
}

test('kill -9 loop during bulk enroll, bulk retire and event bursts: nothing accepted lost or done twice', { timeout: 240_000 }, async (t) => {
  const seed = Number(process.env.EDGEWARDEN_TEST_SEED ?? Math.floor(Math.random() * 2 ** 31))
  t.diagnostic(`seed ${seed} (replay with EDGEWARDEN_TEST_SEED=${seed})`)
  const rand = seeded(seed)
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!
  const KILLS = scaled(16)
  const BATCH = 24

  const m = await Mosquitto.start(t)
  const dataDir = tempDir(t)
  const cpKey = generateKeyPair().privateKey
  const args = ['--data-dir', dataDir, '--mqtt-port', '0', '--mqtt-host', '127.0.0.1', '--site', 'site1', '--gateway', 'gw1', '--uplink', m.url, '--cp-key', `cp1=${publicKeyB64(cpKey)}`, '--uplink-backoff-min', '100', '--uplink-backoff-max', '1000']
  let agent: SpawnedAgent = await spawnAgent(args)
  t.after(() => agent.stop('SIGKILL').then(() => {}))
  const gwKey = String(agent.ready.publicKey)
  const cp = new ControlPlane({ broker: m.url, site: 'site1', gateway: 'gw1', key: cpKey, kid: 'cp1', gatewayKey: gwKey, clientId: 'cp-crash-loop' })
  await cp.connect()
  t.after(() => cp.close())
  const seen = new Observed(cp)
  await cp.waitOnline()

  const sent = new Map<string, Sent>()
  const send = async (op: string, a: Record<string, unknown>): Promise<void> => {
    const { jti, jws } = cp.sign(op, a)
    sent.set(jti, { op, args: a, waitsForWipe: op === 'device.retire' && a.wipe !== false })
    await cp.publishRaw(jws)
  }
  /** Every command sent so far has its answer, or (a retire waiting for its wipe) its acceptance. */
  const settled = (): boolean => [...sent].every(([jti, s]) => seen.terminal.has(jti) || (s.waitsForWipe && seen.accepted.has(jti)))
  const unsettled = (): string => `${[...sent].filter(([jti, s]) => !(seen.terminal.has(jti) || (s.waitsForWipe && seen.accepted.has(jti)))).length} of ${sent.size} commands to settle`
  const admin = (method: string, path: string, body?: unknown): Promise<unknown> => adminRequest(dataDir, method, path, body).catch(() => null)

  const logs: Record<string, unknown>[][] = [agent.lines]
  t.after(() => {
    for (const [i, ls] of logs.entries()) for (const l of ls) if (Number(l.level) >= 50) t.diagnostic(`agent ${i}: ${JSON.stringify(l).slice(0, 300)}`)
  })
  let nextDevice = 0
  const phases: Record<string, number> = { 'bulk enroll': 0, 'bulk retire': 0, 'event burst': 0 }
  let killedMidway = 0
  for (let round = 0; round < KILLS; round++) {
    const phase = round === 0 ? 'bulk enroll' : pick(['bulk enroll', 'bulk retire', 'event burst', 'event burst'])
    phases[phase]!++
    const work: (() => Promise<unknown>)[] = []
    if (phase === 'bulk enroll' || seen.devicesIn(['active']).length < BATCH) {
      for (let i = 0; i < BATCH; i++) {
        const id = `d-${nextDevice++}`
        work.push(() => send('device.enroll', { device: { id, publicKey: devKey(), owner: 'crash-loop' } }))
        if (i % 4 === 0) work.push(() => admin('POST', '/v1/devices', { device: { id: `a-${nextDevice++}`, publicKey: devKey() } }))
      }
    }
    if (phase === 'bulk retire') {
      for (const id of seen.devicesIn(['active', 'quarantined', 'revoked']).slice(0, BATCH)) {
        work.push(() => send('device.retire', rand() < 0.5 ? { deviceId: id, wipe: false, reason: 'crash loop' } : { deviceId: id, reason: 'crash loop' }))
      }
    }
    if (phase === 'event burst') {
      for (const id of seen.devicesIn(['active', 'quarantined']).slice(0, BATCH)) {
        const r = rand()
        const op = r < 0.1 ? 'device.revoke' : seen.state.get(id)?.to === 'active' ? 'device.quarantine' : 'device.release'
        work.push(() => send(op, { deviceId: id }))
        if (r > 0.8) work.push(() => admin('POST', `/v1/devices/${encodeURIComponent(id)}/${op === 'device.quarantine' ? 'release' : 'quarantine'}`, {}))
      }
      work.push(() => send('inventory.report', {}))
    }
    // Kill once a random number of this round's events has arrived (or, if
    // fewer come, at a random moment shortly after sending).
    const start = seen.count
    const killAt = 1 + Math.floor(rand() * work.length * 2)
    const fallbackMs = 50 + Math.floor(rand() * 400)
    const sending = Promise.all(work.map((w) => w()))
    await seen.until(() => seen.count - start >= killAt, () => '', fallbackMs + 5000).catch(() => {})
    if (seen.count - start >= killAt) killedMidway++
    await agent.stop('SIGKILL')
    await sending
    await checkAfterKill(dataDir, gwKey, seen)
    agent = await spawnAgent(args)
    logs.push(agent.lines)
    await seen.until(settled, unsettled)
    assert.deepEqual(seen.problems, [])
  }

  // Commands run in arrival order (those resumed after a restart first): once
  // this one has completed, every accepted retire has started. Then close
  // every retirement still waiting for its wipe; everything accepted has its answer.
  await cp.run('inventory.report', {})
  const list = (await adminRequest(dataDir, 'GET', '/v1/devices')).body as { devices: { id: string; state: string }[] }
  for (const d of list.devices.filter((d) => d.state === 'retiring')) await send('device.retire', { deviceId: d.id, wipe: false, reason: 'closed at the end of the crash loop' })
  const unanswered = (): [string, Sent][] => [...sent].filter(([jti]) => !seen.terminal.has(jti))
  await seen.until(
    () => unanswered().length === 0,
    () => `answers to ${unanswered().length} commands: ${unanswered().slice(0, 5).map(([jti, s]) => `${s.op} ${jti} accepted=${seen.accepted.has(jti)} ${JSON.stringify(s.args)} was ${list.devices.find((d) => d.id === s.args.deviceId)?.state}`).join('; ')}`,
  )
  const marker = await cp.run('inventory.report', {})
  await seen.until(() => seen.bySeq.size >= marker.seq, () => `${marker.seq - seen.bySeq.size} missing events below seq ${marker.seq}`)

  // seq: 1..n with no gap, duplicates identical (checked on arrival).
  const seqs = [...seen.bySeq.keys()].sort((a, b) => a - b)
  assert.deepEqual(seqs.slice(0, marker.seq), Array.from({ length: marker.seq }, (_, i) => i + 1), 'event seq is gapless across every restart')
  assert.deepEqual(seen.problems, [])
  // Exactly once on the wire: one acceptance and one answer per accepted command.
  for (const [jti, seqsOf] of seen.accepted) {
    assert.equal(seqsOf.size, 1, `${jti} accepted ${seqsOf.size} times`)
    assert.equal(seen.terminal.get(jti)?.size, 1, `${jti} answered ${seen.terminal.get(jti)?.size ?? 0} times`)
  }
  // The registry is what the events say, and every device went only through legal transitions.
  const byDevice = new Map<string, GatewayEvent[]>()
  for (const s of seqs) {
    const e = seen.bySeq.get(s)!
    if (e.type === 'device.state') byDevice.set(String(e.data.deviceId), [...(byDevice.get(String(e.data.deviceId)) ?? []), e])
  }
  const final = ((await adminRequest(dataDir, 'GET', '/v1/devices')).body as { devices: { id: string; state: string }[] }).devices
  assert.equal(final.length, byDevice.size, 'every device in the registry has its events and vice versa')
  for (const d of final) {
    let from: FromState = 'none'
    for (const e of byDevice.get(d.id) ?? []) {
      assert.equal(e.data.from, from, `${d.id}: event ${e.seq} starts where the last one ended`)
      assert.equal(nextState(from, e.data.cause as Transition), e.data.to, `${d.id}: ${from} -${String(e.data.cause)}-> ${String(e.data.to)} is legal`)
      from = e.data.to as DeviceState
    }
    assert.equal(d.state, from, `${d.id}: registry state is the last event's`)
  }
  for (const [jti, s] of sent) {
    if (s.op !== 'device.enroll' || ![...(seen.terminal.get(jti)?.values() ?? [])].includes('cmd.completed')) continue
    const ev = [...seen.bySeq.values()].find((e) => e.type === 'cmd.completed' && e.data.jti === jti)!
    assert.ok(final.some((d) => d.id === ev.data.deviceId), `enrolled ${String(ev.data.deviceId)} is in the registry`)
  }
  await agent.stop('SIGTERM')
  const audit = await checkAuditOnce(dataDir, gwKey)
  const completed = [...seen.terminal.values()].filter((m) => [...m.values()].includes('cmd.completed')).length
  recordFigure(t, {
    area: 'crash consistency',
    test: 'kill -9 loop during bulk enroll, bulk retire and event bursts (commands over Mosquitto, admin socket)',
    size: `${KILLS} kills (${phases['bulk enroll']} enroll, ${phases['bulk retire']} retire, ${phases['event burst']} burst rounds), ${sent.size} commands, ${final.length} devices, ${marker.seq} events`,
    result: `${killedMidway} kills mid-burst; ${seen.accepted.size} accepted, each answered once (${completed} completed); states legal; audit verifies (${audit.entries} entries); seq gapless (${seen.redelivered} identical redeliveries); seed ${seed}`,
    pass: true,
  })
})

test('after a crash, commands accepted but not yet run resume in arrival order, each answered once', async (t) => {
  const dataDir = tempDir(t)
  const cpKey = generateKeyPair().privateKey
  const flags = { cpKey: [`cp1=${publicKeyB64(cpKey)}`] }
  let release = (): void => {}
  t.after(() => release())
  const first = await startTestAgent(t, { dataDir, flags })
  await first.gateway.enroll({ id: 'valve-1', publicKey: devKey() }, { actor: 'local:test' })
  // Hold the command chain: what is accepted from here on is stored, not run.
  release = holdChain(first)
  const cp = new ControlPlane({ broker: 'mqtt://unused', site: 'site1', gateway: 'gw1', key: cpKey, kid: 'cp1' })
  // Arrival order: quarantine, then release; in jti (store key) order the other way round.
  const jtis = ['cmd.m-hold', 'cmd.z-quarantine', 'cmd.a-release']
  await first.commands.handle(cp.sign('inventory.report', {}, { jti: jtis[0]! }).jws)
  await first.commands.handle(cp.sign('device.quarantine', { deviceId: 'valve-1' }, { jti: jtis[1]! }).jws)
  await first.commands.handle(cp.sign('device.release', { deviceId: 'valve-1' }, { jti: jtis[2]! }).jws)
  assert.equal(first.gateway.getDevice('valve-1')?.state, 'active', 'nothing ran yet')
  // The crash, in-process: the store closes under the agent with three commands accepted and none run.
  await first.gateway.store.close()

  const second = await startTestAgent(t, { dataDir, flags })
  await second.commands.idle()
  assert.equal(second.gateway.getDevice('valve-1')?.state, 'active', 'quarantine then release, as they arrived')
  const events = await second.gateway.outbox.pending(second.gateway.store, 0, 1000)
  for (const jti of jtis) {
    assert.equal(second.commands.stateOf(jti), 'completed', jti)
    const answers = events.filter((e) => TERMINAL.has(e.type) && (JSON.parse(Buffer.from(e.jws.split('.')[1]!, 'base64url').toString()) as { data: { jti?: string } }).data.jti === jti)
    assert.deepEqual(answers.map((e) => e.type), ['cmd.completed'], `${jti} answered once`)
  }
})

test('writes carrying an acceptance or a revocation are synced; what syncing costs on this disk', { timeout: 60_000 }, async (t) => {
  // Which writes are synced: watch every batch the agent's store writes.
  const cpKey = generateKeyPair().privateKey
  const agent = await startTestAgent(t, { flags: { cpKey: [`cp1=${publicKeyB64(cpKey)}`] } })
  const store = agent.gateway.store
  const batches: { ops: WriteOp[]; sync: boolean }[] = []
  const write = store.write.bind(store)
  store.write = (ops, opts) => (batches.push({ ops, sync: opts.sync }), write(ops, opts))
  const cp = new ControlPlane({ broker: 'mqtt://unused', site: 'site1', gateway: 'gw1', key: cpKey, kid: 'cp1' })
  await agent.commands.handle(cp.sign('device.enroll', { device: { id: 'pump-1', publicKey: devKey() } }).jws)
  await agent.gateway.enroll({ id: 'pump-2', publicKey: devKey() }, { actor: 'local:test' })
  await agent.commands.handle(cp.sign('device.revoke', { deviceId: 'pump-1', reason: 'stolen' }).jws)
  await agent.commands.idle()
  await agent.gateway.transition('pump-2', 'revoke', { actor: 'local:test' })
  const carries = (b: { ops: WriteOp[] }, what: RegExp): boolean => b.ops.some((o) => o.type === 'put' && what.test(o.value))
  const acceptances = batches.filter((b) => carries(b, /"state":"accepted"/))
  const revocations = batches.filter((b) => b.ops.some((o) => o.type === 'put' && o.key.startsWith(DEVICE_PREFIX) && (JSON.parse(o.value) as DeviceRecord).state === 'revoked'))
  assert.equal(acceptances.length, 2)
  assert.equal(revocations.length, 2)
  for (const b of [...acceptances, ...revocations]) assert.equal(b.sync, true, `synced: ${b.ops.map((o) => o.key).join(', ')}`)

  // The cost, measured with the store itself on a fresh temp dir.
  const costs = await measureSyncCost(tempDir(t))
  recordFigure(t, {
    area: 'crash consistency',
    test: 'LevelDB puts/s: sync vs no sync vs group commit (Store.write, one small record per put)',
    size: `${costs.syncN} synced, ${costs.noSyncN} unsynced, ${costs.groupN} group-committed puts`,
    result: `acceptance and revocation writes are synced; sync: ${Math.round(costs.sync)}/s, no sync: ${Math.round(costs.noSync)}/s, sync with group commit (${GROUP_WRITERS} writers): ${Math.round(costs.group)}/s`,
    pass: true,
  })
})

async function measureSyncCost(dir: string): Promise<{ sync: number; noSync: number; group: number; syncN: number; noSyncN: number; groupN: number }> {
  const store = await Store.open(dir)
  const value = JSON.stringify({ state: 'revoked', padding: 'x'.repeat(200) })
  const rate = async (n: number, run: (i: number) => Promise<void>): Promise<number> => {
    const t0 = performance.now()
    await run(n)
    return (n * 1000) / (performance.now() - t0)
  }
  try {
    const syncN = 200
    const noSyncN = 2000
    const groupN = 2000
    const sync = await rate(syncN, async (n) => {
      for (let i = 0; i < n; i++) await store.write([{ type: 'put', key: `s!${i}`, value }], { sync: true })
    })
    const noSync = await rate(noSyncN, async (n) => {
      for (let i = 0; i < n; i++) await store.write([{ type: 'put', key: `n!${i}`, value }], { sync: false })
    })
    // 32 writers, each waiting for its own synced write: the store merges what queues up meanwhile into one fsync.
    const group = await rate(groupN, async (n) => {
      let next = 0
      const writer = async (): Promise<void> => {
        while (next < n) {
          const i = next++
          await store.write([{ type: 'put', key: `g!${i}`, value }], { sync: true })
        }
      }
      await Promise.all(Array.from({ length: GROUP_WRITERS }, writer))
    })
    return { sync, noSync, group, syncN, noSyncN, groupN }
  } finally {
    await store.close()
  }
}
