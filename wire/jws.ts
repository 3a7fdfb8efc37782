// JWS compact serialization (RFC 7515) as PROTOCOL §1 restricts it: header
// {"alg":"EdDSA","kid"}, JSON-object payload, 64-byte Ed25519 signature,
// 16 KiB at most. Parsing is shared by both sides; the signature check is
// left to the caller, which owns the Ed25519 implementation (node:crypto on
// the gateway, @noble/ed25519 on devices).
import { b64urlDecode, b64urlEncode, fromUtf8, utf8 } from './base64url.ts'
import { isJti } from './ids.ts'

export const MAX_JWS_BYTES = 16 * 1024
export const DEFAULT_CLOCK_SKEW_S = 300

export type JwsRefusal = 'malformed' | 'bad-alg'

export class JwsFormatError extends Error {
  readonly reason: JwsRefusal
  constructor(reason: JwsRefusal, message: string) {
    super(message)
    this.name = 'JwsFormatError'
    this.reason = reason
  }
}

/**
 * EdDSA everywhere (§1); ES256 only where a device signs with the key of its
 * P-256 certificate (its acks, §5/§9): the caller opts in.
 */
export type JwsAlg = 'EdDSA' | 'ES256'

export interface JwsHeader {
  alg: JwsAlg
  kid: string
  typ?: string
}

export type Claims = Record<string, unknown>

export interface ParsedJws {
  header: JwsHeader
  payload: Claims
  /** ASCII bytes of `b64url(header) "." b64url(payload)`: what the signature covers. */
  signingInput: Uint8Array
  signature: Uint8Array
}

function parseJsonObject(part: string, what: string): Record<string, unknown> {
  const bytes = b64urlDecode(part)
  if (!bytes) throw new JwsFormatError('malformed', `${what} is not base64url`)
  let value: unknown
  try {
    value = JSON.parse(fromUtf8(bytes))
  } catch {
    throw new JwsFormatError('malformed', `${what} is not UTF-8 JSON`)
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new JwsFormatError('malformed', `${what} is not a JSON object`)
  }
  return value as Record<string, unknown>
}

/**
 * Parse without verifying. Throws JwsFormatError: `malformed` for anything
 * that is not a compact JWS of the allowed shape, `bad-alg` for any `alg` but
 * EdDSA (or those of `opts.algs`), decided before any key could be looked up
 * (PROTOCOL §1). Both algorithms have 64-byte signatures (ES256: r || s).
 */
export function parseJws(input: string | Uint8Array, opts: { algs?: readonly JwsAlg[] } = {}): ParsedJws {
  const algs = opts.algs ?? ['EdDSA']
  if (typeof input !== 'string') {
    if (input.length > MAX_JWS_BYTES) throw new JwsFormatError('malformed', `message is ${input.length} bytes, over ${MAX_JWS_BYTES}`)
    try {
      input = fromUtf8(input)
    } catch {
      throw new JwsFormatError('malformed', 'message is not UTF-8')
    }
  }
  if (input.length > MAX_JWS_BYTES) throw new JwsFormatError('malformed', `message is ${input.length} bytes, over ${MAX_JWS_BYTES}`)
  const first = input.indexOf('.')
  const second = first < 0 ? -1 : input.indexOf('.', first + 1)
  if (first <= 0 || second < 0 || input.indexOf('.', second + 1) !== -1) {
    throw new JwsFormatError('malformed', 'not three dot-separated parts')
  }
  const h = parseJsonObject(input.slice(0, first), 'header')
  if (typeof h.alg !== 'string' || !(algs as readonly string[]).includes(h.alg)) throw new JwsFormatError('bad-alg', `alg ${JSON.stringify(h.alg ?? null)} is not accepted, only ${algs.join(' or ')}`)
  if (typeof h.kid !== 'string' || h.kid.length === 0 || h.kid.length > 64) {
    throw new JwsFormatError('malformed', 'header kid is missing or not a string')
  }
  if (h.typ !== undefined && typeof h.typ !== 'string') throw new JwsFormatError('malformed', 'header typ is not a string')
  if (h.crit !== undefined) throw new JwsFormatError('malformed', 'header crit is not supported') // RFC 7515 §4.1.11
  const payload = parseJsonObject(input.slice(first + 1, second), 'payload')
  const signature = b64urlDecode(input.slice(second + 1))
  if (!signature || signature.length !== 64) throw new JwsFormatError('malformed', 'signature is not 64 bytes of base64url')
  const header: JwsHeader = { alg: h.alg as JwsAlg, kid: h.kid }
  if (typeof h.typ === 'string') header.typ = h.typ
  return { header, payload, signingInput: utf8(input.slice(0, second)), signature }
}

/** Build the signing input for a header and payload; the caller signs it. */
export function jwsSigningInput(kid: string, payload: Claims, alg: JwsAlg = 'EdDSA'): string {
  return `${b64urlEncode(utf8(JSON.stringify({ alg, kid })))}.${b64urlEncode(utf8(JSON.stringify(payload)))}`
}

export function assembleJws(signingInput: string, signature: Uint8Array): string {
  return `${signingInput}.${b64urlEncode(signature)}`
}

export type TimeRefusal = 'malformed' | 'expired' | 'not-yet-valid' | 'lifetime-too-long'

const ahead = (iat: number, nowS: number, skewS: number): string =>
  `iat ${iat} is ${iat - nowS} s ahead of the verifier's clock (${nowS}; skew allowed ${skewS} s): the signer's clock is ahead, or the verifier's behind`

/**
 * PROTOCOL §1 claim checks shared by commands, tokens, actions and acks:
 * `iat`/`exp` integers with `exp` > `iat`, within skew, lifetime bounded, a
 * well-formed `jti`. Returns null when they pass.
 */
export function checkTimeClaims(
  claims: Claims,
  nowS: number,
  opts: { skewS: number; maxLifetimeS: number; requireExp?: boolean },
): { reason: TimeRefusal; detail: string } | null {
  const { iat, exp, jti } = claims
  if (!isJti(jti)) return { reason: 'malformed', detail: 'jti missing or not 1-64 of [A-Za-z0-9._:-]' }
  if (!Number.isSafeInteger(iat)) return { reason: 'malformed', detail: 'iat is not an integer' }
  const requireExp = opts.requireExp ?? true
  if (exp === undefined && !requireExp) {
    if ((iat as number) > nowS + opts.skewS) return { reason: 'not-yet-valid', detail: ahead(iat as number, nowS, opts.skewS) }
    return null
  }
  if (!Number.isSafeInteger(exp)) return { reason: 'malformed', detail: 'exp is not an integer' }
  const i = iat as number
  const e = exp as number
  if (e <= i) return { reason: 'malformed', detail: 'exp is not after iat' }
  // PROTOCOL §3 order: expired, not-yet-valid, lifetime-too-long.
  if (e + opts.skewS < nowS) return { reason: 'expired', detail: `expired at ${e}, ${nowS - e} s before the verifier's clock (${nowS}; skew allowed ${opts.skewS} s): a token made long ago, or a signer's clock behind` }
  if (i > nowS + opts.skewS) return { reason: 'not-yet-valid', detail: ahead(i, nowS, opts.skewS) }
  if (e - i > opts.maxLifetimeS) return { reason: 'lifetime-too-long', detail: `lifetime ${e - i} s is over ${opts.maxLifetimeS} s` }
  return null
}
