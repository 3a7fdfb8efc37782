// The HTTP server of the API, the fleet page and /metrics.
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { CpError, isCpError } from '../runtime/errors.ts'
import type { Logger } from '../runtime/log.ts'
import { can, type Tokens } from './auth.ts'
import { compile, errorReply, hostAllowed, isLoopbackAddress, match, readBody, send, type Reply } from './http.ts'
import { apiRoutes, type ApiServices } from './routes.ts'

export interface ApiServer {
  host: string
  port: number
  close(): Promise<void>
}

export async function startApiServer(s: ApiServices & { tokens: Tokens; log: Logger }, o: { host: string; port: number }): Promise<ApiServer> {
  const routes = compile(apiRoutes(s))
  const checkHost = isLoopbackAddress(o.host)
  const log = s.log
  const server: Server = createServer((req, res) => {
    let routeName = 'unmatched'
    const handle = async (): Promise<Reply> => {
      if (checkHost && !hostAllowed(req.headers.host)) throw new CpError('CP_HOST', 'Host must be localhost or a loopback address')
      const url = new URL(req.url ?? '/', 'http://localhost')
      const found = match(routes, req.method ?? 'GET', url.pathname)
      if (!found) throw new CpError('CP_NOT_FOUND', `no route ${url.pathname}`)
      if ('allowed' in found) return { ...errorReply(new CpError('CP_METHOD', `${req.method} is not allowed on ${url.pathname}`)), headers: { allow: found.allowed.join(', ') } }
      const { route, params } = found
      routeName = route.name
      const principal = route.scope === null ? null : await s.tokens.authenticate(req.headers.authorization)
      if (principal && route.scope && !can(principal, route.scope)) throw new CpError('CP_FORBIDDEN', `this needs a token with the ${route.scope} scope; ${principal.name} has ${[...principal.scopes].join(', ')}`)
      return route.handle({ req, params, query: url.searchParams, principal, body: () => readBody(req) })
    }
    void handle()
      .catch((err: unknown): Reply => {
        if (isCpError(err)) return errorReply(err)
        log.error({ err, route: routeName }, 'request failed')
        return { status: 500, json: { error: { code: 'CP_INTERNAL', message: 'internal error (see the service log)' } } }
      })
      .then(async (reply) => {
        s.metrics.httpRequests.inc({ route: routeName, status: String(reply.status) })
        await send(res, reply)
      })
      .catch((err: unknown) => {
        log.warn({ err, route: routeName }, 'answering a request failed')
        res.destroy()
      })
  })
  server.headersTimeout = 20_000
  server.requestTimeout = 120_000
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new CpError('CP_CONFIG', err.code === 'EADDRINUSE' ? `HTTP port ${o.port} on ${o.host} is in use (--http-port)` : `cannot listen on ${o.host}:${o.port}: ${err.message}`)),
    )
    server.listen(o.port, o.host, () => resolve())
  })
  const addr = server.address() as AddressInfo
  return {
    host: o.host,
    port: addr.port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}
