// Remembers jtis until they expire (PROTOCOL §3 commands, §5 device tokens):
// in memory for decisions that must read no disk, in the store so a restart
// does not forget. Each namespace is its own key range.
import type { Store, WriteOp } from './store.ts'

interface Entry<T> {
  exp: number
  data: T
}

export class JtiStore<T = null> {
  readonly #prefix: string
  readonly #map = new Map<string, Entry<T>>()

  private constructor(ns: string) {
    this.#prefix = `jti!${ns}!`
  }

  /** Load a namespace; entries already expired at `nowS` are dropped from memory (and from disk at the next sweep). */
  static async load<T = null>(store: Store, ns: string): Promise<JtiStore<T>> {
    const s = new JtiStore<T>(ns)
    for await (const [k, v] of store.scan(s.#prefix)) s.#map.set(k.slice(s.#prefix.length), JSON.parse(v) as Entry<T>)
    return s
  }

  get size(): number {
    return this.#map.size
  }

  /** The entry of a jti not yet expired at `nowS` (`exp` seconds; kept through `exp` itself). */
  get(jti: string, nowS: number): Entry<T> | undefined {
    const e = this.#map.get(jti)
    return e && e.exp >= nowS ? e : undefined
  }

  has(jti: string, nowS: number): boolean {
    return this.get(jti, nowS) !== undefined
  }

  /** Remember a jti (memory now; the returned op makes it durable). */
  remember(jti: string, exp: number, data: T): WriteOp {
    const e = { exp, data }
    this.#map.set(jti, e)
    return { type: 'put', key: this.#prefix + jti, value: JSON.stringify(e) }
  }

  entries(): IterableIterator<[string, Entry<T>]> {
    return this.#map.entries()
  }

  /** Forget every jti expired before `nowS`; returns the ops that delete them. */
  sweep(nowS: number): WriteOp[] {
    const ops: WriteOp[] = []
    for (const [jti, e] of this.#map) {
      if (e.exp < nowS) {
        this.#map.delete(jti)
        ops.push({ type: 'del', key: this.#prefix + jti })
      }
    }
    return ops
  }
}
