// A small client of the control-plane API (fetch), for `ctl --control-plane`
// and the service demo. The token travels only in the Authorization header.
import { randomUUID } from 'node:crypto'

export class ApiError extends Error {
  readonly status: number
  readonly code: string
  readonly detail: unknown
  constructor(status: number, code: string, message: string, detail?: unknown) {
    super(message)
    this.name = 'ApiError'
    this.status = status
    this.code = code
    this.detail = detail
  }
}

export class ApiClient {
  readonly base: string
  readonly #token: string

  constructor(base: string, token: string) {
    this.base = base.replace(/\/+$/, '')
    this.#token = token
  }

  async request<T = Record<string, unknown>>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    let res: Response
    try {
      res = await fetch(`${this.base}${path}`, {
        method,
        headers: { authorization: `Bearer ${this.#token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(60_000),
      })
    } catch (err) {
      const why = ((err as Error).cause as Error | undefined)?.message ?? (err as Error).message
      throw new ApiError(0, 'CP_UNREACHABLE', `cannot reach the control plane at ${this.base}: ${why}`)
    }
    const text = await res.text()
    let json: unknown = null
    try {
      json = text ? JSON.parse(text) : null
    } catch {}
    if (!res.ok) {
      const e = (json as { error?: { code?: string; message?: string; detail?: unknown } } | null)?.error
      throw new ApiError(res.status, e?.code ?? `HTTP_${res.status}`, e?.message ?? `HTTP ${res.status}`, e?.detail)
    }
    return json as T
  }

  /** POST /v1/commands with an idempotency key (one per call unless given): a retried call creates nothing twice. */
  createCommands(body: Record<string, unknown>, key: string = randomUUID()): Promise<{ commands: Record<string, unknown>[] }> {
    return this.request('POST', '/v1/commands', body, { 'idempotency-key': key })
  }
}
