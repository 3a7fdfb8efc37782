// The auditors' export: every stored event, as JSON lines or CSV, each row
// with the JWS as the gateway signed it and the gateway's pinned public key,
// so it can be re-verified offline (verify-export.ts, or any JWS library).
// Streamed in pages: an export of millions of events holds one page in memory.
import type { Database } from '../storage/database.ts'
import type { EventRow } from './timeline.ts'

export const EXPORT_COLUMNS = ['id', 'site', 'gateway', 'gatewayPublicKey', 'epoch', 'seq', 'type', 'jti', 'iat', 'deviceId', 'commandJti', 'receivedAt', 'jws'] as const

export interface ExportFilter {
  site?: string | undefined
  gateway?: string | undefined
  deviceId?: string | undefined
  type?: string | undefined
  afterId?: number
}

const PAGE = 1000

export async function* exportRows(db: Database, f: ExportFilter): AsyncGenerator<Record<(typeof EXPORT_COLUMNS)[number], unknown>> {
  let after = f.afterId ?? 0
  for (;;) {
    const rows = await db.query<EventRow & { public_key: string }>(
      `SELECT e.*, g.public_key FROM events e JOIN gateways g ON g.site = e.site AND g.id = e.gateway
        WHERE e.id > $1 AND ($2::text IS NULL OR e.site = $2) AND ($3::text IS NULL OR e.gateway = $3) AND ($4::text IS NULL OR e.device_id = $4) AND ($5::text IS NULL OR e.type = $5)
        ORDER BY e.id LIMIT $6`,
      [after, f.site ?? null, f.gateway ?? null, f.deviceId ?? null, f.type ?? null, PAGE],
    )
    for (const r of rows) {
      yield {
        id: r.id,
        site: r.site,
        gateway: r.gateway,
        gatewayPublicKey: r.public_key,
        epoch: r.epoch,
        seq: r.seq,
        type: r.type,
        jti: r.jti,
        iat: r.iat,
        deviceId: r.device_id,
        commandJti: r.command_jti,
        receivedAt: new Date(r.received_at).toISOString(),
        jws: r.jws,
      }
    }
    if (rows.length < PAGE) return
    after = rows.at(-1)!.id
  }
}

/**
 * One CSV field (RFC 4180): quoted when it holds a comma, quote or line
 * break. A cell a spreadsheet would run as a formula (= + - @, tab, CR) gets
 * a leading apostrophe (OWASP CSV injection); no exported value starts so
 * but a device id or a JWS could in principle (ids cannot: PROTOCOL §1).
 */
export function csvField(v: unknown): string {
  let s = v === null || v === undefined ? '' : String(v)
  if (/^[=+\-@\t\r]/.test(s)) s = `'${s}`
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s
}

export const csvLine = (values: readonly unknown[]): string => `${values.map(csvField).join(',')}\r\n`
