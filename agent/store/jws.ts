// Gateway-side JWS: sign with the gateway key, verify with node:crypto.
import type { KeyObject } from 'node:crypto'
import { assembleJws, jwsSigningInput, type Claims, type ParsedJws } from '../../wire/jws.ts'
import { utf8 } from '../../wire/base64url.ts'
import { signBytes, verifyBytes } from './keys.ts'

export function signJws(privateKey: KeyObject, kid: string, payload: Claims): string {
  const input = jwsSigningInput(kid, payload)
  return assembleJws(input, signBytes(privateKey, utf8(input)))
}

export const verifyParsed = (jws: ParsedJws, publicKey: KeyObject): boolean =>
  verifyBytes(publicKey, jws.signingInput, jws.signature)
