// A Map with a bound: `set` marks the key most recently used and drops the
// least recently used beyond `max`. For the per-id memories that anyone on
// the network can grow by making up ids or keys (throttles, caches, logs).
export class BoundedMap<K, V> {
  readonly #map = new Map<K, V>()
  constructor(readonly max: number) {}
  get(key: K): V | undefined {
    return this.#map.get(key)
  }
  /** Set and mark most recently used, dropping the least recently used beyond the bound. */
  set(key: K, value: V): void {
    this.#map.delete(key)
    this.#map.set(key, value)
    if (this.#map.size > this.max) this.#map.delete(this.#map.keys().next().value as K)
  }
  delete(key: K): void {
    this.#map.delete(key)
  }
  get size(): number {
    return this.#map.size
  }
}
