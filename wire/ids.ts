import { b64urlEncode } from './base64url.ts'

// PROTOCOL §1: identifiers and jti.
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/
export const JTI_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/
export const isId = (v: unknown): v is string => typeof v === 'string' && ID_PATTERN.test(v)
export const isJti = (v: unknown): v is string => typeof v === 'string' && JTI_PATTERN.test(v)

/** A fresh jti: 128 random bits as 22 base64url characters (WebCrypto, present in every modern runtime). */
export function newJti(prefix = ''): string {
  const bytes = new Uint8Array(16)
  globalThis.crypto.getRandomValues(bytes)
  return (prefix + b64urlEncode(bytes)).slice(0, 64)
}
