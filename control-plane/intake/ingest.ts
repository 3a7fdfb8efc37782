// The intake of one event: verified against its gateway's pinned key, then
// in one transaction (the gateway's row locked, so instances taking events
// of one gateway from the shared subscription take turns) stored verbatim
// beside its decoded claims, the gateway's seq bookkeeping moved, and what
// it says applied: a command's lifecycle, a device's state, an alert. Only
// once that committed is the message acknowledged to the broker (the caller
// holds back the PUBACK): a crash before loses nothing, the broker delivers
// it again, and a second copy is recognised by its jti.
//
// Seq (PROTOCOL §3): from 1, +1 per event, across restarts. Events of one
// gateway may arrive out of order (several intake sessions, re-sends after a
// reconnect), so a missing seq is a gap only once it stayed missing for
// --gap-grace (gap-sweep.ts). Two different events at one seq, or a new event
// signed after the newest one at a seq already passed, mean a restored
// gateway: rollback.ts.
import { isId, isJti } from '../../wire/ids.ts'
import { DEVICE_STATES } from '../../wire/protocol.ts'
import { recordHistory, RANK, type CommandRow } from '../commands/command-store.ts'
import type { CommandSigner } from '../commands/signer.ts'
import { raiseAlert, resolveAlerts, type AlertKind } from '../fleet/alerts.ts'
import type { GatewayRow, Registry } from '../fleet/registry.ts'
import { enqueueWebhook } from '../outward/webhooks.ts'
import type { Clock } from '../runtime/clock.ts'
import type { Database, Sql } from '../storage/database.ts'
import { applyRollback, type RollbackFinding } from './rollback.ts'
import { gatewayOfTopic } from './topics.ts'
import { verifyEvent, type VerifiedEvent } from './verify-event.ts'

export type IngestOutcome =
  | { kind: 'stored'; eventId: number; type: string; answered: boolean; rollback: boolean }
  | { kind: 'duplicate' }
  | { kind: 'invalid'; reason: string }
  | { kind: 'unknown-gateway' }
  | { kind: 'conflict' }
  | { kind: 'ignored'; why: string }

export interface IngestHooks {
  onAlert?(kind: AlertKind): void
}

const STATES = new Set<string>(DEVICE_STATES)
/** The events that answer a command (PROTOCOL §3), each naming its jti. */
const ANSWERS = new Set(['cmd.accepted', 'cmd.rejected', 'cmd.duplicate', 'cmd.completed', 'cmd.failed'])

/**
 * How much older (by iat) than the newest event seen an event below the
 * baseline may be and still move the baseline down: the same burst arriving
 * out of order, not old history replayed.
 */
const BASELINE_SLACK_S = 60

export class Ingest {
  readonly #db: Database
  readonly #registry: Registry
  readonly #clock: Clock
  readonly #signer: CommandSigner
  readonly #instance: string
  readonly #hooks: IngestHooks

  constructor(o: { db: Database; registry: Registry; clock: Clock; signer: CommandSigner; instanceId: string; hooks?: IngestHooks }) {
    this.#db = o.db
    this.#registry = o.registry
    this.#clock = o.clock
    this.#signer = o.signer
    this.#instance = o.instanceId
    this.#hooks = o.hooks ?? {}
  }

  async handle(topic: string, payload: Uint8Array): Promise<IngestOutcome> {
    const where = gatewayOfTopic(topic, 'evt')
    if (!where) return { kind: 'ignored', why: 'not an event topic' }
    const { site, gateway } = where
    const pinned = await this.#registry.keyOf(site, gateway)
    const now = this.#clock.nowMs()
    if (!pinned) {
      await raiseAlert(this.#db, { kind: 'unknown-gateway', site: null, gateway: null, detail: { topic, detail: `events from ${site}/${gateway}, which is not registered: nothing of it is stored` }, dedupe: `unknown-gateway:${site}/${gateway}` }, now, this.#hooks.onAlert)
      return { kind: 'unknown-gateway' }
    }
    const v = verifyEvent(payload, gateway, pinned.key)
    if (!v.ok) {
      const sample = Buffer.from(payload.subarray(0, 96)).toString('utf8').replace(/[^\x20-\x7e]/g, '?')
      await raiseAlert(
        this.#db,
        { kind: 'invalid-event', site, gateway, detail: { reason: v.reason, detail: v.detail, sample, bytes: payload.length }, dedupe: `invalid:${site}/${gateway}:${v.reason}:${Math.floor(now / 3_600_000)}` },
        now,
        this.#hooks.onAlert,
      )
      return { kind: 'invalid', reason: v.reason }
    }
    return this.#db.tx((q) => this.#store(q, site, gateway, v.event))
  }

  async #store(q: Sql, site: string, gateway: string, ev: VerifiedEvent): Promise<IngestOutcome> {
    const now = this.#clock.nowMs()
    let g = (await q.query<GatewayRow>('SELECT * FROM gateways WHERE site = $1 AND id = $2 FOR UPDATE', [site, gateway]))[0]
    if (!g) return { kind: 'unknown-gateway' }
    if ((await q.query('SELECT 1 FROM events WHERE site = $1 AND gateway = $2 AND jti = $3', [site, gateway, ev.jti])).length) return { kind: 'duplicate' }

    let finding: RollbackFinding | null = null
    const taken = (await q.query<{ id: number; jti: string; iat: number }>('SELECT id, jti, iat FROM events WHERE site = $1 AND gateway = $2 AND epoch = $3 AND seq = $4', [site, gateway, g.epoch, ev.seq]))[0]
    if (taken) {
      if (ev.iat >= taken.iat) {
        finding = {
          what: 'event-seq',
          detail: `event seq ${ev.seq} (jti ${ev.jti}) is not the event seen at that seq before (jti ${taken.jti})`,
          restoredSeq: ev.seq - 1,
          remembered: { seq: g.max_seq, eventAtSeq: taken.jti },
          seen: { seq: ev.seq, jti: ev.jti },
        }
      } else {
        // Signed before the event now at that seq: one of an earlier history, arriving late.
        const earlier = g.epoch - 1
        if (earlier >= 0 && !(await q.query('SELECT 1 FROM events WHERE site = $1 AND gateway = $2 AND epoch = $3 AND seq = $4', [site, gateway, earlier, ev.seq])).length) {
          const id = await this.#insert(q, site, gateway, earlier, ev, now)
          return { kind: 'stored', eventId: id, type: ev.type, answered: false, rollback: false }
        }
        await raiseAlert(q, { kind: 'event-conflict', site, gateway, detail: { seq: ev.seq, jti: ev.jti, other: taken.jti, detail: 'two signed events at one seq that no rollback explains' }, dedupe: `conflict:${site}/${gateway}:${ev.jti}` }, now, this.#hooks.onAlert)
        return { kind: 'conflict' }
      }
    } else if (g.baseline_seq !== null && ev.seq > g.contiguous_seq && ev.seq < g.max_seq && g.max_seq_iat !== null && ev.iat > g.max_seq_iat + 1) {
      finding = {
        what: 'new-event-at-passed-seq',
        detail: `event seq ${ev.seq}, signed after event ${g.max_seq}, is a new event at a seq already passed`,
        restoredSeq: ev.seq - 1,
        remembered: { seq: g.max_seq, iat: g.max_seq_iat },
        seen: { seq: ev.seq, iat: ev.iat },
      }
    }
    if (finding) {
      await applyRollback(q, g, finding, { clock: this.#clock, signer: this.#signer, ...(this.#hooks.onAlert ? { onAlert: this.#hooks.onAlert } : {}) })
      g = (await q.query<GatewayRow>('SELECT * FROM gateways WHERE site = $1 AND id = $2', [site, gateway]))[0]!
    }

    // An answer is stored naming the device of the command it answers, should it not name one itself.
    const answering = ANSWERS.has(ev.type) && isJti(ev.data.jti) ? await this.#commandOf(q, g, ev.data.jti) : null
    const id = await this.#insert(q, site, gateway, g.epoch, ev, now, answering?.device_id ?? null)
    await this.#advance(q, g, ev, now)
    let answered = false
    if (answering) answered = await this.#answer(q, g, ev, answering, id, now)
    else if (!ANSWERS.has(ev.type)) await this.#apply(q, g, ev, id, now)
    return { kind: 'stored', eventId: id, type: ev.type, answered, rollback: finding !== null }
  }

  async #insert(q: Sql, site: string, gateway: string, epoch: number, ev: VerifiedEvent, now: number, commandDevice: string | null = null): Promise<number> {
    const deviceId = isId(ev.data.deviceId) ? ev.data.deviceId : commandDevice
    const commandJti = ev.type.startsWith('cmd.') && isJti(ev.data.jti) ? ev.data.jti : null
    const rows = await q.query<{ id: number }>(
      `INSERT INTO events (site, gateway, epoch, seq, jti, type, iat, device_id, command_jti, jws, claims, received_at, received_by)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id`,
      [site, gateway, epoch, ev.seq, ev.jti, ev.type, ev.iat, deviceId, commandJti, ev.jws, ev.claims, now, this.#instance],
    )
    return rows[0]!.id
  }

  /** The seq bookkeeping of the gateway's current epoch. */
  async #advance(q: Sql, g: GatewayRow, ev: VerifiedEvent, now: number): Promise<void> {
    let baseline = g.baseline_seq
    let contiguous = g.contiguous_seq
    let max = g.max_seq
    let maxIat = g.max_seq_iat
    if (baseline === null) {
      // The first event seen here: history before it was never ours to see.
      baseline = ev.seq - 1
      contiguous = ev.seq - 1
      max = ev.seq - 1
    } else if (ev.seq <= baseline && maxIat !== null && ev.iat >= maxIat - BASELINE_SLACK_S) {
      // An event from before the first one seen, signed in the same burst, arriving after it (the intake's
      // slots take events in any order): history starts earlier, and a seq missing since then is a gap.
      baseline = ev.seq - 1
      contiguous = baseline
    }
    if (ev.seq > max) {
      max = ev.seq
      maxIat = ev.iat
    }
    if (ev.seq === contiguous + 1) {
      const end = await q.query<{ seq: number }>(
        `SELECT e.seq FROM events e WHERE e.site = $1 AND e.gateway = $2 AND e.epoch = $3 AND e.seq > $4
           AND NOT EXISTS (SELECT 1 FROM events f WHERE f.site = $1 AND f.gateway = $2 AND f.epoch = $3 AND f.seq = e.seq + 1)
         ORDER BY e.seq LIMIT 1`,
        [g.site, g.id, g.epoch, contiguous],
      )
      contiguous = end[0]?.seq ?? ev.seq
    }
    const gapOpen = contiguous < max
    if (!gapOpen && g.gap_since !== null) await resolveAlerts(q, { kind: 'seq-gap', site: g.site, gateway: g.id }, now)
    await q.query(
      `UPDATE gateways SET baseline_seq = $3, contiguous_seq = $4, max_seq = $5, max_seq_iat = $6, gap_since = $7, last_event_at = $8 WHERE site = $1 AND id = $2`,
      [g.site, g.id, baseline, contiguous, max, maxIat, gapOpen ? (g.gap_since ?? now) : null, now],
    )
  }

  /** What an event other than a command's answer says, applied. */
  async #apply(q: Sql, g: GatewayRow, ev: VerifiedEvent, eventId: number, now: number): Promise<void> {
    const d = ev.data
    const site = g.site
    const gateway = g.id
    switch (ev.type) {
      case 'device.state':
        if (isId(d.deviceId) && STATES.has(d.to as string)) await this.#deviceState(q, g, ev, { id: d.deviceId, state: d.to as string })
        return
      case 'inventory':
        if (Array.isArray(d.devices)) {
          for (const x of d.devices as Record<string, unknown>[]) {
            if (!x || !isId(x.id) || !STATES.has(x.state as string)) continue
            await this.#deviceState(q, g, ev, {
              id: x.id,
              state: x.state as string,
              ...(typeof x.criticality === 'string' ? { criticality: x.criticality } : {}),
              ...(typeof x.credentialKind === 'string' ? { credentialKind: x.credentialKind } : {}),
              ...(Number.isSafeInteger(x.credentialExpiresAt) ? { credentialExpiresAt: x.credentialExpiresAt as number } : {}),
            })
          }
        }
        return
      case 'alert.residual-use':
        await raiseAlert(q, { kind: 'residual-use', site, gateway, deviceId: isId(d.deviceId) ? d.deviceId : null, detail: { ...d, seq: ev.seq }, dedupe: `event:${site}/${gateway}:${ev.jti}`, eventId }, now, this.#hooks.onAlert)
        return
      case 'credential.expiring':
      case 'credential.expired': {
        if (!isId(d.deviceId)) return
        const expired = ev.type === 'credential.expired'
        // an upsert: this event may be stored before the device.state that creates the row (events arrive in any order)
        if (Number.isSafeInteger(d.expiresAt))
          await q.query(
            `INSERT INTO devices (id, site, gateway, credential_expires_at, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET credential_expires_at = EXCLUDED.credential_expires_at`,
            [d.deviceId, site, gateway, d.expiresAt, ev.iat * 1000],
          )
        await raiseAlert(
          q,
          { kind: expired ? 'credential-expired' : 'credential-expiring', site, gateway, deviceId: d.deviceId, detail: { ...d, seq: ev.seq }, dedupe: `${ev.type}:${site}/${gateway}/${d.deviceId}:${String(d.expiresAt)}`, eventId },
          now,
          this.#hooks.onAlert,
        )
      }
    }
  }

  /** The command an answer is for, its row locked; null when it is not one of this gateway's. */
  async #commandOf(q: Sql, g: GatewayRow, jti: string): Promise<CommandRow | null> {
    const c = (await q.query<CommandRow>('SELECT * FROM commands WHERE jti = $1 FOR UPDATE', [jti]))[0]
    // Another control plane's command (ctl, a script): its events are evidence all the same.
    return c && c.site === g.site && c.gateway === g.id ? c : null
  }

  /** A command's answer applied to it; true when the command was unanswered (the window has room again). */
  async #answer(q: Sql, g: GatewayRow, ev: VerifiedEvent, c: CommandRow, eventId: number, now: number): Promise<boolean> {
    const d = ev.data
    // An answer from the history before a rollback says nothing of the round now under way.
    if (g.epoch < c.epoch) return false
    const dup = ev.type === 'cmd.duplicate'
    const target = dup ? String(d.state) : ev.type.slice(4)
    if (RANK[target] === undefined || target === 'queued' || target === 'sent') return false
    const wasOpen = c.state === 'queued' || c.state === 'sent'
    const sets: string[] = []
    const params: unknown[] = [c.jti]
    const set = (col: string, v: unknown): void => {
      params.push(v)
      sets.push(`${col} = $${params.length}`)
    }
    if (dup) set('duplicates', c.duplicates + 1)
    if (c.answered_at === null) {
      set('answered_at', now)
      set('accepted_seq', ev.seq)
    }
    const final = RANK[target] === 3
    const reason = typeof d.reason === 'string' ? d.reason : dup && final ? `cmd.duplicate: ${target}` : null
    const evidence = target === 'completed' && d.evidence && typeof d.evidence === 'object' ? d.evidence : null
    if (RANK[target]! > RANK[c.state]!) {
      set('state', target)
      if (final) {
        set('finished_at', now)
        set('reason', reason)
        set('evidence', evidence)
        set('outcome_event', eventId)
      }
      await recordHistory(q, c.jti, now, target, dup ? `cmd.duplicate (state ${target})` : ev.type, eventId)
      if (final) {
        const hook = target === 'completed' ? 'command.completed' : 'command.failed'
        await enqueueWebhook(q, hook, `command:${c.jti}:${c.round}`, { jti: c.jti, op: c.op, site: c.site, gateway: c.gateway, deviceId: c.device_id, state: target, reason, evidence, eventSeq: ev.seq }, now)
      }
    } else if (target === 'completed' && c.state === 'completed' && c.evidence === null && evidence) {
      // A duplicate said "completed" first; the completion with its evidence arrived after it.
      set('evidence', evidence)
      set('outcome_event', eventId)
    }
    if (sets.length) await q.query(`UPDATE commands SET ${sets.join(', ')} WHERE jti = $1`, params)
    return wasOpen
  }

  async #deviceState(
    q: Sql,
    g: GatewayRow,
    ev: VerifiedEvent,
    x: { id: string; state: string; criticality?: string; credentialKind?: string; credentialExpiresAt?: number },
  ): Promise<void> {
    const at = ev.iat * 1000
    // Only a newer event (epoch, seq) moves a device's state: events may arrive out of order.
    await q.query(
      `INSERT INTO devices (id, site, gateway, state, criticality, credential_kind, credential_expires_at, state_epoch, state_seq, retiring_since, retired_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CASE WHEN $4 = 'retiring' THEN $10::bigint END, CASE WHEN $4 = 'retired' THEN $10::bigint END, $10)
       ON CONFLICT (id) DO UPDATE SET
         site = EXCLUDED.site, gateway = EXCLUDED.gateway, state = EXCLUDED.state,
         criticality = COALESCE(EXCLUDED.criticality, devices.criticality),
         credential_kind = COALESCE(EXCLUDED.credential_kind, devices.credential_kind),
         credential_expires_at = COALESCE(EXCLUDED.credential_expires_at, devices.credential_expires_at),
         state_epoch = EXCLUDED.state_epoch, state_seq = EXCLUDED.state_seq, updated_at = EXCLUDED.updated_at,
         retiring_since = CASE WHEN EXCLUDED.state = 'retiring' THEN COALESCE(devices.retiring_since, EXCLUDED.updated_at)
                               WHEN EXCLUDED.state = 'retired' THEN devices.retiring_since ELSE NULL END,
         retired_at = CASE WHEN EXCLUDED.state = 'retired' THEN COALESCE(devices.retired_at, EXCLUDED.updated_at) ELSE NULL END
       WHERE devices.state_epoch IS NULL OR devices.site <> EXCLUDED.site OR devices.gateway <> EXCLUDED.gateway
          OR devices.state_epoch < EXCLUDED.state_epoch OR (devices.state_epoch = EXCLUDED.state_epoch AND devices.state_seq < EXCLUDED.state_seq)`,
      [x.id, g.site, g.id, x.state, x.criticality ?? null, x.credentialKind ?? null, x.credentialExpiresAt ?? null, g.epoch, ev.seq, at],
    )
  }
}
