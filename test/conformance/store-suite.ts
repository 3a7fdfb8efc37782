// The one conformance suite every store runs (agent/store/store.ts; STYLE.md:
// one suite per pluggable interface). The core builds its guarantees on
// these: an audit entry, a registry record and the events of one change are
// written in one write() and must land together or not at all, in the order
// the changes were made; what was acknowledged after a sync write must be
// there after a crash; after a failed write nothing later may be
// acknowledged (the audit chain would have a hole); scans read prefix
// ranges in key order (the outbox by seq, the action queue per device);
// a snapshot gives one consistent view (audit verify); one agent per dir.
//
// Written over a factory (StoreImplementation): how to open a store on a
// directory, take an explicit snapshot, make the backend fail for a while,
// and, where the implementation can, open the directory from another
// process or kill a process right after a sync write.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TestContext } from 'node:test'
import type { Snapshot, Store, WriteOp } from '../../agent/store/store.ts'

/** What the core uses of a store. */
export type StoreContract = Pick<Store, 'write' | 'get' | 'getJson' | 'scan' | 'scanBatches' | 'flush' | 'close'>

export interface StoreImplementation<S extends StoreContract = StoreContract> {
  name: string
  open(dir: string): Promise<S>
  /** An explicit snapshot, for the `snapshot` option of scan()/scanBatches(). */
  snapshot(store: S): { snapshot: Snapshot; close(): Promise<void> }
  /** Make the backend refuse writes from now on; heal() undoes it. */
  fault(store: S): Promise<{ heal(): Promise<void> }>
  /** The code a second open of a dir in use fails with. */
  lockedCode: string
  /** Open `dir` in another process: the code that open failed with, or null if it opened. */
  openElsewhere?(dir: string): Promise<string | null>
  /** In another process: open `dir`, write `ops` with sync, and be killed (SIGKILL) the moment the write resolved. */
  crashAfterSyncWrite?(dir: string, ops: WriteOp[]): Promise<void>
  gaps?: Partial<Record<StorePoint, string>>
}

export type StorePoint = 'atomic' | 'order' | 'last-op-per-key' | 'sync-survives' | 'poison' | 'scan-order' | 'scan-any-suffix' | 'snapshot' | 'locked' | 'lock-kept' | 'close-flushes'

const put = (key: string, value: string): WriteOp => ({ type: 'put', key, value })
const del = (key: string): WriteOp => ({ type: 'del', key })

/** Key order: the bytes of the UTF-8 keys (LevelDB's, and what the seq keys are built for). */
const byKey = (a: string, b: string): number => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'))

async function entries(s: StoreContract, prefix: string, opts: { snapshot?: Snapshot } = {}): Promise<[string, string][]> {
  const out: [string, string][] = []
  for await (const e of s.scan(prefix, opts)) out.push(e)
  return out
}

export function storeConformance<S extends StoreContract>(t: TestContext, impl: StoreImplementation<S>): Promise<void>[] {
  const gap = (point: StorePoint): { todo?: string } => {
    const why = impl.gaps?.[point]
    return why ? { todo: `${impl.name} does not meet this today: ${why}` } : {}
  }
  /** A fresh dir, removed at the end of the test (after `first`, where given: a store still open on it). */
  const dirOf = (t: TestContext, first?: () => Promise<void>): string => {
    const dir = mkdtempSync(join(tmpdir(), 'edgewarden-store-conformance-'))
    t.after(async () => {
      await first?.()
      rmSync(dir, { recursive: true, force: true })
    })
    return dir
  }
  /** A store on a fresh dir, closed at the end of the test (closing twice must be harmless to the suite). */
  const opened = async (t: TestContext): Promise<{ store: S; dir: string; reopen(): Promise<S> }> => {
    let store: S | null = null
    const dir = dirOf(t, async () => void (await store?.close().catch(() => {})))
    store = await impl.open(dir)
    return {
      store: store!,
      dir,
      async reopen() {
        await store!.close()
        store = await impl.open(dir)
        return store
      },
    }
  }

  return [
    t.test('write() applies each batch atomically: a reader sees all of it or none of it', gap('atomic'), async (t) => {
      const { store } = await opened(t)
      const KEYS = 64
      const BATCHES = 40
      const batch = (i: number): WriteOp[] => Array.from({ length: KEYS }, (_, k) => put(`atom!${String(k).padStart(3, '0')}`, `v${i}`))
      const writes: Promise<void>[] = []
      let done = false
      // Written a few at a time (so some are merged into one group, some not), read all along.
      const writer = (async () => {
        for (let i = 0; i < BATCHES; i++) {
          writes.push(store.write(batch(i), { sync: i % 4 === 0 }))
          if (i % 3 === 2) await writes[i]
        }
        await Promise.all(writes)
      })().finally(() => (done = true))
      const seen: string[][] = []
      while (!done) {
        seen.push((await entries(store, 'atom!')).map(([, v]) => v))
      }
      await writer
      await Promise.all(writes)
      seen.push((await entries(store, 'atom!')).map(([, v]) => v))
      let last = -1
      for (const values of seen) {
        if (values.length === 0) continue
        assert.equal(values.length, KEYS, 'a batch lands whole')
        assert.equal(new Set(values).size, 1, `one batch's values, not a mix: ${[...new Set(values)].join(',')}`)
        const i = Number(values[0]!.slice(1))
        assert.ok(i >= last, 'batches land in call order')
        last = i
      }
      assert.equal(last, BATCHES - 1)
      t.diagnostic(`${impl.name}: ${seen.length} reads during ${BATCHES} batches of ${KEYS} puts`)
    }),

    t.test('write() applies writes in call order, and resolves them in call order', gap('order'), async (t) => {
      const { store } = await opened(t)
      const resolved: number[] = []
      const writes: Promise<void>[] = []
      for (let i = 0; i < 200; i++) {
        writes.push(store.write([put('order!k', String(i)), put(`order!i${String(i).padStart(3, '0')}`, JSON.stringify({ i }))], { sync: i % 7 === 0 }).then(() => void resolved.push(i)))
      }
      // a put then a del of one key in separate calls, and the other way round
      writes.push(store.write([put('order!x', '1')], { sync: false }), store.write([del('order!x')], { sync: false }))
      writes.push(store.write([del('order!y')], { sync: false }), store.write([put('order!y', '2')], { sync: true }))
      await Promise.all(writes)
      assert.deepEqual(resolved, Array.from({ length: 200 }, (_, i) => i), 'resolved in call order')
      assert.equal(await store.get('order!k'), '199', 'the last call wins')
      assert.equal(await store.get('order!x'), undefined)
      assert.equal(await store.get('order!y'), '2')
      assert.deepEqual(await store.getJson('order!i123'), { i: 123 })
      assert.equal(await store.getJson('order!none'), undefined)
    }),

    t.test('writes merged into one group, and ops within one batch, keep the last op per key', gap('last-op-per-key'), async (t) => {
      const { store, reopen } = await opened(t)
      // Within one batch.
      await store.write([put('m!a', '1'), put('m!a', '2'), put('m!b', '1'), del('m!b'), del('m!c'), put('m!c', '3'), put('m!d', '1'), put('m!e', '1'), put('m!d', '2'), del('m!e'), put('m!e', '3')], { sync: false })
      // Across calls queued while a write is in flight: they are written as one group.
      const inFlight = store.write([put('m!f', '0')], { sync: true })
      const queued = [
        store.write([put('m!g', '1')], { sync: false }),
        store.write([del('m!g')], { sync: false }),
        store.write([put('m!g', '3'), put('m!h', '1')], { sync: true }),
        store.write([del('m!h')], { sync: false }),
        store.write([put('m!f', '1'), del('m!f'), put('m!f', '2')], { sync: false }),
      ]
      await Promise.all([inFlight, ...queued])
      const expected: [string, string][] = [
        ['m!a', '2'],
        ['m!c', '3'],
        ['m!d', '2'],
        ['m!e', '3'],
        ['m!f', '2'],
        ['m!g', '3'],
      ]
      assert.deepEqual(await entries(store, 'm!'), expected)
      assert.deepEqual(await entries(await reopen(), 'm!'), expected, 'the same once reopened')
    }),

    t.test('a sync write survives a reopen, and the kill of the process that made it', gap('sync-survives'), async (t) => {
      const { store, dir, reopen } = await opened(t)
      await store.write([put('sync!a', 'A'), put('sync!b', 'B')], { sync: true })
      const again = await reopen()
      assert.deepEqual(await entries(again, 'sync!'), [['sync!a', 'A'], ['sync!b', 'B']])
      if (!impl.crashAfterSyncWrite) return t.diagnostic(`${impl.name}: no crash check (it cannot run in another process)`)
      await again.close()
      const ops = Array.from({ length: 100 }, (_, i) => put(`crash!${String(i).padStart(3, '0')}`, `c${i}`))
      const t0 = performance.now()
      await impl.crashAfterSyncWrite(dir, ops)
      t.diagnostic(`${impl.name}: the writer was killed ${(performance.now() - t0).toFixed(0)} ms after it started`)
      const after = await impl.open(dir)
      try {
        assert.equal((await entries(after, 'crash!')).length, 100, 'every op of the acknowledged sync write')
        assert.equal(await after.get('sync!a'), 'A')
      } finally {
        await after.close()
      }
    }),

    t.test('a failed write fails every later write too (the store is poisoned), and none of their ops land', gap('poison'), async (t) => {
      const { store, reopen } = await opened(t)
      await store.write([put('p!base', '1')], { sync: true })
      const fault = await impl.fault(store)
      const first = store.write([put('p!a', '1')], { sync: true })
      const queued = store.write([put('p!b', '1')], { sync: false })
      const codes: string[] = []
      const code = (err: unknown): true => {
        assert.ok(err instanceof Error)
        codes.push(String((err as { code?: unknown }).code))
        return true
      }
      await assert.rejects(first, code)
      await assert.rejects(queued, code, 'a write queued behind the failed one fails too')
      await fault.heal()
      // The cause is gone, the store stays failed: nothing may be acknowledged out of order.
      await assert.rejects(store.write([put('p!c', '1')], { sync: true }), code)
      await assert.rejects(store.write([], { sync: false }), code)
      t.diagnostic(`${impl.name}: failed writes rejected with ${[...new Set(codes)].join(', ')}`)
      assert.equal(new Set(codes).size, 1, 'one stable code')
      await store.flush()
      const again = await reopen()
      assert.deepEqual(await entries(again, 'p!'), [['p!base', '1']], 'nothing of the failed writes landed')
      await again.write([put('p!d', '1')], { sync: true })
      assert.equal(await again.get('p!d'), '1', 'a new open of the dir writes again')
    }),

    t.test('scan and scanBatches give exactly the keys with the prefix, in key order', gap('scan-order'), async (t) => {
      const { store } = await opened(t)
      const inside = ['a!', 'a!!x', 'a!0000000000000002', 'a!0000000000000010', 'a!1', 'a!10', 'a!2', 'a!A', 'a!b', 'a!~', 'a!\u007f']
      const outside = ['a', 'a"', 'a#', 'A!1', 'b!1', '`!1', 'a\u0000!']
      await store.write([...inside, ...outside].map((k) => put(k, `value of ${k}`)), { sync: false })
      const want = [...inside].sort(byKey)
      assert.deepEqual((await entries(store, 'a!')).map(([k]) => k), want)
      assert.deepEqual((await entries(store, 'a!')).map(([, v]) => v), want.map((k) => `value of ${k}`))
      assert.deepEqual(await entries(store, 'zz!'), [], 'an empty range')
      assert.deepEqual((await entries(store, '')).map(([k]) => k), [...inside, ...outside].sort(byKey), 'the empty prefix is everything')
      for (const size of [1, 3, 1000]) {
        const batches: [string, string][][] = []
        for await (const b of store.scanBatches('a!', size)) batches.push(b)
        assert.ok(batches.every((b) => b.length >= 1 && b.length <= size), `batches of 1..${size}: ${batches.map((b) => b.length).join(',')}`)
        assert.deepEqual(batches.flat().map(([k]) => k), want, `scanBatches(…, ${size}) is scan() in pieces`)
      }
      const none: unknown[] = []
      for await (const b of store.scanBatches('zz!', 10)) none.push(b)
      assert.deepEqual(none, [], 'no batch for an empty range')
    }),

    t.test('scan finds every key with the prefix, whatever characters follow it', gap('scan-any-suffix'), async (t) => {
      const { store } = await opened(t)
      const inside = ['u!a', 'u!\u00e9', 'u!\u00fe', 'u!\u00ff', 'u!\u00ffz', 'u!\u0100', 'u!\u4e2d', 'u!\u{1f600}']
      await store.write([...inside, 'u"', 'v!a'].map((k) => put(k, '1')), { sync: false })
      assert.deepEqual((await entries(store, 'u!')).map(([k]) => k), [...inside].sort(byKey))
    }),

    t.test('an explicit snapshot isolates reads from later writes', gap('snapshot'), async (t) => {
      const { store } = await opened(t)
      await store.write([put('s!1', 'a'), put('s!2', 'b')], { sync: false })
      const snap = impl.snapshot(store)
      try {
        await store.write([put('s!1', 'A'), del('s!2'), put('s!3', 'c')], { sync: true })
        assert.deepEqual(await entries(store, 's!', { snapshot: snap.snapshot }), [['s!1', 'a'], ['s!2', 'b']], 'as it was when taken')
        const batches: [string, string][] = []
        for await (const b of store.scanBatches('s!', 1, { snapshot: snap.snapshot })) batches.push(...b)
        assert.deepEqual(batches, [['s!1', 'a'], ['s!2', 'b']], 'scanBatches from the snapshot too')
        assert.deepEqual(await entries(store, 's!'), [['s!1', 'A'], ['s!3', 'c']], 'without it: the store now')
      } finally {
        await snap.close()
      }
    }),

    t.test('a second open of a dir in use fails with the locked code, from another process and in this one; the first keeps working; once closed the dir opens again', gap('locked'), async (t) => {
      const { store, dir } = await opened(t)
      if (impl.openElsewhere) assert.equal(await impl.openElsewhere(dir), impl.lockedCode, 'a second agent (another process)')
      await assert.rejects(impl.open(dir), (err: unknown) => {
        assert.equal((err as { code?: unknown }).code, impl.lockedCode)
        return true
      })
      await store.write([put('l!still', 'yes')], { sync: true })
      assert.equal(await store.get('l!still'), 'yes', 'the first store is untouched by the refused opens')
      await store.close()
      const next = await impl.open(dir)
      try {
        assert.equal(await next.get('l!still'), 'yes')
      } finally {
        await next.close()
      }
      if (impl.openElsewhere) assert.equal(await impl.openElsewhere(dir), null, 'free again for another process')
    }),

    t.test('a refused second open in this process leaves the first store\'s lock in force: another process is still refused', gap('lock-kept'), async (t) => {
      if (!impl.openElsewhere) return t.skip(`${impl.name}: no other process to ask`)
      const { dir } = await opened(t)
      await assert.rejects(impl.open(dir))
      assert.equal(await impl.openElsewhere(dir), impl.lockedCode, 'a second agent (another process) after the refused open')
    }),

    t.test('close() waits for every queued write: all of them resolve, and are there after a reopen', gap('close-flushes'), async (t) => {
      const dir = dirOf(t)
      const store = await impl.open(dir)
      const resolved = new Set<number>()
      const writes = Array.from({ length: 300 }, (_, i) => store.write([put(`c!${String(i).padStart(3, '0')}`, String(i))], { sync: i === 150 }).then(() => void resolved.add(i)))
      await store.close()
      assert.equal(resolved.size, 300, 'every write queued before close() resolved before it did')
      await Promise.all(writes)
      const again = await impl.open(dir)
      try {
        assert.equal((await entries(again, 'c!')).length, 300)
      } finally {
        await again.close()
      }
    }),
  ]
}
