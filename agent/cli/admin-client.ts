// The CLI side of the admin socket.
import { request } from 'node:http'
import { userInfo } from 'node:os'
import { join } from 'node:path'
import { ADMIN_SOCKET } from '../observe/admin-server.ts'
import { EdgewardenError } from '../runtime/errors.ts'

export interface AdminReply {
  status: number
  body: unknown
  text: string
}

function operatorName(): string {
  try {
    return userInfo().username
  } catch {
    return 'operator'
  }
}

export function adminRequest(dataDir: string, method: string, path: string, body?: unknown): Promise<AdminReply> {
  const socketPath = join(dataDir, ADMIN_SOCKET)
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: { 'content-type': 'application/json', 'x-edgewarden-actor': operatorName(), ...(payload ? { 'content-length': Buffer.byteLength(payload) } : {}) },
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          let parsed: unknown = text
          try {
            parsed = JSON.parse(text)
          } catch {}
          resolve({ status: res.statusCode ?? 0, body: parsed, text })
        })
      },
    )
    req.on('error', (err: NodeJS.ErrnoException) => {
      const why = err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? 'is the agent running? (edgewarden start)' : err.message
      reject(new EdgewardenError('ADMIN_UNAVAILABLE', `cannot reach the agent at ${socketPath}: ${why}`, { cause: err }))
    })
    if (payload) req.write(payload)
    req.end()
  })
}

/** Throw the agent's own error message when the reply is not 2xx. */
export function expectOk(reply: AdminReply): Record<string, unknown> {
  if (reply.status >= 200 && reply.status < 300) return reply.body as Record<string, unknown>
  const err = (reply.body as { error?: { message?: string } })?.error
  throw new EdgewardenError('ADMIN_REQUEST', err?.message ?? `agent answered ${reply.status}`)
}
