// What happened to devices lately, in memory, for people (device show, the
// status page): each enrolled device's last refused connect and why, and the
// latest residual-use alerts. Fed by the admission side (noteRefusal, every
// refused connect on any protocol) and by the audit entries the gateway
// commits (alert.residual-use); seeded at start from the tail of the audit
// log, so a restart does not forget what was refused just before it. The
// audit log stays the record: `device history` reads it in full.
import type { Gateway } from '../gateway.ts'
import { AUDIT_PREFIX, type AuditEntry, type AuditInput } from '../store/audit.ts'
import { prefixEnd } from '../store/store.ts'

/** A refused connect (or a cut identity's attempt) of one device. */
export interface RefusalFact {
  /** seconds since the epoch */
  at: number
  protocol: string
  /** the stable reason (`wrong-key`, `wrong-audience`, `revoked`, …; `residual-use` when only the alert says it) */
  reason: string
  /** what a person can act on */
  detail: string
  remote?: string
  /** where it is known from: the admission since this start, or an alert.residual-use in the audit log */
  source: 'admission' | 'audit'
}

export interface ResidualAlertFact {
  /** seconds since the epoch */
  at: number
  deviceId: string
  protocol: string
  detail: string
  count: number
  remote?: string
}

/** Audit entries read back at start for the last refusals and alerts. */
const SEED_ENTRIES = 20_000
const RECENT_ALERTS = 200

/** `connect refused (wrong-key): device is revoked` → `wrong-key`. */
const reasonOf = (detail: string): string => /connect refused \(([^)]+)\)/.exec(detail)?.[1] ?? 'residual-use'

export class DeviceActivity {
  readonly #gw: Gateway
  readonly #last = new Map<string, RefusalFact>()
  #alerts: ResidualAlertFact[] = []
  readonly #off: () => void

  private constructor(gw: Gateway) {
    this.#gw = gw
    this.#off = gw.onCommitted((change) => {
      for (const a of change.audit ?? []) this.#fromAudit(a, gw.nowS())
    })
  }

  /** Seeded from the last SEED_ENTRIES audit entries, then kept current as the gateway commits. */
  static async open(gw: Gateway): Promise<DeviceActivity> {
    const activity = new DeviceActivity(gw)
    const seeded: AuditEntry[] = []
    for await (const [, value] of gw.store.db.iterator({ gte: AUDIT_PREFIX, lt: prefixEnd(AUDIT_PREFIX), reverse: true, limit: SEED_ENTRIES })) {
      const e = JSON.parse(value) as AuditEntry
      if (e.action === 'alert.residual-use') seeded.push(e)
    }
    for (const e of seeded.reverse()) activity.#fromAudit(e, Math.floor(e.at / 1000))
    return activity
  }

  #fromAudit(a: AuditInput, atS: number): void {
    if (a.action !== 'alert.residual-use' || a.subject === undefined) return
    const d = (a.data ?? {}) as { protocol?: string; detail?: string; count?: number; remote?: string }
    const detail = String(d.detail ?? '')
    const alert: ResidualAlertFact = { at: atS, deviceId: a.subject, protocol: String(d.protocol ?? ''), detail, count: Number(d.count ?? 1), ...(d.remote !== undefined ? { remote: d.remote } : {}) }
    this.#alerts.push(alert)
    if (this.#alerts.length > RECENT_ALERTS * 2) this.#alerts = this.#alerts.slice(-RECENT_ALERTS)
    const known = this.#last.get(a.subject)
    // the admission's own fact of the same attempt says more (its detail): keep it
    if (known && known.source === 'admission' && known.at >= atS - 1) return
    this.#last.set(a.subject, { at: atS, protocol: alert.protocol, reason: reasonOf(detail), detail, ...(alert.remote !== undefined ? { remote: alert.remote } : {}), source: 'audit' })
  }

  /** A refused connect, as the admission decided it. Only enrolled devices are remembered: made-up ids are the metric's and the log's. */
  noteRefusal(deviceId: string, protocol: string, reason: string, detail: string, remote?: string): void {
    if (this.#gw.registry.get(deviceId) === undefined) return
    this.#last.set(deviceId, { at: this.#gw.nowS(), protocol, reason, detail, ...(remote !== undefined ? { remote } : {}), source: 'admission' })
  }

  lastRefusal(deviceId: string): RefusalFact | undefined {
    return this.#last.get(deviceId)
  }

  /** The latest residual-use alerts, newest first. */
  recentAlerts(limit = 50): ResidualAlertFact[] {
    return this.#alerts.slice(-limit).reverse()
  }

  stop(): void {
    this.#off()
  }
}
