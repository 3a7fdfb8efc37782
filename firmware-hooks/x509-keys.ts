// A certificate device's keys and certificates (PROTOCOL §9) on WebCrypto and
// @peculiar/x509 alone, so the same code runs in any JS runtime that has
// WebCrypto with ECDSA P-256 and Ed25519 (Node, Deno, Bun, browsers): key
// generation, PKCS#8 in and out, the JWS signature of an ack (ES256 or
// EdDSA, §5), the PKCS#10 request for a new key, and the checks a device
// makes on a chain before it stores it. No node: imports.
import 'reflect-metadata' // @peculiar/x509 resolves its algorithms through tsyringe, which needs it loaded first
import * as x509 from '@peculiar/x509'
import type { JwsAlg } from '../wire/jws.ts'

/** PROTOCOL §9: the SAN URI that names a device. */
export const DEVICE_URI_PREFIX = 'urn:edgewarden:device:'

/** PROTOCOL §9: the keys a device certificate may have. */
export const CERT_KEY_ALGS = ['P-256', 'Ed25519'] as const
export type CertKeyAlg = (typeof CERT_KEY_ALGS)[number]
export const isCertKeyAlg = (v: unknown): v is CertKeyAlg => typeof v === 'string' && (CERT_KEY_ALGS as readonly string[]).includes(v)

/** The longest chain and the largest certificate a device stores; beyond them it is not a site chain. */
export const MAX_CHAIN_LENGTH = 8
export const MAX_CERT_PEM_CHARS = 16 * 1024

type Subtle = typeof globalThis.crypto.subtle
/** A WebCrypto CryptoKey (named by what importKey returns: the lib holds no DOM types). */
export type WebCryptoKey = Awaited<ReturnType<Subtle['importKey']>>

function webCrypto(): typeof globalThis.crypto {
  const c = globalThis.crypto
  if (!c?.subtle) throw new TypeError('this runtime has no WebCrypto (globalThis.crypto.subtle)')
  return c
}

const keyParams = (alg: CertKeyAlg) => (alg === 'P-256' ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: 'Ed25519' })
const signParams = (alg: CertKeyAlg) => (alg === 'P-256' ? { name: 'ECDSA', hash: 'SHA-256' } : { name: 'Ed25519' })

/** PROTOCOL §5: the `alg` of an ack signed by a certificate's key. */
export const jwsAlgOf = (alg: CertKeyAlg): JwsAlg => (alg === 'P-256' ? 'ES256' : 'EdDSA')

/** A device key with what is derived from it once. */
export interface CertKey {
  readonly alg: CertKeyAlg
  readonly privateKey: WebCryptoKey
  readonly publicKey: WebCryptoKey
  /** PKCS#8 DER: how it is stored (PROTOCOL §1) */
  readonly pkcs8: Uint8Array
  /** SubjectPublicKeyInfo DER: what a certificate for this key carries */
  readonly spki: Uint8Array
}

async function complete(alg: CertKeyAlg, privateKey: WebCryptoKey, publicKey: WebCryptoKey): Promise<CertKey> {
  const { subtle } = webCrypto()
  const pkcs8 = new Uint8Array(await subtle.exportKey('pkcs8', privateKey))
  const spki = new Uint8Array(await subtle.exportKey('spki', publicKey))
  return { alg, privateKey, publicKey, pkcs8, spki }
}

/** A new key. Extractable, since the TLS stack of the MQTT client needs it as PKCS#8. */
export async function generateCertKey(alg: CertKeyAlg): Promise<CertKey> {
  if (!isCertKeyAlg(alg)) throw new TypeError(`key algorithm must be ${CERT_KEY_ALGS.join(' or ')}`)
  const pair = (await webCrypto().subtle.generateKey(keyParams(alg), true, ['sign', 'verify'])) as { privateKey: WebCryptoKey; publicKey: WebCryptoKey }
  return complete(alg, pair.privateKey, pair.publicKey)
}

/** A stored key (PKCS#8 DER). Throws TypeError when it is not a key of `alg`. */
export async function importCertKey(alg: CertKeyAlg, pkcs8: Uint8Array): Promise<CertKey> {
  if (!isCertKeyAlg(alg)) throw new TypeError(`key algorithm must be ${CERT_KEY_ALGS.join(' or ')}`)
  if (!(pkcs8 instanceof Uint8Array) || pkcs8.length < 16 || pkcs8.length > 4096) throw new TypeError('pkcs8 must be the DER of a private key')
  const { subtle } = webCrypto()
  let privateKey: WebCryptoKey
  try {
    privateKey = await subtle.importKey('pkcs8', pkcs8, keyParams(alg), true, ['sign'])
  } catch (err) {
    throw new TypeError(`not a PKCS#8 ${alg} private key: ${(err as Error).message}`, { cause: err })
  }
  // WebCrypto has no "public key of a private key": the JWK carries both halves.
  const { d: _d, key_ops: _ops, ...pub } = await subtle.exportKey('jwk', privateKey)
  const publicKey = await subtle.importKey('jwk', pub, keyParams(alg), true, ['verify'])
  return complete(alg, privateKey, publicKey)
}

/** A JWS signature by the key (PROTOCOL §5): ES256 is r || s, 64 bytes, which is what WebCrypto's ECDSA returns. */
export async function signWith(key: CertKey, message: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await webCrypto().subtle.sign(signParams(key.alg), key.privateKey, message))
}

/**
 * A PKCS#10 request for `key`, naming the device as the gateway will (CN
 * and SAN URI, §9): the gateway sets both itself, but a CA or an operator
 * reading the request sees whose it is. Its signature is the proof of
 * possession. DER.
 */
export async function certificateRequest(key: CertKey, deviceId: string): Promise<Uint8Array> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create(
    {
      name: [{ CN: [deviceId] }],
      keys: { privateKey: key.privateKey, publicKey: key.publicKey } as unknown as Parameters<typeof x509.Pkcs10CertificateRequestGenerator.create>[0]['keys'],
      signingAlgorithm: signParams(key.alg),
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `${DEVICE_URI_PREFIX}${deviceId}` }])],
    },
    webCrypto() as unknown as Parameters<typeof x509.Pkcs10CertificateRequestGenerator.create>[1],
  )
  return new Uint8Array(csr.rawData)
}

/** PEM of DER, 64 columns. */
export const derToPem = (der: Uint8Array, label: string): string => `${x509.PemConverter.encode(toArrayBuffer(der), label)}\n`

/** The PEM blocks of a bundle with this label (CERTIFICATE by default), each as one string. */
export function pemBlocks(text: string, label = 'CERTIFICATE'): string[] {
  if (typeof text !== 'string') throw new TypeError('PEM must be a string')
  return text.match(new RegExp(`-----BEGIN ${label}-----[\\s\\S]+?-----END ${label}-----`, 'g'))?.map((b) => `${b}\n`) ?? []
}

/** The key as PKCS#8 PEM, as a TLS stack takes it. */
export const privateKeyPem = (key: CertKey): string => derToPem(key.pkcs8, 'PRIVATE KEY')

/** What a device needs to know of a certificate. */
export interface CertificateFacts {
  /** the device id its SAN URI names, or null */
  deviceId: string | null
  /** lowercase hex */
  serial: string
  subject: string
  issuer: string
  /** seconds since the epoch */
  notBefore: number
  notAfter: number
  /** SubjectPublicKeyInfo DER */
  spki: Uint8Array
}

function parseCertificate(pem: string): x509.X509Certificate {
  if (typeof pem !== 'string' || pem.length > MAX_CERT_PEM_CHARS) throw new TypeError('a certificate must be a PEM string of at most 16 KiB')
  try {
    return new x509.X509Certificate(pem)
  } catch (err) {
    throw new TypeError(`not a PEM certificate: ${(err as Error).message}`, { cause: err })
  }
}

function sanDeviceId(cert: x509.X509Certificate): string | null {
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension)
  const uri = san?.names.items.find((n) => n.type === 'url' && n.value.startsWith(DEVICE_URI_PREFIX))
  return uri ? uri.value.slice(DEVICE_URI_PREFIX.length) : null
}

export function certificateFacts(pem: string): CertificateFacts {
  const c = parseCertificate(pem)
  return {
    deviceId: sanDeviceId(c),
    serial: c.serialNumber.toLowerCase(),
    subject: c.subject,
    issuer: c.issuer,
    notBefore: Math.floor(c.notBefore.getTime() / 1000),
    notAfter: Math.floor(c.notAfter.getTime() / 1000),
    spki: new Uint8Array(c.publicKey.rawData),
  }
}

export const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => a.length === b.length && a.every((v, i) => v === b[i])

/**
 * Check a chain before storing it (install-cert, §5; an EST answer): PEM,
 * the device certificate first; it names this device in its SAN, and each
 * certificate is signed by the next. Returns the facts of the device
 * certificate. Throws TypeError saying what is wrong. Which key it is for is
 * the caller's to match (`facts.spki`). Times are not judged: many devices
 * have no clock to judge them by, and the gateway issues from its own.
 */
export async function checkChain(chain: unknown, deviceId: string): Promise<CertificateFacts> {
  if (!Array.isArray(chain) || chain.length === 0 || chain.length > MAX_CHAIN_LENGTH) throw new TypeError(`chain must be 1 to ${MAX_CHAIN_LENGTH} PEM certificates, the device certificate first`)
  const certs = chain.map((pem: unknown) => parseCertificate(pem as string))
  const leaf = certs[0]!
  const named = sanDeviceId(leaf)
  if (named !== deviceId) throw new TypeError(`the certificate names ${named === null ? 'no device' : `device ${named}`} in its SAN, not ${deviceId}`)
  const crypto = webCrypto() as unknown as Parameters<x509.X509Certificate['verify']>[1]
  for (let i = 0; i + 1 < certs.length; i++) {
    let ok = false
    try {
      ok = await certs[i]!.verify({ publicKey: certs[i + 1]!, signatureOnly: true }, crypto)
    } catch {}
    if (!ok) throw new TypeError(`certificate ${i + 1} of the chain is not signed by certificate ${i + 2}`)
  }
  return certificateFacts(chain[0] as string)
}

/** The certificates of a PKCS#7 certs-only message (DER, as EST answers, RFC 7030 §4.1.3, §4.2.3), as PEM. */
export function certsFromPkcs7(der: Uint8Array): string[] {
  let certs: x509.X509Certificates
  try {
    certs = new x509.X509Certificates(toArrayBuffer(der))
  } catch (err) {
    throw new TypeError(`not a PKCS#7 certs-only message: ${(err as Error).message}`, { cause: err })
  }
  return certs.map((c) => `${c.toString('pem')}\n`)
}

/**
 * Order certificates for storing: the one for `spki` first, then each
 * issuer after its subject; those left over (other CAs) are dropped.
 * Returns null when none is for `spki`.
 */
export function orderChain(pems: string[], spki: Uint8Array): string[] | null {
  const certs = pems.map((pem) => ({ pem, c: parseCertificate(pem) }))
  const leaf = certs.find((x) => sameBytes(new Uint8Array(x.c.publicKey.rawData), spki))
  if (!leaf) return null
  const out = [leaf]
  for (;;) {
    const last = out[out.length - 1]!.c
    if (last.subject === last.issuer) break // self-signed: the root
    const next = certs.find((x) => !out.includes(x) && x.c.subject === last.issuer)
    if (!next) break
    out.push(next)
  }
  return out.map((x) => x.pem)
}

function toArrayBuffer(b: Uint8Array): ArrayBuffer {
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer
}
