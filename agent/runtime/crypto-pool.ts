// Ed25519 off the event loop: a small pool of worker threads that verify
// device signatures (tokens, acks) and sign with the gateway key (events),
// so the broker's event loop parses packets while another core checks
// signatures. Requests made in one turn of the event loop go to a worker as
// one message (a connect storm hands over hundreds at a time), and each
// answer settles its caller's promise. Sized to the machine: one core less
// than it has, at most MAX_WORKERS; with one core, or `size: 0`, every
// operation runs inline on the calling thread, as before, and the answers
// are the same. A worker that dies has its requests run inline and is not
// replaced: the pool degrades to fewer threads, never to lost answers.
import { createPublicKey, sign, verify, type KeyObject } from 'node:crypto'
import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'
import type { Logger } from '../observe/logger.ts'
import { BoundedMap } from './bounded-map.ts'

/** More threads than this buy nothing here: the broker's own thread is the bound long before. */
export const MAX_WORKERS = 4
/** A batch is handed over at once when it holds this many requests, else at the end of the turn. */
const BATCH_MAX = 256
/**
 * Public keys the inline path keeps parsed (KeyObjects), the most recently
 * used. The workers keep none: they hand the key to verify() as a JWK, which
 * costs no more there (160,000 verifies of 10,000 keys: 11.6 s against 11.8 s
 * on Node 20, 11.1 against 12.2 on Node 24), while each KeyObject a worker
 * let go of held ~1 KB of native memory until that thread's next GC, rare in
 * a worker that allocates little: its resident memory grew ~1 KB a connect
 * (Node 24: +150 MiB over those 160,000, still growing; Node 20: +27 MiB).
 */
const KEY_CACHE = 1024

const enum Op {
  Verify = 0,
  Sign = 1,
}

/** [op, public key (base64url, verify only), data, signature (verify only)] */
type Item = [Op, string, Uint8Array, Uint8Array | null]
type Answer = boolean | Uint8Array | null

// The worker, as plain CommonJS so it runs the same under tsx and from dist/.
const WORKER_SOURCE = `
'use strict'
const { parentPort, workerData } = require('node:worker_threads')
const { createPrivateKey, sign, verify } = require('node:crypto')
const signer = workerData.signKey ? createPrivateKey({ key: Buffer.from(workerData.signKey), format: 'der', type: 'pkcs8' }) : null
const keyOf = (x) => ({ key: { kty: 'OKP', crv: 'Ed25519', x }, format: 'jwk' })
parentPort.on('message', (m) => {
  const out = new Array(m.items.length)
  for (let i = 0; i < m.items.length; i++) {
    const [op, key, data, sig] = m.items[i]
    try {
      out[i] = op === 0 ? verify(null, data, keyOf(key), sig) : signer ? new Uint8Array(sign(null, data, signer)) : null
    } catch {
      out[i] = op === 0 ? false : null
    }
  }
  parentPort.postMessage({ id: m.id, out })
})
`

interface Slot {
  worker: Worker
  /** requests handed to it and not yet answered */
  inFlight: number
  batches: Map<number, { items: Item[]; settle: ((a: Answer) => void)[] }>
}

export class CryptoPool {
  readonly #slots: Slot[] = []
  readonly #log: Logger | null
  readonly #signKey: KeyObject | null
  readonly #keys = new BoundedMap<string, KeyObject>(KEY_CACHE)
  #pending: { items: Item[]; settle: ((a: Answer) => void)[] } = { items: [], settle: [] }
  #scheduled = false
  #nextId = 1
  #closed = false
  /** operations run on a worker, and inline (tests, metrics) */
  readonly stats = { offloaded: 0, inline: 0, batches: 0 }

  /** `size`: worker threads (default: one core less than the machine has, at most MAX_WORKERS); 0 runs everything inline. */
  constructor(o: { size?: number; signKey?: KeyObject; log?: Logger } = {}) {
    this.#log = o.log ?? null
    this.#signKey = o.signKey ?? null
    const size = Math.max(0, Math.min(MAX_WORKERS, o.size ?? availableParallelism() - 1))
    const signKey = o.signKey ? new Uint8Array(o.signKey.export({ format: 'der', type: 'pkcs8' })) : null
    for (let i = 0; i < size; i++) this.#spawn(signKey)
  }

  /** Worker threads running now (0: inline). */
  get size(): number {
    return this.#slots.length
  }

  /** The worker threads running now (diagnostics; a test stops one as a crash would). */
  get threads(): readonly Worker[] {
    return this.#slots.map((s) => s.worker)
  }

  /** Whether `signature` over `data` is by the Ed25519 key `publicKey` (base64url raw); false for a malformed key. */
  verify(publicKey: string, data: Uint8Array, signature: Uint8Array): Promise<boolean> {
    if (this.#slots.length === 0) return Promise.resolve(this.#inlineVerify(publicKey, data, signature))
    return this.#enqueue([Op.Verify, publicKey, data, signature]) as Promise<boolean>
  }

  /** The first of `publicKeys` that signed `data`, or null: the keys are tried in order, on one worker. */
  async verifyAny(publicKeys: readonly string[], data: Uint8Array, signature: Uint8Array): Promise<string | null> {
    if (publicKeys.length === 0) return null
    const answers = await Promise.all(publicKeys.map((k) => this.verify(k, data, signature)))
    const i = answers.indexOf(true)
    return i < 0 ? null : publicKeys[i]!
  }

  /** The gateway key's Ed25519 signature over `data` (the pool must have been made with `signKey`). */
  async sign(data: Uint8Array): Promise<Uint8Array> {
    if (!this.#signKey) throw new TypeError('this pool has no signing key')
    if (this.#slots.length === 0) return this.#inlineSign(data)
    const sig = (await this.#enqueue([Op.Sign, '', data, null])) as Uint8Array | null
    return sig ?? this.#inlineSign(data)
  }

  /** Stop the workers; requests still in flight are answered inline. */
  async close(): Promise<void> {
    this.#closed = true
    this.#flush()
    const slots = this.#slots.splice(0)
    for (const s of slots) this.#runInline(s)
    await Promise.all(slots.map((s) => s.worker.terminate().catch(() => 0)))
  }

  #spawn(signKey: Uint8Array | null): void {
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { signKey } })
    worker.unref()
    const slot: Slot = { worker, inFlight: 0, batches: new Map() }
    worker.on('message', (m: { id: number; out: Answer[] }) => {
      const b = slot.batches.get(m.id)
      if (!b) return
      slot.batches.delete(m.id)
      slot.inFlight -= b.items.length
      for (let i = 0; i < b.settle.length; i++) b.settle[i]!(m.out[i]!)
    })
    const lost = (why: string): void => {
      const i = this.#slots.indexOf(slot)
      if (i < 0) return
      this.#slots.splice(i, 1)
      if (!this.#closed) this.#log?.error({ why, left: this.#slots.length }, 'crypto worker stopped; its requests run inline')
      this.#runInline(slot)
    }
    worker.on('error', (err) => lost(err.message))
    worker.on('exit', (code) => lost(`exit ${code}`))
    this.#slots.push(slot)
  }

  #enqueue(item: Item): Promise<Answer> {
    return new Promise((resolve) => {
      this.#pending.items.push(item)
      this.#pending.settle.push(resolve)
      if (this.#pending.items.length >= BATCH_MAX) this.#flush()
      else if (!this.#scheduled) {
        this.#scheduled = true
        setImmediate(() => this.#flush())
      }
    })
  }

  #flush(): void {
    this.#scheduled = false
    const batch = this.#pending
    if (batch.items.length === 0) return
    this.#pending = { items: [], settle: [] }
    let slot: Slot | undefined
    for (const s of this.#slots) if (!slot || s.inFlight < slot.inFlight) slot = s
    if (!slot) {
      for (let i = 0; i < batch.items.length; i++) batch.settle[i]!(this.#inline(batch.items[i]!))
      return
    }
    const id = this.#nextId++
    slot.batches.set(id, batch)
    slot.inFlight += batch.items.length
    this.stats.offloaded += batch.items.length
    this.stats.batches++
    slot.worker.postMessage({ id, items: batch.items })
  }

  #runInline(slot: Slot): void {
    for (const b of slot.batches.values()) for (let i = 0; i < b.items.length; i++) b.settle[i]!(this.#inline(b.items[i]!))
    slot.batches.clear()
    slot.inFlight = 0
  }

  #inline(item: Item): Answer {
    return item[0] === Op.Verify ? this.#inlineVerify(item[1], item[2], item[3]!) : this.#signKey ? this.#inlineSign(item[2]) : null
  }

  #inlineVerify(publicKey: string, data: Uint8Array, signature: Uint8Array): boolean {
    this.stats.inline++
    try {
      const k = this.#keys.get(publicKey) ?? createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: publicKey }, format: 'jwk' })
      this.#keys.set(publicKey, k)
      return verify(null, data, k, signature)
    } catch {
      return false
    }
  }

  #inlineSign(data: Uint8Array): Uint8Array {
    this.stats.inline++
    return new Uint8Array(sign(null, data, this.#signKey!))
  }
}
