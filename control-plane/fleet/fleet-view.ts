// The fleet at a glance (GET /v1/fleet, the page's one data source): sites
// and their gateways' status, devices by state across sites, open
// retirements and their age, credentials expiring, residual-use alerts,
// offboarding exceptions and the other open alerts.
import { iso, type Clock } from '../runtime/clock.ts'
import type { Database } from '../storage/database.ts'
import { alertView } from './alerts.ts'

const EXPIRING_WITHIN_S = 30 * 86_400

export async function fleetView(db: Database, clock: Clock): Promise<Record<string, unknown>> {
  const now = clock.nowMs()
  const nowS = Math.floor(now / 1000)
  const [sites, gateways, waiting, openAlertsByGw, states, retiring, expiring, residual, exceptions, alerts, instances] = await Promise.all([
    db.query<{ id: string; name: string | null }>('SELECT id, name FROM sites ORDER BY id'),
    db.query<Record<string, unknown> & { site: string; id: string }>('SELECT site, id, online, version, last_event_at, status_at, max_seq, epoch, contiguous_seq FROM gateways ORDER BY site, id'),
    db.query<{ site: string; gateway: string; state: string; n: number }>("SELECT site, gateway, state, COUNT(*) AS n FROM commands WHERE state IN ('queued', 'sent', 'accepted') GROUP BY site, gateway, state"),
    db.query<{ site: string; gateway: string; n: number }>("SELECT site, gateway, COUNT(*) AS n FROM alerts WHERE resolved_at IS NULL AND kind <> 'residual-use' GROUP BY site, gateway"),
    db.query<{ state: string | null; site: string; n: number }>('SELECT state, site, COUNT(*) AS n FROM devices GROUP BY state, site ORDER BY state, site'),
    db.query<Record<string, unknown>>(
      `SELECT d.id, d.site, d.gateway, d.state, COALESCE(d.retiring_since, c.created_at) AS since, c.jti, c.state AS command_state
         FROM devices d LEFT JOIN LATERAL (SELECT jti, state, created_at FROM commands WHERE device_id = d.id AND op = 'device.retire' ORDER BY seq DESC LIMIT 1) c ON true
        WHERE d.state = 'retiring' OR c.state IN ('queued', 'sent', 'accepted')
        ORDER BY since NULLS LAST LIMIT 500`,
    ),
    db.query<Record<string, unknown>>(
      "SELECT id, site, gateway, state, credential_expires_at FROM devices WHERE credential_expires_at IS NOT NULL AND credential_expires_at < $1 AND COALESCE(state, '') NOT IN ('retired', 'revoked') ORDER BY credential_expires_at LIMIT 500",
      [nowS + EXPIRING_WITHIN_S],
    ),
    db.query<Record<string, unknown>>("SELECT * FROM alerts WHERE kind = 'residual-use' ORDER BY id DESC LIMIT 50"),
    db.query<Record<string, unknown>>(
      `SELECT jti, site, gateway, device_id, finished_at, evidence FROM commands
        WHERE op = 'device.retire' AND state = 'completed' AND evidence IS NOT NULL
          AND (evidence->'wipe'->>'status' IS DISTINCT FROM 'done' OR evidence->'network'->>'backend' = 'none' OR evidence->'network'->>'rule' IS DISTINCT FROM 'blocked')
        ORDER BY finished_at DESC LIMIT 200`,
    ),
    db.query<Record<string, unknown>>("SELECT * FROM alerts WHERE resolved_at IS NULL AND kind <> 'residual-use' ORDER BY id DESC LIMIT 50"),
    db.query<Record<string, unknown>>('SELECT id, leader, slots, seen_at FROM instances WHERE seen_at > $1 ORDER BY id', [now - 60_000]),
  ])
  const waitingOf = (site: string, gw: string): Record<string, number> => {
    const w: Record<string, number> = { queued: 0, sent: 0, accepted: 0 }
    for (const r of waiting) if (r.site === site && r.gateway === gw) w[r.state] = Number(r.n)
    return w
  }
  const byState = new Map<string, { state: string; total: number; bySite: Record<string, number> }>()
  for (const r of states) {
    const s = r.state ?? 'pending'
    const e = byState.get(s) ?? { state: s, total: 0, bySite: {} }
    e.total += Number(r.n)
    e.bySite[r.site] = (e.bySite[r.site] ?? 0) + Number(r.n)
    byState.set(s, e)
  }
  return {
    generatedAt: new Date(now).toISOString(),
    instances: instances.map((i) => ({ id: i.id, leader: i.leader, slots: i.slots, seenAt: iso(i.seen_at as number) })),
    sites: sites.map((s) => ({
      id: s.id,
      name: s.name,
      gateways: gateways
        .filter((g) => g.site === s.id)
        .map((g) => ({
          id: g.id,
          online: g.online,
          version: g.version,
          lastEventAt: iso(g.last_event_at as number | null),
          statusAt: iso(g.status_at as number | null),
          seq: g.max_seq,
          epoch: g.epoch,
          gap: Number(g.max_seq) > Number(g.contiguous_seq),
          waiting: waitingOf(s.id, g.id),
          openAlerts: Number(openAlertsByGw.find((a) => a.site === s.id && a.gateway === g.id)?.n ?? 0),
        })),
    })),
    devicesByState: [...byState.values()],
    openRetirements: retiring.map((r) => ({
      deviceId: r.id,
      site: r.site,
      gateway: r.gateway,
      state: r.state,
      since: iso(r.since as number | null),
      ageS: r.since === null ? null : Math.max(0, Math.floor((now - Number(r.since)) / 1000)),
      command: r.jti ?? null,
      commandState: r.command_state ?? null,
    })),
    expiringCredentials: expiring.map((r) => ({ deviceId: r.id, site: r.site, gateway: r.gateway, state: r.state, expiresAt: new Date(Number(r.credential_expires_at) * 1000).toISOString(), inS: Number(r.credential_expires_at) - nowS })),
    residualUse: residual.map(alertView),
    offboardingExceptions: exceptions.map((r) => {
      const e = r.evidence as Record<string, any>
      const why: string[] = []
      if (e.wipe?.status !== 'done') why.push(`wipe ${e.wipe?.status ?? '?'}`)
      if (e.network?.backend === 'none' || e.network?.rule !== 'blocked') why.push(`network ${e.network?.backend ?? '?'}/${e.network?.rule ?? '?'}`)
      return { deviceId: r.device_id, site: r.site, gateway: r.gateway, command: r.jti, at: iso(r.finished_at as number), exceptions: why }
    }),
    alerts: alerts.map(alertView),
  }
}
