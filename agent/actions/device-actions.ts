// Actions for devices, end to end on the gateway side: queue (durable,
// audited), hand to the dispatcher, and settle on the device's signed ack
// (PROTOCOL §5): remove the action, report it, and apply what the ack
// proves (a new key after reenroll or renew). Deadlines expire actions.
// It is the ActionSink of every protocol's channel: readiness and acks from
// MQTT, OPC UA and Modbus all come back here.
import { ackClaims, ackSigner, parseAck, verifyAck, type VerifiedAck } from './ack.ts'
import { NO_YIELD, type ActionDispatcher, type YieldTurn } from './action-dispatcher.ts'
import type { Act, QueuedAction } from './action-queue.ts'
import type { DeviceKey, DeviceRecord } from '../devices/device.ts'
import type { Actor, Change, Gateway, QueueOptions } from '../gateway.ts'
import { PublicKeyCache } from '../store/keys.ts'
import type { Logger } from '../observe/logger.ts'
import type { ActionSink, Protocol } from '../adapter.ts'
import { EdgewardenError } from '../runtime/errors.ts'

export type AckListener = (ack: VerifiedAck) => Promise<void> | void

export class DeviceActions implements ActionSink {
  readonly #gw: Gateway
  readonly #dispatcher: ActionDispatcher
  readonly #log: Logger
  readonly #keys: PublicKeyCache
  readonly #turn: YieldTurn
  readonly #ackListeners: AckListener[] = []
  readonly #readyHooks: ((deviceId: string) => Promise<void>)[] = []
  #renewCertificate: ((ack: VerifiedAck, settlement: Change) => Promise<void>) | null = null
  /** ack jtis seen recently, so a repeated ack is recognised as such (harmless) */
  readonly #recentAcks = new Map<string, number>()
  /** acks of each device that took a turn: waiting for it, or being checked in it (#check) */
  readonly #acksWaiting = new Map<string, number>()
  /** acks being checked, by device and payload: a copy gets the same answer (ack) */
  readonly #checking = new Map<string, Promise<{ ok: boolean; reason?: string }>>()
  /** acks refused as bad or stray, checked */
  strayAcks = 0
  /** acks refused unchecked: a copy of one being checked, or a repeat of one settled */
  repeatedAcks = 0

  constructor(gw: Gateway, dispatcher: ActionDispatcher, log: Logger, opts: { keys?: PublicKeyCache; turn?: YieldTurn } = {}) {
    this.#gw = gw
    this.#dispatcher = dispatcher
    this.#log = log
    this.#keys = opts.keys ?? new PublicKeyCache()
    this.#turn = opts.turn ?? NO_YIELD
  }

  get dispatcher(): ActionDispatcher {
    return this.#dispatcher
  }

  onAck(listener: AckListener): void {
    this.#ackListeners.push(listener)
  }

  /**
   * How a certificate device's re-key ack is settled (PROTOCOL §5, §9): the
   * site CA issues for the request the ack carries, in the same batch as the
   * settlement, and queues install-cert. Set by the composition root.
   */
  renewCertificatesWith(fn: (ack: VerifiedAck, settlement: Change) => Promise<void>): void {
    this.#renewCertificate = fn
  }

  /** Work to do when a device becomes ready, before its pending actions go out (a lapsed credential's renewal is queued first). */
  beforeDelivery(hook: (deviceId: string) => Promise<void>): void {
    this.#readyHooks.push(hook)
  }

  /** ActionSink: the device is listening on a channel; it was seen, and what is pending goes out. */
  ready(deviceId: string): void {
    this.#gw.seen(deviceId)
    const hooks = this.#readyHooks.map((h) => h(deviceId).catch((err: unknown) => this.#log.error({ err, deviceId }, 'work before delivery failed')))
    void Promise.all(hooks).finally(() => this.#dispatcher.deviceReady(deviceId))
  }

  /** ActionSink: an outcome the gateway vouches for (no device signature): settled as any ack, with its evidence. */
  vouch(ack: VerifiedAck, protocol: Protocol, evidence: Record<string, unknown>): Promise<void> {
    return this.settle(ack, protocol, evidence)
  }

  /** Queue an action (stored and synced first) and send it at once if the device is listening. */
  async queue(deviceId: string, act: Act, who: Actor, opts: QueueOptions = {}): Promise<QueuedAction> {
    const action = await this.#gw.queueAction(deviceId, act, who, opts)
    this.#dispatcher.queued(action)
    return action
  }

  /**
   * An operator takes a pending action back (local only, audited): it is
   * removed and never sent again. A device that already got it may still
   * ack it; that ack is then refused as stray and changes nothing.
   */
  async cancel(deviceId: string, actionId: string, who: Actor): Promise<QueuedAction> {
    const gw = this.#gw
    gw.requireDevice(deviceId)
    const action = gw.actions.find(deviceId, actionId)
    const op = action ? gw.actions.remove(deviceId, actionId) : null
    if (!action || !op) {
      const pending = gw.actions.pending(deviceId).map((a) => `${a.act} ${a.id}`)
      throw new EdgewardenError('UNKNOWN_ACTION', `no action ${actionId} is pending for ${deviceId}${pending.length ? ` (pending: ${pending.join(', ')})` : ' (none is pending)'}`)
    }
    this.#dispatcher.forget(actionId)
    await gw.commit({
      ops: [op],
      audit: [{ actor: who.actor, action: 'action.cancelled', subject: deviceId, data: { actionId, act: action.act, queuedAt: action.queuedAt, reason: who.reason, claimedBy: who.claimedBy } }],
    })
    this.#log.info({ deviceId, actionId, act: action.act, actor: who.actor }, 'action cancelled by an operator')
    return action
  }

  /** An ack arrived from `deviceId` over `protocol`. A bad, stray or repeated ack changes nothing. */
  async ack(deviceId: string, payload: string | Uint8Array, protocol: string): Promise<{ ok: boolean; reason?: string }> {
    // A copy of an ack of the device being checked (a flood, a QoS 1 re-send) gets that one's answer, unchecked: a
    // settled ack's copy is a repeat. A different ack for the same action is checked on its own, so what someone else
    // publishes never stands in for the device's own ack.
    const key = `${deviceId}\n${typeof payload === 'string' ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('latin1')}`
    const same = this.#checking.get(key)
    if (same) {
      const r = await same
      this.repeatedAcks++
      return r.ok ? { ok: false, reason: 'repeated' } : r
    }
    const checked = this.#check(deviceId, payload, protocol)
    this.#checking.set(key, checked)
    try {
      return await checked
    } finally {
      this.#checking.delete(key)
    }
  }

  async #check(deviceId: string, payload: string | Uint8Array, protocol: string): Promise<{ ok: boolean; reason?: string }> {
    // Only an ack that may settle something costs a signature check: its claims (memory only) name the device and an
    // action pending for it. That check is made on the crypto pool where it can be, and in a connect storm after the
    // connects waiting are checked (or it has waited admissionMaxWaitMs): the devices get in first, their acks follow.
    // No more of a device's acks wait for a turn than it has actions pending; the rest are checked at once, so a flood
    // holds no place in the queue.
    const jws = parseAck(payload)
    const settles = jws !== null && ackClaims(this.#gw, deviceId, jws).ok
    const waiting = this.#acksWaiting.get(deviceId) ?? 0
    const waits = settles && waiting < this.#gw.actions.pending(deviceId).length
    if (waits) this.#acksWaiting.set(deviceId, waiting + 1)
    let release: (() => void) | null = null
    let v
    try {
      if (waits) release = await this.#turn()
      // the signature checked against the keys the device had then, or null (not for the pool): verifyAck checks it
      // inline against the keys it has now, and only those the pool did not try (an ack signed with a key proven by
      // the ack just before it, settled meanwhile, is the device's own)
      const pool = settles ? await ackSigner(this.#gw, deviceId, jws) : null
      v = verifyAck(this.#gw, deviceId, payload, this.#keys, { parsed: jws, ...(pool !== null ? { pool } : {}) })
    } finally {
      if (waits) {
        release?.()
        const n = this.#acksWaiting.get(deviceId)! - 1
        if (n === 0) this.#acksWaiting.delete(deviceId)
        else this.#acksWaiting.set(deviceId, n)
      }
    }
    if (!v.ok) {
      const repeated = v.ref !== undefined && this.#recentAcks.has(`${deviceId}/${v.ref}`)
      if (repeated) {
        this.repeatedAcks++
        this.#log.debug({ deviceId, ref: v.ref, protocol }, 'repeated ack for an action already settled')
      } else {
        this.strayAcks++
        this.#log.warn({ deviceId, protocol, reason: v.reason, ref: v.ref }, 'ack refused: nothing changed')
      }
      return { ok: false, reason: repeated ? 'repeated' : v.reason }
    }
    await this.settle(v.ack, protocol)
    return { ok: true }
  }

  /**
   * Apply a verified ack: remove the action, record the outcome, install a
   * proven new key, all in one batch; then tell listeners (retirement).
   */
  async settle(ack: VerifiedAck, protocol: string, evidence?: Record<string, unknown>): Promise<void> {
    const gw = this.#gw
    const { action, deviceId, status } = ack
    const remove = gw.actions.remove(deviceId, action.id)
    if (!remove) return // settled by a concurrent ack
    this.#dispatcher.forget(action.id)
    this.#remember(`${deviceId}/${action.id}`)
    const change: Change = {
      ops: [remove],
      audit: [
        {
          actor: `device:${deviceId}`,
          action: 'action.acked',
          subject: deviceId,
          data: { actionId: action.id, act: action.act, status, detail: ack.detail, ackJti: ack.jti, protocol, newPublicKey: ack.newPublicKey, ...evidence },
        },
      ],
      events: [{ type: 'action.acked', data: { deviceId, actionId: action.id, act: action.act, status } }],
    }
    if (status === 'done' && ack.csr && this.#renewCertificate) {
      await this.#renewCertificate(ack, change)
    } else if (status === 'done' && ack.newPublicKey) {
      await gw.updateDevice(deviceId, (r) => this.#installKey(r, action.act, ack.newPublicKey!), change)
    } else {
      await gw.commit(change)
    }
    for (const l of this.#ackListeners) await l(ack)
  }

  /**
   * Re-enrollment replaces the old key at once; renewal keeps it valid for
   * the overlap window. Either way the credential starts a new lifetime.
   */
  #installKey(r: DeviceRecord, act: Act, newKey: string): DeviceRecord {
    const now = this.#gw.nowS()
    const overlapEnd = now + this.#gw.config.renewOverlapS
    r.keys =
      act === 'reenroll'
        ? [{ publicKey: newKey, notBefore: now, notAfter: null }]
        : [
            ...r.keys.map((k) => ({ ...k, notAfter: k.notAfter === null ? overlapEnd : Math.min(k.notAfter, overlapEnd) })).filter((k) => k.notAfter > now),
            { publicKey: newKey, notBefore: now, notAfter: null },
          ]
    r.spec = { ...r.spec, publicKey: newKey }
    delete r.spec.credentialExpiresAt
    r.credentialIssuedAt = now
    r.credentialExpiresAt = now + this.#gw.config.credentialLifetimeS
    delete r.credentialNotice
    return r
  }

  /** Drop keys whose overlap window has passed, and actions past their deadline. */
  async sweep(nowS: number): Promise<QueuedAction[]> {
    const gw = this.#gw
    // The devices with a key past its end, found first without allocating
    // (every record is looked at on every pass; few, if any, have one).
    const withExpired: DeviceRecord[] = []
    gw.registry.forEach((r) => {
      if (hasKeyEndedBy(r.keys, nowS)) withExpired.push(r)
    })
    for (const r of withExpired) {
      await gw.updateDevice(r.spec.id, (d) => ({ ...d, keys: d.keys.filter((k) => k.notAfter === null || k.notAfter > nowS) }), {
        audit: [{ actor: 'gateway', action: 'device.key-expired', subject: r.spec.id, data: { keys: r.keys.filter((k) => k.notAfter !== null && k.notAfter <= nowS).map((k) => k.publicKey) } }],
      })
    }
    const expired = [...gw.actions.all()].filter((a) => a.deadline <= nowS)
    for (const a of expired) {
      const op = gw.actions.remove(a.deviceId, a.id)
      if (!op) continue
      this.#dispatcher.forget(a.id)
      await gw.commit({
        ops: [op],
        audit: [{ actor: 'gateway', action: 'action.expired', subject: a.deviceId, data: { actionId: a.id, act: a.act, deadline: a.deadline } }],
        events: [{ type: 'action.expired', data: { deviceId: a.deviceId, actionId: a.id, act: a.act } }],
      })
      this.#log.warn({ deviceId: a.deviceId, actionId: a.id, act: a.act }, 'action reached its deadline unacknowledged and was removed')
    }
    return expired
  }

  #remember(key: string): void {
    this.#recentAcks.set(key, this.#gw.clock.now())
    if (this.#recentAcks.size > 10_000) this.#recentAcks.delete(this.#recentAcks.keys().next().value as string)
  }
}

/** Whether a key of the list has ended by `nowS` (a loop: called for every device on every pass). */
function hasKeyEndedBy(keys: readonly DeviceKey[], nowS: number): boolean {
  for (const k of keys) if (k.notAfter !== null && k.notAfter <= nowS) return true
  return false
}
