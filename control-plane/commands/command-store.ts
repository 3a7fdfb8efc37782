// Commands in the database: stored (signed) in the same transaction that
// accepts the API request, before anything is sent; then a lifecycle that
// only moves forward within a round: queued -> sent -> accepted ->
// completed | failed, or sent -> rejected; expired when exp passes with no
// answer. A rollback of the gateway (PROTOCOL §3) starts a new round of the
// decisions it forgot (rollback.ts). Every transition is a command_history
// row, with the event that caused it.
import type { Clock } from '../runtime/clock.ts'
import { iso, nowS } from '../runtime/clock.ts'
import type { Row, Sql } from '../storage/database.ts'
import type { CommandSigner } from './signer.ts'
import type { CommandSpec } from './spec.ts'

export const FINAL_STATES = ['completed', 'failed', 'rejected', 'expired', 'superseded', 'reissued'] as const
export const RANK: Record<string, number> = { queued: 0, sent: 1, accepted: 2, completed: 3, failed: 3, rejected: 3, expired: 3, superseded: 3, reissued: 3 }

export interface CommandRow extends Row {
  jti: string
  seq: number
  site: string
  gateway: string
  device_id: string | null
  op: string
  args: Record<string, unknown>
  jws: string
  iat: number
  exp: number
  state: string
  round: number
  epoch: number
  created_at: number
  created_by: string
  request_key: string | null
  sends: number
  first_sent_at: number | null
  last_sent_at: number | null
  next_send_at: number | null
  delay_ms: number | null
  answered_at: number | null
  accepted_seq: number | null
  finished_at: number | null
  reason: string | null
  evidence: Record<string, unknown> | null
  outcome_event: number | null
  duplicates: number
  reissue_of: string | null
  reissued_as: string | null
}

export async function recordHistory(q: Sql, jti: string, at: number, state: string, detail: string | null = null, eventId: number | null = null): Promise<void> {
  await q.query('INSERT INTO command_history (jti, at, state, detail, event_id) VALUES ($1, $2, $3, $4, $5)', [jti, at, state, detail, eventId])
}

/** Sign and store one command per spec; the rows as stored. */
export async function insertCommands(
  q: Sql,
  specs: readonly CommandSpec[],
  o: { signer: CommandSigner; clock: Clock; by: string; requestKey: string | null; reissueOf?: string },
): Promise<CommandRow[]> {
  const now = o.clock.nowMs()
  const epochs = new Map<string, number>()
  const out: CommandRow[] = []
  for (const s of specs) {
    const gk = `${s.site}/${s.gateway}`
    if (!epochs.has(gk)) epochs.set(gk, Number((await q.query<{ epoch: number }>('SELECT epoch FROM gateways WHERE site = $1 AND id = $2', [s.site, s.gateway]))[0]?.epoch ?? 0))
    const signed = o.signer.sign(s.gateway, s.op, s.args, nowS(o.clock))
    const rows = await q.query<CommandRow>(
      `INSERT INTO commands (jti, site, gateway, device_id, op, args, jws, iat, exp, state, epoch, created_at, created_by, request_key, reissue_of)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', $10, $11, $12, $13, $14) RETURNING *`,
      [signed.jti, s.site, s.gateway, s.deviceId, s.op, s.args, signed.jws, signed.iat, signed.exp, epochs.get(gk)!, now, o.by, o.requestKey, o.reissueOf ?? null],
    )
    await recordHistory(q, signed.jti, now, 'queued', o.reissueOf ? `re-issued for ${o.reissueOf}` : `by ${o.by}`)
    if (s.op === 'device.enroll' && s.deviceId) {
      // The service now knows where this device lives; its state comes from the gateway's events.
      await q.query(
        `INSERT INTO devices (id, site, gateway, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET site = EXCLUDED.site, gateway = EXCLUDED.gateway, updated_at = EXCLUDED.updated_at`,
        [s.deviceId, s.site, s.gateway, now],
      )
    }
    out.push(rows[0]!)
  }
  return out
}

/** A device record's password hash is not secret, but it is not for every reader either. */
function redactArgs(args: Record<string, unknown>): Record<string, unknown> {
  const d = args.device as Record<string, unknown> | undefined
  if (!d || typeof d !== 'object' || d.password === undefined) return args
  return { ...args, device: { ...d, password: '[scrypt hash]' } }
}

/** Why an unanswered command is still waiting, as the API says it. */
export function waitingReason(c: CommandRow, gw: { online: boolean | null } | undefined): string | null {
  if (c.state === 'queued') return c.sends > 0 ? 'queued again after a rollback of its gateway' : 'queued: behind the window of its gateway or an earlier command for the same device'
  if (c.state === 'sent') return gw?.online === false ? 'sent; the gateway is offline: the broker holds it for the gateway\'s session' : 'sent; no answer from the gateway yet (re-sent with the same jti until answered)'
  if (c.state === 'accepted') return 'accepted by the gateway; its outcome is still to come'
  return null
}

export function commandView(c: CommandRow, gw?: { online: boolean | null }): Record<string, unknown> {
  return {
    jti: c.jti,
    op: c.op,
    site: c.site,
    gateway: c.gateway,
    deviceId: c.device_id,
    args: redactArgs(c.args),
    state: c.state,
    waiting: waitingReason(c, gw),
    round: c.round,
    iat: c.iat,
    exp: c.exp,
    createdAt: iso(c.created_at),
    createdBy: c.created_by,
    sends: c.sends,
    firstSentAt: iso(c.first_sent_at),
    lastSentAt: iso(c.last_sent_at),
    answeredAt: iso(c.answered_at),
    finishedAt: iso(c.finished_at),
    reason: c.reason,
    evidence: c.evidence,
    duplicates: c.duplicates,
    reissueOf: c.reissue_of,
    reissuedAs: c.reissued_as,
  }
}
