// Durable event outbox (PROTOCOL §3 events). Each event gets the next seq and
// is signed when the change it reports is committed, in the same batch, so
// seq has no gaps and an event exists exactly when its change does. The
// uplink publishes from here in seq order and deletes only after PUBACK.
import type { KeyObject } from 'node:crypto'
import { newJti } from '../../wire/ids.ts'
import { EVENT_SEQ_KEY } from '../store/audit.ts'
import { signJws } from '../store/jws.ts'
import { seqKey, type Store, type WriteOp, prefixEnd } from '../store/store.ts'

export const EVENT_PREFIX = 'evt!'

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
  #seq: number
  /** seqs stored but not yet acknowledged by the central broker */
  readonly #unacked: Set<number>

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

  /** Sign the next event; returns the ops that store it. The seq advances now. */
  append(input: EventInput, nowS: number): { event: StoredEvent; ops: WriteOp[] } {
    const seq = ++this.#seq
    const jws = signJws(this.#key, this.#gateway, {
      iss: this.#gateway,
      aud: 'cp',
      iat: nowS,
      jti: `${this.#gateway}.${seq}.${newJti()}`.slice(0, 64),
      seq,
      type: input.type,
      data: input.data,
    })
    this.#unacked.add(seq)
    const event = { seq, type: input.type, jws }
    return {
      event,
      ops: [
        { type: 'put', key: seqKey(EVENT_PREFIX, seq), value: JSON.stringify(event) },
        { type: 'put', key: EVENT_SEQ_KEY, value: String(seq) },
      ],
    }
  }

  /** Stored events from `afterSeq` on, in seq order. */
  async pending(store: Store, afterSeq: number, limit: number): Promise<StoredEvent[]> {
    // one read from LevelDB for the whole window, not one per event (the uplink asks for every batch it sends)
    const entries = await store.db.iterator({ gt: seqKey(EVENT_PREFIX, afterSeq), lt: prefixEnd(EVENT_PREFIX), limit }).all()
    return entries.map(([, v]) => JSON.parse(v) as StoredEvent)
  }

  /** The op that removes an event once the broker acknowledged it (null if it was already removed). */
  acknowledged(seq: number): WriteOp | null {
    if (!this.#unacked.delete(seq)) return null
    return { type: 'del', key: seqKey(EVENT_PREFIX, seq) }
  }
}
