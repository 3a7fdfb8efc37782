// In-memory index of every device, kept coherent with the store: admission
// and quarantine decisions read memory only, never disk. Records change only
// through the Gateway, which writes the store in the same batch.
import type { DeviceRecord } from './device.ts'
import type { Store, WriteOp } from '../store/store.ts'

export const DEVICE_PREFIX = 'dev!'

export class Registry {
  readonly #devices = new Map<string, DeviceRecord>()

  static async load(store: Store): Promise<Registry> {
    const r = new Registry()
    for await (const batch of store.scanBatches(DEVICE_PREFIX, 5000)) {
      for (const [key, value] of batch) r.#devices.set(key.slice(DEVICE_PREFIX.length), JSON.parse(value) as DeviceRecord)
    }
    return r
  }

  get(id: string): DeviceRecord | undefined {
    return this.#devices.get(id)
  }

  get size(): number {
    return this.#devices.size
  }

  values(): IterableIterator<DeviceRecord> {
    return this.#devices.values()
  }

  /** Forget a record in memory and return the op that deletes it. */
  delete(id: string): WriteOp {
    this.#devices.delete(id)
    return { type: 'del', key: DEVICE_PREFIX + id }
  }

  /** Replace a record in memory and return the op that persists it. */
  set(record: DeviceRecord): WriteOp {
    this.#devices.set(record.spec.id, record)
    return { type: 'put', key: DEVICE_PREFIX + record.spec.id, value: JSON.stringify(record) }
  }
}
