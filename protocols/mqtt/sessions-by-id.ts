// The live MQTT sessions of each client id. Nearly every device has one
// session, so one is kept as itself and only a second makes a Set: a Set per
// device costs ~230 bytes more than the reference (its hash table), times
// every connected device, in the broker's session index and again in the
// action channel's (issue 19: memory per device).
export class SessionsById<T> {
  readonly #byId = new Map<string, T | Set<T>>()

  add(id: string, s: T): void {
    const cur = this.#byId.get(id)
    if (cur === undefined) this.#byId.set(id, s)
    else if (cur instanceof Set) cur.add(s)
    else if (cur !== s) this.#byId.set(id, new Set([cur, s]))
  }

  /** Forget one session; true when it was there. */
  delete(id: string, s: T): boolean {
    const cur = this.#byId.get(id)
    if (cur === undefined) return false
    if (cur instanceof Set) {
      const had = cur.delete(s)
      if (cur.size === 1) this.#byId.set(id, cur.values().next().value as T)
      else if (cur.size === 0) this.#byId.delete(id)
      return had
    }
    if (cur !== s) return false
    this.#byId.delete(id)
    return true
  }

  /** Forget every session of `id`; what they were. */
  take(id: string): T[] {
    const all = this.of(id)
    this.#byId.delete(id)
    return all
  }

  /** The sessions of `id` (a copy: safe to change the index while going through it). */
  of(id: string): T[] {
    const cur = this.#byId.get(id)
    return cur === undefined ? [] : cur instanceof Set ? [...cur] : [cur]
  }

  count(id: string): number {
    const cur = this.#byId.get(id)
    return cur === undefined ? 0 : cur instanceof Set ? cur.size : 1
  }

  has(id: string): boolean {
    return this.#byId.has(id)
  }

  some(id: string, pred: (s: T) => boolean): boolean {
    const cur = this.#byId.get(id)
    if (cur === undefined) return false
    if (!(cur instanceof Set)) return pred(cur)
    for (const s of cur) if (pred(s)) return true
    return false
  }
}
