// Webhooks: an ITSM ticket closes itself when the evidence lands. A delivery
// is written in the same transaction as what it reports (a command's
// outcome, an alert), once per webhook (unique on its dedupe key: however
// many instances saw the event, one delivery), then POSTed by the instance
// that holds the re-send loop, retried with a doubling delay (1 s .. 1 h)
// up to --webhook-attempts. At least once: a receiver de-duplicates on the
// body's `id` (or the X-Edgewarden-Delivery header).
//
// Signature (X-Edgewarden-Signature: t=<unix s>,v1=<hex>): HMAC-SHA256 with
// the webhook's secret over `${t}.${body}`; a receiver checks it in constant
// time and refuses a t too far from its clock (replays).
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { b64urlEncode } from '../../wire/base64url.ts'
import type { Clock } from '../runtime/clock.ts'
import { badRequest, CpError } from '../runtime/errors.ts'
import type { Logger } from '../runtime/log.ts'
import type { Database, Sql } from '../storage/database.ts'

export const WEBHOOK_EVENTS = [
  'command.completed',
  'command.failed',
  'alert.residual-use',
  'credential.expiring',
  'credential.expired',
  'alert.rollback',
  'alert.seq-gap',
  'alert.invalid-event',
] as const
export type WebhookEvent = (typeof WEBHOOK_EVENTS)[number]

const MAX_DELAY_MS = 3_600_000

export function signatureHeader(secret: string, body: string, tS: number): string {
  return `t=${tS},v1=${createHmac('sha256', secret).update(`${tS}.${body}`).digest('hex')}`
}

/** For receivers (and tests): whether a signature header is good for this body and secret, within `toleranceS` of `nowS`. */
export function verifySignature(secret: string, body: string, header: string | undefined, nowS: number, toleranceS = 300): boolean {
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header ?? '')
  if (!m) return false
  const t = Number(m[1])
  if (Math.abs(nowS - t) > toleranceS) return false
  const want = Buffer.from(createHmac('sha256', secret).update(`${t}.${body}`).digest('hex'))
  return timingSafeEqual(want, Buffer.from(m[2]!))
}

/** Queue one event for every webhook that wants it (inside the caller's transaction). */
export async function enqueueWebhook(q: Sql, event: WebhookEvent, dedupe: string, data: Record<string, unknown>, nowMs: number): Promise<void> {
  const body = JSON.stringify({ id: dedupe, type: event, createdAt: new Date(nowMs).toISOString(), data })
  await q.query(
    `INSERT INTO webhook_deliveries (webhook_id, event, dedupe, body, state, next_at, created_at)
     SELECT id, $1, $2, $3, 'pending', $4, $4 FROM webhooks WHERE disabled_at IS NULL AND ($1 = ANY(events) OR '*' = ANY(events))
     ON CONFLICT (webhook_id, dedupe) DO NOTHING`,
    [event, dedupe, body, nowMs],
  )
}

export interface WebhookRow {
  id: string
  url: string
  events: string[]
  created_at: number
  disabled_at: number | null
}

export async function createWebhook(db: Database, input: { url?: unknown; events?: unknown; secret?: unknown }, nowMs: number): Promise<{ webhook: WebhookRow; secret: string }> {
  let u: URL | null = null
  try {
    u = typeof input.url === 'string' ? new URL(input.url) : null
  } catch {}
  if (!u || !['http:', 'https:'].includes(u.protocol)) throw badRequest('url must be an http:// or https:// URL')
  if (u.username || u.password) throw badRequest('url must not carry credentials: the HMAC signature authenticates the control plane')
  const events = input.events === undefined ? ['*'] : input.events
  if (!Array.isArray(events) || events.length === 0 || events.some((e) => e !== '*' && !(WEBHOOK_EVENTS as readonly string[]).includes(e as string))) {
    throw badRequest(`events must be a non-empty array of ${WEBHOOK_EVENTS.join(', ')} or "*"`)
  }
  if (input.secret !== undefined && (typeof input.secret !== 'string' || input.secret.length < 16 || input.secret.length > 256)) throw badRequest('secret, when given, must be 16 to 256 characters')
  const secret = (input.secret as string | undefined) ?? b64urlEncode(randomBytes(32))
  const id = `wh.${b64urlEncode(randomBytes(9))}`
  const rows = await db.query<WebhookRow>('INSERT INTO webhooks (id, url, secret, events, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id, url, events, created_at, disabled_at', [id, u.toString(), secret, events, nowMs])
  return { webhook: rows[0]!, secret }
}

export async function disableWebhook(db: Database, id: string, nowMs: number): Promise<void> {
  const rows = await db.query('UPDATE webhooks SET disabled_at = $2 WHERE id = $1 AND disabled_at IS NULL RETURNING id', [id, nowMs])
  if (!rows.length) throw new CpError('CP_NOT_FOUND', `no active webhook ${id}`)
}

interface Due {
  id: number
  webhook_id: string
  event: string
  body: string
  attempts: number
  url: string
  secret: string
}

/** Delivers what is due; run by the instance holding the re-send loop. */
export class WebhookDeliverer {
  readonly #db: Database
  readonly #clock: Clock
  readonly #log: Logger
  readonly #timeoutMs: number
  readonly #maxAttempts: number
  readonly #onResult: (outcome: 'delivered' | 'retry' | 'failed') => void
  #busy = false

  constructor(db: Database, o: { clock: Clock; log: Logger; timeoutMs: number; maxAttempts: number; onResult?: (outcome: 'delivered' | 'retry' | 'failed') => void }) {
    this.#db = db
    this.#clock = o.clock
    this.#log = o.log
    this.#timeoutMs = o.timeoutMs
    this.#maxAttempts = o.maxAttempts
    this.#onResult = o.onResult ?? (() => {})
  }

  async tick(): Promise<void> {
    if (this.#busy) return
    this.#busy = true
    try {
      const due = await this.#db.query<Due>(
        `SELECT d.id, d.webhook_id, d.event, d.body, d.attempts, w.url, w.secret FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
          WHERE d.state = 'pending' AND d.next_at <= $1 ORDER BY d.next_at, d.id LIMIT 20`,
        [this.#clock.nowMs()],
      )
      await Promise.all(due.map((d) => this.#deliver(d)))
    } finally {
      this.#busy = false
    }
  }

  async #deliver(d: Due): Promise<void> {
    const tS = Math.floor(this.#clock.nowMs() / 1000)
    let status: number | null = null
    let error: string | null = null
    try {
      const res = await fetch(d.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'edgewarden-control-plane',
          'x-edgewarden-event': d.event,
          'x-edgewarden-delivery': String(d.id),
          'x-edgewarden-signature': signatureHeader(d.secret, d.body, tS),
        },
        body: d.body,
        redirect: 'error',
        signal: AbortSignal.timeout(this.#timeoutMs),
      })
      status = res.status
      await res.body?.cancel().catch(() => {})
      if (!res.ok) error = `HTTP ${res.status}`
    } catch (err) {
      error = (err as Error).name === 'TimeoutError' ? `no answer within ${this.#timeoutMs} ms` : ((err as Error).cause as Error | undefined)?.message ?? (err as Error).message
    }
    const now = this.#clock.nowMs()
    const attempts = d.attempts + 1
    if (error === null) {
      await this.#db.query("UPDATE webhook_deliveries SET state = 'delivered', attempts = $2, last_status = $3, last_error = NULL, delivered_at = $4 WHERE id = $1", [d.id, attempts, status, now])
      this.#onResult('delivered')
      return
    }
    const failed = attempts >= this.#maxAttempts
    const delay = Math.min(MAX_DELAY_MS, 1000 * 2 ** (attempts - 1))
    await this.#db.query('UPDATE webhook_deliveries SET state = $2, attempts = $3, last_status = $4, last_error = $5, next_at = $6 WHERE id = $1', [d.id, failed ? 'failed' : 'pending', attempts, status, error, now + delay])
    this.#log.warn({ webhook: d.webhook_id, delivery: d.id, attempts, error, final: failed }, failed ? 'webhook delivery failed for good' : 'webhook delivery failed; will retry')
    this.#onResult(failed ? 'failed' : 'retry')
  }
}
