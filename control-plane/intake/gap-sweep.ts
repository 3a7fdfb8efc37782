// A seq that stayed missing for --gap-grace is a seq-gap alert (PROTOCOL §3:
// "the CP can see a gap"). Run by the instance holding the re-send loop; the
// alert is resolved by the intake once the gap fills (a late copy arrived).
import type { AlertKind } from '../fleet/alerts.ts'
import { raiseAlert } from '../fleet/alerts.ts'
import type { Clock } from '../runtime/clock.ts'
import type { Database } from '../storage/database.ts'

export async function sweepGaps(db: Database, o: { clock: Clock; graceMs: number; onAlert?: (kind: AlertKind) => void }): Promise<number> {
  const now = o.clock.nowMs()
  const open = await db.query<{ site: string; id: string; epoch: number; contiguous_seq: number; max_seq: number; gap_since: number }>(
    'SELECT site, id, epoch, contiguous_seq, max_seq, gap_since FROM gateways WHERE gap_since IS NOT NULL AND gap_since <= $1',
    [now - o.graceMs],
  )
  let raised = 0
  for (const g of open) {
    const from = g.contiguous_seq + 1
    const next = await db.query<{ seq: number }>('SELECT MIN(seq) AS seq FROM events WHERE site = $1 AND gateway = $2 AND epoch = $3 AND seq > $4', [g.site, g.id, g.epoch, g.contiguous_seq])
    const to = (next[0]?.seq ?? g.max_seq + 1) - 1
    const id = await raiseAlert(
      db,
      { kind: 'seq-gap', site: g.site, gateway: g.id, detail: { from, to, epoch: g.epoch, since: new Date(g.gap_since).toISOString(), detail: `events ${from}..${to} of ${g.site}/${g.id} never arrived` }, dedupe: `gap:${g.site}/${g.id}:${g.epoch}:${from}` },
      now,
      o.onAlert,
    )
    if (id !== null) raised++
  }
  return raised
}
