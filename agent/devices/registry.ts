// In-memory index of every device, kept coherent with the store: admission
// and quarantine decisions read memory only, never disk. Records change only
// through the Gateway, which writes the store in the same batch.
//
// A record is kept as its stored JSON until something first reads it, then
// as the parsed record from then on (parsing 100,000 records is most of a
// start, and a site is ready to admit its devices before they are all
// parsed: a device's record is parsed when it connects). The start's own
// passes read only what they need: the records that may hold a certificate,
// a Modbus or an OPC UA spec (mayHoldProtocolOrCertificate: found by one
// scan of the JSON as it is loaded, then by each record written), so a
// fleet of token devices costs those passes nothing; the first maintenance
// pass, after ready, parses the rest in small steps (parseAll).
import type { DeviceRecord } from './device.ts'
import type { Store, WriteOp } from '../store/store.ts'

export const DEVICE_PREFIX = 'dev!'
/** Records parsed per turn of the event loop by parseAll. */
const PARSE_STEP = 2000
/**
 * A JSON key that a record holding a certificate, a Modbus or an OPC UA spec
 * has. A string value cannot match it (its quotes would be escaped), so a
 * record that does not match certainly has none of them.
 */
const SPECIAL_KEYS = /"(?:certificates|modbus|opcua)":/

export class Registry {
  /** the parsed record, or its stored JSON while nothing has read it yet */
  readonly #devices = new Map<string, DeviceRecord | string>()
  /**
   * Ids of the records that may hold a certificate, a Modbus or an OPC UA
   * spec, in the order they were found so: their JSON matched SPECIAL_KEYS
   * at load (store order), or the record was written with one. Never shrunk but by delete
   * (a false member costs a look; a missing one would be a bug).
   */
  readonly #flagged = new Set<string>()
  /** records still held as JSON */
  #unparsed = 0
  /** stored records that were not JSON, dropped from memory when read (takeUnreadable) */
  #unreadable: { id: string; problem: string }[] = []

  static async load(store: Store): Promise<Registry> {
    const r = new Registry()
    for await (const batch of store.scanBatches(DEVICE_PREFIX, 5000)) {
      for (const [key, value] of batch) {
        const id = key.slice(DEVICE_PREFIX.length)
        r.#devices.set(id, value)
        if (SPECIAL_KEYS.test(value)) r.#flagged.add(id)
      }
    }
    r.#unparsed = r.#devices.size
    return r
  }

  /** The record of `id`; undefined for an unknown id, and for one whose stored record is not JSON (fail closed: see takeUnreadable). */
  get(id: string): DeviceRecord | undefined {
    const v = this.#devices.get(id)
    return typeof v === 'string' ? this.#parse(id, v) : v
  }

  /**
   * The stored records found not to be JSON since the last call (only a
   * store written by something else, or damaged, holds one): each was
   * dropped from memory when read, so its device is unknown here (refused
   * as such) and every pass over the registry goes on without it. The
   * caller reports them.
   */
  takeUnreadable(): { id: string; problem: string }[] {
    const out = this.#unreadable
    this.#unreadable = []
    return out
  }

  has(id: string): boolean {
    return this.#devices.has(id)
  }

  get size(): number {
    return this.#devices.size
  }

  /**
   * Every record (each parsed as it is reached). Once every record is parsed
   * (shortly after the start), the map's own iterator: the maintenance pass
   * walks the registry every few seconds, and a generator made two objects
   * a record on each walk (~100 B a device).
   */
  values(): IterableIterator<DeviceRecord> {
    return this.#unparsed === 0 ? (this.#devices.values() as IterableIterator<DeviceRecord>) : this.#parsingValues()
  }

  /** `visit` each record, as values() gives them, without an object made per record (for the passes over every device). */
  forEach(visit: (r: DeviceRecord) => void): void {
    if (this.#unparsed === 0) return (this.#devices as Map<string, DeviceRecord>).forEach(visit)
    for (const r of this.#parsingValues()) visit(r)
  }

  *#parsingValues(): IterableIterator<DeviceRecord> {
    for (const [id, v] of this.#devices) {
      const r = typeof v === 'string' ? this.#parse(id, v) : v
      if (r) yield r
    }
  }

  /**
   * At least every record that holds a certificate, a Modbus or an OPC UA
   * spec (callers check the field themselves), in the order of #flagged: the
   * others are not visited, and those not parsed yet stay unparsed.
   */
  *mayHoldProtocolOrCertificate(): IterableIterator<DeviceRecord> {
    for (const id of this.#flagged) {
      const r = this.get(id)
      if (r) yield r
    }
  }

  /**
   * Parse every record still held as JSON, PARSE_STEP per turn of the event
   * loop, so connects are judged meanwhile; `stop` ends it early (the agent
   * is stopping: what is left is parsed on first read, as before).
   */
  async parseAll(stop: () => boolean = () => false): Promise<void> {
    // one walk of the map across the steps (a Map iterator survives changes made meanwhile)
    const it = this.#devices.entries()
    for (;;) {
      let n = 0
      for (let e = it.next(); !e.done; e = it.next()) {
        const [id, v] = e.value
        if (typeof v !== 'string') continue
        this.#parse(id, v)
        if (++n >= PARSE_STEP) break
      }
      if (n < PARSE_STEP || this.#unparsed === 0) return
      await new Promise<void>((resolve) => setImmediate(resolve))
      if (stop()) return
    }
  }

  /** Forget a record in memory and return the op that deletes it. */
  delete(id: string): WriteOp {
    if (typeof this.#devices.get(id) === 'string') this.#unparsed--
    this.#devices.delete(id)
    this.#flagged.delete(id)
    return { type: 'del', key: DEVICE_PREFIX + id }
  }

  /** Replace a record in memory and return the op that persists it. */
  set(record: DeviceRecord): WriteOp {
    const id = record.spec.id
    if (typeof this.#devices.get(id) === 'string') this.#unparsed--
    this.#devices.set(id, record)
    if ((record.certificates?.length ?? 0) > 0 || record.spec.modbus !== undefined || record.spec.opcua !== undefined) this.#flagged.add(id)
    return { type: 'put', key: DEVICE_PREFIX + id, value: JSON.stringify(record) }
  }

  #parse(id: string, json: string): DeviceRecord | undefined {
    let r: DeviceRecord
    try {
      r = JSON.parse(json) as DeviceRecord
    } catch (err) {
      this.#devices.delete(id)
      this.#flagged.delete(id)
      this.#unparsed--
      this.#unreadable.push({ id, problem: `the stored record of device ${JSON.stringify(id)} is not valid JSON (${(err as Error).message}): its device is refused as unknown; restore the data dir from a backup, or enroll it again` })
      return undefined
    }
    this.#devices.set(id, r)
    this.#unparsed--
    return r
  }
}
