// The store's schema version (agent/store/schema.ts), on a real LevelDB
// data dir: a new store is written at the current version; a store of an
// older version (no record: version 1) is migrated at start, in one audited
// step; a store a newer agent wrote is refused by `edgewarden start` and by
// the readers (audit verify), in one line that says what to do, and nothing
// in it changes. The section that line points to is in docs/operations.md.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { VERSION } from '../../agent/gateway.ts'
import { AUDIT_PREFIX, type AuditEntry } from '../../agent/store/audit.ts'
import { SCHEMA_KEY, SCHEMA_VERSION } from '../../agent/store/schema.ts'
import { Store } from '../../agent/store/store.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { ROOT, runCli, startTestAgent, tempDir } from '../helpers/agent.ts'

const WHO = { actor: 'local:test' }

async function withStore<T>(dataDir: string, fn: (s: Store) => Promise<T>): Promise<T> {
  const s = await Store.open(dataDir)
  try {
    return await fn(s)
  } finally {
    await s.close()
  }
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const x of it) out.push(x)
  return out
}

const auditEntries = async (s: Store): Promise<AuditEntry[]> => (await collect(s.scan(AUDIT_PREFIX))).map(([, v]) => JSON.parse(v) as AuditEntry)

test('a new store carries the schema version; an older one (no record) is migrated at start, audited, its data kept in the new shape', async (t) => {
  const dataDir = join(tempDir(t), 'data')
  const first = await startTestAgent(t, { dataDir })
  await first.gateway.enroll({ id: 'pump-1', publicKey: publicKeyToB64((await keygen()).publicKey) }, WHO)
  // an open retirement (its wipe never acked): what the 1 -> 2 step rewrites
  await first.retirements.start('pump-1', { receivedAt: performance.now(), receivedAtS: first.gateway.nowS(), reason: 'replaced' }, WHO)
  await first.stop()

  const retireKey = await withStore(dataDir, async (s) => {
    assert.deepEqual(JSON.parse((await s.get(SCHEMA_KEY))!), { version: SCHEMA_VERSION, writtenBy: VERSION }, 'a new store is written at the current version')
    // make it what a version before the record wrote: no schema record, and a retirement keeping the command it waits for
    const open1 = await collect(s.scan('retire!'))
    assert.equal(open1.length, 1, 'one open retirement')
    const [key, value] = open1[0]!
    const open = JSON.parse(value) as { origins: { jti: string; command?: unknown }[] }
    open.origins = [{ jti: 'cmd-old-1', command: { op: 'device.retire', args: { deviceId: 'pump-1' } } }]
    await s.write([{ type: 'del', key: SCHEMA_KEY }, { type: 'put', key, value: JSON.stringify(open) }], { sync: true })
    return key
  })

  const second = await startTestAgent(t, { dataDir })
  assert.equal(second.gateway.getDevice('pump-1')?.state, 'retiring', 'the registry as it was')
  await second.stop()
  await withStore(dataDir, async (s) => {
    assert.equal(JSON.parse((await s.get(SCHEMA_KEY))!).version, SCHEMA_VERSION)
    assert.deepEqual((JSON.parse((await s.get(retireKey))!) as { origins: unknown }).origins, [{ jti: 'cmd-old-1' }], 'the command dropped, its jti kept')
    const migrated = (await auditEntries(s)).filter((e) => e.action === 'store.migrated')
    assert.equal(migrated.length, 1)
    const data = migrated[0]!.data as { from?: number; to?: number; version?: string }
    assert.deepEqual([data.from, data.to, data.version], [1, 2, VERSION])
  })
  const verify = await runCli(['audit', 'verify', '--data-dir', dataDir])
  assert.equal(verify.code, 0, `the migrated store's audit chain verifies: ${verify.stdout}${verify.stderr}`)
})

test('a store a newer agent wrote: start and audit verify refuse it in one line naming both versions and the way back; nothing in it changes', async (t) => {
  const dataDir = join(tempDir(t), 'data')
  const agent = await startTestAgent(t, { dataDir })
  await agent.stop()
  const newer = { version: SCHEMA_VERSION + 1, writtenBy: '9.0.0' }
  const before = await withStore(dataDir, async (s) => {
    await s.write([{ type: 'put', key: SCHEMA_KEY, value: JSON.stringify(newer) }], { sync: true })
    return { entries: (await auditEntries(s)).length, keys: (await collect(s.db.keys())).length }
  })

  const start = await runCli(['start', '--data-dir', dataDir, '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--log-level', 'error'], { timeoutMs: 30_000 })
  assert.equal(start.timedOut, false)
  assert.notEqual(start.code, 0)
  const said = start.stderr + start.stdout
  assert.match(said, new RegExp(`has schema ${newer.version}, written by edgewarden 9\\.0\\.0; this edgewarden ${VERSION.replaceAll('.', '\\.')} knows schema ${SCHEMA_VERSION} at most`))
  assert.match(said, /docs\/operations\.md, "Roll back"/)
  assert.doesNotMatch(said, /\n\s+at \S/, 'no stack trace')

  const verify = await runCli(['audit', 'verify', '--data-dir', dataDir])
  assert.notEqual(verify.code, 0)
  assert.match(verify.stderr, /STORE_SCHEMA|has schema \d+, written by edgewarden 9\.0\.0/)

  await withStore(dataDir, async (s) => {
    assert.deepEqual(JSON.parse((await s.get(SCHEMA_KEY))!), newer, 'the record left as the newer agent wrote it')
    assert.equal((await auditEntries(s)).length, before.entries, 'no audit entry added')
    assert.equal((await collect(s.db.keys())).length, before.keys, 'no key added or removed')
  })
})

test('docs/operations.md has the sections the refusal and the release point to: install from a tarball, upgrade, roll back, and what restoring an old data dir means', () => {
  const ops = readFileSync(join(ROOT, 'docs', 'operations.md'), 'utf8')
  const headings = [...ops.matchAll(/^#{2,3} (.+)$/gm)].map((m) => m[1]!)
  for (const h of ['Install', 'Install offline from a release tarball', 'Upgrade', 'Roll back', 'Back up and restore the data dir']) assert.ok(headings.includes(h), `operations.md has "${h}"`)
  const section = (h: string): string => ops.slice(ops.indexOf(`## ${h}\n`), ops.indexOf('\n## ', ops.indexOf(`## ${h}\n`) + 3))
  assert.match(section('Install offline from a release tarball'), /npm run release[\s\S]*deploy\/install\.sh edgewarden-[^\s]+\.tar\.gz/)
  assert.match(section('Roll back'), /schema/)
  assert.match(section('Back up and restore the data dir'), /older (version|agent)[\s\S]*migrat/)
})
