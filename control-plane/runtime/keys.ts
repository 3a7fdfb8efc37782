// Ed25519 with node:crypto on the control-plane side: the signing key is a
// PKCS#8 PEM file of mode 0600 (PROTOCOL §1: a key file readable by group or
// others is refused), gateway keys arrive pinned as base64url of the raw 32
// bytes.
import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto'
import { readFileSync, statSync } from 'node:fs'
import { b64urlDecode } from '../../wire/base64url.ts'
import { CpError } from './errors.ts'

/** The control-plane key from its file; CP_CONFIG with one clear line when it cannot be used. */
export function loadSigningKey(path: string): KeyObject {
  let mode: number
  try {
    mode = statSync(path).mode
  } catch (err) {
    throw new CpError('CP_CONFIG', `key ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  // PROTOCOL §1: never a key others can read.
  if (process.platform !== 'win32' && (mode & 0o077) !== 0) {
    throw new CpError('CP_CONFIG', `key ${path} is readable by group or others (mode ${(mode & 0o777).toString(8)}): chmod 600 it`)
  }
  let key: KeyObject
  try {
    key = createPrivateKey({ key: readFileSync(path, 'utf8'), format: 'pem' })
  } catch {
    throw new CpError('CP_CONFIG', `key ${path} is not a PKCS#8 PEM private key`)
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new CpError('CP_CONFIG', `key ${path} is ${key.asymmetricKeyType ?? 'not'} an Ed25519 key (PROTOCOL §1 needs Ed25519)`)
  return key
}

export function publicKeyB64(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key
  return pub.export({ format: 'jwk' }).x as string
}

/** A pinned public key (base64url, 32 raw bytes); null when it is not one. */
export function publicKeyFromB64(b64: unknown): KeyObject | null {
  if (typeof b64 !== 'string') return null
  const raw = b64urlDecode(b64)
  if (!raw || raw.length !== 32) return null
  try {
    return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64 }, format: 'jwk' })
  } catch {
    return null
  }
}

export const signEd25519 = (key: KeyObject, data: Uint8Array): Uint8Array => new Uint8Array(sign(null, data, key))

export function verifyEd25519(key: KeyObject, data: Uint8Array, signature: Uint8Array): boolean {
  try {
    return verify(null, data, key, signature)
  } catch {
    return false
  }
}
