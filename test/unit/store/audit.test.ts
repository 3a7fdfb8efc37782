// The audit chain against an attacker with write access to the LevelDB but
// not to the gateway key: every edit, deletion, reordering or forgery is
// caught by verifyAuditLog and located at the entry where it happened.
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { cpSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { AUDIT_HEAD_KEY, AUDIT_PREFIX, EVENT_SEQ_KEY, IDENTITY_KEY, verifyAuditLog, type AuditEntry, type AuditVerdict } from '../../../agent/store/audit.ts'
import { canonicalJson } from '../../../agent/store/canonical-json.ts'
import { Gateway } from '../../../agent/gateway.ts'
import { b64urlEncode, generateKeyPair, readKeyFile, signBytes, type KeyPair } from '../../../agent/store/keys.ts'
import { createLogger } from '../../../agent/observe/logger.ts'
import { seqKey, Store } from '../../../agent/store/store.ts'
import { runCli, tempDir, testConfig } from '../../helpers/agent.ts'

type T = { after(fn: () => Promise<void> | void): void }

const ENTRIES = 12
const who = (reason: string) => ({ actor: 'local:alice', reason })

/** A data dir holding a real chain of ENTRIES entries written by a Gateway. */
async function pristine(t: T): Promise<{ dataDir: string; gatewayKey: string }> {
  const dataDir = tempDir(t)
  const gw = await Gateway.open(testConfig(dataDir), { log: createLogger('silent') }) // entry 1: gateway.created
  for (const id of ['d1', 'd2', 'd3']) await gw.enroll({ id, publicKey: generateKeyPair().publicKeyB64 }, who('install')) // 2-4
  await gw.transition('d1', 'quarantine', who('scan')) // 5
  await gw.transition('d1', 'release', who('clean')) // 6
  await gw.transition('d2', 'revoke', who('stolen')) // 7
  await gw.transition('d3', 'retire', who('eol')) // 8
  await gw.transition('d3', 'retire-complete', who('wiped')) // 9
  await gw.transition('d1', 'quarantine', who('again')) // 10
  await gw.transition('d1', 'revoke', who('gone')) // 11
  await gw.enroll({ id: 'd2', publicKey: generateKeyPair().publicKeyB64 }, who('re-admit')) // 12
  const gatewayKey = gw.key.publicKeyB64
  await gw.close()
  return { dataDir, gatewayKey }
}

let base: Promise<{ dataDir: string; gatewayKey: string }> | undefined

/** A fresh copy of the pristine chain, opened as a raw Store. */
async function copy(t: T): Promise<{ store: Store; dataDir: string; gatewayKey: string }> {
  base ??= pristine({ after: (fn) => process.once('exit', () => void fn()) })
  const { dataDir: src, gatewayKey } = await base
  const dataDir = tempDir(t)
  cpSync(src, dataDir, { recursive: true })
  const store = await Store.open(dataDir)
  t.after(() => store.close())
  return { store, dataDir, gatewayKey }
}

const key = (seq: number): string => seqKey(AUDIT_PREFIX, seq)

async function entry(store: Store, seq: number): Promise<AuditEntry> {
  const v = await store.db.get(key(seq))
  assert.ok(v, `entry ${seq} exists`)
  return JSON.parse(v) as AuditEntry
}

// Recomputed here from the documented fields, as an attacker would.
const hashOf = (e: AuditEntry): string =>
  createHash('sha256')
    .update(canonicalJson({ seq: e.seq, at: e.at, actor: e.actor, action: e.action, subject: e.subject, data: e.data, prev: e.prev, signer: e.signer }))
    .digest('hex')

function assertBrokenAt(v: AuditVerdict, seq: number, problem?: RegExp, verifiedBefore = seq - 1): void {
  assert.equal(v.ok, false, `expected a broken chain, got ${JSON.stringify(v)}`)
  if (v.ok) return
  assert.equal(v.seq, seq, `located at ${v.seq} (${v.problem}), expected ${seq}`)
  assert.equal(v.entries, verifiedBefore, 'entries verified before the bad one')
  if (problem) assert.match(v.problem, problem)
}

test('an untouched chain verifies', async (t) => {
  const { store, gatewayKey } = await copy(t)
  const v = await verifyAuditLog(store, [gatewayKey])
  assert.deepEqual(v, { ok: true, entries: ENTRIES, head: (await entry(store, ENTRIES)).hash })
  // the chain is what the Gateway was asked to record, in order
  const actions: string[] = []
  for await (const [, value] of store.scan(AUDIT_PREFIX)) actions.push((JSON.parse(value) as AuditEntry).action)
  assert.deepEqual(actions.slice(0, 6), ['gateway.created', 'device.enroll', 'device.enroll', 'device.enroll', 'device.quarantine', 'device.release'])
  // a chain checked against nobody's key is not trusted
  assertBrokenAt(await verifyAuditLog(store, []), 1, /not a trusted/)
  assertBrokenAt(await verifyAuditLog(store, [generateKeyPair().publicKeyB64]), 1, /not a trusted/)
})

test('an edited field is caught at that entry', async (t) => {
  for (const [field, edit] of [
    ['actor', (e: AuditEntry) => (e.actor = 'local:mallory')],
    ['data.reason', (e: AuditEntry) => ((e.data as { reason: string }).reason = 'routine')],
    ['at', (e: AuditEntry) => (e.at += 1)],
    ['subject', (e: AuditEntry) => (e.subject = 'd3')],
  ] as const) {
    await t.test(field, async (t) => {
      const { store, gatewayKey } = await copy(t)
      const e = await entry(store, 5)
      edit(e)
      await store.db.put(key(5), JSON.stringify(e))
      assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 5, /edited/)
    })
  }
})

test('a deleted middle entry is caught where it is missing', async (t) => {
  const { store, gatewayKey } = await copy(t)
  await store.db.del(key(6))
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 6, /missing/)
})

test('a deleted middle entry with later entries renumbered is caught', async (t) => {
  const { store, gatewayKey } = await copy(t)
  // Shift 7..12 down into 6..11 and drop 12: keys and seqs line up again.
  for (let s = 7; s <= ENTRIES; s++) {
    const e = await entry(store, s)
    e.seq = s - 1
    await store.db.put(key(s - 1), JSON.stringify(e))
  }
  await store.db.del(key(ENTRIES))
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 6)
})

test('two swapped entries are caught at the first of them', async (t) => {
  const { store, gatewayKey } = await copy(t)
  const [a, b] = [await store.db.get(key(4)), await store.db.get(key(7))]
  await store.db.batch([
    { type: 'put', key: key(4), value: b! },
    { type: 'put', key: key(7), value: a! },
  ])
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 4, /reordered/)
})

test('two swapped entries with their seq fields rewritten are caught', async (t) => {
  const { store, gatewayKey } = await copy(t)
  const [a, b] = [await entry(store, 4), await entry(store, 7)]
  a.seq = 7
  b.seq = 4
  await store.db.put(key(4), JSON.stringify(b))
  await store.db.put(key(7), JSON.stringify(a))
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 4)
})

test('deleting the last entry is caught by the signed head', async (t) => {
  const { store, gatewayKey } = await copy(t)
  await store.db.del(key(ENTRIES))
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), ENTRIES, /end/)
})

test('deleting the tail is caught at the first deleted entry', async (t) => {
  const { store, gatewayKey } = await copy(t)
  for (let s = 9; s <= ENTRIES; s++) await store.db.del(key(s))
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 9, /end/)
})

test('deleting the tail and the head record is caught', async (t) => {
  const { store, gatewayKey } = await copy(t)
  for (let s = 9; s <= ENTRIES; s++) await store.db.del(key(s))
  await store.db.del(AUDIT_HEAD_KEY)
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 9, /head/)
})

test('deleting the tail and forging the head without the key is caught', async (t) => {
  const { store, gatewayKey } = await copy(t)
  for (let s = 9; s <= ENTRIES; s++) await store.db.del(key(s))
  const last = await entry(store, 8)
  const head = JSON.parse((await store.db.get(AUDIT_HEAD_KEY))!) as { seq: number; hash: string; sig: string }
  await store.db.put(AUDIT_HEAD_KEY, JSON.stringify({ ...head, seq: 8, hash: last.hash }))
  // Reported at the seq the forged head names, with entries 1-8 verified.
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 8, /head/, 8)
})

test('an edited entry re-hashed without the key is caught: at the next entry if the rest is left, at the signed head if the whole chain is re-hashed', async (t) => {
  const { store, gatewayKey } = await copy(t)
  const e = await entry(store, 5)
  e.actor = 'local:mallory'
  e.hash = hashOf(e)
  await store.db.put(key(5), JSON.stringify(e))
  // the chain after it still names the old hash: located at the next entry
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 6, /prev hash/)
  // re-hashed to the end, as someone without the key can: only the signed head can tell
  let prev = e.hash
  for (let s = 6; s <= ENTRIES; s++) {
    const n = await entry(store, s)
    n.prev = prev
    n.hash = hashOf(n)
    await store.db.put(key(s), JSON.stringify(n))
    prev = n.hash
  }
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), ENTRIES, /does not end at the hash the signed head names: entries were edited and the chain re-hashed without the gateway key/, ENTRIES)
})

/** Re-hash and re-sign entries from..end and the head with `signer`, as a forger holding another key would. */
async function forgeFrom(store: Store, from: number, signer: KeyPair, claimSigner: string, edit: (e: AuditEntry) => void): Promise<void> {
  let prev = from > 1 ? (await entry(store, from - 1)).hash : '0'.repeat(64)
  for (let s = from; s <= ENTRIES; s++) {
    const e = await entry(store, s)
    if (s === from) edit(e)
    e.prev = prev
    e.signer = claimSigner
    e.hash = hashOf(e)
    e.sig = b64urlEncode(signBytes(signer.privateKey, new TextEncoder().encode(e.hash)))
    await store.db.put(key(s), JSON.stringify(e))
    prev = e.hash
  }
  const headSig = b64urlEncode(signBytes(signer.privateKey, new TextEncoder().encode(`edgewarden-audit-head:${ENTRIES}:${prev}`)))
  await store.db.put(AUDIT_HEAD_KEY, JSON.stringify({ seq: ENTRIES, hash: prev, sig: headSig }))
}

test('an edited entry signed with another key (naming that key) is caught', async (t) => {
  const { store, gatewayKey } = await copy(t)
  const mallory = generateKeyPair()
  await forgeFrom(store, 5, mallory, mallory.publicKeyB64, (e) => (e.action = 'device.release'))
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 5, /not a trusted/)
  // the forged chain is internally consistent: with mallory trusted it verifies
  assert.equal((await verifyAuditLog(store, [gatewayKey, mallory.publicKeyB64])).ok, true)
})

test('an edited entry signed with another key (claiming the gateway key) is caught', async (t) => {
  const { store, gatewayKey } = await copy(t)
  await forgeFrom(store, 5, generateKeyPair(), gatewayKey, (e) => (e.actor = 'local:mallory'))
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 5, /signature/)
})

test('an entry that is not JSON is caught', async (t) => {
  const { store, gatewayKey } = await copy(t)
  await store.db.put(key(3), '{"seq":3,')
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 3, /not JSON/)
})

test('edgewarden audit verify: exit 0 on a good log, 1 naming the entry on a tampered one', async (t) => {
  const good = await copy(t)
  const bad = await copy(t)
  assert.equal(good.gatewayKey, readKeyFile(join(good.dataDir, 'gateway.key')).publicKeyB64)
  const e = await entry(bad.store, 7)
  e.subject = 'd1'
  await bad.store.db.put(key(7), JSON.stringify(e))
  // the CLI opens the store itself (the agent is stopped)
  await good.store.close()
  await bad.store.close()
  const [ok, broken] = await Promise.all([
    runCli(['audit', 'verify', '--data-dir', good.dataDir]),
    runCli(['audit', 'verify', '--data-dir', bad.dataDir]),
  ])
  assert.equal(ok.code, 0, ok.stderr)
  assert.match(ok.stdout, new RegExp(`verifies: ${ENTRIES} entries`))
  assert.equal(broken.code, 1, broken.stderr)
  assert.match(broken.stdout, /BROKEN at entry 7\b/)
  assert.match(broken.stdout, /edited/)
  assert.doesNotMatch(broken.stdout + broken.stderr, /\n\s+at /, 'no stack trace')
})

/** A gateway's data dir with some history; `mid` is the head record as it was halfway (an old signed head an attacker kept). */
async function withHistory(t: T): Promise<{ dataDir: string; gatewayKey: string; mid: { head: string; seq: number } }> {
  const dataDir = tempDir(t)
  const gw = await Gateway.open(testConfig(dataDir), { log: createLogger('silent') })
  for (const id of ['d1', 'd2', 'd3']) await gw.enroll({ id, publicKey: generateKeyPair().publicKeyB64 }, who('install'))
  await gw.store.flush()
  const mid = { head: (await gw.store.get(AUDIT_HEAD_KEY))!, seq: gw.auditHead.seq }
  await gw.transition('d2', 'revoke', who('stolen'))
  await gw.transition('d3', 'quarantine', who('scan'))
  const gatewayKey = gw.key.publicKeyB64
  await gw.close()
  return { dataDir, gatewayKey, mid }
}

test('a log cut back to an older signed head is caught: the head is anchored to the event counter, which only grows', async (t) => {
  const { dataDir, gatewayKey, mid } = await withHistory(t)
  const store = await Store.open(dataDir)
  t.after(() => store.close())
  assert.equal((await verifyAuditLog(store, [gatewayKey])).ok, true)
  // The revoke and the quarantine are erased, the old (genuinely signed) head put back.
  for (let s = mid.seq + 1; ; s++) {
    if ((await store.db.get(key(s))) === undefined) break
    await store.db.del(key(s))
  }
  await store.db.put(AUDIT_HEAD_KEY, mid.head)
  const v = await verifyAuditLog(store, [gatewayKey])
  assertBrokenAt(v, mid.seq + 1, /cut back to an older head/, mid.seq)
})

test('a used store whose whole log and head were deleted is caught; a new empty store verifies', async (t) => {
  const { dataDir, gatewayKey } = await withHistory(t)
  const store = await Store.open(dataDir)
  t.after(() => store.close())
  for await (const [k] of store.scan(AUDIT_PREFIX)) await store.db.del(k)
  await store.db.del(AUDIT_HEAD_KEY)
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 1, /has been in use/, 0)
  // the identity record deleted as well: the event counter and the device records still tell
  await store.db.del(IDENTITY_KEY)
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 1, /has been in use \(it has an event counter\)/, 0)
  await store.db.del(EVENT_SEQ_KEY)
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), 1, /has been in use \(it holds device records\)/, 0)
  const fresh = await Store.open(tempDir(t))
  t.after(() => fresh.close())
  assert.equal((await verifyAuditLog(fresh, [gatewayKey])).ok, true)
})

test('verify against a gateway writing as fast as it can never reports a healthy log broken (one snapshot)', async (t) => {
  const dataDir = tempDir(t)
  const gw = await Gateway.open(testConfig(dataDir), { log: createLogger('silent') })
  t.after(() => gw.close())
  await gw.enroll({ id: 'd1', publicKey: generateKeyPair().publicKeyB64 }, who('install'))
  let writing = true
  const writers = Array.from({ length: 8 }, async (_, w) => {
    for (let i = 0; writing; i++) {
      await gw.commit({ audit: [{ actor: 'test', action: 'burst', data: { w, i } }], events: i % 2 ? [{ type: 'inventory', data: { w, i } }] : [] }, { sync: false })
    }
  })
  let runs = 0
  try {
    for (; runs < 60; runs++) {
      const v = await verifyAuditLog(gw.store, [gw.key.publicKeyB64])
      assert.equal(v.ok, true, `run ${runs}: ${JSON.stringify(v)}`)
    }
  } finally {
    writing = false
    await Promise.all(writers)
  }
  assert.ok(gw.auditHead.seq > 100, `the log grew meanwhile (${gw.auditHead.seq} entries)`)
})

test('edgewarden audit verify needs only a public key: --trust-key with the private key elsewhere, and says which key it trusted', async (t) => {
  const { dataDir, gatewayKey } = await withHistory(t)
  // the private key moved away (e.g. --key /etc/edgewarden/gateway.key): verifying must not need it
  const elsewhere = join(tempDir(t), 'gateway.key')
  cpSync(join(dataDir, 'gateway.key'), elsewhere)
  ;(await import('node:fs')).rmSync(join(dataDir, 'gateway.key'))
  const pinned = await runCli(['audit', 'verify', '--data-dir', dataDir, '--trust-key', gatewayKey])
  assert.equal(pinned.code, 0, pinned.stderr)
  assert.match(pinned.stdout, new RegExp(`trusted key ${gatewayKey} \\(pinned with --trust-key\\)`))
  const fromStore = await runCli(['audit', 'verify', '--data-dir', dataDir, '--json'])
  assert.equal(fromStore.code, 0, fromStore.stderr)
  const v = JSON.parse(fromStore.stdout) as { ok: boolean; trusted: { key: string; source: string }[] }
  assert.equal(v.trusted[0]!.key, gatewayKey)
  assert.match(v.trusted[0]!.source, /recorded in the store itself.*proves less/)
  const keyFile = await runCli(['audit', 'verify', '--data-dir', dataDir, '--key', elsewhere])
  assert.equal(keyFile.code, 0, keyFile.stderr)
  assert.match(keyFile.stdout, /the public half of .*gateway\.key, kept with the data/)
  const wrong = await runCli(['audit', 'verify', '--data-dir', dataDir, '--trust-key', generateKeyPair().publicKeyB64])
  assert.equal(wrong.code, 1)
  assert.match(wrong.stdout, /not a trusted gateway key/)
  const bad = await runCli(['audit', 'verify', '--data-dir', dataDir, '--trust-key', 'nope'])
  assert.equal(bad.code, 2)
  assert.match(bad.stderr, /not a public key/)
})

test('one signature per batch: entries are chained, not signed; the head is, and an edit inside a batch re-hashed without the key is caught at it', async (t) => {
  const dataDir = tempDir(t)
  const gw = await Gateway.open(testConfig(dataDir), { log: createLogger('silent') })
  const first = gw.auditHead.seq
  await gw.commit({ audit: [1, 2, 3, 4].map((n) => ({ actor: 'local:alice', action: 'bulk.step', subject: `d${n}` })) })
  const gatewayKey = gw.key.publicKeyB64
  await gw.close()
  const store = await Store.open(dataDir)
  t.after(() => store.close())
  const batch = await Promise.all([1, 2, 3, 4].map((n) => entry(store, first + n)))
  assert.deepEqual(batch.map((e) => e.sig !== undefined), [false, false, false, false], 'no entry signature')
  const head = JSON.parse((await store.db.get(AUDIT_HEAD_KEY))!) as { seq: number; hash: string; sig: string }
  assert.deepEqual([head.seq, head.hash, typeof head.sig], [first + 4, batch[3]!.hash, 'string'], 'the head signs the end of the chain')
  assert.equal((await verifyAuditLog(store, [gatewayKey])).ok, true)
  // edit the second entry of the batch and re-hash the chain after it, as someone without the key can
  let prev = batch[0]!.hash
  for (let i = 1; i < 4; i++) {
    const e = batch[i]!
    if (i === 1) e.actor = 'local:mallory'
    e.prev = prev
    e.hash = hashOf(e)
    await store.db.put(key(first + 1 + i), JSON.stringify(e))
    prev = e.hash
  }
  assertBrokenAt(await verifyAuditLog(store, [gatewayKey]), first + 4, /signed head/, first + 4)
})
