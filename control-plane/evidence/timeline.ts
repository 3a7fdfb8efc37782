// One device's story across sites, from the signed events that name it
// (device.state, action.*, alerts, and the cmd.* events of its commands), in
// the order they arrived, each with the JWS the gateway signed.
import type { Database } from '../storage/database.ts'

export interface EventRow {
  id: number
  site: string
  gateway: string
  epoch: number
  seq: number
  jti: string
  type: string
  iat: number
  device_id: string | null
  command_jti: string | null
  jws: string
  claims: Record<string, unknown>
  received_at: number
  received_by: string
}

export function eventView(e: EventRow, withJws = true): Record<string, unknown> {
  return {
    id: e.id,
    site: e.site,
    gateway: e.gateway,
    epoch: e.epoch,
    seq: e.seq,
    type: e.type,
    jti: e.jti,
    iat: e.iat,
    deviceId: e.device_id,
    commandJti: e.command_jti,
    data: (e.claims.data ?? {}) as Record<string, unknown>,
    receivedAt: new Date(e.received_at).toISOString(),
    ...(withJws ? { jws: e.jws } : {}),
  }
}

export async function deviceTimeline(db: Database, deviceId: string, o: { afterId?: number; limit?: number } = {}): Promise<EventRow[]> {
  return db.query<EventRow>('SELECT * FROM events WHERE device_id = $1 AND id > $2 ORDER BY id LIMIT $3', [deviceId, o.afterId ?? 0, Math.min(o.limit ?? 1000, 10_000)])
}
