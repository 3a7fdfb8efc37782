// The HTTP plumbing of the API: a small router with {param} paths, JSON
// bodies at most 1 MiB, one error shape {"error":{"code","message"}} (codes
// from runtime/errors.ts), and the headers every answer carries. On a
// loopback listener, a Host header naming anything but loopback is refused:
// a web page the operator opens cannot reach the API through DNS rebinding.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { CpError } from '../runtime/errors.ts'
import type { Principal, Scope } from './auth.ts'

export const MAX_BODY = 1024 * 1024

export const COMMON_HEADERS: Record<string, string> = {
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cross-origin-resource-policy': 'same-origin',
}

export type Reply =
  | { status: number; json: unknown; headers?: Record<string, string> }
  | { status: number; text: string; type: string; headers?: Record<string, string> }
  | { status: number; stream: AsyncIterable<string>; type: string; headers?: Record<string, string> }

export interface Ctx {
  req: IncomingMessage
  params: Record<string, string>
  query: URLSearchParams
  principal: Principal | null
  body: () => Promise<unknown>
}

export interface Route {
  method: 'GET' | 'POST' | 'DELETE'
  path: string
  /** null: no token needed */
  scope: Scope | null
  /** the route as metrics and logs name it */
  name: string
  handle(ctx: Ctx): Promise<Reply>
}

export interface CompiledRoute extends Route {
  re: RegExp
  keys: string[]
}

export function compile(routes: readonly Route[]): CompiledRoute[] {
  return routes.map((r) => {
    const keys: string[] = []
    const re = new RegExp(
      `^${r.path
        .split('/')
        .map((part) => {
          const m = /^\{(\w+)\}$/.exec(part)
          if (!m) return part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
          keys.push(m[1]!)
          return '([^/]+)'
        })
        .join('/')}$`,
    )
    return { ...r, re, keys }
  })
}

export function match(routes: readonly CompiledRoute[], method: string, path: string): { route: CompiledRoute; params: Record<string, string> } | { allowed: string[] } | null {
  const allowed: string[] = []
  for (const r of routes) {
    const m = r.re.exec(path)
    if (!m) continue
    if (r.method !== method) {
      allowed.push(r.method)
      continue
    }
    const params: Record<string, string> = {}
    let bad = false
    r.keys.forEach((k, i) => {
      try {
        params[k] = decodeURIComponent(m[i + 1]!)
      } catch {
        bad = true
      }
    })
    if (bad) throw new CpError('CP_BAD_REQUEST', 'a path parameter is not valid percent-encoding')
    return { route: r, params }
  }
  return allowed.length ? { allowed } : null
}

export function readBody(req: IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const type = req.headers['content-type'] ?? ''
    if (req.headers['content-length'] === '0' || (!req.headers['content-length'] && !req.headers['transfer-encoding'])) return resolve(undefined)
    if (!/^application\/json\b/i.test(type)) return reject(new CpError('CP_BAD_REQUEST', 'the body must be application/json'))
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (c: Buffer) => {
      size += c.length
      if (size > MAX_BODY) {
        reject(new CpError('CP_TOO_LARGE', `the body is over ${MAX_BODY} bytes`))
        req.destroy()
        return
      }
      chunks.push(c)
    })
    req.on('error', reject)
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8')
      try {
        resolve(JSON.parse(text))
      } catch {
        reject(new CpError('CP_BAD_REQUEST', 'the body is not valid JSON'))
      }
    })
  })
}

export async function send(res: ServerResponse, reply: Reply): Promise<void> {
  const headers = { ...COMMON_HEADERS, ...reply.headers }
  if ('json' in reply) {
    const body = JSON.stringify(reply.json)
    res.writeHead(reply.status, { ...headers, 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) })
    res.end(body)
    return
  }
  if ('text' in reply) {
    res.writeHead(reply.status, { ...headers, 'content-type': reply.type, 'content-length': Buffer.byteLength(reply.text) })
    res.end(reply.text)
    return
  }
  res.writeHead(reply.status, { ...headers, 'content-type': reply.type })
  for await (const chunk of reply.stream) {
    if (!res.write(chunk)) await new Promise<void>((r) => res.once('drain', () => r()))
    if (res.destroyed) return
  }
  res.end()
}

export const errorReply = (err: CpError): Reply => ({ status: err.status, json: { error: { code: err.code, message: err.message, ...(err.detail ? { detail: err.detail } : {}) } } })

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '[::1]'])
export const isLoopbackAddress = (host: string): boolean => host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host)
export function hostAllowed(header: string | undefined): boolean {
  if (!header) return false
  const name = header.startsWith('[') ? header.slice(0, header.indexOf(']') + 1) : header.split(':')[0]!
  return LOOPBACK_NAMES.has(name.toLowerCase()) || /^127\.\d+\.\d+\.\d+$/.test(name)
}

/** Query parameters: an integer within bounds, or the default. */
export function intParam(q: URLSearchParams, name: string, dflt: number, min: number, max: number): number {
  const v = q.get(name)
  if (v === null) return dflt
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw new CpError('CP_BAD_REQUEST', `${name} must be a whole number from ${min} to ${max}`)
  return Number(v)
}
