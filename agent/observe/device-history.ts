// One device's story from the audit log, in order: its enrollment, every
// state change with its reason, the commands that named it, each action
// queued, delivered, acked, expired or cancelled, its certificates, the
// residual-use alerts, and how a retirement ended. Read from the store, so it
// works with the agent running (through the admin socket) or stopped. The
// log is scanned from the start: the audit log has no index by device, and
// this is a question a person asks now and then, not a hot path.
import { prefixEnd, seqKey, type Store } from '../store/store.ts'
import { AUDIT_PREFIX, type AuditEntry } from '../store/audit.ts'

export interface HistoryItem {
  seq: number
  /** milliseconds since the epoch */
  at: number
  actor: string
  action: string
  /** one line a person reads */
  summary: string
  reason?: string
  data?: unknown
}

type Data = Record<string, unknown>

const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined)

/** Whether an entry is about `id`: its subject, or a command whose arguments name it. */
function mentions(e: AuditEntry, id: string, jtis: Set<string>): boolean {
  if (e.subject === id) return true
  const d = (e.data ?? {}) as Data
  if (d.deviceId === id) return true
  if (e.action === 'command.accepted') {
    const args = (d.args ?? {}) as { deviceId?: unknown; device?: { id?: unknown } }
    if (args.deviceId === id || args.device?.id === id) {
      if (typeof d.jti === 'string') jtis.add(d.jti)
      return true
    }
  }
  return (e.action === 'command.completed' || e.action === 'command.failed') && typeof d.jti === 'string' && jtis.has(d.jti)
}

/**
 * The audit entries about one device, oldest first; with `afterSeq` and
 * `throughSeq` only those in (afterSeq, throughSeq] (a page that follows a
 * device reads only what is new; a command completed there whose acceptance
 * came before is not matched).
 */
export async function* deviceAuditEntries(store: Store, deviceId: string, range: { afterSeq?: number; throughSeq?: number } = {}): AsyncGenerator<AuditEntry> {
  const jtis = new Set<string>()
  const it = store.db.iterator({
    gt: range.afterSeq !== undefined ? seqKey(AUDIT_PREFIX, range.afterSeq) : AUDIT_PREFIX,
    ...(range.throughSeq !== undefined ? { lte: seqKey(AUDIT_PREFIX, range.throughSeq) } : { lt: prefixEnd(AUDIT_PREFIX) }),
  })
  try {
    for (;;) {
      const batch = await it.nextv(1000)
      if (batch.length === 0) return
      for (const [, value] of batch) {
        const e = JSON.parse(value) as AuditEntry
        if (mentions(e, deviceId, jtis)) yield e
      }
    }
  } finally {
    await it.close()
  }
}

/** The entries about `deviceId` (in `range`, as deviceAuditEntries), each as one line, oldest first. */
export async function deviceHistory(store: Store, deviceId: string, range: { afterSeq?: number; throughSeq?: number } = {}): Promise<HistoryItem[]> {
  const items: HistoryItem[] = []
  for await (const e of deviceAuditEntries(store, deviceId, range)) items.push(describeEntry(e))
  return items
}

/** An audit entry as one line: what happened, and why where a reason was given. */
export function describeEntry(e: AuditEntry): HistoryItem {
  const d = (e.data ?? {}) as Data
  const reason = str(d.reason)
  const item = (summary: string, why = reason): HistoryItem => ({ seq: e.seq, at: e.at, actor: e.actor, action: e.action, summary, ...(why !== undefined ? { reason: why } : {}), data: e.data })
  switch (e.action) {
    case 'device.enroll':
      return item(d.from === 'none' ? `enrolled (${String(d.credentialKind)}), ${String(d.to)}` : `record replaced (${String(d.credentialKind)}): ${String(d.from)} -> ${String(d.to)}${Array.isArray(d.changes) && d.changes.length ? `; ${(d.changes as string[]).join('; ')}` : ''}`)
    case 'device.quarantine':
    case 'device.release':
    case 'device.revoke':
    case 'device.retire':
      return item(d.again ? `retire asked again${d.wipe === false ? ' without a wipe' : ''}` : `${e.action.slice('device.'.length)}: ${String(d.from)} -> ${String(d.to)}`)
    case 'device.retire-complete':
      return item(`retired: ${String(d.from)} -> ${String(d.to)}`)
    case 'retire.access-removed':
      return item(`access removed in ${String(d.accessRemovedMs)} ms, ${String(d.credentialsRevoked)} credential(s) revoked`)
    case 'device.retired': {
      const wipe = (d.wipe ?? {}) as { status?: string; reason?: string }
      return item(`retirement closed: wipe ${String(wipe.status)}`, str(wipe.reason) ?? reason)
    }
    case 'device.removed':
      return item('removed from the registry')
    case 'device.key-expired':
      return item(`key(s) past their overlap dropped`)
    case 'action.queued':
      return item(`${String(d.act)} queued (${String(d.actionId)})${Array.isArray(d.superseded) && d.superseded.length ? `, superseding ${(d.superseded as string[]).join(', ')}` : ''}`)
    case 'action.delivered':
      return item(`${String(d.act)} delivered over ${String(d.protocol)} (${String(d.actionId)})`)
    case 'action.acked':
      return item(`${String(d.act)} acked ${String(d.status)} over ${String(d.protocol)} (${String(d.actionId)})`, str(d.detail))
    case 'action.expired':
      return item(`${String(d.act)} expired unacknowledged (${String(d.actionId)})`)
    case 'action.cancelled':
      return item(`${String(d.act)} cancelled (${String(d.actionId)})`)
    case 'alert.residual-use':
      return item(`residual use over ${String(d.protocol)}: ${String(d.detail)}${Number(d.count) > 1 ? ` (${String(d.count)} attempts)` : ''}`)
    case 'command.accepted':
      return item(`command ${String(d.op)} accepted (${String(d.jti)})`)
    case 'command.completed':
      return item(`command ${String(d.op)} completed (${String(d.jti)})`)
    case 'command.failed':
      return item(`command ${String(d.op)} failed: ${String(d.reason)}`, str(d.detail))
    case 'certificate.issued':
      return item(`certificate ${String(d.serial)} issued (${String(d.via)})`)
    case 'certificate.revoked':
      return item(`certificate ${String(d.serial)} revoked (${String(d.reason)})`)
    case 'certificate.refused':
      return item('certificate request refused', str(d.detail))
    default:
      return item(e.action)
  }
}
