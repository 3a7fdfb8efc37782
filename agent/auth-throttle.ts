// Throttling of failed authentication (brute force, connection storms), per
// client id and per source address. A throttled key is refused before any
// token is parsed or signature checked, so a storm costs a map lookup per
// connect. Protocol-free: an adapter asks check() before admitting and
// reports the outcome after.
//
// Without locking out legitimate devices:
// - only credential failures count (the caller decides which); a refusal
//   because of the device's state (revoked, quarantined) is not guessing;
// - a client id is blocked by its own failures only, never by other ids';
// - an address is blocked by the failures of all ids behind it, but an id
//   that was admitted from anywhere in the last KNOWN_GOOD_S stays exempt
//   from the address block (its own per-id limit still bounds guesses on it),
//   so a device sharing a NAT with an attacker keeps reconnecting.
// Memory is bounded: each map holds at most `maxKeys` entries, the least
// recently touched dropped first. An IPv6 source counts by its /64: one host
// holds a whole /64 and could otherwise take a fresh address per attempt.

export interface AuthThrottleOptions {
  /** failures per client id within windowS that block the id (0: no per-id limit) */
  perClient: number
  /** failures per source address within windowS that block the address (0: no per-address limit) */
  perAddress: number
  windowS: number
  blockS: number
  /** entries kept per map */
  maxKeys?: number
}

export type ThrottleScope = 'client' | 'address'
export interface ThrottleBlock {
  scope: ThrottleScope
  /** seconds since the epoch when the block ends */
  untilS: number
}

interface Counter {
  /** when the current window began, seconds */
  startS: number
  failures: number
  /** blocked until then (seconds), 0 when not blocked */
  blockedUntilS: number
}

/** An id admitted this recently is exempt from its address' block. */
export const KNOWN_GOOD_S = 30 * 86400
export const DEFAULT_MAX_KEYS = 10_000

/** The key an address is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64 prefix. */
export function addressKey(address: string): string {
  const a = address.replace(/%.*$/, '').toLowerCase()
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(a)
  if (mapped) return mapped[1]!
  if (!a.includes(':')) return a
  const [head = '', tail] = a.split('::')
  const parts = (s: string | undefined): string[] => (s ? s.split(':').flatMap((p) => (p.includes('.') ? ['v4', 'v4'] : [p])) : [])
  const h = parts(head)
  const t = parts(tail)
  const all = tail === undefined ? h : [...h, ...Array<string>(Math.max(0, 8 - h.length - t.length)).fill('0'), ...t]
  return `${all.slice(0, 4).map((p) => (p === 'v4' ? '0' : p.replace(/^0+(?=.)/, ''))).join(':')}::/64`
}

class BoundedMap<V> {
  readonly #map = new Map<string, V>()
  constructor(readonly max: number) {}
  get(key: string): V | undefined {
    return this.#map.get(key)
  }
  /** Set and mark most recently used, dropping the least recently used beyond the bound. */
  set(key: string, value: V): void {
    this.#map.delete(key)
    this.#map.set(key, value)
    if (this.#map.size > this.max) this.#map.delete(this.#map.keys().next().value as string)
  }
  delete(key: string): void {
    this.#map.delete(key)
  }
  get size(): number {
    return this.#map.size
  }
}

export class AuthThrottle {
  readonly #opts: AuthThrottleOptions
  readonly #nowS: () => number
  readonly #clients: BoundedMap<Counter>
  readonly #addresses: BoundedMap<Counter>
  readonly #good: BoundedMap<number>
  /** connects refused by the throttle so far, by scope */
  readonly refused = { client: 0, address: 0 }

  constructor(opts: AuthThrottleOptions, nowS: () => number) {
    this.#opts = opts
    this.#nowS = nowS
    const max = opts.maxKeys ?? DEFAULT_MAX_KEYS
    this.#clients = new BoundedMap(max)
    this.#addresses = new BoundedMap(max)
    this.#good = new BoundedMap(max)
  }

  /** Whether a connect from this id and address must be refused now, and until when. */
  check(clientId: string, address: string | undefined): ThrottleBlock | null {
    const now = this.#nowS()
    const c = this.#clients.get(clientId)
    if (c && c.blockedUntilS > now) {
      this.refused.client++
      return { scope: 'client', untilS: c.blockedUntilS }
    }
    if (address === undefined) return null
    const a = this.#addresses.get(addressKey(address))
    if (a && a.blockedUntilS > now) {
      const good = this.#good.get(clientId)
      if (good !== undefined && now - good < KNOWN_GOOD_S) return null
      this.refused.address++
      return { scope: 'address', untilS: a.blockedUntilS }
    }
    return null
  }

  /** A credential failure: counts against the id and the address. */
  failure(clientId: string, address: string | undefined): void {
    const now = this.#nowS()
    this.#count(this.#clients, clientId, this.#opts.perClient, now)
    if (address !== undefined) this.#count(this.#addresses, addressKey(address), this.#opts.perAddress, now)
  }

  /** An admission: the id's failures are forgotten and it is known good. */
  success(clientId: string): void {
    this.#clients.delete(clientId)
    this.#good.set(clientId, this.#nowS())
  }

  /** Entries held (for the memory bound). */
  get size(): { clients: number; addresses: number; good: number } {
    return { clients: this.#clients.size, addresses: this.#addresses.size, good: this.#good.size }
  }

  #count(map: BoundedMap<Counter>, key: string, limit: number, now: number): void {
    if (limit <= 0) return
    let e = map.get(key)
    if (!e || now - e.startS >= this.#opts.windowS) e = { startS: now, failures: 0, blockedUntilS: e && e.blockedUntilS > now ? e.blockedUntilS : 0 }
    e.failures++
    if (e.failures >= limit) {
      e.blockedUntilS = now + this.#opts.blockS
      e.startS = now
      e.failures = 0
    }
    map.set(key, e)
  }
}
