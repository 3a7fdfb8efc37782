// Control-plane commands (PROTOCOL §3): verified (verify.ts), replay
// protection by jti, stale ones refused (superseded), durable acceptance,
// then execution in arrival order through the op table (ops.ts), each
// outcome answered by a signed event.
import type { KeyObject } from 'node:crypto'
import { OPS, type Op, type OpRunner } from './ops.ts'
import { CommandFailure } from './failure.ts'
import { deviceOf, verifyCommand, type Command, type Verification, type VerifyContext } from './verify.ts'
import type { AccessEnforcer } from '../trust/enforcer.ts'
import { EdgewardenError, isEdgewardenError } from '../runtime/errors.ts'
import type { Gateway } from '../gateway.ts'
import { GuardedClock } from '../runtime/clock.ts'
import { BoundedMap } from '../runtime/bounded-map.ts'
import { JtiStore } from '../store/jti-store.ts'
import type { WriteOp } from '../store/store.ts'
import { publicKeyFromB64 } from '../store/keys.ts'
import type { Logger } from '../observe/logger.ts'
import { MAX_COMMAND_LIFETIME_S, REJECT_REASONS, type FailReason, type RejectReason } from '../../wire/protocol.ts'

export { MAX_COMMAND_LIFETIME_S, REJECT_REASONS, type RejectReason }

export { OPS, type Op }
export { deviceOf, verifyCommand, type Command, type Verification, type VerifyContext }

export type CommandState = 'accepted' | 'completed' | 'failed' | 'rejected'

/** Store prefix of the `iat` of the last device command accepted per device. */
const LAST_IAT_PREFIX = 'cmd-iat!'
/**
 * Messages that fail before their signature verifies: the first few of a
 * window (config rejectReportIntervalS) are answered one by one, the rest of
 * it in one report at its end.
 */
export const UNAUTHENTICATED_ANSWERED = 10
/** The longest a window of folded junk grows to while junk goes on (PROTOCOL §3 cmd.rejected `count`). */
export const JUNK_WINDOW_MAX_S = 3600
/** A duplicate of one jti is answered once in this long (the control plane's own re-send timeout is longer). */
export const DUPLICATE_ANSWER_EVERY_MS = 2000
/** Duplicates answered a second at most, in all (a window of re-sends after a reconnect stays well under it). */
export const DUPLICATES_PER_S = 200
const SWEEP_EVERY_S = 60
/**
 * Commands accepted and not yet run to their end, at most: past it a new
 * command is taken off the wire (and answered) only once one finishes. The
 * uplink acknowledges a command only when handle() resolves, so the rest
 * wait in the central broker's queue for this gateway, which the control
 * plane's window bounds. Without it a bulk is accepted about twice as fast
 * as it runs: 10,000 enrolls had ~5,000 accepted and waiting, and a
 * revocation sent meanwhile ran 4.7 s later, behind them (arrival order).
 */
export const COMMANDS_WAITING_MAX = 32
/**
 * A command waits for room this long at most, then is taken anyway (an op
 * stuck on something outside, a backlog resumed after a restart): the
 * uplink reads one packet at a time, and holding it longer would hold the
 * PUBACKs of our events and the broker's PINGRESP behind it (MQTT keepalive).
 */
export const COMMAND_WAIT_MAX_MS = 5000
/** The warning that commands are taken past the bound, once in this long at most. */
const OVERDUE_LOG_EVERY_MS = 60_000
const STOPPING = 'the gateway is stopping: the command is not taken (the broker delivers it again)'

interface Remembered {
  state: CommandState
  op?: Op
  /** kept while accepted, so a restart can finish the command */
  cmd?: Command
  /** arrival order (the seq of its cmd.accepted event): a restart resumes accepted commands in this order */
  order?: number
  reason?: string
}

export interface ExecutionContext {
  gw: Gateway
  enforcer: AccessEnforcer
  actor: { actor: string; jti: string; reason?: string }
  /** performance.now() when the command arrived */
  receivedAt: number
  /** seconds since the epoch when it arrived */
  receivedAtS: number
}

/** What running a command produced; thrown CommandFailure means cmd.failed. */
export interface Outcome {
  deviceId?: string
  evidence?: Record<string, unknown>
  /** the command finishes later (retire waits for a wipe ack); its executor writes cmd.completed */
  pending?: boolean
}

export { CommandFailure }

export type Executor = (cmd: Command, ctx: ExecutionContext) => Promise<Outcome>

/**
 * How long the jti of a signed but refused command is remembered: as long
 * as the command could still be taken (its exp plus the skew, at most a
 * command's lifetime from now); an expired command can never run, so it is
 * not kept at all. null: nothing to keep.
 */
function keepRejectedUntil(v: Extract<Verification, { ok: false }>, nowS: number, skewS: number): number | null {
  if (!v.jti || v.reason === 'expired') return null
  const exp = typeof v.exp === 'number' ? v.exp : nowS + MAX_COMMAND_LIFETIME_S
  return Math.min(exp, nowS + MAX_COMMAND_LIFETIME_S) + skewS
}

export class CommandProcessor {
  readonly #gw: Gateway
  readonly #enforcer: AccessEnforcer
  readonly #log: Logger
  readonly #jtis: JtiStore<Remembered>
  readonly #cpKeys = new Map<string, KeyObject>()
  readonly #executors = new Map<Op, Executor>()
  /** Commands run one at a time, in arrival order (PROTOCOL §3), each to its end. */
  #chain: Promise<void> = Promise.resolve()
  /** accepted commands in the chain, waiting or running (COMMANDS_WAITING_MAX) */
  #inChain = 0
  /** commands waiting for room in the chain, in arrival order, since when, and their handle() to answer */
  readonly #intake: { payload: string | Uint8Array; since: number; resolve: (fate: Promise<void>) => void; reject: (err: Error) => void }[] = []
  #intakeTimer: NodeJS.Timeout | null = null
  #overdueLoggedAt = -Infinity
  #closed = false
  /** iat of the last device command accepted, by device (PROTOCOL §3 superseded) */
  readonly #lastIat: Map<string, number>
  /** unauthenticated rejections since the last report, by reason */
  #junk: { count: number; reasons: Record<string, number>; timer: NodeJS.Timeout | null; intervalS: number } | null = null
  /**
   * Across windows: the individual answers left (restored only after a
   * window without junk), the length of the next window (doubled after each
   * window that folded something, up to JUNK_WINDOW_MAX_S), and when junk
   * last came: a steady trickle is reported once per ever longer window.
   */
  #junkBudget = { answers: UNAUTHENTICATED_ANSWERED, intervalS: 0, lastMs: -Infinity }
  #junkReported: Promise<unknown> = Promise.resolve()
  #lastSweepS = 0
  /** what was refused and what was folded into burst reports so far */
  readonly stats = { unauthenticated: 0, unauthenticatedReports: 0, duplicatesUnanswered: 0 }
  /** when a duplicate of each jti was last answered */
  readonly #duplicateAnswered = new BoundedMap<string, number>(10_000)
  #duplicateWindow = { startMs: 0, answered: 0 }

  private constructor(gw: Gateway, enforcer: AccessEnforcer, ops: Record<Op, OpRunner>, jtis: JtiStore<Remembered>, lastIat: Map<string, number>, log: Logger) {
    this.#gw = gw
    this.#enforcer = enforcer
    this.#jtis = jtis
    this.#lastIat = lastIat
    this.#log = log
    for (const [kid, b64] of Object.entries(gw.config.cpKeys)) {
      const key = publicKeyFromB64(b64)
      if (key) this.#cpKeys.set(kid, key)
    }
    for (const op of OPS) {
      const run = ops[op]
      this.#executors.set(op, async (cmd, ctx) => {
        const r = await run(cmd.args, { who: ctx.actor, receivedAt: ctx.receivedAt, receivedAtS: ctx.receivedAtS })
        return { ...(r.deviceId !== undefined ? { deviceId: r.deviceId } : {}), ...(r.evidence ? { evidence: r.evidence } : {}), ...(r.pending ? { pending: true } : {}) }
      })
    }
  }

  /** `ops`: the op table (ops.ts), bound to the core's parts. */
  static async create(gw: Gateway, enforcer: AccessEnforcer, ops: Record<Op, OpRunner>, log: Logger): Promise<CommandProcessor> {
    const lastIat = new Map<string, number>()
    for await (const [k, v] of gw.store.scan(LAST_IAT_PREFIX)) lastIat.set(k.slice(LAST_IAT_PREFIX.length), Number(v))
    return new CommandProcessor(gw, enforcer, ops, await JtiStore.load<Remembered>(gw.store, 'cmd'), lastIat, log)
  }

  /** Run `op` with another executor (tests hold the chain with one). */
  register(op: Op, executor: Executor): void {
    this.#executors.set(op, executor)
  }

  /**
   * Take one command off the wire. Resolves once its fate is durable (the
   * rejection, the duplicate answer, or the acceptance), which is when the
   * uplink may PUBACK it; execution goes on in arrival order after that.
   */
  handle(payload: string | Uint8Array): Promise<void> {
    if (this.#closed) return Promise.reject(new Error(STOPPING))
    if (this.#intake.length === 0 && this.#inChain < COMMANDS_WAITING_MAX) return this.#take(payload)
    return new Promise((resolve, reject) => {
      this.#intake.push({ payload, since: performance.now(), resolve, reject })
      this.#armIntakeTimer()
    })
  }

  /** Take the waiting commands in order while there is room, or while the first has waited COMMAND_WAIT_MAX_MS. */
  #admitNext(): void {
    while (this.#intake.length > 0) {
      const first = this.#intake[0]!
      if (this.#inChain >= COMMANDS_WAITING_MAX) {
        const now = performance.now()
        if (now - first.since < COMMAND_WAIT_MAX_MS) return this.#armIntakeTimer()
        if (now - this.#overdueLoggedAt >= OVERDUE_LOG_EVERY_MS) {
          this.#overdueLoggedAt = now
          this.#log.warn({ inChain: this.#inChain, waiting: this.#intake.length, waitedMs: Math.round(now - first.since) }, 'commands run slower than they arrive: taking them past the bound')
        }
      }
      this.#intake.shift()
      // Synchronous up to the acceptance and its place in the chain, so the next is judged after it.
      first.resolve(this.#take(first.payload))
    }
  }

  /** Wakes the intake when its first command will have waited COMMAND_WAIT_MAX_MS. */
  #armIntakeTimer(): void {
    const first = this.#intake[0]
    if (this.#intakeTimer || !first) return
    this.#intakeTimer = setTimeout(
      () => {
        this.#intakeTimer = null
        this.#admitNext()
      },
      Math.max(1, COMMAND_WAIT_MAX_MS - (performance.now() - first.since)),
    )
    this.#intakeTimer.unref()
  }

  /** Take no more commands (the agent stops): those waiting for room are refused, so their PUBACK is never sent and the broker keeps them. */
  close(): void {
    this.#closed = true
    if (this.#intakeTimer) clearTimeout(this.#intakeTimer)
    this.#intakeTimer = null
    for (const w of this.#intake.splice(0)) w.reject(new Error(STOPPING))
  }

  async #take(payload: string | Uint8Array): Promise<void> {
    const receivedAt = performance.now()
    const gw = this.#gw
    this.#maybeVouch(payload)
    const nowS = gw.nowS()
    const v = verifyCommand(payload, {
      gatewayId: gw.id,
      cpKeys: this.#cpKeys,
      nowS,
      skewS: gw.config.clockSkewS,
      deviceExists: (id) => gw.registry.get(id) !== undefined,
    })
    this.#maybeSweep(nowS)
    if (!v.ok) {
      // A replay of a signed command we already answered is a duplicate,
      // whatever it would be refused for now.
      const seen = v.signed && v.jti ? this.#jtis.get(v.jti, nowS) : undefined
      if (seen) return this.#duplicate(v.jti!, seen.data.state)
      if (!v.signed) return this.#unauthenticated(v)
      return this.#reject(v.reason, v.detail, v.jti, nowS, keepRejectedUntil(v, nowS, gw.config.clockSkewS))
    }
    const cmd = v.cmd
    const seen = this.#jtis.get(cmd.jti, nowS)
    if (seen) return this.#duplicate(cmd.jti, seen.data.state)
    const keepUntil = cmd.exp + gw.config.clockSkewS
    // PROTOCOL §3: a device command older than the last one accepted for
    // the same device was held back on the way; running it now would undo a
    // newer decision. (Commands run in arrival order: the last accepted is
    // the last that will have been applied.)
    const target = deviceOf(cmd)
    const last = target === null ? undefined : this.#lastIat.get(target)
    if (last !== undefined && cmd.iat < last) {
      return this.#reject('superseded', `issued at ${cmd.iat}, before the last command for device ${target} (issued at ${last})`, cmd.jti, nowS, keepUntil)
    }
    const ops: WriteOp[] = [this.#jtis.remember(cmd.jti, keepUntil, { state: 'accepted', op: cmd.op, cmd, order: gw.outbox.lastSeq + 1 })]
    // Remembered no later than now: an iat ahead of the gateway's clock
    // (within the skew) must not make the commands signed after it, by a
    // control plane whose clock is right, look older than it.
    const decided = Math.min(cmd.iat, nowS)
    if (target !== null) {
      const op = this.#decided(target, decided)
      if (op) ops.push(op)
    }
    // The seq its cmd.accepted event gets (the `order` above): commit() takes
    // it in this same synchronous step, and the event is never dropped at the outbox bound.
    const accepted = gw.commit({
      ops,
      audit: [{ actor: `cp:${cmd.iss}`, action: 'command.accepted', data: { jti: cmd.jti, op: cmd.op, args: cmd.args } }],
      events: [{ type: 'cmd.accepted', data: { jti: cmd.jti, op: cmd.op } }],
    })
    // Run it now, without waiting for the fsync: the acceptance is queued
    // first, so on disk it precedes whatever the command changes, and access
    // is cut as soon as the command is verified.
    this.#enqueueExecution(cmd, receivedAt, nowS)
    await accepted
  }

  /** The op that remembers a decision on `deviceId` at `atS`, when it is the newest yet (the time only grows); null otherwise. */
  #decided(deviceId: string, atS: number): WriteOp | null {
    const last = this.#lastIat.get(deviceId)
    if (last !== undefined && atS <= last) return null
    this.#lastIat.set(deviceId, atS)
    return { type: 'put', key: LAST_IAT_PREFIX + deviceId, value: String(atS) }
  }

  /**
   * The op table as local callers (the admin socket) use it: a device
   * changed locally is a decision made now, so a control-plane command
   * issued before it, arriving later, is superseded (PROTOCOL §3) and does
   * not undo it.
   */
  localOps(ops: Record<Op, OpRunner>): Record<Op, OpRunner> {
    const out = {} as Record<Op, OpRunner>
    for (const [name, run] of Object.entries(ops) as [Op, OpRunner][]) {
      out[name] = async (args, req) => {
        const at = this.#gw.nowS()
        const r = await run(args, req)
        const id = deviceOf({ op: name, args })
        const op = id === null ? null : this.#decided(id, at)
        if (op) await this.#gw.commit({ ops: [op] })
        return r
      }
    }
    return out
  }

  /**
   * While the gateway does not believe a forward jump of its wall clock
   * (runtime/clock.ts GuardedClock), a command that verifies at wall time
   * and whose iat agrees with it vouches for the wall clock.
   */
  #maybeVouch(payload: string | Uint8Array): void {
    const gw = this.#gw
    const clock = gw.clock instanceof GuardedClock ? gw.clock : null
    if (!clock || clock.heldBackMs === 0) return
    const wallS = Math.floor(clock.wallNow() / 1000)
    const v = verifyCommand(payload, { gatewayId: gw.id, cpKeys: this.#cpKeys, nowS: wallS, skewS: gw.config.clockSkewS, deviceExists: () => true })
    if (!v.ok) return
    const held = clock.heldBackMs
    if (!clock.vouch(v.cmd.iat, gw.config.clockSkewS)) return
    this.#log.warn({ jti: v.cmd.jti, heldBackMs: held }, 'a signed command vouches for the wall clock: its jump is believed now')
    void gw.commit({ audit: [{ actor: `cp:${v.cmd.iss}`, action: 'gateway.clock-vouched', data: { jti: v.cmd.jti, heldBackMs: held } }] }).catch(() => {})
  }

  /** A signed command refused: audited and answered, its jti remembered so a replay cannot run once the refusal no longer applies. */
  async #reject(reason: RejectReason, detail: string, jti: string | undefined, nowS: number, keepUntil: number | null): Promise<void> {
    this.#log.warn({ reason, detail, jti }, 'command rejected')
    const ops: WriteOp[] = []
    if (jti && keepUntil !== null && keepUntil >= nowS) ops.push(this.#jtis.remember(jti, keepUntil, { state: 'rejected', reason }))
    await this.#gw.commit({
      ops,
      audit: [{ actor: 'uplink', action: 'command.rejected', data: { jti, reason, detail } }],
      events: [{ type: 'cmd.rejected', data: { ...(jti ? { jti } : {}), reason, detail } }],
    })
  }

  /**
   * A message whose signature did not verify (junk, a key we do not pin):
   * anyone who can publish to the command topic can send them, so each must
   * cost next to nothing. The first few of a window are answered at once (a
   * control plane with a wrong key sees why); the rest of the burst are
   * counted and reported in one audit entry and one event when the window
   * ends. Nothing of them is kept beyond that report.
   */
  #unauthenticated(v: Extract<Verification, { ok: false }>): Promise<void> {
    this.stats.unauthenticated++
    const base = this.#gw.config.rejectReportIntervalS
    const b = this.#junkBudget
    const now = this.#gw.clock.now()
    // quiet for a whole window since the last junk: back to the first window's terms
    if (this.#junk === null && now - b.lastMs > Math.max(b.intervalS, base) * 1000) {
      b.answers = UNAUTHENTICATED_ANSWERED
      b.intervalS = base
    }
    b.lastMs = now
    let junk = this.#junk
    if (!junk) {
      junk = { count: 0, reasons: {}, timer: null, intervalS: Math.max(b.intervalS, base) }
      junk.timer = setTimeout(() => void this.flushUnauthenticated().catch((err: unknown) => this.#log.error({ err }, 'cannot report rejected commands')), junk.intervalS * 1000)
      junk.timer.unref()
      this.#junk = junk
    }
    if (b.answers <= 0) {
      junk.count++
      junk.reasons[v.reason] = (junk.reasons[v.reason] ?? 0) + 1
      return Promise.resolve()
    }
    b.answers--
    this.stats.unauthenticatedReports++
    this.#log.warn({ reason: v.reason, detail: v.detail, jti: v.jti }, 'command rejected')
    const p = this.#gw.commit(
      {
        audit: [{ actor: 'uplink', action: 'command.rejected', data: { jti: v.jti, reason: v.reason, detail: v.detail } }],
        events: [{ type: 'cmd.rejected', data: { ...(v.jti ? { jti: v.jti } : {}), reason: v.reason, detail: v.detail } }],
      },
      { sync: false },
    )
    this.#junkReported = p.catch(() => {})
    return p.then(() => {})
  }

  /** Report the unauthenticated messages folded since the last report (the window's timer calls this; so does stop). */
  async flushUnauthenticated(): Promise<void> {
    const junk = this.#junk
    if (!junk) return this.#junkReported.then(() => {})
    this.#junk = null
    if (junk.timer) clearTimeout(junk.timer)
    if (junk.count === 0) return this.#junkReported.then(() => {})
    // junk that goes on is reported once per window twice as long as the last
    this.#junkBudget.intervalS = Math.min(JUNK_WINDOW_MAX_S, junk.intervalS * 2)
    this.stats.unauthenticatedReports++
    const top = Object.entries(junk.reasons).sort((a, b) => b[1] - a[1])[0]![0]
    const detail = `${junk.count} more messages without a valid signature in ${junk.intervalS} s (${Object.entries(junk.reasons).map(([r, n]) => `${r} ${n}`).join(', ')})`
    this.#log.warn({ count: junk.count, reasons: junk.reasons, windowS: junk.intervalS }, 'commands rejected (burst)')
    const p = this.#gw.commit(
      {
        audit: [{ actor: 'uplink', action: 'command.rejected', data: { reason: top, detail, count: junk.count, reasons: junk.reasons } }],
        events: [{ type: 'cmd.rejected', data: { reason: top, detail, count: junk.count } }],
      },
      { sync: false },
    )
    this.#junkReported = p.catch(() => {})
    await p
  }

  #maybeSweep(nowS: number): void {
    if (nowS - this.#lastSweepS < SWEEP_EVERY_S) return
    this.#lastSweepS = nowS
    const ops = this.#jtis.sweep(nowS)
    if (ops.length) this.#gw.store.write(ops, { sync: false }).catch((err: unknown) => this.#log.error({ err }, 'cannot sweep expired command jtis'))
  }

  /**
   * PROTOCOL §3 `cmd.duplicate`, answered at most once per jti every
   * DUPLICATE_ANSWER_EVERY_MS (a control plane re-sends after a timeout of
   * its own, far longer) and at most DUPLICATES_PER_S a second in all: a
   * captured command replayed in a loop costs one event now and then, not
   * one signed, synced event per copy. The rest are counted (stats) only.
   */
  async #duplicate(jti: string, state: CommandState): Promise<void> {
    const now = this.#gw.clock.now()
    const last = this.#duplicateAnswered.get(jti)
    if (last !== undefined && now - last < DUPLICATE_ANSWER_EVERY_MS) return void this.stats.duplicatesUnanswered++
    if (now - this.#duplicateWindow.startMs >= 1000) this.#duplicateWindow = { startMs: now, answered: 0 }
    if (this.#duplicateWindow.answered >= DUPLICATES_PER_S) return void this.stats.duplicatesUnanswered++
    this.#duplicateWindow.answered++
    this.#duplicateAnswered.set(jti, now)
    await this.#gw.commit({ events: [{ type: 'cmd.duplicate', data: { jti, state } }] })
  }

  #enqueueExecution(cmd: Command, receivedAt: number, receivedAtS: number): Promise<void> {
    this.#inChain++
    const run = this.#chain.then(() => this.#execute(cmd, receivedAt, receivedAtS))
    this.#chain = run.catch(() => {}).then(() => {
      this.#inChain--
      this.#admitNext()
    })
    return run
  }

  async #execute(cmd: Command, receivedAt: number, receivedAtS: number): Promise<void> {
    const gw = this.#gw
    // Answered while it waited its turn (a resumed retire whose retirement
    // another command closed first): running it again would answer it twice.
    const state = this.#jtis.get(cmd.jti, gw.nowS())?.data.state
    if (state !== undefined && state !== 'accepted') return
    const keepUntil = cmd.exp + gw.config.clockSkewS
    const executor = this.#executors.get(cmd.op)
    const reason = typeof cmd.args.reason === 'string' ? cmd.args.reason : undefined
    const ctx: ExecutionContext = {
      gw,
      enforcer: this.#enforcer,
      actor: { actor: `cp:${cmd.iss}`, jti: cmd.jti, ...(reason !== undefined ? { reason } : {}) },
      receivedAt,
      receivedAtS,
    }
    try {
      if (!executor) throw new CommandFailure('not-supported', `${cmd.op} is not supported by this gateway yet`)
      const outcome = await executor(cmd, ctx)
      if (outcome.pending) return
      await this.complete(cmd, outcome)
    } catch (err) {
      const failure =
        err instanceof CommandFailure
          ? err
          : isEdgewardenError(err, 'ILLEGAL_TRANSITION')
            ? new CommandFailure('illegal-transition', err.message)
            : isEdgewardenError(err, 'UNKNOWN_DEVICE')
              ? new CommandFailure('unknown-device', err.message)
              : isEdgewardenError(err, 'CSR_INVALID')
                ? new CommandFailure('invalid-csr', err.message)
                : isEdgewardenError(err, 'DUPLICATE_CREDENTIAL')
                  ? new CommandFailure('duplicate-credential', err.message)
                  : null
      if (!failure) {
        this.#log.error({ err, jti: cmd.jti, op: cmd.op }, 'command execution failed')
      }
      const f = failure ?? new CommandFailure('internal-error', (err as Error).message)
      await gw.commit({
        ops: [this.#jtis.remember(cmd.jti, keepUntil, { state: 'failed', op: cmd.op, reason: f.reason })],
        audit: [{ actor: ctx.actor.actor, action: 'command.failed', data: { jti: cmd.jti, op: cmd.op, reason: f.reason, detail: f.message } }],
        events: [{ type: 'cmd.failed', data: { jti: cmd.jti, op: cmd.op, reason: f.reason } }],
      })
    }
  }

  /**
   * Complete a command that finished later (a retirement): by its jti, the
   * command as accepted is on record until answered. Answered already (or
   * never accepted here): nothing to do.
   */
  async completeAccepted(jti: string, outcome: Outcome): Promise<void> {
    const e = this.#jtis.get(jti, this.#gw.nowS())
    if (e?.data.state !== 'accepted' || !e.data.cmd) return
    await this.complete(e.data.cmd, outcome)
  }

  /** Record a command as completed, with its evidence. */
  async complete(cmd: Command, outcome: Outcome): Promise<void> {
    const gw = this.#gw
    await gw.commit({
      ops: [this.#jtis.remember(cmd.jti, cmd.exp + gw.config.clockSkewS, { state: 'completed', op: cmd.op })],
      audit: [{ actor: `cp:${cmd.iss}`, action: 'command.completed', ...(outcome.deviceId ? { subject: outcome.deviceId } : {}), data: { jti: cmd.jti, op: cmd.op, evidence: outcome.evidence } }],
      events: [
        {
          type: 'cmd.completed',
          data: { jti: cmd.jti, op: cmd.op, ...(outcome.deviceId ? { deviceId: outcome.deviceId } : {}), ...(outcome.evidence ? { evidence: outcome.evidence } : {}) },
        },
      ],
    })
  }

  /** After a restart: finish every command that was accepted but not answered; forget expired jtis. */
  async resume(): Promise<number> {
    const gw = this.#gw
    const nowS = gw.nowS()
    const sweep = this.#jtis.sweep(nowS)
    // Queued for execution before anything is awaited: a newer command for the same device that
    // arrives meanwhile runs after them (its turn is behind theirs in the chain).
    const swept = sweep.length ? gw.store.write(sweep, { sync: false }) : Promise.resolve()
    let n = 0
    // In arrival order, as they would have run (the store keeps them by jti).
    const waiting = [...this.#jtis.entries()].filter(([, e]) => e.data.state === 'accepted' && e.data.cmd).sort(([, a], [, b]) => (a.data.order ?? 0) - (b.data.order ?? 0))
    for (const [jti, e] of waiting) {
      if (!e.data.cmd) continue
      this.#log.info({ jti, op: e.data.op }, 'resuming a command accepted before the restart')
      void this.#enqueueExecution(e.data.cmd, performance.now(), nowS)
      n++
    }
    await swept
    await this.#chain
    return n
  }

  /** Resolves when every command received so far has run. */
  idle(): Promise<void> {
    return this.#chain
  }

  /** The state the gateway holds for a jti, if any. */
  stateOf(jti: string): CommandState | undefined {
    return this.#jtis.get(jti, this.#gw.nowS())?.data.state
  }
}
