// Retiring a device (PROTOCOL §6), in the spec's order, each step audited:
// state `retiring` and its credentials revoked for everything but the
// wipe-only path; every session closed and wipe-only network rules applied;
// a wipe queued; then, on the wipe's `done` ack, on `"wipe": false` with its
// reason, or at the deadline (`unconfirmed`): state `retired`, network
// blocked, and the evidence. Open retirements are stored, so a restart (or
// kill -9) carries them on.
import type { VerifiedAck } from './ack.ts'
import type { Protocol } from '../adapter.ts'
import type { DeviceActions } from './device-actions.ts'
import { accessRemovedMs, type AccessEnforcer } from '../trust/enforcer.ts'
import type { Actor, Gateway } from '../gateway.ts'
import { hasWipePath } from '../devices/offboarding.ts'
import type { Logger } from '../observe/logger.ts'

export const RETIRE_PREFIX = 'retire!'
export const DEFAULT_RETIRE_DEADLINE_S = 30 * 24 * 3600

export type WipeOutcome =
  | { status: 'done'; ackJti: string; at: number; protocol?: string }
  | { status: 'not-performed'; reason: string; at: number }
  | { status: 'unconfirmed'; at: number; lastAttempt?: string }
  | { status: 'unsupported'; reason?: string; at: number }

/**
 * Who is waiting for the retirement to finish: control-plane commands, by
 * jti (the command processor keeps the command until it is answered; the
 * local admin needs no answer). Stores of earlier versions also hold the
 * command itself here; it is not read.
 */
export interface RetireOrigin {
  jti: string
}

interface OpenRetirement {
  deviceId: string
  receivedAt: number
  accessRemovedMs: number
  sessionsClosed: Record<Protocol, number>
  credentialsRevoked: number
  wipeActionId: string | null
  /** the device cannot wipe (legacy hardware): only `"wipe": false` or the deadline closes it */
  wipeUnsupported: boolean
  lastWipeStatus?: string
  deadline: number
  reason?: string
  origins: RetireOrigin[]
  actor: string
  /** written in the same batch as state `retired`: how it ended, so a crash before the evidence is written resumes it */
  closing?: { wipe: WipeOutcome; actor: string }
}

export interface RetireRequest {
  wipe?: boolean
  deadlineS?: number
  reason?: string
  /** performance.now() and seconds when the request arrived, for accessRemovedMs */
  receivedAt: number
  receivedAtS: number
  origin?: RetireOrigin
}

export type RetireResult = { done: true; evidence: Record<string, unknown> } | { done: false; wipeActionId: string | null }

/** Answers the command of `jti` with the retirement's evidence. */
export type CompleteFn = (jti: string, deviceId: string, evidence: Record<string, unknown>) => Promise<void>

export class Retirements {
  readonly #gw: Gateway
  readonly #actions: DeviceActions
  readonly #enforcer: AccessEnforcer
  readonly #log: Logger
  readonly #open = new Map<string, OpenRetirement>()
  #complete: CompleteFn = async () => {}
  /** residual-use attempts per device, where an adapter counts them */
  #residualCount: (deviceId: string) => number = () => 0
  /** the certificates of the device on the CRL by the time of the evidence (PROTOCOL §6), where the site PKI is */
  #certificatesRevoked: ((deviceId: string) => Promise<string[]>) | null = null

  private constructor(gw: Gateway, actions: DeviceActions, enforcer: AccessEnforcer, log: Logger) {
    this.#gw = gw
    this.#actions = actions
    this.#enforcer = enforcer
    this.#log = log
    actions.onAck((ack) => this.#onAck(ack))
  }

  static async load(gw: Gateway, actions: DeviceActions, enforcer: AccessEnforcer, log: Logger): Promise<Retirements> {
    const r = new Retirements(gw, actions, enforcer, log)
    for await (const [, v] of gw.store.scan(RETIRE_PREFIX)) {
      const o = JSON.parse(v) as OpenRetirement
      r.#open.set(o.deviceId, o)
    }
    return r
  }

  /** How finished retirements answer the commands that asked for them. */
  onComplete(fn: CompleteFn): void {
    this.#complete = fn
  }

  countResidualUseWith(fn: (deviceId: string) => number): void {
    this.#residualCount = fn
  }

  /** How the evidence learns which certificates went on the CRL when the device was retired (once they are there). */
  revokeCertificatesWith(fn: (deviceId: string) => Promise<string[]>): void {
    this.#certificatesRevoked = fn
  }

  isOpen(deviceId: string): boolean {
    return this.#open.has(deviceId)
  }

  #put(o: OpenRetirement): { type: 'put'; key: string; value: string } {
    this.#open.set(o.deviceId, o)
    return { type: 'put', key: RETIRE_PREFIX + o.deviceId, value: JSON.stringify(o) }
  }

  async start(deviceId: string, req: RetireRequest, who: Actor): Promise<RetireResult> {
    const gw = this.#gw
    const open = this.#open.get(deviceId)
    if (open) {
      // Sent again for a device already retiring: `"wipe": false` closes it
      // (and answers this request directly); otherwise this request waits
      // for the same end. A resumed command is not added twice.
      if (req.origin && req.wipe !== false && !open.origins.some((x) => x.jti === req.origin!.jti)) open.origins.push(req.origin)
      await gw.commit({ ops: [this.#put(open)], audit: [{ actor: who.actor, action: 'device.retire', subject: deviceId, data: { again: true, wipe: req.wipe, reason: req.reason, jti: who.jti } }] })
      if (req.wipe === false) {
        const reason = req.reason ?? 'closed without a wipe'
        return { done: true, evidence: await this.#finish(deviceId, { status: 'not-performed', reason, at: gw.nowS() }, who.actor) }
      }
      return { done: false, wipeActionId: open.wipeActionId }
    }
    // Steps 1 and 2: retiring (credentials revoked but for the wipe-only
    // path), sessions closed and wipe-only network rules, both by the
    // enforcer as the state changes, before anything is written.
    const { record } = await gw.transition(deviceId, 'retire', who)
    const enforcement = await this.#enforcer.settled(deviceId)
    const removedMs = accessRemovedMs(enforcement, req.receivedAt)
    // No wipe path: a Modbus device without the hook, or a legacy device that only knows a fixed password (PROTOCOL §3, §6)
    const wipeUnsupported = !hasWipePath(record.spec)
    const o: OpenRetirement = {
      deviceId,
      receivedAt: req.receivedAtS,
      accessRemovedMs: removedMs,
      sessionsClosed: enforcement.sessionsClosed,
      // every credential the identity held: token keys, certificates not yet revoked (one on hold too), a fixed password
      credentialsRevoked: record.keys.length + (record.certificates ?? []).filter((c) => !c.revoked).length + (record.spec.password !== undefined ? 1 : 0),
      wipeActionId: null,
      wipeUnsupported,
      deadline: req.receivedAtS + (req.deadlineS ?? DEFAULT_RETIRE_DEADLINE_S),
      origins: req.origin && req.wipe !== false ? [req.origin] : [],
      actor: who.actor,
      ...(req.reason !== undefined ? { reason: req.reason } : {}),
    }
    const accessRemoved = { actor: who.actor, action: 'retire.access-removed', subject: deviceId, data: { accessRemovedMs: removedMs, sessionsClosed: o.sessionsClosed, network: enforcement.network, credentialsRevoked: o.credentialsRevoked } }
    // Step 3 in the common case: the wipe queued in the same batch as the evidence so far (one commit, not two)
    const pending = gw.actions.pending(deviceId).find((a) => a.act === 'wipe')
    if (req.wipe !== false && !wipeUnsupported && !pending) {
      const wipe = await this.#actions.queue(deviceId, 'wipe', who, {
        deadlineS: o.deadline - gw.nowS(),
        with: (a) => {
          o.wipeActionId = a.id
          return { ops: [this.#put(o)], audit: [accessRemoved] }
        },
      })
      return { done: false, wipeActionId: wipe.id }
    }
    // a wipe already pending: the retirement waits for that one (recorded in this same write)
    if (req.wipe !== false && !wipeUnsupported) o.wipeActionId = pending!.id
    await gw.commit({ ops: [this.#put(o)], audit: [accessRemoved] })
    if (req.wipe === false) {
      return { done: true, evidence: await this.#finish(deviceId, { status: 'not-performed', reason: req.reason ?? 'wipe: false', at: gw.nowS() }, who.actor) }
    }
    if (wipeUnsupported) {
      this.#log.info({ deviceId }, 'legacy device: no wipe possible; retirement closes on "wipe": false or at the deadline')
      return { done: false, wipeActionId: null }
    }
    // Step 3 when a wipe is pending already: delivered now if the device is reachable, else when it returns.
    return { done: false, wipeActionId: pending!.id }
  }

  async #onAck(ack: VerifiedAck): Promise<void> {
    const o = this.#open.get(ack.deviceId)
    if (!o || ack.action.act !== 'wipe') return
    if (ack.status === 'done') {
      await this.#finish(ack.deviceId, { status: 'done', ackJti: ack.jti, at: this.#gw.nowS() }, o.actor)
      return
    }
    // failed or unsupported: the retirement stays open for an operator's
    // `"wipe": false` or the deadline; the attempt is on record.
    o.lastWipeStatus = `${ack.status}${ack.detail ? `: ${ack.detail}` : ''}`
    o.wipeActionId = null
    if (ack.status === 'unsupported') o.wipeUnsupported = true
    await this.#gw.commit({ ops: [this.#put(o)] })
  }

  /**
   * Retirements whose device went `retired` but whose evidence was not yet
   * written when the agent stopped (kill -9): write it and answer the
   * commands waiting for it. Called once the commands can be answered.
   */
  async resumeClosing(): Promise<void> {
    for (const o of [...this.#open.values()]) {
      if (!o.closing) continue
      this.#log.info({ deviceId: o.deviceId }, 'finishing a retirement interrupted after the device was retired')
      await this.#finish(o.deviceId, o.closing.wipe, o.closing.actor)
    }
  }

  /** Close every retirement past its deadline as `unconfirmed`. */
  async tick(nowS: number): Promise<void> {
    for (const o of [...this.#open.values()]) {
      if (o.deadline > nowS || o.closing) continue
      if (o.wipeActionId) {
        const op = this.#gw.actions.remove(o.deviceId, o.wipeActionId)
        if (op) await this.#gw.commit({ ops: [op] })
      }
      const outcome: WipeOutcome = o.wipeUnsupported
        ? { status: 'unsupported', at: nowS, ...(o.lastWipeStatus ? { reason: o.lastWipeStatus } : {}) }
        : { status: 'unconfirmed', at: nowS, ...(o.lastWipeStatus ? { lastAttempt: o.lastWipeStatus } : {}) }
      await this.#finish(o.deviceId, outcome, 'gateway')
    }
  }

  /** Step 4: retired, network tightened to blocked, the evidence recorded and answered. */
  async #finish(deviceId: string, wipe: WipeOutcome, actor: string): Promise<Record<string, unknown>> {
    const gw = this.#gw
    const o = this.#open.get(deviceId)
    if (!o) throw new TypeError(`no open retirement for ${deviceId}`)
    this.#open.delete(deviceId)
    if (!o.closing) {
      // State `retired` and how it ended, in one batch: a crash before the
      // evidence below is written is carried on by resumeClosing().
      o.closing = { wipe, actor }
      const closing = { type: 'put' as const, key: RETIRE_PREFIX + deviceId, value: JSON.stringify(o) }
      await gw.transition(deviceId, 'retire-complete', { actor, ...(o.reason !== undefined ? { reason: o.reason } : {}) }, { ops: [closing] })
    }
    const enforcement = await this.#enforcer.settled(deviceId)
    const certificatesRevoked = this.#certificatesRevoked ? await this.#certificatesRevoked(deviceId) : []
    const evidence = {
      deviceId,
      state: 'retired',
      receivedAt: o.receivedAt,
      accessRemovedMs: o.accessRemovedMs,
      // the sessions live when access was removed (step 2); the wipe-only
      // session a device opens afterwards is closed too, and audited, but is
      // not part of removing its access
      sessionsClosed: o.sessionsClosed,
      wipeOnlySessionsClosed: enforcement.sessionsClosed,
      network: enforcement.network,
      wipe,
      credentialsRevoked: o.credentialsRevoked,
      ...(certificatesRevoked.length ? { certificatesRevoked } : {}),
      residualUse: this.#residualCount(deviceId),
      ...(o.reason !== undefined ? { reason: o.reason } : {}),
    }
    // What is still queued for it (the wipe a retirement closed without one was waiting for) goes: a retired device never connects again.
    const left = [...gw.actions.pending(deviceId)]
    for (const a of left) this.#actions.dispatcher.forget(a.id)
    const dropped = left.map((a) => gw.actions.remove(deviceId, a.id)).filter((op): op is NonNullable<typeof op> => op !== null)
    // Every key ends now: nothing of this identity may authenticate again.
    await gw.updateDevice(deviceId, (r) => ({ ...r, keys: r.keys.map((k) => ({ ...k, notAfter: Math.min(k.notAfter ?? Infinity, gw.nowS()) })) }), {
      ops: [{ type: 'del', key: RETIRE_PREFIX + deviceId }, ...dropped],
      audit: [
        ...left.map((a) => ({ actor, action: 'action.cancelled', subject: deviceId, data: { actionId: a.id, act: a.act, queuedAt: a.queuedAt, reason: 'the device is retired' } })),
        { actor, action: 'device.retired', subject: deviceId, data: evidence },
      ],
    })
    for (const origin of o.origins) await this.#complete(origin.jti, deviceId, evidence)
    return evidence
  }
}

