// Two control-plane instances, real child processes, against one real
// PostgreSQL and one real Mosquitto, with a real gateway: the event intake is
// shared through $share/… (both instances store events), the re-send loop is
// held by one instance (the advisory lock), and the instance holding it is
// killed with SIGKILL in the middle of a burst of commands. Nothing is lost
// (every event the gateway signed is stored once, no seq missing; every
// command completes) and nothing runs twice on the gateway (each jti
// accepted once, each device changed once). PGlite is one process: this is
// PostgreSQL only.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import pg from 'pg'
import { generateKeyPair } from '../../agent/store/keys.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { until } from '../helpers/wait.ts'
import { apiClient, cpKey, spawnCp, type SpawnedCp } from './helpers/cp.ts'
import { newLedger, register, startGateway } from './helpers/gateway.ts'
import { PgServer, pgSkipReason } from './helpers/postgres.ts'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { tempDir } from '../helpers/agent.ts'

const N = 60
const SLOTS = 4

interface Ready {
  ready: boolean
  leader: boolean
  slots: number[]
}

async function readyz(c: SpawnedCp): Promise<Ready> {
  return (await fetch(`${c.base}/readyz`)).json() as Promise<Ready>
}

test('postgres: two instances share the intake and one re-send loop; the leader killed mid-burst loses nothing and runs nothing twice', { skip: pgSkipReason() }, async (t) => {
  // Cleanups in reverse order of starts (t.after runs hooks first-in first-out): the gateway, the instances, then PostgreSQL and the broker.
  const cleanups: { what: string; fn: () => Promise<void> | void }[] = []
  let what = 'start'
  const scope = { after: (fn: () => Promise<void> | void) => void cleanups.push({ what, fn }) }
  t.after(async () => {
    for (const c of cleanups.reverse()) {
      const t0 = performance.now()
      await c.fn()
      const ms = performance.now() - t0
      if (ms > 1000) t.diagnostic(`cleanup of ${c.what} took ${Math.round(ms)} ms`)
    }
  })
  what = 'postgres'
  const server = await PgServer.start()
  scope.after(() => server.stop())
  what = 'pg client'
  const database = await server.createDatabase()
  const sql = new pg.Client({ connectionString: database })
  await sql.connect()
  scope.after(() => sql.end())
  const count = async (text: string, params: unknown[] = []): Promise<number> => Number((await sql.query(text, params)).rows[0].n)

  what = 'mosquitto'
  const m = await Mosquitto.start(scope)
  const key = cpKey(scope)
  // A small window: the burst goes out in many rounds, so the kill lands between them.
  // --rollback-confirm above the gateway's status refresh (1 s), as in production (3 s by default).
  const flags = { 'intake-slots': String(SLOTS), window: '4', 'rollback-confirm': '2s' }
  const dirA = tempDir(scope)
  what = 'instances'
  const a = await spawnCp(scope, { broker: m.url, key, database, dataDir: dirA, instanceId: 'cp-a', flags })
  const b = await spawnCp(scope, { broker: m.url, key, database, instanceId: 'cp-b', flags })
  // The first instance on an empty database made the admin token; the second shares it (one database).
  const api = apiClient(a.base, readFileSync(join(dirA, 'admin.token'), 'utf8').trim())
  const apiB = apiClient(b.base, readFileSync(join(dirA, 'admin.token'), 'utf8').trim())

  // The two divide the intake slots; exactly one holds the re-send loop.
  let views: Ready[] = []
  await until(
    'slots divided and one leader',
    async () => {
      views = await Promise.all([readyz(a), readyz(b)])
      const held = views.flatMap((v) => v.slots)
      return views.every((v) => v.ready && v.slots.length > 0) && held.length === SLOTS && new Set(held).size === SLOTS && views.filter((v) => v.leader).length === 1
    },
    30_000,
    100,
  )
  const [leader, survivor] = views[0]!.leader ? [a, b] : [b, a]
  const survivorApi = survivor === a ? api : apiB
  t.diagnostic(`leader ${leader.instanceId} (slots ${views[leader === a ? 0 : 1]!.slots}), other ${survivor.instanceId} (slots ${views[survivor === a ? 0 : 1]!.slots})`)
  assert.equal(await count('SELECT COUNT(*) AS n FROM instances WHERE leader'), 1)

  const ledger = newLedger()
  what = 'gateway'
  const gw = await startGateway(scope, { broker: m.url, cpPublicKey: key.publicKey, ledger })
  await register({ api } as never, gw)
  const ids = Array.from({ length: N }, (_, i) => `valve-${String(i).padStart(2, '0')}`)
  const enroll = await api('POST', '/v1/commands', { op: 'device.enroll', site: 's1', gateway: 'gw1', devices: ids.map((id) => ({ id, publicKey: generateKeyPair().publicKeyB64 })) })
  assert.equal(enroll.status, 201, enroll.text)
  await until('enrolled', async () => (await count("SELECT COUNT(*) AS n FROM commands WHERE op = 'device.enroll' AND state = 'completed'")) === N, 30_000, 50)
  // Both instances took events from the shared subscription.
  const byInstance = (await sql.query('SELECT received_by, COUNT(*) AS n FROM events GROUP BY received_by')).rows as { received_by: string; n: string }[]
  t.diagnostic(`events stored by instance after the enrollment: ${byInstance.map((r) => `${r.received_by} ${r.n}`).join(', ')}`)
  assert.deepEqual(byInstance.map((r) => r.received_by).sort(), ['cp-a', 'cp-b'])

  // The burst, and the leader killed once the gateway has completed ten of it.
  let completedInBurst = 0
  let killedAt: { completed: number; state: Record<string, number> } | null = null
  const killed = new Promise<void>((resolve) => {
    gw.gateway.onCommitted((change) => {
      for (const e of change.events ?? []) {
        if (e.type !== 'cmd.completed' || e.data.op !== 'device.quarantine') continue
        if (++completedInBurst === 10) {
          leader.proc.kill('SIGKILL')
          resolve()
        }
      }
    })
  })
  const burst = await api('POST', '/v1/commands', { op: 'device.quarantine', deviceIds: ids, args: { reason: 'burst' } })
  assert.equal(burst.status, 201, burst.text)
  const jtis = (burst.json.commands as { jti: string }[]).map((c) => c.jti)
  await killed
  assert.equal(await leader.exited, null, 'killed by the signal')
  const states = (await sql.query("SELECT state, COUNT(*) AS n FROM commands WHERE op = 'device.quarantine' GROUP BY state")).rows as { state: string; n: string }[]
  killedAt = { completed: completedInBurst, state: Object.fromEntries(states.map((r) => [r.state, Number(r.n)])) }
  t.diagnostic(`killed ${leader.instanceId} with ${killedAt.completed} of ${N} completed on the gateway; in the database then: ${JSON.stringify(killedAt.state)}`)
  assert.ok((killedAt.state.completed ?? 0) < N, 'the kill came in the middle of the burst')

  // The survivor takes the re-send loop and every slot, and finishes the burst.
  await until('survivor leads and holds every slot', async () => {
    const v = await readyz(survivor)
    return v.leader && v.slots.length === SLOTS
  }, 30_000, 100)
  await until('burst completed', async () => (await count("SELECT COUNT(*) AS n FROM commands WHERE op = 'device.quarantine' AND state = 'completed'")) === N, 60_000, 100).catch(async (err: Error) => {
    const st = (await sql.query("SELECT state, COUNT(*) AS n FROM commands WHERE op = 'device.quarantine' GROUP BY state")).rows
    const logs = survivor.lines.filter((l) => l.level !== 'info' || /slot|leader/.test(String(l.msg))).map((l) => JSON.stringify(l)).join('\n')
    throw new Error(`${err.message}; commands ${JSON.stringify(st)}; gateway ledger completed ${completedInBurst}; survivor log:\n${logs}`)
  })

  // Nothing lost: every event the gateway signed is stored, once, with no seq missing.
  const lastSeq = gw.gateway.outbox.lastSeq
  await until('every event stored', async () => (await count("SELECT COUNT(*) AS n FROM events WHERE site = 's1' AND gateway = 'gw1'")) >= lastSeq, 30_000, 100)
  const seqs = (await sql.query("SELECT seq FROM events WHERE site = 's1' AND gateway = 'gw1' ORDER BY seq")).rows.map((r: { seq: string }) => Number(r.seq))
  assert.deepEqual(seqs, Array.from({ length: lastSeq }, (_, i) => i + 1), 'events 1..lastSeq, each once')
  const g = (await survivorApi('GET', '/v1/gateways/s1/gw1')).json
  const rollbacks = (await survivorApi('GET', '/v1/alerts?kind=rollback')).json.items as { detail: Record<string, unknown> }[]
  assert.deepEqual(rollbacks.map((r) => [r.detail.what, r.detail.detail]), [], 'no rollback seen in a live gateway\'s history')
  assert.deepEqual([g.history.epoch, g.history.contiguousSeq, g.history.maxSeq], [0, lastSeq, lastSeq])
  assert.equal(await count("SELECT COUNT(*) AS n FROM alerts WHERE kind IN ('rollback', 'event-conflict')"), 0)
  // A slot's events wait on the broker until its new holder takes it: a gap longer than --gap-grace (0.5 s here) is
  // an alert, resolved once the events are in.
  const gaps = (await sql.query("SELECT resolved_at FROM alerts WHERE kind = 'seq-gap'")).rows as { resolved_at: string | null }[]
  t.diagnostic(`${gaps.length} seq-gap alert(s) while the slots changed hands`)
  assert.ok(gaps.every((a) => a.resolved_at !== null), 'every seq gap filled and its alert resolved')

  // Nothing run twice: each jti accepted once by the gateway, each device quarantined once.
  for (const j of jtis) assert.equal(ledger.accepted.get(j), 1, `${j} accepted once`)
  for (const id of ids) assert.deepEqual(ledger.stateChanges.get(id), ['active', 'quarantined'], `${id} changed once`)
  const cmds = (await survivorApi('GET', `/v1/commands?state=completed&limit=1000`)).json.items as { jti: string; sends: number; duplicates: number }[]
  const resent = cmds.filter((c) => jtis.includes(c.jti) && c.sends > 1)
  t.diagnostic(`${resent.length} command(s) of the burst re-sent after the kill; ${cmds.reduce((s, c) => s + c.duplicates, 0)} copy(ies) answered cmd.duplicate by the gateway`)
  assert.equal(await count('SELECT COUNT(*) AS n FROM instances WHERE leader'), 1, 'one instance says it leads: the new leader cleared the dead one\'s claim')
  assert.equal((await survivor.stop()), 0, 'the survivor stops cleanly')
})
