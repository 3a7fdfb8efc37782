// Who does what among the instances sharing one PostgreSQL, decided by
// advisory locks held on one dedicated connection per instance (PGlite: one
// instance, it holds everything):
// - the leader lock: the re-send loop, status judgement, gap sweep and
//   webhook deliveries run on the one instance holding it;
// - intake slots 0..K-1: each a persistent MQTT session in the shared
//   subscription, held by exactly one instance; the instances divide them.
// A killed instance's connection closes, PostgreSQL drops its locks, and the
// others take its leader lock and its slots on their next beats; a slot's
// session kept on the broker what arrived meanwhile (and what was delivered
// but not acknowledged), so its new holder gets all of it.
import type { Clock } from '../runtime/clock.ts'
import type { Logger } from '../runtime/log.ts'
import { LOCK_LEADER, LOCK_SLOT_BASE, type Database, type LockSession } from '../storage/database.ts'

export interface CoordinatorHooks {
  /** called on every change; may be slow (it opens or closes MQTT sessions) */
  slots(held: ReadonlySet<number>): Promise<void>
  leader(held: boolean): void
}

export class Coordinator {
  readonly #db: Database
  readonly #o: { instanceId: string; slots: number; heartbeatMs: number; clock: Clock; log: Logger }
  readonly #hooks: CoordinatorHooks
  #session: LockSession | null = null
  #leader = false
  readonly #held = new Set<number>()
  /** slots seen free on the previous beat: taken on the next even beyond this instance's share */
  readonly #seenFree = new Set<number>()
  #timer: NodeJS.Timeout | null = null
  #stopped = false
  #beating: Promise<void> | null = null

  constructor(db: Database, o: { instanceId: string; slots: number; heartbeatMs: number; clock: Clock; log: Logger }, hooks: CoordinatorHooks) {
    this.#db = db
    this.#o = o
    this.#hooks = hooks
  }

  get leader(): boolean {
    return this.#leader
  }

  get slots(): ReadonlySet<number> {
    return this.#held
  }

  async start(): Promise<void> {
    const now = this.#o.clock.nowMs()
    await this.#db.query(
      `INSERT INTO instances (id, started_at, seen_at) VALUES ($1, $2, $2) ON CONFLICT (id) DO UPDATE SET started_at = $2, seen_at = $2, leader = false, slots = '{}'`,
      [this.#o.instanceId, now],
    )
    await this.beat()
    this.#schedule()
  }

  #schedule(): void {
    if (this.#stopped) return
    this.#timer = setTimeout(() => {
      this.#timer = null
      void this.beat().finally(() => this.#schedule())
    }, this.#o.heartbeatMs)
  }

  /** One beat (exposed for tests). */
  beat(): Promise<void> {
    this.#beating ??= this.#beat()
      .catch((err: unknown) => this.#o.log.warn({ err }, 'coordination beat failed'))
      .finally(() => (this.#beating = null))
    return this.#beating
  }

  async #beat(): Promise<void> {
    if (this.#stopped) return
    const log = this.#o.log
    if (!this.#session) {
      const s = await this.#db.lockSession()
      s.onLost((err) => void this.#lost(s, err))
      this.#session = s
    }
    const s = this.#session
    await s.ping()
    const now = this.#o.clock.nowMs()
    if (!this.#leader && (await s.tryLock(LOCK_LEADER))) {
      this.#leader = true
      // The lock is the truth: a row of another instance that still says it leads is one that died holding it.
      await this.#db.query('UPDATE instances SET leader = false WHERE id <> $1 AND leader', [this.#o.instanceId])
      log.info({ instance: this.#o.instanceId }, 'holding the re-send loop (leader)')
      this.#hooks.leader(true)
    }
    const live = Number(
      (await this.#db.query<{ n: number }>('SELECT COUNT(*) AS n FROM instances WHERE seen_at >= $1 AND id <> $2', [now - 3 * this.#o.heartbeatMs, this.#o.instanceId]))[0]?.n ?? 0,
    ) + 1
    const target = Math.ceil(this.#o.slots / live)
    let changed = false
    for (let k = 0; k < this.#o.slots && !this.#stopped; k++) {
      if (this.#held.has(k)) continue
      if (!(await s.tryLock(LOCK_SLOT_BASE + k))) {
        this.#seenFree.delete(k)
        continue
      }
      if (this.#held.size < target || this.#seenFree.has(k)) {
        this.#held.add(k)
        this.#seenFree.delete(k)
        changed = true
      } else {
        // Free, but another instance is short of its share: leave it one beat.
        await s.unlock(LOCK_SLOT_BASE + k)
        this.#seenFree.add(k)
      }
    }
    let release: number | null = null
    if (live > 1 && this.#held.size > target) release = Math.max(...this.#held)
    if (release !== null) {
      this.#held.delete(release)
      changed = true
    }
    if (changed) {
      log.info({ slots: [...this.#held].sort((a, b) => a - b), live }, 'intake slots held')
      await this.#hooks.slots(new Set(this.#held))
    }
    if (release !== null) await s.unlock(LOCK_SLOT_BASE + release)
    await this.#db.query('UPDATE instances SET seen_at = $2, leader = $3, slots = $4 WHERE id = $1', [this.#o.instanceId, now, this.#leader, [...this.#held]])
    await this.#db.query('DELETE FROM instances WHERE seen_at < $1', [now - 3_600_000])
  }

  async #lost(s: LockSession, err: Error): Promise<void> {
    if (this.#session !== s) return
    this.#session = null
    const hadLeader = this.#leader
    this.#leader = false
    this.#held.clear()
    this.#seenFree.clear()
    if (!this.#stopped) this.#o.log.error({ err: err.message }, 'lost the database lock session: stepping down from the re-send loop and the intake until it is back')
    if (hadLeader) this.#hooks.leader(false)
    await this.#hooks.slots(new Set()).catch(() => {})
  }

  async stop(): Promise<void> {
    this.#stopped = true
    if (this.#timer) clearTimeout(this.#timer)
    await this.#beating
    const s = this.#session
    this.#session = null
    if (this.#leader) {
      this.#leader = false
      this.#hooks.leader(false)
    }
    this.#held.clear()
    await this.#hooks.slots(new Set()).catch(() => {})
    await this.#db.query('DELETE FROM instances WHERE id = $1', [this.#o.instanceId]).catch(() => {})
    await s?.close()
  }
}
