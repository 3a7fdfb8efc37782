// Throttling of failed authentication (brute force, connection storms), per
// source address and per client id. Protocol-free: an adapter asks check()
// before admitting and reports the outcome after.
//
// A block never locks out a device that holds a valid credential: it only
// decides how much work an attempt gets. A blocked attempt whose password
// does not even have the shape of a credential is refused before anything
// is parsed (a map lookup and a few character tests: a storm of garbage
// costs almost nothing); one that has the shape is checked in full, so a
// correct token gets in whoever else failed from its address or under its
// id. A forged token with the right shape costs one signature check, which
// is cheap next to the harm of locking a machine out of a plant network:
// someone on the same NAT or IPv6 /64 (a whole plant LAN shares one), or
// someone who knows a device's id, could otherwise keep it out at will.
//
// What counts as a failure: against the source, every credential failure,
// garbage included; against the id, only the failures of a credential that
// named it (a token for that id that did not verify, was replayed, ...).
// Refusals because of the device's state (revoked, quarantined) are not
// guessing and count nowhere (the caller decides). An IPv6 source counts by
// its /64: one host holds a whole /64 and could take a fresh address per
// attempt. Memory is bounded: each map holds at most `maxKeys` entries, the
// least recently touched dropped first.

import type { AdmissionRefusal } from './admission.ts'
import { BoundedMap } from '../runtime/bounded-map.ts'

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

/** How a failure counts: `credential` against the source and the id it named, `garbage` against the source only. */
export type FailureKind = 'credential' | 'garbage'

/**
 * How a refused connect counts (null: not at all). Refusals because of the
 * device's state or our store say nothing about the credential; a password
 * that named no enrolled identity counts against its source only.
 */
export function failureKind(reason: AdmissionRefusal): FailureKind | null {
  switch (reason) {
    case 'quarantined':
    case 'revoked':
    case 'retired':
    case 'credential-expired':
    case 'unavailable':
    case 'busy':
    case 'gone':
      return null
    case 'malformed-token':
    case 'bad-alg':
    case 'unknown-device':
      return 'garbage'
    default:
      return 'credential'
  }
}

interface Counter {
  /** when the current window began, seconds */
  startS: number
  failures: number
  /** blocked until then (seconds), 0 when not blocked */
  blockedUntilS: number
}

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

/**
 * Whether a password has the shape of a compact JWS (three base64url
 * segments, the header long enough to hold `{"alg":"EdDSA"`) within `max`
 * bytes: the test a blocked attempt must pass before anything is parsed.
 */
export function hasTokenShape(password: Uint8Array | string | undefined, max = 16 * 1024): boolean {
  if (password === undefined || password.length < 40 || password.length > max) return false
  let dots = 0
  let first = -1
  for (let i = 0; i < password.length; i++) {
    const c = typeof password === 'string' ? password.charCodeAt(i) : password[i]!
    if (c === 0x2e) {
      if (++dots > 2) return false
      if (first < 0) first = i
      continue
    }
    // base64url alphabet: A-Z a-z 0-9 - _
    if (!((c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f)) return false
  }
  return dots === 2 && first >= 20
}

export class AuthThrottle {
  readonly #opts: AuthThrottleOptions
  readonly #nowS: () => number
  readonly #clients: BoundedMap<string, Counter>
  readonly #addresses: BoundedMap<string, Counter>
  /** attempts refused by a block before any parsing, by scope */
  readonly refused = { client: 0, address: 0 }

  constructor(opts: AuthThrottleOptions, nowS: () => number) {
    this.#opts = opts
    this.#nowS = nowS
    const max = opts.maxKeys ?? DEFAULT_MAX_KEYS
    this.#clients = new BoundedMap(max)
    this.#addresses = new BoundedMap(max)
  }

  /**
   * The block in force for an attempt by this id from this address, if
   * any (the address's first: it is what a storm trips). A blocked attempt
   * goes on only with a password that has the shape of a credential.
   */
  check(clientId: string, address: string | undefined): ThrottleBlock | null {
    const now = this.#nowS()
    if (address !== undefined) {
      const a = this.#addresses.get(addressKey(address))
      if (a && a.blockedUntilS > now) return { scope: 'address', untilS: a.blockedUntilS }
    }
    const c = this.#clients.get(clientId)
    if (c && c.blockedUntilS > now) return { scope: 'client', untilS: c.blockedUntilS }
    return null
  }

  /** Count an attempt refused by `block` before any parsing. */
  refusedBy(block: ThrottleBlock): void {
    this.refused[block.scope]++
  }

  /** A credential failure (see FailureKind for what counts where). */
  failure(clientId: string, address: string | undefined, kind: FailureKind = 'credential'): void {
    const now = this.#nowS()
    if (address !== undefined) this.#count(this.#addresses, addressKey(address), this.#opts.perAddress, now)
    if (kind === 'credential') this.#count(this.#clients, clientId, this.#opts.perClient, now)
  }

  /** An admission: the id's failures and block are forgotten (its credential is good). */
  success(clientId: string): void {
    this.#clients.delete(clientId)
  }

  /** Entries held (for the memory bound). */
  get size(): { clients: number; addresses: number } {
    return { clients: this.#clients.size, addresses: this.#addresses.size }
  }

  #count(map: BoundedMap<string, Counter>, key: string, limit: number, now: number): void {
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
