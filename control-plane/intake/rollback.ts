// PROTOCOL §3: a gateway whose seq or audit head goes back was restored from
// an old copy of its data. Every device decision it answered after the point
// it was restored to is unknown to it now, and its replay memory of those
// jtis is gone: the control plane sends them again, in their original order.
// The gateway's numbering starts again from the restored seq, so the events
// it signs from now on belong to a new epoch of its history; the old events
// stay, as evidence of what happened.
//
// A decision is re-sent as it was signed (same jti: should the detection be
// wrong, the gateway answers cmd.duplicate and runs nothing twice). One whose
// exp has passed cannot be: it is re-issued (new jti, signed now) when it is
// the device's last decision, else marked superseded by the later one that
// is re-sent (a later decision always wins, PROTOCOL §3 superseded).
import type { Clock } from '../runtime/clock.ts'
import { nowS } from '../runtime/clock.ts'
import { DEFAULT_CLOCK_SKEW_S } from '../../wire/jws.ts'
import { insertCommands, recordHistory, type CommandRow } from '../commands/command-store.ts'
import type { CommandSigner } from '../commands/signer.ts'
import type { Op } from '../commands/spec.ts'
import { raiseAlert, resolveAlerts, type AlertKind } from '../fleet/alerts.ts'
import type { GatewayRow } from '../fleet/registry.ts'
import type { Sql } from '../storage/database.ts'

export interface RollbackFinding {
  what: 'event-seq' | 'new-event-at-passed-seq' | 'status-seq' | 'audit-head'
  detail: string
  /** the gateway's history is known to it up to this seq (of the epoch that ends) */
  restoredSeq: number
  remembered: Record<string, unknown>
  seen: Record<string, unknown>
  eventId?: number
}

export interface RollbackResult {
  epoch: number
  requeued: string[]
  reissued: { from: string; to: string }[]
  superseded: string[]
}

/** Within the caller's transaction, the gateway row locked (FOR UPDATE). */
export async function applyRollback(
  q: Sql,
  g: GatewayRow,
  f: RollbackFinding,
  ctx: { clock: Clock; signer: CommandSigner; onAlert?: (kind: AlertKind) => void },
): Promise<RollbackResult> {
  const now = ctx.clock.nowMs()
  const epoch = g.epoch + 1
  const restored = Math.max(0, f.restoredSeq)
  await q.query(
    `UPDATE gateways SET epoch = $3, baseline_seq = $4, max_seq = $4, contiguous_seq = $4, max_seq_iat = NULL, gap_since = NULL WHERE site = $1 AND id = $2`,
    [g.site, g.id, epoch, restored],
  )
  await resolveAlerts(q, { kind: 'seq-gap', site: g.site, gateway: g.id }, now)

  // Unanswered ones are answered in the new history.
  await q.query("UPDATE commands SET epoch = $3 WHERE site = $1 AND gateway = $2 AND state IN ('queued', 'sent')", [g.site, g.id, epoch])
  const forgotten = await q.query<CommandRow>(
    `SELECT * FROM commands WHERE site = $1 AND gateway = $2 AND op LIKE 'device.%' AND epoch = $3 AND accepted_seq > $4
       AND state IN ('accepted', 'completed', 'failed') ORDER BY seq FOR UPDATE`,
    [g.site, g.id, g.epoch, restored],
  )
  const byDevice = new Map<string, CommandRow[]>()
  for (const c of forgotten) {
    const list = byDevice.get(c.device_id ?? '')
    if (list) list.push(c)
    else byDevice.set(c.device_id ?? '', [c])
  }
  const t = nowS(ctx.clock)
  const sendable = (c: CommandRow): boolean => c.exp + DEFAULT_CLOCK_SKEW_S > t + 60
  const result: RollbackResult = { epoch, requeued: [], reissued: [], superseded: [] }
  for (const list of byDevice.values()) {
    const lastExpired = list.findLastIndex((c) => !sendable(c))
    for (const [i, c] of list.entries()) {
      if (i > lastExpired) {
        await q.query(
          `UPDATE commands SET state = 'queued', round = round + 1, epoch = $2, next_send_at = NULL, answered_at = NULL, accepted_seq = NULL, finished_at = NULL
             WHERE jti = $1`,
          [c.jti, epoch],
        )
        await recordHistory(q, c.jti, now, 'queued', `re-sent: the gateway was restored to seq ${restored} (${f.what}) and forgot it`)
        result.requeued.push(c.jti)
      } else if (i === list.length - 1) {
        const [fresh] = await insertCommands(q, [{ site: c.site, gateway: c.gateway, deviceId: c.device_id, op: c.op as Op, args: c.args }], {
          signer: ctx.signer,
          clock: ctx.clock,
          by: c.created_by,
          requestKey: null,
          reissueOf: c.jti,
        })
        await q.query("UPDATE commands SET state = 'reissued', reissued_as = $2, finished_at = $3 WHERE jti = $1", [c.jti, fresh!.jti, now])
        await recordHistory(q, c.jti, now, 'reissued', `expired; re-issued as ${fresh!.jti} after the gateway was restored`)
        result.reissued.push({ from: c.jti, to: fresh!.jti })
      } else {
        await q.query("UPDATE commands SET state = 'superseded', finished_at = $2 WHERE jti = $1", [c.jti, now])
        await recordHistory(q, c.jti, now, 'superseded', 'expired; a later decision for the device is re-sent after the gateway was restored')
        result.superseded.push(c.jti)
      }
    }
  }
  await raiseAlert(
    q,
    {
      kind: 'rollback',
      site: g.site,
      gateway: g.id,
      detail: { what: f.what, detail: f.detail, remembered: f.remembered, seen: f.seen, restoredSeq: restored, epoch, requeued: result.requeued, reissued: result.reissued, superseded: result.superseded },
      dedupe: `rollback:${g.site}/${g.id}:${epoch}`,
      eventId: f.eventId ?? null,
    },
    now,
    ctx.onAlert,
  )
  return result
}
