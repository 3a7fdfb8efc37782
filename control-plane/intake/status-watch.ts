// The gateways' retained status (PROTOCOL §3): online, version, the last
// event seq and the audit head. Every instance receives every status (a plain
// subscription: retained messages are not given to shared ones) and keeps
// the latest per gateway; only the instance holding the re-send loop judges
// them, in the order they came, so two instances never disagree about which
// status is newer.
//
// A status whose audit head or seq went back from an earlier status is a
// rollback (statuses come in order). One whose seq is behind the events
// stored is a suspicion, confirmed only when no status has reached the seq
// stored at the time of the suspicion for --rollback-confirm: a status and
// the events after it can reach different instances, and the later events
// can be stored first (under load, every time). A restored gateway at rest
// publishes nothing newer, so the suspicion stands and is confirmed; a live
// one refreshes its status within a second of new events (the agent's
// status refresh), and that status reaches what was stored before it, which
// clears it. --rollback-confirm must therefore exceed that second.
import type { CommandSigner } from '../commands/signer.ts'
import type { AlertKind } from '../fleet/alerts.ts'
import type { GatewayRow } from '../fleet/registry.ts'
import type { Clock } from '../runtime/clock.ts'
import type { Logger } from '../runtime/log.ts'
import type { Database } from '../storage/database.ts'
import { applyRollback } from './rollback.ts'
import { gatewayOfTopic } from './topics.ts'
import { parseStatus, type GatewayStatus } from '../../wire/status.ts'

export class StatusWatch {
  readonly #db: Database
  readonly #clock: Clock
  readonly #log: Logger
  readonly #signer: CommandSigner
  readonly #confirmMs: number
  readonly #resendAfterMs: number
  readonly #onAlert: (kind: AlertKind) => void
  readonly #onOnline: () => void
  /** the latest status with seq or audit of each gateway, and the latest online flag */
  readonly #latest = new Map<string, { site: string; gateway: string; status: GatewayStatus; history: GatewayStatus | null }>()
  /** gateways whose status looks behind: since when, and the seq seen then that a live gateway's next status reaches */
  readonly #suspect = new Map<string, { since: number; target: number }>()
  readonly #chains = new Map<string, Promise<void>>()
  #leader = false

  constructor(o: { db: Database; clock: Clock; log: Logger; signer: CommandSigner; confirmMs: number; resendAfterMs: number; onAlert?: (kind: AlertKind) => void; onOnline?: () => void }) {
    this.#db = o.db
    this.#clock = o.clock
    this.#log = o.log
    this.#signer = o.signer
    this.#confirmMs = o.confirmMs
    this.#resendAfterMs = o.resendAfterMs
    this.#onAlert = o.onAlert ?? (() => {})
    this.#onOnline = o.onOnline ?? (() => {})
  }

  /** Every status message this instance receives. */
  onMessage(topic: string, payload: Buffer): void {
    const where = gatewayOfTopic(topic, 'status')
    if (!where) return
    // A cleared retained status (empty payload) says nothing.
    const s = parseStatus(payload.toString('utf8'))
    if (!s) return
    const key = `${where.site}/${where.gateway}`
    const before = this.#latest.get(key)
    const carriesHistory = s.seq !== undefined || s.audit !== undefined
    this.#latest.set(key, { ...where, status: s, history: carriesHistory ? s : (before?.history ?? null) })
    if (this.#leader) this.#evaluate(key)
  }

  setLeader(leader: boolean): void {
    const was = this.#leader
    this.#leader = leader
    if (!leader) this.#suspect.clear()
    if (leader && !was) for (const key of this.#latest.keys()) this.#evaluate(key)
  }

  /** Suspicions due for confirmation are judged again. */
  tick(): void {
    if (!this.#leader) return
    const now = this.#clock.nowMs()
    for (const [key, { since }] of this.#suspect) if (now - since >= this.#confirmMs) this.#evaluate(key)
  }

  /** Resolves once every judgement under way is done (tests, shutdown). */
  async settled(): Promise<void> {
    await Promise.all([...this.#chains.values()])
  }

  #evaluate(key: string): void {
    const prev = this.#chains.get(key) ?? Promise.resolve()
    const next = prev
      .then(() => this.#judge(key))
      .catch((err: unknown) => this.#log.error({ err, gateway: key }, 'judging a gateway status failed'))
      .finally(() => {
        if (this.#chains.get(key) === next) this.#chains.delete(key)
      })
    this.#chains.set(key, next)
  }

  async #judge(key: string): Promise<void> {
    const latest = this.#latest.get(key)
    if (!latest || !this.#leader) return
    const now = this.#clock.nowMs()
    const { site, gateway, status } = latest
    const s = latest.history
    let cameOnline = false
    await this.#db.tx(async (q) => {
      const g = (await q.query<GatewayRow>('SELECT * FROM gateways WHERE site = $1 AND id = $2 FOR UPDATE', [site, gateway]))[0]
      if (!g) return
      if (g.online !== status.online || (status.version !== undefined && g.version !== status.version)) {
        await q.query('UPDATE gateways SET online = $3, version = COALESCE($4, version), status_at = $5 WHERE site = $1 AND id = $2', [site, gateway, status.online, status.version ?? null, now])
        if (status.online && g.online === false) {
          // Back from offline: its session now delivers what the broker held. Give that time before re-sending.
          await q.query("UPDATE commands SET next_send_at = $3 WHERE site = $1 AND gateway = $2 AND state = 'sent'", [site, gateway, now + this.#resendAfterMs])
        }
        cameOnline = status.online
      }
      if (!s) return
      // Statuses come in order on one connection: one behind an earlier status went back.
      const auditBack = s.audit !== undefined && g.audit_seq !== null && (s.audit.seq < g.audit_seq || (s.audit.seq === g.audit_seq && s.audit.hash !== g.audit_hash))
      const statusBack = s.seq !== undefined && g.status_seq !== null && s.seq < g.status_seq
      // A status behind the events stored is only a suspicion: under load, events signed after it
      // are stored (by any instance) before it is judged.
      const behindEvents = s.seq !== undefined && g.baseline_seq !== null && s.seq < g.max_seq
      const keep = (): Promise<unknown> =>
        q.query('UPDATE gateways SET status_seq = COALESCE($3, status_seq), audit_seq = COALESCE($4, audit_seq), audit_hash = COALESCE($5, audit_hash), status_at = $6 WHERE site = $1 AND id = $2', [
          site,
          gateway,
          s.seq ?? null,
          s.audit?.seq ?? null,
          s.audit?.hash ?? null,
          now,
        ])
      if (!auditBack && !statusBack && !behindEvents) {
        this.#suspect.delete(key)
        await keep()
        return
      }
      const prior = this.#suspect.get(key)
      if (!auditBack && !statusBack && prior && s.seq! >= prior.target) {
        // It reached what was stored when the suspicion began: a live gateway moving on, not a restored one.
        // Suspected anew against what is stored now (its next status reaches that too, or it stops moving).
        this.#suspect.set(key, { since: now, target: g.max_seq })
        await keep()
        return
      }
      const since = prior?.since ?? now
      this.#suspect.set(key, { since, target: prior?.target ?? Math.max(g.max_seq, g.status_seq ?? 0) })
      if (now - since < this.#confirmMs) return
      this.#suspect.delete(key)
      const remembered = { seq: Math.max(g.max_seq, g.status_seq ?? 0), ...(g.audit_seq !== null ? { audit: { seq: g.audit_seq, hash: g.audit_hash } } : {}) }
      const detail = auditBack
        ? `audit head went back from entry ${g.audit_seq} to ${s.audit!.seq}${s.audit!.seq === g.audit_seq ? ' (another hash)' : ''}`
        : `status says last event ${s.seq}, ${remembered.seq} was seen before`
      const r = await applyRollback(q, g, { what: auditBack ? 'audit-head' : 'status-seq', detail, restoredSeq: s.seq ?? g.max_seq, remembered, seen: { ...s } }, { clock: this.#clock, signer: this.#signer, onAlert: this.#onAlert })
      await q.query('UPDATE gateways SET status_seq = $3, audit_seq = $4, audit_hash = $5, status_at = $6 WHERE site = $1 AND id = $2', [site, gateway, s.seq ?? null, s.audit?.seq ?? null, s.audit?.hash ?? null, now])
      this.#log.warn({ gateway: key, detail, requeued: r.requeued.length, reissued: r.reissued.length }, 'ROLLBACK: gateway restored from an old copy of its data; its decisions since are sent again')
    })
    if (cameOnline) this.#onOnline()
  }
}
