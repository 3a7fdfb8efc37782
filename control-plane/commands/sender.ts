// The re-send loop (PROTOCOL §3), run by one instance at a time (it holds
// the leader advisory lock). Each tick, per gateway:
// - a command sent without an answer (cmd.accepted, cmd.rejected or
//   cmd.duplicate) within its delay is published again, the same signed
//   bytes, the delay doubling up to --resend-max; nothing is re-sent while
//   the gateway's status says offline (its persistent session holds what was
//   sent; copies would only fill the broker's queue for it);
// - queued commands go out in the order they were created while fewer than
//   --window are unanswered, so the broker's per-client queue never
//   overflows; a device's next decision waits until its previous one is
//   answered, so a re-sent older command can never land after a newer one
//   for the same device (equal iats run in arrival order, PROTOCOL §3);
// - a command whose exp passed unanswered is expired: the gateway would
//   refuse it.
// The row is marked before the publish: a crash in between means one more
// copy later, never a command the gateway runs twice (it runs a jti once).
import { DEFAULT_CLOCK_SKEW_S } from '../../wire/jws.ts'
import { topicRoot } from '../../wire/protocol.ts'
import { raiseAlert, type AlertKind } from '../fleet/alerts.ts'
import { enqueueWebhook } from '../outward/webhooks.ts'
import type { Clock } from '../runtime/clock.ts'
import type { Logger } from '../runtime/log.ts'
import type { Database } from '../storage/database.ts'
import { recordHistory } from './command-store.ts'

export interface Publisher {
  readonly connected: boolean
  publish(topic: string, payload: string): Promise<void>
}

export interface SenderOptions {
  db: Database
  publisher: Publisher
  clock: Clock
  log: Logger
  window: number
  resendAfterMs: number
  resendMaxMs: number
  onSent?(n: number, resent: number): void
  onAlert?(kind: AlertKind): void
}

const BATCH = 1000

export class Sender {
  readonly #o: SenderOptions
  #busy = false
  #again = false

  constructor(o: SenderOptions) {
    this.#o = o
  }

  /** One pass; a pass asked for while one runs is run right after it. */
  async tick(): Promise<void> {
    if (this.#busy) {
      this.#again = true
      return
    }
    this.#busy = true
    try {
      do {
        this.#again = false
        if (!this.#o.publisher.connected) return
        await this.#expire()
        await this.#resend()
        await this.#sendQueued()
      } while (this.#again)
    } finally {
      this.#busy = false
    }
  }

  async #expire(): Promise<void> {
    const { db, clock } = this.#o
    const now = clock.nowMs()
    const rows = await db.query<{ jti: string; op: string; site: string; gateway: string; device_id: string | null; exp: number }>(
      `UPDATE commands SET state = 'expired', finished_at = $1, reason = 'exp passed before the gateway answered'
        WHERE state IN ('queued', 'sent') AND exp + $2 < $3 RETURNING jti, op, site, gateway, device_id, exp`,
      [now, DEFAULT_CLOCK_SKEW_S, Math.floor(now / 1000)],
    )
    for (const r of rows) {
      await db.tx(async (q) => {
        await recordHistory(q, r.jti, now, 'expired', 'exp passed before the gateway answered: send it again as a new command')
        await raiseAlert(q, { kind: 'command-expired', site: r.site, gateway: r.gateway, deviceId: r.device_id, detail: { jti: r.jti, op: r.op, exp: r.exp }, dedupe: `expired:${r.jti}` }, now, this.#o.onAlert)
        await enqueueWebhook(q, 'command.failed', `command:${r.jti}:expired`, { jti: r.jti, op: r.op, site: r.site, gateway: r.gateway, deviceId: r.device_id, state: 'expired', reason: 'exp passed before the gateway answered' }, now)
      })
    }
  }

  async #resend(): Promise<void> {
    const { db, clock, resendMaxMs } = this.#o
    const now = clock.nowMs()
    const due = await db.query<{ jti: string; site: string; gateway: string; jws: string; sends: number }>(
      `UPDATE commands c SET sends = c.sends + 1, last_sent_at = $1::bigint, delay_ms = LEAST($2::int, c.delay_ms * 2), next_send_at = $1::bigint + LEAST($2::int, c.delay_ms * 2)
        WHERE c.jti IN (SELECT c2.jti FROM commands c2 JOIN gateways g2 ON g2.site = c2.site AND g2.id = c2.gateway
                         WHERE c2.state = 'sent' AND c2.next_send_at <= $1 AND g2.online IS NOT FALSE ORDER BY c2.seq LIMIT $3)
          AND c.state = 'sent'
        RETURNING c.jti, c.site, c.gateway, c.jws, c.sends`,
      [now, resendMaxMs, BATCH],
    )
    if (!due.length) return
    await db.tx(async (q) => {
      for (const d of due) await recordHistory(q, d.jti, now, 'sent', `re-sent (copy ${d.sends}, same jti)`)
    })
    await this.#publish(due)
    this.#o.onSent?.(0, due.length)
  }

  async #sendQueued(): Promise<void> {
    const { db, clock, window, resendAfterMs } = this.#o
    const gateways = await db.query<{ site: string; gateway: string; inflight: number }>(
      `SELECT site, gateway, COUNT(*) FILTER (WHERE state = 'sent') AS inflight FROM commands WHERE state IN ('queued', 'sent')
        GROUP BY site, gateway HAVING COUNT(*) FILTER (WHERE state = 'queued') > 0`,
    )
    for (const g of gateways) {
      const room = window - g.inflight
      if (room <= 0) continue
      const now = clock.nowMs()
      const rows = await db.query<{ jti: string; site: string; gateway: string; jws: string; sends: number }>(
        `UPDATE commands SET state = 'sent', sends = sends + 1, first_sent_at = COALESCE(first_sent_at, $3::bigint), last_sent_at = $3::bigint, delay_ms = $4::int, next_send_at = $3::bigint + $4::int
          WHERE jti IN (
            SELECT c.jti FROM commands c WHERE c.site = $1 AND c.gateway = $2 AND c.state = 'queued'
               AND NOT EXISTS (SELECT 1 FROM commands p WHERE p.device_id = c.device_id AND p.seq < c.seq AND p.state IN ('queued', 'sent'))
             ORDER BY c.seq LIMIT $5)
            AND state = 'queued'
          RETURNING jti, site, gateway, jws, sends`,
        [g.site, g.gateway, now, resendAfterMs, Math.min(room, BATCH)],
      )
      if (!rows.length) continue
      await db.tx(async (q) => {
        for (const r of rows) await recordHistory(q, r.jti, now, 'sent', r.sends > 1 ? `sent again (copy ${r.sends})` : null)
      })
      await this.#publish(rows)
      this.#o.onSent?.(rows.length, 0)
    }
  }

  async #publish(rows: readonly { site: string; gateway: string; jws: string; jti: string }[]): Promise<void> {
    const results = await Promise.allSettled(rows.map((r) => this.#o.publisher.publish(`${topicRoot(r.site, r.gateway)}cmd`, r.jws)))
    const failed = results.filter((r) => r.status === 'rejected').length
    // Not handed over is no different from dropped by the broker: the re-send timer covers both.
    if (failed) this.#o.log.warn({ failed, of: rows.length }, 'some commands could not be published; they are re-sent on their timer')
  }
}
