// Durable event outbox (PROTOCOL §3 events). Each event gets the next seq and
// is signed when the change it reports is committed, in the same batch, so
// seq has no gaps and an event exists exactly when its change does. The
// uplink publishes from here in seq order and deletes only after PUBACK.
import type { KeyObject } from 'node:crypto'
import { utf8 } from '../../wire/base64url.ts'
import { newJti } from '../../wire/ids.ts'
import { assembleJws, jwsSigningInput } from '../../wire/jws.ts'
import type { CryptoPool } from '../runtime/crypto-pool.ts'
import { BoundedMap } from '../runtime/bounded-map.ts'
import { EVENT_SEQ_KEY } from '../store/audit.ts'
import { signJws } from '../store/jws.ts'
import { seqKey, type Store, type WriteOp, prefixEnd } from '../store/store.ts'

export const EVENT_PREFIX = 'evt!'
/** events kept in memory for the uplink (Outbox.#recent) */
const RECENT_MAX = 1024

export interface EventInput {
  type: string
  data: Record<string, unknown>
}

export interface StoredEvent {
  seq: number
  type: string
  jws: string
}

export class Outbox {
  readonly #gateway: string
  readonly #key: KeyObject
  /** where events are signed off the event loop; null: inline */
  #pool: CryptoPool | null = null
  #seq: number
  /** seqs stored but not yet acknowledged by the central broker */
  readonly #unacked: Set<number>
  /**
   * The events appended in this process and not yet acknowledged, newest
   * RECENT_MAX of them: the uplink sends from here without reading (and
   * parsing) the store again; what is not here (after a restart, or past
   * the bound in a long outage) is read from the store.
   */
  readonly #recent = new BoundedMap<number, StoredEvent>(RECENT_MAX)

  private constructor(gateway: string, key: KeyObject, seq: number, unacked: Set<number>) {
    this.#gateway = gateway
    this.#key = key
    this.#seq = seq
    this.#unacked = unacked
  }

  static async load(store: Store, gateway: string, key: KeyObject): Promise<Outbox> {
    const seq = Number((await store.get(EVENT_SEQ_KEY)) ?? '0')
    const unacked = new Set<number>()
    for await (const k of store.db.keys({ gte: EVENT_PREFIX, lt: prefixEnd(EVENT_PREFIX) })) unacked.add(Number(k.slice(EVENT_PREFIX.length)))
    return new Outbox(gateway, key, seq, unacked)
  }

  get lastSeq(): number {
    return this.#seq
  }

  get depth(): number {
    return this.#unacked.size
  }

  /** Sign events on `pool` from now on (its workers hold the gateway key); null: inline again. */
  signOn(pool: CryptoPool | null): void {
    this.#pool = pool !== null && pool.size > 0 ? pool : null
  }

  /**
   * The next event and the ops that store it; the seq advances now. Signed
   * inline, or on the crypto pool: then `ready` settles once the JWS is
   * made, and the stored value is read only after (Store.write `ready`).
   */
  append(input: EventInput, nowS: number): { event: StoredEvent; ops: WriteOp[]; ready: Promise<void> | null } {
    const seq = ++this.#seq
    const claims = {
      iss: this.#gateway,
      aud: 'cp',
      iat: nowS,
      jti: `${this.#gateway}.${seq}.${newJti()}`.slice(0, 64),
      seq,
      type: input.type,
      data: input.data,
    }
    this.#unacked.add(seq)
    // signed now, inline; on the pool, its JWS is filled in once made
    const event: StoredEvent = { seq, type: input.type, jws: this.#pool ? '' : signJws(this.#key, this.#gateway, claims) }
    this.#recent.set(seq, event)
    const seqOp: WriteOp = { type: 'put', key: EVENT_SEQ_KEY, value: String(seq) }
    if (!this.#pool) return { event, ops: [{ type: 'put', key: seqKey(EVENT_PREFIX, seq), value: JSON.stringify(event) }, seqOp], ready: null }
    const signingInput = jwsSigningInput(this.#gateway, claims)
    const ready = this.#pool.sign(utf8(signingInput)).then((sig) => void (event.jws = assembleJws(signingInput, sig)))
    return {
      event,
      ops: [
        {
          type: 'put',
          key: seqKey(EVENT_PREFIX, seq),
          get value(): string {
            return JSON.stringify(event)
          },
        },
        seqOp,
      ],
      ready,
    }
  }

  /** Stored events from `afterSeq` on, in seq order. */
  async pending(store: Store, afterSeq: number, limit: number, durableSeq?: number): Promise<StoredEvent[]> {
    // The uplink's own question (durableSeq: the last event on disk): answered from memory when every event asked for is there.
    if (durableSeq !== undefined) {
      const out: StoredEvent[] = []
      for (let s = afterSeq + 1; s <= durableSeq && out.length < limit; s++) {
        const e = this.#recent.get(s)
        if (!e) break
        out.push(e)
      }
      if (out.length === limit || afterSeq + out.length >= durableSeq) return out
    }
    // one read from LevelDB for the whole window, not one per event (the uplink asks for every batch it sends)
    const entries = await store.db.iterator({ gt: seqKey(EVENT_PREFIX, afterSeq), lt: prefixEnd(EVENT_PREFIX), limit }).all()
    return entries.map(([, v]) => JSON.parse(v) as StoredEvent)
  }

  /** The op that removes an event once the broker acknowledged it (null if it was already removed). */
  acknowledged(seq: number): WriteOp | null {
    this.#recent.delete(seq)
    if (!this.#unacked.delete(seq)) return null
    return { type: 'del', key: seqKey(EVENT_PREFIX, seq) }
  }
}
