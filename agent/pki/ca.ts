// The site CA (PROTOCOL §9): an ECDSA P-256 CA created in <data-dir>/pki/ on
// first start (key 0600), or an intermediate of the enterprise's CA given
// with --ca-cert/--ca-key. It issues device certificates from PKCS#10
// requests (the subject and SAN are the gateway's to set: it issues for the
// device id it authenticated), and the gateway's own TLS server certificate.
// Certificates, requests and CRLs are built with @peculiar/x509 (WebCrypto),
// loaded on first use so a start without PKI work does not pay for it; the
// hot path (a device's TLS handshake) uses node:crypto X509Certificate.
import { createPrivateKey, createPublicKey, randomBytes, webcrypto, X509Certificate, type KeyObject } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { BoundedMap } from '../runtime/bounded-map.ts'
import { EdgewardenError } from '../runtime/errors.ts'
import { readPrivateKeyFile, writePrivateKeyFile } from '../store/keys.ts'

/** PROTOCOL §9: the SAN URI that names a device. */
export const DEVICE_URI_PREFIX = 'urn:edgewarden:device:'
/** §9: notBefore is set this far back, for devices whose clocks lag. */
export const NOT_BEFORE_SLACK_S = 300
const CA_LIFETIME_S = 20 * 365 * 86400
const ECDSA = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const

type X509Lib = typeof import('@peculiar/x509')
let lib: Promise<X509Lib> | null = null
/** @peculiar/x509 with node's WebCrypto, loaded once, on first use. */
export function x509(): Promise<X509Lib> {
  lib ??= (async () => {
    await import('reflect-metadata')
    const m = await import('@peculiar/x509')
    m.cryptoProvider.set(webcrypto as unknown as Parameters<typeof m.cryptoProvider.set>[0])
    return m
  })()
  return lib
}

/** A certificate as the gateway records it (PROTOCOL §9). */
export interface IssuedCertificate {
  /** lowercase hex, as on the CRL */
  serial: string
  /** hex SHA-256 of the DER */
  sha256: string
  /** seconds since the epoch */
  notBefore: number
  notAfter: number
  pem: string
}

/** What a device's PKCS#10 request says, once its signature (proof of possession) verified. */
export interface CsrInfo {
  /** the request's public key, as the CA signs it */
  publicKey: unknown
  keyAlgorithm: 'P-256' | 'Ed25519'
  /** the device id of its SAN URI, if it names one */
  sanDeviceId: string | null
  subject: string
}

/**
 * What an OPC UA application's PKCS#10 request says (OPC 10000-12 §7.7.6
 * CreateSigningRequest), once its signature verified: an RSA key (the
 * RsaSha256ApplicationCertificateType of OPC 10000-12 §7.8.4.5) and the
 * URIs it asks for. Its DNS names and addresses are not kept: the gateway
 * names the host it reaches the device at, not what the device claims.
 */
export interface OpcuaCsrInfo {
  /** the request's public key, as the CA signs it */
  publicKey: unknown
  /** RSA modulus length */
  keyBits: number
  /** the SAN URIs the request names (an application's applicationUri among them) */
  uris: string[]
  subject: string
}

/** OPC 10000-12 §7.8.4.5 RsaSha256ApplicationCertificateType: RSA keys of 2048 to 4096 bits. */
export const OPCUA_RSA_BITS = { min: 2048, max: 4096 } as const

/** The facts of a certificate the gateway needs, read with node:crypto. */
export function certificateFacts(cert: X509Certificate): Omit<IssuedCertificate, 'pem'> {
  return {
    serial: cert.serialNumber.toLowerCase(),
    sha256: cert.fingerprint256.replace(/:/g, '').toLowerCase(),
    notBefore: Math.floor(Date.parse(cert.validFrom) / 1000),
    notAfter: Math.floor(Date.parse(cert.validTo) / 1000),
  }
}

/** The device id a certificate's SAN names (`URI:urn:edgewarden:device:<id>`), or null. */
export function deviceIdOf(cert: X509Certificate): string | null {
  for (const entry of (cert.subjectAltName ?? '').split(/,\s*/)) {
    if (entry.startsWith(`URI:${DEVICE_URI_PREFIX}`)) return entry.slice(4 + DEVICE_URI_PREFIX.length)
  }
  return null
}

/** Base64 in lines of 64, ending in a newline: OpenSSL reads no longer lines. */
export const base64Lines = (b64: string): string => `${b64.replace(/.{64}/g, '$&\n').replace(/\n$/, '')}\n`

/** One PEM block of base64 DER under `label`. */
export const pemOf = (b64: string, label: string): string => `-----BEGIN ${label}-----\n${base64Lines(b64)}-----END ${label}-----\n`

/** PEM blocks of a bundle, each as one string. */
export function pemBlocks(text: string, label = 'CERTIFICATE'): string[] {
  return text.match(new RegExp(`-----BEGIN ${label}-----[\\s\\S]+?-----END ${label}-----`, 'g'))?.map((b) => `${b}\n`) ?? []
}

const serialHex = (): string => {
  // 16 random bytes (§9), the first below 0x80 so the INTEGER is positive without a leading zero byte
  const b = randomBytes(16)
  b[0] = (b[0]! & 0x7f) | 0x01
  return b.toString('hex')
}

const date = (s: number): Date => new Date(s * 1000)

export interface CaOptions {
  dataDir: string
  /** an enterprise intermediate: PEM chain (the intermediate first) and its key */
  caCertFile?: string
  caKeyFile?: string
  /** name of the site and gateway, for a CA created here */
  site: string
  gateway: string
  nowS: number
}

/** certificates SiteCa.issued() remembers as issued (~200 B each) */
const ISSUED_MEMO_MAX = 100_000

export class SiteCa {
  /** the CA certificate that signs (the first of `chain`) */
  readonly certificate: X509Certificate
  /** the CA's chain, the signing CA first, as PEM (served as /pki/ca and in install-cert) */
  readonly chainPem: string[]
  /** every CA certificate devices' certificates may chain to: the chain, and the previous CA during a rollover */
  readonly trustPem: readonly string[]
  readonly #key: KeyObject
  #signingKey: Promise<webcrypto.CryptoKey> | null = null
  /** where it came from: `created` here, `loaded` from the data dir, `enterprise` from --ca-cert */
  readonly origin: 'created' | 'loaded' | 'enterprise'

  private constructor(chainPem: string[], trustPem: string[], key: KeyObject, origin: SiteCa['origin']) {
    this.chainPem = chainPem
    this.trustPem = Object.freeze([...trustPem])
    this.certificate = new X509Certificate(chainPem[0]!)
    this.#key = key
    this.origin = origin
  }

  /** SHA-256 fingerprint of the signing CA, hex with colons (as `openssl x509 -fingerprint -sha256`). */
  get fingerprint(): string {
    return this.certificate.fingerprint256
  }

  /**
   * The site CA: the enterprise intermediate when given, else the one in
   * `<data-dir>/pki/` (created on first start). `pki/previous-ca.pem`, if
   * there, stays trusted (a rollover: devices move to the new CA by renewal).
   */
  static async open(o: CaOptions): Promise<SiteCa> {
    const dir = join(o.dataDir, 'pki')
    const previous = join(dir, 'previous-ca.pem')
    const previousPem = existsSync(previous) ? pemBlocks(readFileSync(previous, 'utf8')) : []
    if (o.caCertFile !== undefined || o.caKeyFile !== undefined) {
      if (o.caCertFile === undefined || o.caKeyFile === undefined) throw new EdgewardenError('CONFIG_INVALID', 'caCert and caKey go together')
      const chain = pemBlocks(readPemFile(o.caCertFile, 'caCert'))
      if (chain.length === 0) throw new EdgewardenError('PKI', `caCert ${o.caCertFile} holds no PEM certificate`)
      const key = readPrivateKeyFile(o.caKeyFile)
      checkCaPair(chain[0]!, key, o.caCertFile, o.nowS)
      return new SiteCa(chain, [...chain, ...previousPem], key, 'enterprise')
    }
    const certFile = join(dir, 'ca.pem')
    const keyFile = join(dir, 'ca.key')
    if (existsSync(certFile) && existsSync(keyFile)) {
      const chain = pemBlocks(readPemFile(certFile, 'the site CA'))
      const key = readPrivateKeyFile(keyFile)
      checkCaPair(chain[0]!, key, certFile, o.nowS)
      return new SiteCa(chain, [...chain, ...previousPem], key, 'loaded')
    }
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    const m = await x509()
    const keys = (await webcrypto.subtle.generateKey(ECDSA, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair
    const name = `CN=edgewarden site CA ${o.site}/${o.gateway}, O=edgewarden`
    const cert = await m.X509CertificateGenerator.createSelfSigned({
      serialNumber: serialHex(),
      name,
      notBefore: date(o.nowS - NOT_BEFORE_SLACK_S),
      notAfter: date(o.nowS + CA_LIFETIME_S),
      signingAlgorithm: ECDSA,
      keys,
      extensions: [
        new m.BasicConstraintsExtension(true, 0, true),
        new m.KeyUsagesExtension(m.KeyUsageFlags.keyCertSign | m.KeyUsageFlags.cRLSign | m.KeyUsageFlags.digitalSignature, true),
        await m.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    })
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey))
    const keyPem = pemOf(pkcs8.toString('base64'), 'PRIVATE KEY')
    // key first (0600, never overwritten), then the certificate by rename: a crash leaves no certificate without its key
    writePrivateKeyFile(keyFile, keyPem)
    writeFileSync(`${certFile}.tmp`, cert.toString('pem') + '\n', { mode: 0o644 })
    renameSync(`${certFile}.tmp`, certFile)
    const chain = [cert.toString('pem') + '\n']
    return new SiteCa(chain, [...chain, ...previousPem], createPrivateKey(keyPem), 'created')
  }

  async #signer(): Promise<webcrypto.CryptoKey> {
    this.#signingKey ??= webcrypto.subtle.importKey('pkcs8', this.#key.export({ format: 'der', type: 'pkcs8' }), ECDSA, false, ['sign']) as Promise<webcrypto.CryptoKey>
    return this.#signingKey
  }

  /** Parse and check a device's PKCS#10 request (DER): its signature proves it holds the key; only P-256 and Ed25519 keys (§9). */
  async parseCsr(der: Uint8Array): Promise<CsrInfo> {
    const { csr, sanUris } = await checkedCsr(der, (c) => {
      const alg = c.publicKey.algorithm as { name: string; namedCurve?: string }
      if (!(alg.name === 'ECDSA' && alg.namedCurve === 'P-256') && alg.name !== 'Ed25519') throw new EdgewardenError('CSR_INVALID', `the request's key is ${alg.name}${alg.namedCurve ? ` ${alg.namedCurve}` : ''}: only ECDSA P-256 and Ed25519 keys are issued for`)
    })
    const keyAlgorithm = (csr.publicKey.algorithm as { name: string }).name === 'Ed25519' ? 'Ed25519' : 'P-256'
    const uri = sanUris.find((u) => u.startsWith(DEVICE_URI_PREFIX))
    return { publicKey: csr.publicKey, keyAlgorithm, sanDeviceId: uri ? uri.slice(DEVICE_URI_PREFIX.length) : null, subject: csr.subject }
  }

  /** A device certificate (§9) for `deviceId` and the key of a checked request, valid `lifetimeS` from `nowS`. */
  async issueDevice(o: { deviceId: string; csr: CsrInfo; lifetimeS: number; nowS: number }): Promise<IssuedCertificate> {
    const m = await x509()
    const pem = await this.#issueLeaf({
      commonName: o.deviceId,
      publicKey: o.csr.publicKey as InstanceType<X509Lib['PublicKey']>,
      lifetimeS: o.lifetimeS,
      nowS: o.nowS,
      keyUsage: m.KeyUsageFlags.digitalSignature | (o.csr.keyAlgorithm === 'P-256' ? m.KeyUsageFlags.keyAgreement : 0),
      extendedKeyUsage: m.ExtendedKeyUsage.clientAuth,
      sans: [{ type: 'url', value: `${DEVICE_URI_PREFIX}${o.deviceId}` }],
    })
    return { ...certificateFacts(new X509Certificate(pem)), pem }
  }

  /**
   * Parse and check an OPC UA application's request (DER): its signature
   * proves possession of the key; only RSA keys of OPCUA_RSA_BITS (the
   * security policies the gateway accepts are all RSA, OPC 10000-7).
   */
  async parseOpcuaCsr(der: Uint8Array): Promise<OpcuaCsrInfo> {
    let bits = 0
    const { csr, sanUris } = await checkedCsr(der, (c) => {
      let key: KeyObject
      try {
        key = createPublicKey({ key: Buffer.from(c.publicKey.rawData), format: 'der', type: 'spki' })
      } catch (err) {
        throw new EdgewardenError('CSR_INVALID', `the request's public key cannot be read: ${(err as Error).message}`, { cause: err })
      }
      bits = key.asymmetricKeyDetails?.modulusLength ?? 0
      if (key.asymmetricKeyType !== 'rsa' || bits < OPCUA_RSA_BITS.min || bits > OPCUA_RSA_BITS.max) {
        throw new EdgewardenError('CSR_INVALID', `the request's key is ${key.asymmetricKeyType ?? 'unknown'}${bits ? ` ${bits} bits` : ''}: an OPC UA application certificate needs RSA of ${OPCUA_RSA_BITS.min} to ${OPCUA_RSA_BITS.max} bits`)
      }
    })
    return { publicKey: csr.publicKey, keyBits: bits, uris: sanUris, subject: csr.subject }
  }

  /**
   * An OPC UA application instance certificate (OPC 10000-6 §6.2.2): the
   * applicationUri as the first SAN URI (then any further URIs, the device's
   * `urn:edgewarden:device:<id>` among them), the host names and addresses
   * the application is reached at, key usage digitalSignature,
   * nonRepudiation, keyEncipherment, dataEncipherment, extended key usage
   * serverAuth and clientAuth. `publicKey`: a checked request's, or the SPKI
   * DER of a key the gateway holds.
   */
  async issueOpcuaApplication(o: {
    commonName: string
    applicationUri: string
    uris?: string[]
    hosts: string[]
    publicKey: unknown
    lifetimeS: number
    nowS: number
  }): Promise<IssuedCertificate> {
    const m = await x509()
    const publicKey = Buffer.isBuffer(o.publicKey) ? new m.PublicKey(o.publicKey) : (o.publicKey as InstanceType<X509Lib['PublicKey']>)
    const uris = [...new Set([o.applicationUri, ...(o.uris ?? [])])]
    const pem = await this.#issueLeaf({
      commonName: o.commonName,
      organization: 'edgewarden',
      publicKey,
      lifetimeS: o.lifetimeS,
      nowS: o.nowS,
      keyUsage: m.KeyUsageFlags.digitalSignature | m.KeyUsageFlags.nonRepudiation | m.KeyUsageFlags.keyEncipherment | m.KeyUsageFlags.dataEncipherment,
      extendedKeyUsage: [m.ExtendedKeyUsage.serverAuth, m.ExtendedKeyUsage.clientAuth],
      sans: [...uris.map((value) => ({ type: 'url' as const, value })), ...hostNames([...new Set(o.hosts)])],
    })
    return { ...certificateFacts(new X509Certificate(pem)), pem }
  }

  /** The gateway's own TLS server certificate (the mqtts listener, EST), with a new P-256 key. `sans`: DNS names and IP addresses. */
  async issueServer(o: { sans: string[]; lifetimeS: number; nowS: number; commonName: string }): Promise<{ certPem: string; keyPem: string; facts: Omit<IssuedCertificate, 'pem'> }> {
    const m = await x509()
    const keys = (await webcrypto.subtle.generateKey(ECDSA, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair
    const names = hostNames(o.sans)
    const certPem = await this.#issueLeaf({
      commonName: o.commonName,
      publicKey: keys.publicKey,
      lifetimeS: o.lifetimeS,
      nowS: o.nowS,
      keyUsage: m.KeyUsageFlags.digitalSignature | m.KeyUsageFlags.keyAgreement,
      extendedKeyUsage: m.ExtendedKeyUsage.serverAuth,
      sans: names,
    })
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey))
    const keyPem = pemOf(pkcs8.toString('base64'), 'PRIVATE KEY')
    return { certPem, keyPem, facts: certificateFacts(new X509Certificate(certPem)) }
  }

  /** One end-entity certificate signed by the site CA: not a CA, critical key usage, the given extended key usages and names. PEM. */
  async #issueLeaf(o: {
    commonName: string
    organization?: string
    publicKey: InstanceType<X509Lib['PublicKey']> | webcrypto.CryptoKey
    lifetimeS: number
    nowS: number
    keyUsage: number
    extendedKeyUsage: string | string[]
    sans: { type: 'url' | 'dns' | 'ip'; value: string }[]
  }): Promise<string> {
    const m = await x509()
    const issuer = await this.#issuerCert()
    const cert = await m.X509CertificateGenerator.create({
      serialNumber: serialHex(),
      subject: `CN=${o.commonName}${o.organization ? `, O=${o.organization}` : ''}`,
      issuer: issuer.subject,
      notBefore: date(o.nowS - NOT_BEFORE_SLACK_S),
      notAfter: date(o.nowS + o.lifetimeS),
      signingAlgorithm: ECDSA,
      publicKey: o.publicKey,
      signingKey: await this.#signer(),
      extensions: [
        new m.BasicConstraintsExtension(false, undefined, true),
        new m.KeyUsagesExtension(o.keyUsage, true),
        new m.ExtendedKeyUsageExtension(Array.isArray(o.extendedKeyUsage) ? o.extendedKeyUsage : [o.extendedKeyUsage]),
        ...(o.sans.length ? [new m.SubjectAlternativeNameExtension(o.sans)] : []),
        await m.AuthorityKeyIdentifierExtension.create(issuer),
      ],
    })
    return cert.toString('pem') + '\n'
  }

  /** The signing CA as @peculiar/x509 sees it. */
  async #issuerCert(): Promise<InstanceType<X509Lib['X509Certificate']>> {
    const m = await x509()
    return new m.X509Certificate(this.chainPem[0]!)
  }

  /** For the CRL: the issuer's name, extension and signer. */
  async crlSigner(): Promise<{ issuer: InstanceType<X509Lib['X509Certificate']>; key: webcrypto.CryptoKey }> {
    return { issuer: await this.#issuerCert(), key: await this.#signer() }
  }

  /** the CAs devices may chain to and their keys, parsed on first use (admission asks on every certificate connect) */
  #trusted: { cert: X509Certificate; key: KeyObject }[] | null = null
  /**
   * Certificates found issued already, by the SHA-256 of their DER: a device
   * reconnects with the same certificate, and each check is a signature
   * check (~60 µs of a connect's CPU). The CAs trusted never change for this
   * object (trustPem is frozen), so neither does the answer. Only a yes is
   * kept: a yes takes a certificate the CAs signed, which a stranger cannot
   * make, while anyone can present a new self-signed one on every connect.
   * Bounded: the oldest goes first.
   */
  readonly #issued = new BoundedMap<string, true>(ISSUED_MEMO_MAX)

  /** Whether `cert` was issued by one of the CAs devices may chain to (its signature checks). */
  issued(cert: X509Certificate): boolean {
    const fingerprint = cert.fingerprint256
    if (this.#issued.get(fingerprint)) return true
    this.#trusted ??= this.trustPem.map((pem) => {
      const ca = new X509Certificate(pem)
      return { cert: ca, key: ca.publicKey }
    })
    if (!this.#trusted.some((ca) => cert.checkIssued(ca.cert) && cert.verify(ca.key))) return false
    this.#issued.set(fingerprint, true)
    return true
  }
}

/** SAN entries for host names and addresses: an IPv4 or IPv6 literal is an IP address, anything else a DNS name. */
function hostNames(hosts: readonly string[]): { type: 'dns' | 'ip'; value: string }[] {
  return hosts.map((s) => (/^[0-9.]+$/.test(s) || s.includes(':') ? { type: 'ip' as const, value: s } : { type: 'dns' as const, value: s }))
}

function readPemFile(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    throw new EdgewardenError('PKI', `cannot read ${what} ${path}: ${(err as Error).message}`, { cause: err })
  }
}

/** The CA certificate and key belong together, the key is P-256, and the certificate is a CA valid now. */
function checkCaPair(certPem: string, key: KeyObject, file: string, nowS: number): void {
  const cert = new X509Certificate(certPem)
  if (!cert.ca) throw new EdgewardenError('PKI', `${file}: the certificate is not a CA certificate (basicConstraints CA:TRUE)`)
  const pub = createPublicKey(key)
  if (!cert.publicKey.equals(pub)) throw new EdgewardenError('PKI', `${file}: the CA key does not belong to the CA certificate`)
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new EdgewardenError('PKI', `${file}: the CA key must be ECDSA P-256 (is ${key.asymmetricKeyType ?? 'unknown'} ${key.asymmetricKeyDetails?.namedCurve ?? ''})`)
  }
  if (Date.parse(cert.validTo) / 1000 <= nowS) throw new EdgewardenError('PKI', `${file}: the CA certificate expired on ${cert.validTo}`)
}

/**
 * A PKCS#10 request (DER) parsed, its key judged by `acceptKey` (which
 * throws CSR_INVALID to refuse it), then its signature checked: the proof
 * that the requester holds the key. Its SAN URIs beside it.
 */
async function checkedCsr(der: Uint8Array, acceptKey: (csr: InstanceType<X509Lib['Pkcs10CertificateRequest']>) => void): Promise<{ csr: InstanceType<X509Lib['Pkcs10CertificateRequest']>; sanUris: string[] }> {
  const m = await x509()
  let csr: InstanceType<X509Lib['Pkcs10CertificateRequest']>
  try {
    csr = new m.Pkcs10CertificateRequest(Buffer.from(der))
  } catch (err) {
    throw new EdgewardenError('CSR_INVALID', `not a PKCS#10 certificate request: ${(err as Error).message}`, { cause: err })
  }
  acceptKey(csr)
  let ok = false
  try {
    ok = await csr.verify()
  } catch {}
  if (!ok) throw new EdgewardenError('CSR_INVALID', 'the request is not signed by the key it carries (no proof of possession)')
  const san = csr.extensions.find((e): e is InstanceType<X509Lib['SubjectAlternativeNameExtension']> => e instanceof m.SubjectAlternativeNameExtension)
  return { csr, sanUris: san?.names.items.filter((n) => n.type === 'url').map((n) => n.value) ?? [] }
}
