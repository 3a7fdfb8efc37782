import { b64urlEncode } from './base64url.ts'

// PROTOCOL §1: identifiers and jti.
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/
export const JTI_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/
export const isId = (v: unknown): v is string => typeof v === 'string' && ID_PATTERN.test(v)
export const isJti = (v: unknown): v is string => typeof v === 'string' && JTI_PATTERN.test(v)

/**
 * Random bytes for jtis, drawn from the runtime's CSPRNG 4 KiB at a time:
 * one getRandomValues call per 256 jtis instead of one each (a bulk retire
 * makes several per device). Each jti takes bytes no other one took.
 */
const POOL = new Uint8Array(4096)
let poolAt = POOL.length

/** A fresh jti: 128 random bits as 22 base64url characters (WebCrypto, present in every modern runtime). */
export function newJti(prefix = ''): string {
  if (poolAt + 16 > POOL.length) {
    globalThis.crypto.getRandomValues(POOL)
    poolAt = 0
  }
  const bytes = POOL.subarray(poolAt, poolAt + 16)
  poolAt += 16
  return (prefix + b64urlEncode(bytes)).slice(0, 64)
}
