// Ed25519 keys on the gateway side, with node:crypto (about 11x faster than
// @noble/ed25519 here). Public keys travel as base64url of the raw 32 bytes
// (PROTOCOL §1); private keys live in PKCS#8 PEM files of mode 0600.
import { createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from 'node:crypto'
import { chmodSync, closeSync, fstatSync, openSync, readFileSync, writeSync } from 'node:fs'
import { b64urlDecode, b64urlEncode } from '../../wire/base64url.ts'
import { EdgewardenError } from '../runtime/errors.ts'
import { BoundedMap } from '../runtime/bounded-map.ts'

export interface KeyPair {
  privateKey: KeyObject
  publicKey: KeyObject
  /** base64url of the raw 32-byte public key */
  publicKeyB64: string
}

export function publicKeyToB64(key: KeyObject): string {
  const jwk = key.export({ format: 'jwk' })
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') throw new TypeError('not an Ed25519 key')
  return jwk.x
}

/** Parse a base64url raw public key; null when it is not 32 bytes of valid base64url. */
export function publicKeyFromB64(b64: string): KeyObject | null {
  const raw = b64urlDecode(b64)
  if (!raw || raw.length !== 32) return null
  try {
    return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64 }, format: 'jwk' })
  } catch {
    return null
  }
}

/**
 * The KeyObjects of the keys used lately, least recently used out first:
 * verification on hot paths (admission, acks) reuses them. Small on
 * purpose: a KeyObject costs about a kilobyte of native memory and parsing
 * one from the registry's base64url text about 7 µs (a verify is ~60 µs),
 * so one per device of a large site would cost more than it saves.
 */
export class PublicKeyCache {
  readonly #map: BoundedMap<string, KeyObject>
  constructor(max = 4096) {
    this.#map = new BoundedMap(max)
  }
  get(b64: string): KeyObject | null {
    // set again on a hit too: marked most recently used
    const key = this.#map.get(b64) ?? publicKeyFromB64(b64)
    if (key) this.#map.set(b64, key)
    return key
  }
}

export const signBytes = (key: KeyObject, data: Uint8Array): Uint8Array => new Uint8Array(sign(null, data, key))
export const verifyBytes = (key: KeyObject, data: Uint8Array, signature: Uint8Array): boolean => {
  try {
    return verify(null, data, key, signature)
  } catch {
    return false
  }
}

/** PKCS#8 DER of an Ed25519 private key, up to its 32-byte seed (RFC 8410). */
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')

/**
 * An Ed25519 key from a 32-byte seed. New keys are made this way rather
 * than with generateKeyPairSync: on Node 20 a key-generation job collected
 * by the GC while a key is exported as JWK deadlocks the process (both take
 * the key's mutex), which hung processes that make keys by the thousand.
 */
export function ed25519FromSeed(seed: Uint8Array): { privateKey: KeyObject; publicKey: KeyObject } {
  if (seed.length !== 32) throw new TypeError('an Ed25519 seed is 32 bytes')
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: 'der', type: 'pkcs8' })
  return { privateKey, publicKey: createPublicKey(privateKey) }
}

/** A new Ed25519 key pair (node:crypto, from 32 random bytes). */
export function generateKeyPair(): KeyPair {
  const { privateKey, publicKey } = ed25519FromSeed(randomBytes(32))
  return { privateKey, publicKey, publicKeyB64: publicKeyToB64(publicKey) }
}

export function privateKeyToPem(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'pkcs8' }).toString()
}

/** Write a new key file with mode 0600, failing if the file exists. */
export function writeKeyFile(path: string, pair: KeyPair): void {
  writePrivateKeyFile(path, privateKeyToPem(pair.privateKey))
}

/** Create a private key file (PEM), mode 0600; never overwrites one. */
export function writePrivateKeyFile(path: string, pem: string): void {
  let fd: number
  try {
    fd = openSync(path, 'wx', 0o600)
  } catch (err) {
    throw new EdgewardenError('KEY_FILE', `cannot create key file ${path}: ${(err as Error).message}`, { cause: err })
  }
  try {
    writeSync(fd, pem)
  } finally {
    closeSync(fd)
  }
  chmodSync(path, 0o600) // umask may have narrowed it; never widened
}

/** Load a PKCS#8 PEM Ed25519 key, refusing a file readable by group or others (PROTOCOL §1). */
export function readKeyFile(path: string): KeyPair {
  const privateKey = readPrivateKeyFile(path)
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new EdgewardenError('KEY_FILE', `key file ${path} holds a ${privateKey.asymmetricKeyType ?? 'unknown'} key, not Ed25519`)
  }
  const publicKey = createPublicKey(privateKey)
  return { privateKey, publicKey, publicKeyB64: publicKeyToB64(publicKey) }
}

/** Load a PEM private key of any type (the site CA's is ECDSA P-256), refusing a file readable by group or others. */
export function readPrivateKeyFile(path: string): KeyObject {
  let pem: string
  let fd: number
  try {
    fd = openSync(path, 'r')
  } catch (err) {
    throw new EdgewardenError('KEY_FILE', `cannot open key file ${path}: ${(err as Error).message}`, { cause: err })
  }
  try {
    const mode = fstatSync(fd).mode & 0o777
    if ((mode & 0o077) !== 0) {
      throw new EdgewardenError(
        'KEY_FILE',
        `key file ${path} has mode ${mode.toString(8).padStart(4, '0')}: it must not be readable by group or others (chmod 600 ${path})`,
      )
    }
    pem = readFileSync(fd, 'utf8')
  } finally {
    closeSync(fd)
  }
  try {
    return createPrivateKey({ key: pem, format: 'pem' })
  } catch (err) {
    throw new EdgewardenError('KEY_FILE', `key file ${path} is not a PEM private key`, { cause: err })
  }
}

export function rawPublicKey(b64: string): Uint8Array | null {
  const raw = b64urlDecode(b64)
  return raw && raw.length === 32 ? raw : null
}

export { b64urlEncode }
