// The HTTP endpoint (--http-port): Prometheus /metrics, /healthz, /readyz,
// the status page and its /api/status, a page per device (/devices/<id>) and
// its /api/devices/<id>, the CRL and CA chain of the site PKI
// (/pki/crl, /pki/ca). Read-only: GET (and HEAD) only,
// everything else 405. Bound to 127.0.0.1 by default; on a loopback address
// it also refuses Host names other than localhost and loopback literals, so a
// web page the operator opens cannot reach it through DNS rebinding.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Registry } from 'prom-client'
import type { Gateway } from '../gateway.ts'
import { pkiResource } from '../pki/est.ts'
import type { SitePki } from '../pki/site-pki.ts'
import type { Logger } from './logger.ts'
import { parseStatusQuery, STATUS_PAGE_CSP, STATUS_PAGE_HTML, statusSnapshot, type StatusSources } from './status-page.ts'
import { DEVICE_PAGE_HTML, deviceSnapshot } from './device-page.ts'

export type Readiness = 'starting' | 'ready' | 'stopping'

export interface HttpEndpoint {
  host: string
  port: number
  /** /readyz answers 200 only in `ready` */
  setReadiness(r: Readiness): void
  close(): Promise<void>
}

export interface HttpEndpointOptions extends StatusSources {
  host: string
  port: number
  metrics: Registry
  log: Logger
  /** PROTOCOL §9: /pki/crl and /pki/ca */
  pki?: SitePki
}

const COMMON_HEADERS = {
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cross-origin-resource-policy': 'same-origin',
}

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '[::1]'])
const isLoopbackAddress = (host: string): boolean => host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host)

/** The Host header's name without its port; loopback IPv4 literals of the whole 127/8 count as loopback. */
function hostAllowed(header: string | undefined): boolean {
  if (!header) return false
  const name = header.startsWith('[') ? header.slice(0, header.indexOf(']') + 1) : header.split(':')[0]!
  return LOOPBACK_NAMES.has(name.toLowerCase()) || /^127\.\d+\.\d+\.\d+$/.test(name)
}

function send(res: ServerResponse, status: number, type: string, body: string | Buffer, extra: Record<string, string> = {}): void {
  res.writeHead(status, { ...COMMON_HEADERS, 'content-type': type, 'content-length': Buffer.byteLength(body), ...extra })
  res.end(body)
}

const sendJson = (res: ServerResponse, status: number, body: unknown): void => send(res, status, 'application/json; charset=utf-8', JSON.stringify(body))

/** A page (the status page, a device page): its CSP, and never in a frame. */
const sendPage = (res: ServerResponse, html: string): void => send(res, 200, 'text/html; charset=utf-8', html, { 'content-security-policy': STATUS_PAGE_CSP, 'x-frame-options': 'DENY' })

export async function startHttpEndpoint(gw: Gateway, opts: HttpEndpointOptions): Promise<HttpEndpoint> {
  let readiness: Readiness = 'starting'
  const checkHost = isLoopbackAddress(opts.host)
  const { log } = opts

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (checkHost && !hostAllowed(req.headers.host)) return sendJson(res, 403, { error: 'Host must be localhost or a loopback address' })
    if (req.method !== 'GET' && req.method !== 'HEAD') return sendJson(res, 405, { error: `${req.method} is not allowed: this endpoint is read-only` })
    const url = new URL(req.url ?? '/', 'http://localhost')
    const path = url.pathname
    // a page per device, and its data
    const device = /^\/(api\/)?devices\/([^/]+)$/.exec(path)
    if (device) {
      let id: string
      try {
        id = decodeURIComponent(device[2]!)
      } catch {
        return sendJson(res, 400, { error: 'malformed device id' })
      }
      if (!device[1]) return sendPage(res, DEVICE_PAGE_HTML)
      const after = Number(url.searchParams.get('after') ?? '0')
      const snap = await deviceSnapshot(opts, id, Number.isSafeInteger(after) && after > 0 ? after : 0)
      return snap ? sendJson(res, 200, snap) : sendJson(res, 404, { error: `no device ${id}` })
    }
    switch (path) {
      case '/metrics': {
        const body = await opts.metrics.metrics()
        return send(res, 200, opts.metrics.contentType, body)
      }
      case '/healthz': {
        // Alive, and the store can still be read and written.
        const storeOpen = gw.store.db.status === 'open'
        return sendJson(res, storeOpen ? 200 : 503, { status: storeOpen ? 'ok' : 'store not open', store: gw.store.db.status })
      }
      case '/readyz': {
        // Ready once every part started and until a stop begins. A site runs
        // on without its uplink (decisions are local), so the uplink is
        // reported here but never makes the agent not ready.
        const uplink = !opts.uplink ? 'not configured' : opts.uplink.connected ? 'connected' : 'down'
        const ready = readiness === 'ready' && gw.store.db.status === 'open'
        return sendJson(res, ready ? 200 : 503, { status: ready ? 'ready' : readiness === 'ready' ? 'store not open' : readiness, uplink })
      }
      case '/pki/crl':
      case '/pki/ca': {
        const doc = opts.pki ? pkiResource(opts.pki, path) : null
        if (!doc) return sendJson(res, 404, { error: `no page ${path}` })
        return send(res, doc.status, doc.type, doc.body)
      }
      case '/api/status':
        return sendJson(res, 200, await statusSnapshot(opts, parseStatusQuery(url.searchParams)))
      case '/':
      case '/index.html':
        return sendPage(res, STATUS_PAGE_HTML)
      default:
        return sendJson(res, 404, { error: `no page ${path}` })
    }
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      log.error({ err, url: req.url }, 'HTTP request failed')
      if (!res.headersSent) sendJson(res, 500, { error: 'internal error' })
      else res.destroy()
    })
  })
  server.requestTimeout = 10_000
  server.headersTimeout = 5_000
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`HTTP endpoint cannot listen on ${opts.host}:${opts.port}: ${err.message}`, { cause: err })))
    server.listen(opts.port, opts.host, () => {
      server.removeAllListeners('error')
      server.on('error', (err) => log.error({ err }, 'HTTP endpoint error'))
      resolve()
    })
  })
  const addr = server.address() as AddressInfo
  return {
    host: addr.address,
    port: addr.port,
    setReadiness(r) {
      readiness = r
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}
