// Alerts: what needs a person. Each is written once (a dedupe key makes a
// second instance, or a second sight of the same thing, a no-op) and, for
// the kinds a webhook may want, queued for the webhooks in the same
// transaction.
import { iso } from '../runtime/clock.ts'
import type { Sql } from '../storage/database.ts'
import { enqueueWebhook, type WebhookEvent } from '../outward/webhooks.ts'

export const ALERT_KINDS = ['rollback', 'seq-gap', 'invalid-event', 'unknown-gateway', 'event-conflict', 'residual-use', 'credential-expiring', 'credential-expired', 'command-expired'] as const
export type AlertKind = (typeof ALERT_KINDS)[number]

const WEBHOOK_OF: Partial<Record<AlertKind, WebhookEvent>> = {
  rollback: 'alert.rollback',
  'seq-gap': 'alert.seq-gap',
  'invalid-event': 'alert.invalid-event',
  'residual-use': 'alert.residual-use',
  'credential-expiring': 'credential.expiring',
  'credential-expired': 'credential.expired',
}

export interface NewAlert {
  kind: AlertKind
  site?: string | null
  gateway?: string | null
  deviceId?: string | null
  detail: Record<string, unknown>
  dedupe: string
  eventId?: number | null
}

/** The alert's id when it is new, null when it was already raised. */
export async function raiseAlert(q: Sql, a: NewAlert, nowMs: number, onRaised?: (kind: AlertKind) => void): Promise<number | null> {
  const rows = await q.query<{ id: number }>(
    `INSERT INTO alerts (kind, site, gateway, device_id, detail, created_at, event_id, dedupe) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (dedupe) DO NOTHING RETURNING id`,
    [a.kind, a.site ?? null, a.gateway ?? null, a.deviceId ?? null, a.detail, nowMs, a.eventId ?? null, a.dedupe],
  )
  const id = rows[0]?.id ?? null
  if (id === null) return null
  onRaised?.(a.kind)
  const hook = WEBHOOK_OF[a.kind]
  if (hook) await enqueueWebhook(q, hook, `alert:${id}`, { alertId: id, kind: a.kind, site: a.site ?? null, gateway: a.gateway ?? null, deviceId: a.deviceId ?? null, ...a.detail }, nowMs)
  return id
}

export async function resolveAlerts(q: Sql, where: { kind: AlertKind; site: string; gateway: string }, nowMs: number): Promise<void> {
  await q.query('UPDATE alerts SET resolved_at = $4 WHERE kind = $1 AND site = $2 AND gateway = $3 AND resolved_at IS NULL', [where.kind, where.site, where.gateway, nowMs])
}

export function alertView(r: Record<string, unknown>): Record<string, unknown> {
  return {
    id: r.id,
    kind: r.kind,
    site: r.site,
    gateway: r.gateway,
    deviceId: r.device_id,
    detail: r.detail,
    createdAt: new Date(Number(r.created_at)).toISOString(),
    resolvedAt: iso(r.resolved_at as number | null),
    eventId: r.event_id,
  }
}
