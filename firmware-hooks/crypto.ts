// Ed25519 on the device side, with @noble/ed25519 so the same code runs in
// any JS runtime (Node, Deno, Bun, a browser, an embedded engine with
// WebCrypto's SHA-512). Only the async API is used: it needs no extra hash
// dependency. Every input is checked for type and length before any crypto.
import * as ed from '@noble/ed25519'
import { b64urlDecode, b64urlEncode } from '../wire/base64url.ts'

export interface DeviceKeyPair {
  /** the 32-byte seed (RFC 8032 private key) */
  secretKey: Uint8Array
  /** the raw 32-byte public key */
  publicKey: Uint8Array
}

function bytes(v: unknown, len: number | null, what: string): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new TypeError(`${what} must be a Uint8Array`)
  if (len !== null && v.length !== len) throw new TypeError(`${what} must be ${len} bytes, got ${v.length}`)
  return v
}

export async function keygen(): Promise<DeviceKeyPair> {
  const { secretKey, publicKey } = await ed.keygenAsync()
  return { secretKey, publicKey }
}

export function publicKeyOf(secretKey: Uint8Array): Promise<Uint8Array> {
  return ed.getPublicKeyAsync(bytes(secretKey, 32, 'secretKey'))
}

export function sign(message: Uint8Array, secretKey: Uint8Array): Promise<Uint8Array> {
  return ed.signAsync(bytes(message, null, 'message'), bytes(secretKey, 32, 'secretKey'))
}

/** Never throws on bad input from the wire: a malformed key or signature is simply not valid. */
export async function verify(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): Promise<boolean> {
  bytes(message, null, 'message')
  if (!(signature instanceof Uint8Array) || signature.length !== 64) return false
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== 32) return false
  try {
    // zip215: false is RFC 8032's strict verification, which node:crypto (OpenSSL) also does.
    return await ed.verifyAsync(signature, message, publicKey, { zip215: false })
  } catch {
    return false
  }
}

/** PROTOCOL §1: a public key is written as base64url of its raw 32 bytes. */
export const publicKeyToB64 = (publicKey: Uint8Array): string => b64urlEncode(bytes(publicKey, 32, 'publicKey'))

export function publicKeyFromB64(b64: string): Uint8Array | null {
  const raw = typeof b64 === 'string' ? b64urlDecode(b64) : null
  return raw && raw.length === 32 ? raw : null
}

// --- PKCS#8 (RFC 5958 / RFC 8410), read with a minimal DER walker ---------

const OID_ED25519 = [0x2b, 0x65, 0x70] // 1.3.101.112

class Der {
  pos = 0
  constructor(readonly buf: Uint8Array) {}
  /** Read one TLV; returns its tag and the [start, end) of its value. */
  next(): { tag: number; start: number; end: number } {
    const b = this.buf
    if (this.pos + 2 > b.length) throw new TypeError('truncated DER')
    const tag = b[this.pos++]!
    let len = b[this.pos++]!
    if (len & 0x80) {
      const n = len & 0x7f
      if (n === 0 || n > 2 || this.pos + n > b.length) throw new TypeError('unsupported DER length')
      len = 0
      for (let i = 0; i < n; i++) len = (len << 8) | b[this.pos++]!
    }
    const start = this.pos
    const end = start + len
    if (end > b.length) throw new TypeError('truncated DER')
    this.pos = end
    return { tag, start, end }
  }
  enter(tlv: { start: number; end: number }): Der {
    return new Der(this.buf.subarray(tlv.start, tlv.end))
  }
}

/**
 * The 32-byte seed of an Ed25519 private key in PKCS#8 PEM (`-----BEGIN
 * PRIVATE KEY-----`, what `openssl genpkey -algorithm ed25519` and
 * `edgewarden keygen` write). Plain JS: no node:crypto. Throws TypeError for
 * anything else (an encrypted key, another algorithm, bad base64).
 */
export function seedFromPkcs8Pem(pem: string): Uint8Array {
  if (typeof pem !== 'string') throw new TypeError('pem must be a string')
  const m = /-----BEGIN PRIVATE KEY-----([\s\S]*?)-----END PRIVATE KEY-----/.exec(pem)
  if (!m) throw new TypeError('not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)')
  const b64 = m[1]!.replace(/\s+/g, '').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_')
  const der = b64urlDecode(b64)
  if (!der) throw new TypeError('PEM body is not base64')
  const top = new Der(der)
  const seq = top.next()
  if (seq.tag !== 0x30) throw new TypeError('PKCS#8: not a SEQUENCE')
  const pk = top.enter(seq)
  const version = pk.next()
  if (version.tag !== 0x02 || version.end - version.start !== 1 || pk.buf[version.start]! > 1) {
    throw new TypeError('PKCS#8: unsupported version')
  }
  const alg = pk.next()
  if (alg.tag !== 0x30) throw new TypeError('PKCS#8: bad AlgorithmIdentifier')
  const algSeq = pk.enter(alg)
  const oid = algSeq.next()
  const oidBytes = algSeq.buf.subarray(oid.start, oid.end)
  if (oid.tag !== 0x06 || oidBytes.length !== 3 || OID_ED25519.some((v, i) => oidBytes[i] !== v)) {
    throw new TypeError('PKCS#8: not an Ed25519 key')
  }
  const octets = pk.next()
  if (octets.tag !== 0x04) throw new TypeError('PKCS#8: privateKey is not an OCTET STRING')
  const inner = pk.enter(octets)
  const seed = inner.next() // RFC 8410 §7: CurvePrivateKey ::= OCTET STRING
  if (seed.tag !== 0x04 || seed.end - seed.start !== 32) throw new TypeError('PKCS#8: Ed25519 seed is not 32 bytes')
  return inner.buf.slice(seed.start, seed.end)
}
