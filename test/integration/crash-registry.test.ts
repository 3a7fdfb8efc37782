// Crash safety of the registry and the audit chain: a child process writes
// 1,000 registry changes through a Gateway and is killed with SIGKILL after
// N acknowledged writes. Every acknowledged write must be on disk, the store
// must hold an exact prefix of the writes (nothing lost in the middle, no torn
// record), and the audit chain must verify.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { test } from 'node:test'
import { AUDIT_PREFIX, verifyAuditLog, type AuditEntry } from '../../agent/store/audit.ts'
import { DEVICE_STATES, type DeviceRecord } from '../../agent/devices/device.ts'
import { DEVICE_PREFIX } from '../../agent/devices/registry.ts'
import { Store } from '../../agent/store/store.ts'
import { ROOT, tempDir } from '../helpers/agent.ts'
import { DEVICES, planned, tag, TOTAL } from '../helpers/crash-writer.ts'

const WRITER = join(ROOT, 'test', 'helpers', 'crash-writer.ts')

/** mulberry32: a tiny seeded PRNG, so a failing run can be replayed with EDGEWARDEN_TEST_SEED. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

interface Run {
  publicKey: string
  acked: Set<number>
  finished: boolean
  signal: NodeJS.Signals | null
  code: number | null
}

/** Run the writer and SIGKILL it once it has acknowledged `killAfter` writes. */
function runWriter(dataDir: string, killAfter: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', WRITER, dataDir], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
    const run: Run = { publicKey: '', acked: new Set(), finished: false, signal: null, code: null }
    let stderr = ''
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
    child.on('error', reject)
    let killed = false
    const lines = createInterface({ input: child.stdout })
    lines.on('line', (line) => {
      const [what, arg] = line.split(' ')
      if (what === 'open') run.publicKey = arg ?? ''
      else if (what === 'ack') run.acked.add(Number(arg))
      else if (what === 'done') run.finished = true
      if (!killed && run.acked.size >= killAfter) {
        killed = true
        child.kill('SIGKILL')
      }
    })
    // 'close' comes after both the exit and the end of stdout: every line the child wrote has been read.
    child.on('close', (code, signal) => {
      run.code = code
      run.signal = signal
      if (!killed && !run.finished) reject(new Error(`writer exited (${code ?? signal}) before ${killAfter} acks; stderr: ${stderr}`))
      else resolve(run)
    })
  })
}

async function checkStore(dataDir: string, run: Run): Promise<{ applied: number }> {
  const store = await Store.open(dataDir)
  try {
    // Registry: complete JSON records in legal states, each carrying the tag of the last write applied to it.
    const lastApplied = new Map<string, number>()
    for await (const [key, value] of store.scan(DEVICE_PREFIX)) {
      const id = key.slice(DEVICE_PREFIX.length)
      let rec: DeviceRecord
      try {
        rec = JSON.parse(value) as DeviceRecord
      } catch {
        assert.fail(`record ${key} is not complete JSON: ${value.slice(0, 80)}`)
      }
      assert.equal(rec.spec.id, id)
      assert.ok((DEVICE_STATES as readonly string[]).includes(rec.state), `${id}: state ${rec.state} is legal`)
      const m = /^w(\d+)$/.exec(rec.stateReason ?? '')
      assert.ok(m, `${id}: record carries its last write's tag (${rec.stateReason})`)
      const index = Number(m[1])
      const w = planned(index)
      assert.equal(w.deviceId, id, `write ${index} was for ${w.deviceId}`)
      assert.equal(rec.state, w.to, `${id}: after write ${index} (${w.t}) the state is ${w.to}`)
      lastApplied.set(id, index)
    }
    // The store holds writes 0..applied-1 exactly: a prefix, because writes are committed in order.
    const applied = Math.max(-1, ...lastApplied.values()) + 1
    for (let d = 0; d < DEVICES; d++) {
      const id = planned(d).deviceId
      let expected: number | undefined
      for (let i = d; i < applied; i += DEVICES) expected = i
      assert.equal(lastApplied.get(id), expected, `${id}: last write applied is the last one before ${applied}`)
    }
    // Every acknowledged write is present.
    const maxAcked = Math.max(-1, ...run.acked)
    assert.ok(applied > maxAcked, `acknowledged write ${maxAcked} is on disk (store holds ${applied} writes)`)

    // Audit: the chain verifies and records exactly the writes applied, in order.
    const verdict = await verifyAuditLog(store, [run.publicKey])
    assert.equal(verdict.ok, true, JSON.stringify(verdict))
    const tags: string[] = []
    for await (const [, value] of store.scan(AUDIT_PREFIX)) {
      const e = JSON.parse(value) as AuditEntry
      if (e.action !== 'gateway.created') tags.push((e.data as { jti: string }).jti)
    }
    assert.deepEqual(tags, Array.from({ length: applied }, (_, i) => tag(i)))
    return { applied }
  } finally {
    await store.close()
  }
}

test('registry and audit survive kill -9 at random points', { timeout: 120_000 }, async (t) => {
  const seed = Number(process.env.EDGEWARDEN_TEST_SEED ?? Math.floor(Math.random() * 2 ** 31))
  t.diagnostic(`seed ${seed} (replay with EDGEWARDEN_TEST_SEED=${seed})`)
  const rand = prng(seed)
  const points = new Set<number>()
  while (points.size < 3) points.add(50 + Math.floor(rand() * 851)) // 50..900
  for (const n of points) {
    await t.test(`kill -9 after ${n} acknowledged writes (seed ${seed})`, { timeout: 60_000 }, async (t) => {
      const dataDir = tempDir(t)
      const run = await runWriter(dataDir, n)
      assert.ok(run.publicKey, 'writer reported its gateway key')
      assert.ok(run.acked.size >= n)
      const { applied } = await checkStore(dataDir, run)
      t.diagnostic(`killed by ${run.signal ?? `exit ${run.code}`}; ${run.acked.size} acknowledged, ${applied} on disk of ${TOTAL}`)
      if (!run.finished) assert.equal(run.signal, 'SIGKILL')
    })
  }
})
