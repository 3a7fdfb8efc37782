// An EST client (RFC 7030) for the gateway's EST server (PROTOCOL §9):
// /cacerts, /simpleenroll authenticated by HTTP Basic with the device id and
// its one-time bootstrap secret, /simplereenroll authenticated by the
// device's current client certificate. Requests are base64 DER PKCS#10
// (application/pkcs10); answers are base64 PKCS#7 certs-only
// (application/pkcs7-mime). On node:https: the one part of the certificate
// device that needs Node (a TLS client certificate); cert-device.ts takes any
// EstEnrollment.
import { request } from 'node:https'
import type { EstEnrollment, TlsCredentials } from './cert-device.ts'
import { certsFromPkcs7 } from './x509-keys.ts'

/** Stable codes; messages may change. */
export type EstErrorCode =
  | 'EST_UNAUTHORIZED' // 401: missing or bad authentication
  | 'EST_BAD_REQUEST' // 400: the server refused the request (a bad CSR)
  | 'EST_FORBIDDEN' // 403: the device's state forbids it
  | 'EST_RETRY_LATER' // 202 (RFC 7030 §4.2.3): not issued yet; retryAfterS says when to ask again
  | 'EST_HTTP' // any other status
  | 'EST_BAD_RESPONSE' // 200 that is not a certs-only PKCS#7
  | 'EST_UNREACHABLE' // no answer (connection, TLS, timeout)

export class EstError extends Error {
  readonly code: EstErrorCode
  readonly status: number | undefined
  readonly retryAfterS: number | undefined
  constructor(code: EstErrorCode, message: string, o: { status?: number; retryAfterS?: number; cause?: unknown } = {}) {
    super(message, o.cause === undefined ? undefined : { cause: o.cause })
    this.name = 'EstError'
    this.code = code
    this.status = o.status
    this.retryAfterS = o.retryAfterS
  }
}

export interface EstClientOptions {
  /** https://host:port of the EST server (the path prefix /.well-known/est is added) */
  url: string
  /** PEM of the CA(s) that sign the server's certificate (the site CA chain) */
  ca: string | string[]
  /** the name to check the server certificate against, when the url's host is not it */
  servername?: string
  /** default 15 s */
  timeoutMs?: number
}

/** Answers are a few certificates: anything much larger is not an EST answer. */
const MAX_ANSWER_BYTES = 256 * 1024

export class EstClient implements EstEnrollment {
  readonly #base: URL
  readonly #o: EstClientOptions

  constructor(o: EstClientOptions) {
    let url: URL
    try {
      url = new URL(o.url)
    } catch {
      throw new TypeError(`EST url ${JSON.stringify(o.url)} is not a URL`)
    }
    if (url.protocol !== 'https:') throw new TypeError('EST runs over HTTPS (RFC 7030 §3.2.1): the url must be https://')
    if (typeof o.ca !== 'string' && !(Array.isArray(o.ca) && o.ca.every((c) => typeof c === 'string'))) throw new TypeError('ca must be PEM')
    this.#base = url
    this.#o = o
  }

  /** RFC 7030 §4.1: the CA certificates, PEM. */
  async cacerts(): Promise<string[]> {
    return this.#certs(await this.#call('GET', 'cacerts', null, {}))
  }

  /** RFC 7030 §4.2.1, authenticated by HTTP Basic with the device id and its bootstrap secret (PROTOCOL §9). */
  async simpleEnroll(csrDer: Uint8Array, auth: { id: string; secret: string }): Promise<string[]> {
    if (typeof auth?.id !== 'string' || typeof auth.secret !== 'string') throw new TypeError('auth must be { id, secret }')
    // RFC 7617: user-id may not contain a colon; ids may (PROTOCOL §1 allows `:`), so the server splits at the first one
    const basic = Buffer.from(`${auth.id}:${auth.secret}`, 'utf8').toString('base64')
    return this.#certs(await this.#call('POST', 'simpleenroll', csrBody(csrDer), { authorization: `Basic ${basic}` }))
  }

  /** RFC 7030 §4.2.2, authenticated by the device's current certificate (TLS client authentication). */
  async simpleReenroll(csrDer: Uint8Array, client: TlsCredentials): Promise<string[]> {
    if (typeof client?.key !== 'string' || typeof client.cert !== 'string') throw new TypeError('client must be { key, cert } PEM')
    return this.#certs(await this.#call('POST', 'simplereenroll', csrBody(csrDer), {}, client))
  }

  #certs(a: { status: number; type: string; body: Buffer }): string[] {
    if (!/^application\/pkcs7-mime\b/i.test(a.type)) throw new EstError('EST_BAD_RESPONSE', `answer is ${a.type || 'untyped'}, not application/pkcs7-mime`, { status: a.status })
    // RFC 7030 §4.1.3 / RFC 8951: base64, line breaks allowed
    const text = a.body.toString('latin1').replace(/\s+/g, '')
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(text)) throw new EstError('EST_BAD_RESPONSE', 'answer is not base64')
    try {
      const certs = certsFromPkcs7(new Uint8Array(Buffer.from(text, 'base64')))
      if (certs.length === 0) throw new TypeError('no certificate in it')
      return certs
    } catch (err) {
      throw new EstError('EST_BAD_RESPONSE', `answer is not a certs-only PKCS#7: ${(err as Error).message}`, { cause: err })
    }
  }

  #call(method: 'GET' | 'POST', op: string, body: string | null, headers: Record<string, string>, client?: TlsCredentials): Promise<{ status: number; type: string; body: Buffer }> {
    const url = new URL(`${this.#base.pathname.replace(/\/$/, '')}/.well-known/est/${op}`, this.#base)
    const timeoutMs = this.#o.timeoutMs ?? 15_000
    return new Promise((resolve, reject) => {
      const req = request(
        url,
        {
          method,
          ca: this.#o.ca,
          ...(this.#o.servername ? { servername: this.#o.servername } : {}),
          ...(client ? { key: client.key, cert: client.cert } : {}),
          // a client certificate must not ride on a pooled connection made without it (or with an older one)
          agent: false,
          headers: {
            ...headers,
            ...(body !== null
              ? { 'content-type': 'application/pkcs10', 'content-transfer-encoding': 'base64', 'content-length': String(Buffer.byteLength(body)) }
              : {}),
            accept: 'application/pkcs7-mime',
          },
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = []
          let size = 0
          res.on('data', (c: Buffer) => {
            size += c.length
            if (size > MAX_ANSWER_BYTES) req.destroy(new EstError('EST_BAD_RESPONSE', `answer over ${MAX_ANSWER_BYTES} bytes`))
            else chunks.push(c)
          })
          res.on('error', (err) => reject(unreachable(err)))
          res.on('end', () => {
            const status = res.statusCode ?? 0
            const a = { status, type: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks) }
            if (status === 200) return resolve(a)
            const detail = a.body.toString('utf8').slice(0, 200).trim()
            const says = detail ? `: ${detail}` : ''
            if (status === 202) {
              const retry = Number(res.headers['retry-after'])
              return reject(new EstError('EST_RETRY_LATER', `${op}: not issued yet, ask again later`, { status, ...(Number.isFinite(retry) ? { retryAfterS: retry } : {}) }))
            }
            const code: EstErrorCode = status === 401 ? 'EST_UNAUTHORIZED' : status === 400 ? 'EST_BAD_REQUEST' : status === 403 ? 'EST_FORBIDDEN' : 'EST_HTTP'
            reject(new EstError(code, `${op}: HTTP ${status}${says}`, { status }))
          })
        },
      )
      req.on('timeout', () => req.destroy(new EstError('EST_UNREACHABLE', `${op}: no answer within ${timeoutMs} ms`)))
      req.on('error', (err) => reject(unreachable(err)))
      req.end(body ?? undefined)
    })
  }
}

const unreachable = (err: Error): EstError => (err instanceof EstError ? err : new EstError('EST_UNREACHABLE', `EST server unreachable: ${err.message}`, { cause: err }))

/** RFC 7030 §4.2.1: the request's DER, base64, one line (RFC 8951 §3.2: a server ignores line breaks, but needs none). */
function csrBody(der: Uint8Array): string {
  if (!(der instanceof Uint8Array) || der.length < 16) throw new TypeError('csrDer must be the DER of a PKCS#10 request')
  return Buffer.from(der).toString('base64')
}
