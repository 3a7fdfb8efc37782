// The EST server (RFC 7030) of the site PKI (PROTOCOL §9), on its own HTTPS
// port: the CA certificates, a first enrollment authenticated by a device's
// one-time bootstrap secret (HTTP Basic), and re-enrollment authenticated by
// the device's own client certificate, also within renewGraceS after it
// expired. The gateway sets subject and SAN, whatever a request asks. The
// CRL and the CA chain are served here too (/pki/crl, /pki/ca), as on the
// HTTP endpoint. Every refusal is one status and one line of text: never a
// stack trace, never a secret in a log line.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { createServer, type Server } from 'node:https'
import type { AddressInfo } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { DeviceRecord } from '../devices/device.ts'
import type { Gateway } from '../gateway.ts'
import type { Logger } from '../observe/logger.ts'
import { EdgewardenError, isEdgewardenError } from '../runtime/errors.ts'
import { decideCertificate, type PeerCertificate } from '../trust/admission.ts'
import { rightsOf } from '../trust/rights.ts'
import { base64Lines, x509 } from './ca.ts'
import type { SitePki } from './site-pki.ts'

export const EST_PATH = '/.well-known/est'
/** A PKCS#10 request is well under 4 KiB; anything near this bound is not one. */
export const MAX_EST_BODY = 64 * 1024
const CERTS_ONLY = 'application/pkcs7-mime; smime-type=certs-only'
const BASIC_CHALLENGE = 'Basic realm="edgewarden EST", charset="UTF-8"'

export interface EstServer {
  host: string
  port: number
  close(): Promise<void>
}

export interface EstOptions {
  host: string
  port: number
  /** PEM server certificate (chain) and key */
  cert: string
  key: string
  log: Logger
}

/** A refusal: its status and the one line the client reads. */
class Refusal {
  constructor(
    readonly status: number,
    readonly message: string,
    /** why, for the log (may say more than the client is told) */
    readonly reason: string,
    readonly headers: Record<string, string> = {},
    readonly deviceId?: string,
  ) {}
}

const COMMON_HEADERS = { 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' }

/**
 * Certificates as a base64 PKCS#7 certs-only message (RFC 7030 §4.1.3,
 * §4.2.3), in lines of 64: `openssl base64 -d` reads no longer lines.
 */
export async function pkcs7CertsOnly(pems: readonly string[]): Promise<string> {
  const m = await x509()
  const b64 = new m.X509Certificates(pems.map((p) => new m.X509Certificate(p))).export('base64')
  return base64Lines(b64)
}

/**
 * PROTOCOL §9 `/pki/crl` and `/pki/ca`, on the HTTP endpoint and the EST
 * port alike; null for any other path. The CA document is every CA a device
 * certificate of this site may chain to: the chain, and the previous CA
 * during a rollover.
 */
export function pkiResource(pki: SitePki, path: string): { status: number; type: string; body: string | Buffer } | null {
  if (path === '/pki/ca') return { status: 200, type: 'application/pem-certificate-chain', body: pki.ca.trustPem.join('') }
  if (path === '/pki/crl') {
    const crl = pki.crl.current
    // signed at start (SitePki.reconcile) before anything listens; absent only if that signing failed
    if (!crl) return { status: 503, type: 'text/plain; charset=utf-8', body: 'the CRL has not been signed yet\n' }
    return { status: 200, type: 'application/pkix-crl', body: crl.der }
  }
  return null
}

/** `Authorization: Basic base64(id:secret)` (RFC 7617), or null. */
function basicCredentials(header: string | undefined): { id: string; secret: string } | null {
  const m = /^Basic[ \t]+([A-Za-z0-9+/]+={0,2})[ \t]*$/i.exec(header ?? '')
  if (!m) return null
  const text = Buffer.from(m[1]!, 'base64').toString('utf8')
  const colon = text.indexOf(':')
  if (colon <= 0) return null
  return { id: text.slice(0, colon), secret: text.slice(colon + 1) }
}

/**
 * An oversize body up to this size is read to its end and thrown away before
 * the 413 goes out: a connection closed while the client is still sending
 * is reset, and a reset throws away the answer the client had not read yet
 * (curl then sees no status at all). A larger declared one is answered at
 * once and the connection closed; a chunked one that goes on past it is cut
 * (requestTimeout bounds a slow sender either way).
 */
const DRAIN_EST_BODY = 1 << 20

/** The body, at most MAX_EST_BODY bytes. */
async function readBody(req: IncomingMessage): Promise<Buffer> {
  const tooLarge = (): Refusal => new Refusal(413, `request body over ${MAX_EST_BODY} bytes`, 'body too large')
  const declared = Number(req.headers['content-length'])
  if (Number.isFinite(declared) && declared > MAX_EST_BODY) {
    if (declared <= DRAIN_EST_BODY) await drain(req, DRAIN_EST_BODY)
    throw tooLarge()
  }
  const chunks: Buffer[] = []
  let size = 0
  // not destroyed when the loop stops early: what is left is drained below
  for await (const c of req.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
    size += c.length
    if (size > MAX_EST_BODY) break
    chunks.push(c)
  }
  if (size > MAX_EST_BODY) {
    await drain(req, DRAIN_EST_BODY - size)
    throw tooLarge()
  }
  return Buffer.concat(chunks)
}

/** Read and discard the rest of a request body, at most `max` more bytes (past that the request is destroyed). */
async function drain(req: IncomingMessage, max: number): Promise<void> {
  let left = max
  for await (const c of req as AsyncIterable<Buffer>) {
    left -= c.length
    if (left < 0) return
  }
}

/**
 * RFC 7030 §4.2.1: the request is base64 DER PKCS#10 (`application/pkcs10`),
 * whitespace and line breaks tolerated; PEM armour too, as some clients send it.
 */
function csrOf(req: IncomingMessage, body: Buffer): Uint8Array {
  const type = req.headers['content-type']?.split(';')[0]!.trim().toLowerCase()
  if (type !== undefined && type !== '' && type !== 'application/pkcs10') {
    throw new Refusal(415, `Content-Type must be application/pkcs10 (base64 DER PKCS#10, RFC 7030 §4.2.1), not ${type}`, 'wrong content type')
  }
  let text = body.toString('latin1')
  const pem = /-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----([\s\S]*?)-----END (?:NEW )?CERTIFICATE REQUEST-----/.exec(text)
  if (pem) text = pem[1]!
  const b64 = text.replace(/\s+/g, '')
  if (b64.length === 0) throw new Refusal(400, 'the body is empty: it must be a base64 DER PKCS#10 certificate request', 'empty body')
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 === 1) throw new Refusal(400, 'the body is not base64: it must be a base64 DER PKCS#10 certificate request (RFC 7030 §4.2.1)', 'not base64')
  return Buffer.from(b64, 'base64')
}

/** The certificate of the gateway's TLS listeners (site broker, EST): tlsCert/tlsKey when configured, else one the site CA issues for tlsSan (PROTOCOL §9). */
export async function serverTlsMaterial(pki: SitePki, o: { tlsFiles: { certFile: string; keyFile: string } | null; tlsSans: string[] }): Promise<{ cert: string; key: string }> {
  if (!o.tlsFiles) return pki.serverCertificate(o.tlsSans)
  const read = (file: string, option: string): string => {
    try {
      return readFileSync(file, 'utf8')
    } catch (err) {
      throw new EdgewardenError('PKI', `cannot read ${option} ${file}: ${(err as Error).message}`, { cause: err })
    }
  }
  return { cert: read(o.tlsFiles.certFile, 'tlsCert'), key: read(o.tlsFiles.keyFile, 'tlsKey') }
}

const sha256 = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest()

export async function startEstServer(gw: Gateway, pki: SitePki, opts: EstOptions): Promise<EstServer> {
  const { log } = opts
  // Compared against when no enrollment awaits under the id, so an unknown id costs what a wrong secret does.
  const decoy = randomBytes(32)

  /**
   * The device an HTTP Basic id and bootstrap secret authenticate (RFC 7030
   * §3.2.3, PROTOCOL §9), or the refusal. One answer for an unknown id, a
   * device without an EST enrollment and a wrong secret: an unauthenticated
   * client learns nothing of which ids exist.
   */
  function bootstrapDevice(req: IncomingMessage): DeviceRecord {
    const creds = basicCredentials(req.headers.authorization)
    if (!creds) throw new Refusal(401, 'authentication required: HTTP Basic with the device id and its bootstrap secret', 'no Basic credentials', { 'www-authenticate': BASIC_CHALLENGE })
    const record = gw.registry.get(creds.id)
    const x = record?.spec.x509
    const want = record?.bootstrap && x && 'bootstrapSecretSha256' in x ? record.bootstrap.secretSha256 : undefined
    const ref = want !== undefined && /^[0-9a-f]{64}$/.test(want) ? Buffer.from(want, 'hex') : decoy
    const match = timingSafeEqual(sha256(creds.secret), ref) && want !== undefined && creds.secret.length > 0
    if (!match || !record) throw new Refusal(401, 'the device id and bootstrap secret do not match an enrollment awaiting EST', 'bad bootstrap credentials', { 'www-authenticate': BASIC_CHALLENGE }, creds.id)
    return record
  }

  /** What the record says of an authenticated bootstrap now: null when it may enroll. */
  function bootstrapRefusal(record: DeviceRecord): Refusal | null {
    const id = record.spec.id
    if (record.bootstrap?.spentAt !== undefined) {
      return new Refusal(401, 'this bootstrap secret was already used: it is good for one enrollment (renew with simplereenroll and the certificate it got)', 'bootstrap secret spent', { 'www-authenticate': BASIC_CHALLENGE }, id)
    }
    // The secret is the device's credential until it enrolls: it lapses with credentialExpiresAt, as any credential does (PROTOCOL §4).
    const rights = rightsOf(gw, record, gw.nowS())
    if (!rights.ok && rights.reason === 'credential-expired') return new Refusal(401, `the bootstrap secret of ${id} expired; enroll the device again`, rights.detail, { 'www-authenticate': BASIC_CHALLENGE }, id)
    if (!rights.ok || rights.rights !== 'full') return new Refusal(403, `device ${id} is ${record.state}: it may not enroll`, `state ${record.state}`, {}, id)
    return null
  }

  /** The client certificate of the connection, as admission judges it (the TLS stack checked the chain, not the rest). */
  function peerOf(req: IncomingMessage): PeerCertificate | null {
    const sock = req.socket as TLSSocket
    const cert = typeof sock.getPeerX509Certificate === 'function' ? sock.getPeerX509Certificate() : undefined
    if (!cert) return null
    const err = sock.authorizationError as unknown
    const chainError = sock.authorized || err === undefined || err === null ? null : typeof err === 'string' ? err : ((err as { code?: string }).code ?? String(err))
    return { ...pki.inspect(cert), chainError }
  }

  /**
   * RFC 7030 §4.2.2, PROTOCOL §4/§9: the device a re-enrollment's client
   * certificate authenticates (its current one, or the one it replaces during
   * the overlap; renew-only rights, within renewGraceS after it expired, are
   * enough), or the refusal.
   */
  function certificateDevice(req: IncomingMessage): DeviceRecord {
    const p = peerOf(req)
    if (!p) throw new Refusal(401, 'simplereenroll is authenticated by the device certificate: present it as the TLS client certificate', 'no client certificate')
    return judgeCertificate(p)
  }

  function judgeCertificate(peer: PeerCertificate): DeviceRecord {
    const id = peer.deviceId
    if (id === null) throw new Refusal(401, 'the client certificate names no device (SAN URI urn:edgewarden:device:<id>)', 'no device id in the SAN')
    const d = decideCertificate(gw, id, undefined, peer, gw.nowS())
    const record = gw.registry.get(id)
    // A certificate of the device, refused because of what the device is now: the state forbids it, whatever the certificate's own flags say.
    const own = record?.certificates?.some((c) => c.sha256 === peer.sha256) ?? false
    if (record && own && record.state !== 'active') throw new Refusal(403, `device ${id} is ${record.state}: it may not re-enroll`, `state ${record.state}`, {}, id)
    if (!d.ok) {
      const status = d.reason === 'quarantined' || d.reason === 'revoked' || d.reason === 'retired' ? 403 : 401
      throw new Refusal(status, status === 403 ? `device ${id} is ${d.reason}: it may not re-enroll` : `the client certificate is not accepted: ${d.detail}`, d.reason, {}, id)
    }
    if (d.rights !== 'full' && d.rights !== 'renew-only') throw new Refusal(403, `device ${id} is ${record?.state ?? 'unknown'}: it may not re-enroll`, `rights ${d.rights}`, {}, id)
    return record!
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'https://est.invalid').pathname
    const route = ROUTES.get(path)
    if (!route) {
      const pkiDoc = pkiResource(pki, path)
      if (pkiDoc) {
        if (req.method !== 'GET' && req.method !== 'HEAD') throw new Refusal(405, `${req.method} is not allowed on ${path}`, 'method', { allow: 'GET, HEAD' })
        return send(res, pkiDoc.status, pkiDoc.type, pkiDoc.body)
      }
      throw new Refusal(404, `no resource ${path}`, 'no route')
    }
    if (!route.methods.includes(req.method ?? '')) throw new Refusal(405, `${req.method} is not allowed on ${path}`, 'method', { allow: route.methods.join(', ') })
    switch (route.name) {
      case 'cacerts':
        // RFC 7030 §4.1.3: every CA devices of this site chain to (the previous one too during a rollover)
        return send(res, 200, CERTS_ONLY, await pkcs7CertsOnly(pki.ca.trustPem), { 'content-transfer-encoding': 'base64' })
      case 'csrattrs':
        // RFC 7030 §4.5.2: no attributes asked for (the gateway sets subject and SAN itself, PROTOCOL §9)
        res.writeHead(204, COMMON_HEADERS)
        res.end()
        return
      case 'simpleenroll': {
        const body = await readBody(req)
        const record = bootstrapDevice(req)
        const early = bootstrapRefusal(record)
        if (early) throw early
        const csr = csrOf(req, body)
        const id = record.spec.id
        const issued = await issue(id, csr, record)
        // Judged again after the signing, with nothing awaited until install has claimed the secret: a concurrent use of it, or a revoke, wins.
        const now = gw.registry.get(id)
        if (!now || now.bootstrap?.secretSha256 !== record.bootstrap!.secretSha256) throw new Refusal(401, 'the device id and bootstrap secret do not match an enrollment awaiting EST', 'enrollment replaced while issuing', { 'www-authenticate': BASIC_CHALLENGE }, id)
        const late = bootstrapRefusal(now)
        if (late) throw late
        const installed = await pki.install(id, issued, 'est-enroll')
        log.info({ deviceId: id, serial: installed.serial, notAfter: installed.notAfter, remote: req.socket.remoteAddress }, 'EST enrollment: certificate issued')
        return send(res, 200, CERTS_ONLY, await pkcs7CertsOnly([issued.pem]), { 'content-transfer-encoding': 'base64' })
      }
      case 'simplereenroll': {
        const body = await readBody(req)
        const record = certificateDevice(req)
        const csr = csrOf(req, body)
        const id = record.spec.id
        const issued = await issue(id, csr, record)
        // The certificate judged again, synchronously before install: a revoke or a renewal that landed while signing wins.
        const p = peerOf(req)
        if (!p) throw new Refusal(401, 'the TLS connection no longer has a client certificate', 'certificate gone', {}, id)
        judgeCertificate(p)
        const installed = await pki.install(id, issued, 'est-reenroll')
        log.info({ deviceId: id, serial: installed.serial, replaces: p.serial, notAfter: installed.notAfter, remote: req.socket.remoteAddress }, 'EST re-enrollment: certificate issued')
        return send(res, 200, CERTS_ONLY, await pkcs7CertsOnly([issued.pem]), { 'content-transfer-encoding': 'base64' })
      }
    }
  }

  /** PROTOCOL §9: the site CA signs for the authenticated id; a request it cannot use is 400. */
  async function issue(id: string, csr: Uint8Array, record: DeviceRecord) {
    try {
      return (await pki.issue(id, csr, record.spec.criticality)).cert
    } catch (err) {
      if (isEdgewardenError(err, 'CSR_INVALID')) throw new Refusal(400, err.message, 'bad CSR', {}, id)
      throw err
    }
  }

  const server: Server = createServer(
    {
      cert: opts.cert,
      key: opts.key,
      // RFC 7030 §3.3.2: a client certificate is asked for, not required (cacerts and simpleenroll go without one)
      ca: pki.trustPem,
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
      handshakeTimeout: 10_000,
    },
    (req, res) => {
      handle(req, res).catch((err: unknown) => {
        if (err instanceof Refusal) {
          log.info({ path: req.url, status: err.status, reason: err.reason, deviceId: err.deviceId, remote: req.socket.remoteAddress }, 'EST request refused')
          if (res.headersSent) return void res.destroy()
          // the body may be unread (refused before it was): do not keep a connection whose next request would start mid-body
          return send(res, err.status, 'text/plain; charset=utf-8', `${err.message}\n`, { ...err.headers, connection: 'close' })
        }
        log.error({ err, path: req.url, remote: req.socket.remoteAddress }, 'EST request failed')
        if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n', { connection: 'close' })
        else res.destroy()
      })
    },
  )
  server.requestTimeout = 10_000
  server.headersTimeout = 5_000
  server.keepAliveTimeout = 5_000
  server.maxConnections = 512
  // A handshake that fails (no shared cipher, garbage) is the client's problem, logged at debug only.
  server.on('tlsClientError', (err) => log.debug({ err: err.message }, 'EST TLS handshake failed'))
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`EST server cannot listen on ${opts.host}:${opts.port}: ${err.message}`, { cause: err })))
    server.listen(opts.port, opts.host, () => {
      server.removeAllListeners('error')
      server.on('error', (err) => log.error({ err }, 'EST server error'))
      resolve()
    })
  })
  const addr = server.address() as AddressInfo
  log.info({ host: addr.address, port: addr.port }, 'EST server listening')
  return {
    host: addr.address,
    port: addr.port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}

type RouteName = 'cacerts' | 'csrattrs' | 'simpleenroll' | 'simplereenroll'
/** RFC 7030 §3.2.2 operation paths (no CA label: the gateway has one CA). */
const ROUTES = new Map<string, { name: RouteName; methods: string[] }>([
  [`${EST_PATH}/cacerts`, { name: 'cacerts', methods: ['GET', 'HEAD'] }],
  [`${EST_PATH}/csrattrs`, { name: 'csrattrs', methods: ['GET', 'HEAD'] }],
  [`${EST_PATH}/simpleenroll`, { name: 'simpleenroll', methods: ['POST'] }],
  [`${EST_PATH}/simplereenroll`, { name: 'simplereenroll', methods: ['POST'] }],
])

function send(res: ServerResponse, status: number, type: string, body: string | Buffer, extra: Record<string, string> = {}): void {
  res.writeHead(status, { ...COMMON_HEADERS, 'content-type': type, 'content-length': Buffer.byteLength(body), ...extra })
  res.end(body)
}
