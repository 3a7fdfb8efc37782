// Append-only, hash-chained, signed audit log. Each entry holds the SHA-256
// of the one before it and is written in the same atomic batch as the change
// it records, with the head: the last entry's hash and the event seq, signed
// by the gateway key. Editing, deleting or reordering any entry breaks the
// chain at that entry; re-hashing the chain from there on needs the key to
// sign a new head. One signature per store batch (the head's), none per
// entry: an edit left un-re-hashed is located at its entry (or the next);
// one re-hashed to the end without the key is caught at the head, which
// then names the last entry (logs written before 0.2 carry a signature on
// every entry, still verified, which locates it further).
import { hash } from 'node:crypto'
import type { KeyObject } from 'node:crypto'
import { b64urlDecode, b64urlEncode, utf8 } from '../../wire/base64url.ts'
import { canonicalJson } from './canonical-json.ts'
import { publicKeyFromB64, signBytes, verifyBytes, type KeyPair } from './keys.ts'
import { seqKey, type Store, type WriteOp } from './store.ts'

export const AUDIT_PREFIX = 'audit!'
export const AUDIT_HEAD_KEY = 'meta!audit-head'
export const GENESIS = '0'.repeat(64)

export interface AuditInput {
  actor: string
  action: string
  subject?: string
  data?: unknown
}

export interface AuditEntry extends AuditInput {
  seq: number
  /** milliseconds since the epoch */
  at: number
  prev: string
  /** base64url public key of the signer */
  signer: string
  hash: string
  /** the gateway's signature over `hash`, in logs written before 0.2 (still verified); entries now are chained, and the head record written with each batch signs the chain */
  sig?: string
}

interface AuditHead {
  seq: number
  hash: string
  /** the store's event seq when the head was written (absent in heads written before it was anchored) */
  events?: number
  sig: string
}

/** Where the gateway's event counter lives (agent/outbox.ts): the head is anchored to it. */
export const EVENT_SEQ_KEY = 'meta!evt-seq'
/** Recorded at a store's first start (agent/gateway.ts): a store holding it has been in use. */
export const IDENTITY_KEY = 'meta!identity'

// crypto.hash: one call, no Hash object per entry (Node 20.12, 21.7 and later)
const hashOf = (e: Omit<AuditEntry, 'hash' | 'sig'>): string =>
  hash('sha256', canonicalJson({ seq: e.seq, at: e.at, actor: e.actor, action: e.action, subject: e.subject, data: e.data, prev: e.prev, signer: e.signer }), 'hex')

const headMessage = (h: Pick<AuditHead, 'seq' | 'hash' | 'events'>): Uint8Array =>
  utf8(h.events === undefined ? `edgewarden-audit-head:${h.seq}:${h.hash}` : `edgewarden-audit-head:v2:${h.seq}:${h.hash}:${h.events}`)

export class AuditChain {
  readonly #key: KeyPair
  #seq: number
  #hash: string

  private constructor(key: KeyPair, seq: number, hash: string) {
    this.#key = key
    this.#seq = seq
    this.#hash = hash
  }

  static async load(store: Store, key: KeyPair): Promise<AuditChain> {
    const head = await store.getJson<AuditHead>(AUDIT_HEAD_KEY)
    return new AuditChain(key, head?.seq ?? 0, head?.hash ?? GENESIS)
  }

  get head(): { seq: number; hash: string } {
    return { seq: this.#seq, hash: this.#hash }
  }

  /**
   * The write op for one more entry. The chain advances now, so the caller
   * must write it (in order with every other append, and with a head op
   * after the last) or stop the process.
   */
  append(input: AuditInput, atMs: number): { entry: AuditEntry; ops: WriteOp[] } {
    const body = { seq: this.#seq + 1, at: atMs, ...input, prev: this.#hash, signer: this.#key.publicKeyB64 }
    const entry: AuditEntry = { ...body, hash: hashOf(body) }
    this.#seq = entry.seq
    this.#hash = entry.hash
    return { entry, ops: [{ type: 'put', key: seqKey(AUDIT_PREFIX, entry.seq), value: JSON.stringify(entry) }] }
  }

  /**
   * The op that writes the signed head: the last entry and the store's
   * event seq `events`, so the head is anchored outside the entries it
   * signs (a log cut back to an older signed head no longer matches the
   * event counter, which only grows). Written with every batch that holds
   * entries or events. It is signed when written, not now: of the heads in
   * one store batch only the last is written (Store keeps the last op per
   * key), so a burst costs one head signature, not one each.
   */
  headOp(events: number): WriteOp {
    const head = { seq: this.#seq, hash: this.#hash, events }
    const key = this.#key
    let json: string | null = null
    return {
      type: 'put' as const,
      key: AUDIT_HEAD_KEY,
      get value(): string {
        return (json ??= JSON.stringify({ ...head, sig: b64urlEncode(signBytes(key.privateKey, headMessage(head))) } satisfies AuditHead))
      },
    }
  }
}

export type AuditVerdict =
  | { ok: true; entries: number; head: string }
  | { ok: false; entries: number; seq: number; problem: string }

/**
 * Walk the log in key order and check: each key matches its entry's seq and
 * seqs run 1, 2, 3… (catches deletion and reordering); each hash is the hash
 * of its content (catches edits); each prev is the hash before (catches
 * splicing); each entry names a trusted key as its signer and the
 * signature the last entry of each batch carries verifies (catches
 * re-hashing by someone without the gateway key, located to the batch);
 * the signed head names the last entry
 * (catches truncation of the tail) and the store's event seq (catches a log
 * cut back to an older signed head); a store that has been in use has a log
 * (catches deleting all of it). Everything is read from one snapshot of the
 * store, so an agent writing meanwhile never makes a healthy log look broken.
 */
export async function verifyAuditLog(store: Store, trustedKeys: readonly string[]): Promise<AuditVerdict> {
  const trusted = new Map<string, KeyObject>()
  for (const k of trustedKeys) {
    const key = publicKeyFromB64(k)
    if (key) trusted.set(k, key)
  }
  const snapshot = store.db.snapshot()
  try {
    let expectSeq = 1
    let prev = GENESIS
    let count = 0
    const fail = (seq: number, problem: string): AuditVerdict => ({ ok: false, entries: count, seq, problem })
    for await (const [key, value] of store.scan(AUDIT_PREFIX, { snapshot })) {
      let e: AuditEntry
      try {
        e = JSON.parse(value) as AuditEntry
      } catch {
        return fail(expectSeq, `entry at ${key} is not JSON`)
      }
      if (key !== seqKey(AUDIT_PREFIX, e.seq)) return fail(expectSeq, `entry stored at ${key} claims seq ${e.seq} (moved or reordered)`)
      if (e.seq !== expectSeq) return fail(expectSeq, `entry ${expectSeq} is missing (next present is ${e.seq})`)
      if (e.prev !== prev) return fail(e.seq, `prev hash does not match entry ${e.seq - 1} (entry removed, inserted or reordered)`)
      if (hashOf(e) !== e.hash) return fail(e.seq, 'content does not match its hash (entry edited)')
      const signer = trusted.get(e.signer)
      if (!signer) return fail(e.seq, `signed by ${e.signer}, which is not a trusted gateway key`)
      if (e.sig !== undefined) {
        const sig = b64urlDecode(e.sig)
        if (!sig || !verifyBytes(signer, utf8(e.hash), sig)) return fail(e.seq, 'signature does not verify (entry re-hashed without the gateway key)')
      }
      prev = e.hash
      expectSeq++
      count++
    }
    const read = async (k: string): Promise<string | undefined> => store.db.get(k, { snapshot })
    const headText = await read(AUDIT_HEAD_KEY)
    const head = headText === undefined ? undefined : (JSON.parse(headText) as AuditHead)
    if (count === 0 && !head) {
      // Any trace of use: the identity the first start records, an event counter, a device record (each written with an audit entry)
      const used =
        (await read(IDENTITY_KEY)) !== undefined ? 'the gateway identity is recorded' :
        (await read(EVENT_SEQ_KEY)) !== undefined ? 'it has an event counter' :
        (await store.db.keys({ gte: 'dev!', lt: 'dev"', limit: 1, snapshot }).all()).length > 0 ? 'it holds device records' : null
      if (used) return fail(1, `the audit log is empty, but this store has been in use (${used}): its entries and head were deleted`)
      return { ok: true, entries: 0, head: GENESIS }
    }
    if (!head) return fail(expectSeq, 'the signed head record is missing')
    const headSig = b64urlDecode(head.sig)
    const headOk = headSig !== null && [...trusted.values()].some((k) => verifyBytes(k, headMessage(head), headSig))
    if (!headOk) return fail(head.seq, 'the head record signature does not verify')
    if (head.seq === count && head.hash !== prev) {
      return fail(head.seq, `the log does not end at the hash the signed head names: entries were edited and the chain re-hashed without the gateway key (at or before entry ${head.seq})`)
    }
    if (head.seq !== count || head.hash !== prev) {
      return fail(count + 1, `the signed head names entry ${head.seq}, but the log ends at entry ${count} (entries removed from the end)`)
    }
    if (head.events !== undefined) {
      const events = Number((await read(EVENT_SEQ_KEY)) ?? '0')
      if (events !== head.events) {
        return fail(count + 1, `the signed head was written at event ${head.events}, but the store has reached event ${events} (the log was cut back to an older head, or the event counter was edited)`)
      }
    }
    return { ok: true, entries: count, head: prev }
  } finally {
    await snapshot.close()
  }
}

export async function* exportAuditLog(store: Store): AsyncGenerator<AuditEntry> {
  for await (const [, value] of store.scan(AUDIT_PREFIX)) yield JSON.parse(value) as AuditEntry
}
