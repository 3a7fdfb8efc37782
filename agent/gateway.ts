// The gateway core: devices, states, actions, audit and events. It knows no
// wire protocol; protocol adapters subscribe to device changes and ask it
// questions. Every change goes through #commit: registry record, audit entry
// and events are written in one atomic batch, in the order changes were made.
import { existsSync } from 'node:fs'
import { ActionQueue, type Act, type QueuedAction } from './actions/action-queue.ts'
import { AuditChain, IDENTITY_KEY, type AuditInput } from './store/audit.ts'
import { GuardedClock, nowSeconds, type Clock } from './runtime/clock.ts'
import type { AgentConfig } from './runtime/config.ts'
import { credentialKind, parseDeviceSpec, type CertificateRecord, type DeviceRecord, type DeviceSpec, type DeviceState } from './devices/device.ts'
import { EdgewardenError, IllegalTransitionError } from './runtime/errors.ts'
import { generateKeyPair, readKeyFile, writeKeyFile, type KeyPair } from './store/keys.ts'
import type { Logger } from './observe/logger.ts'
import { Outbox, type EventInput, type StoredEvent } from './uplink/outbox.ts'
import { Registry } from './devices/registry.ts'
import { applyTransition, type FromState, type Transition } from './trust/state-machine.ts'
import { CryptoPool } from './runtime/crypto-pool.ts'
import { Store, type WriteOp } from './store/store.ts'
import { migrateStore } from './store/schema.ts'

export const VERSION = '0.1.0'
const DEFAULT_ACTION_DEADLINE_S = 30 * 24 * 3600
/** Event types that only inform; at the outbox bound they are counted instead of queued. */
const DROPPABLE_AT_BOUND = new Set(['alert.residual-use', 'credential.expiring', 'action.delivered', 'inventory'])

/** Who asked for a change: `local:<user>` for the admin CLI, `cp:<iss>` for commands. */
export interface Actor {
  actor: string
  reason?: string
  /** the command's jti, where a command caused it */
  jti?: string
  /** a name the local client gave that the admin socket could not confirm (recorded beside the actor, never as it) */
  claimedBy?: string
}

export interface DeviceChange {
  record: DeviceRecord
  from: FromState
  to: DeviceState
  cause: Transition
}

export interface Change {
  ops?: WriteOp[]
  audit?: AuditInput[]
  events?: EventInput[]
}

export interface QueueOptions {
  args?: Record<string, unknown>
  deadlineS?: number
  /** more to write in the action's own batch, given the action (a retirement records its wipe action with it) */
  with?: (action: QueuedAction) => Change
}

export type DeviceListener = (change: DeviceChange) => void
/** Any replacement of a device record (state or not); `before` is undefined for a new device. */
export type RecordListener = (before: DeviceRecord | undefined, after: DeviceRecord) => void

/**
 * More to write in the same batch as a device change. As a function it is
 * called after the change took effect in memory and listeners ran (sessions
 * closed), so evidence can report what actually happened.
 */
export type Extra = Change | ((record: DeviceRecord) => Change)

function resolveExtra(extra: Extra, record: DeviceRecord): Change {
  return typeof extra === 'function' ? extra(record) : extra
}

/** Load the gateway key, creating it on first start where it is the default path. */
export function loadGatewayKey(config: Pick<AgentConfig, 'keyFile' | 'dataDir'>, create: boolean): KeyPair {
  if (!existsSync(config.keyFile)) {
    if (!create) throw new EdgewardenError('KEY_FILE', `no gateway key at ${config.keyFile}`)
    const pair = generateKeyPair()
    writeKeyFile(config.keyFile, pair)
    return pair
  }
  return readKeyFile(config.keyFile)
}

/** Whether two specs name the same credential (the same token key, certificate request or pin, bootstrap secret, or password hash). */
function sameCredential(a: DeviceSpec, b: DeviceSpec): boolean {
  return a.publicKey === b.publicKey && JSON.stringify(a.x509 ?? null) === JSON.stringify(b.x509 ?? null) && a.password === b.password
}

export class Gateway {
  readonly config: AgentConfig
  readonly id: string
  readonly site: string
  readonly key: KeyPair
  readonly clock: Clock
  readonly store: Store
  readonly registry: Registry
  readonly actions: ActionQueue
  readonly outbox: Outbox
  /** Ed25519 off the event loop: device signatures checked, events signed (runtime/crypto-pool.ts) */
  readonly crypto: CryptoPool
  readonly #audit: AuditChain
  readonly #log: Logger
  readonly #deviceListeners = new Set<DeviceListener>()
  readonly #recordListeners = new Set<RecordListener>()
  readonly #eventListeners = new Set<(events: StoredEvent[]) => void>()
  readonly #commitListeners = new Set<(change: Change) => void>()
  #droppedAtBound = 0
  /** the event seq and audit head as far as they are on disk (…/status, PROTOCOL §3) */
  #durable: { seq: number; audit: { seq: number; hash: string } }
  readonly #seenDirty = new Set<string>()
  #overBoundLogged = false

  private constructor(init: {
    config: AgentConfig
    key: KeyPair
    clock: Clock
    store: Store
    registry: Registry
    actions: ActionQueue
    outbox: Outbox
    audit: AuditChain
    crypto: CryptoPool
    log: Logger
  }) {
    this.config = init.config
    this.id = init.config.gateway
    this.site = init.config.site
    this.key = init.key
    this.clock = init.clock
    this.store = init.store
    this.registry = init.registry
    this.actions = init.actions
    this.outbox = init.outbox
    this.crypto = init.crypto
    this.outbox.signOn(init.crypto)
    this.actions.signOn(init.crypto)
    this.#audit = init.audit
    this.#log = init.log
    this.#durable = { seq: init.outbox.lastSeq, audit: init.audit.head }
  }

  static async open(config: AgentConfig, opts: { log: Logger; clock?: Clock }): Promise<Gateway> {
    const store = await Store.open(config.dataDir)
    try {
      // before anything reads it: a newer store is refused untouched, an older one migrated (store/schema.ts)
      const migrated = await migrateStore(store, config.dataDir, VERSION)
      const defaultKey = config.keyFile === `${config.dataDir}/gateway.key`
      const key = loadGatewayKey(config, defaultKey)
      // The system clock, guarded against jumps; a test's clock as it is.
      const clock = opts.clock ?? new GuardedClock()
      const [registry, actions, outbox, audit] = await Promise.all([
        Registry.load(store),
        ActionQueue.load(store, config.gateway, key.privateKey),
        Outbox.load(store, config.gateway, key.privateKey),
        AuditChain.load(store, key),
      ])
      const crypto = new CryptoPool({ ...(config.cryptoWorkers !== null ? { size: config.cryptoWorkers } : {}), signKey: key.privateKey, log: opts.log.child({ component: 'crypto' }) })
      const gw = new Gateway({ config, key, clock, store, registry, actions, outbox, audit, crypto, log: opts.log })
      await gw.#recordIdentity()
      if (migrated.length) await gw.#commit({ audit: migrated.map((m) => ({ actor: 'gateway', action: 'store.migrated', data: { ...m, version: VERSION } })) })
      return gw
    } catch (err) {
      await store.close().catch(() => {})
      throw err
    }
  }

  /** The first start records who this gateway is; a later start under another identity is audited. */
  async #recordIdentity(): Promise<void> {
    const identity = { site: this.site, gateway: this.id, publicKey: this.key.publicKeyB64 }
    const stored = await this.store.getJson<typeof identity>(IDENTITY_KEY)
    if (stored && stored.site === identity.site && stored.gateway === identity.gateway && stored.publicKey === identity.publicKey) return
    if (stored) this.#log.warn({ before: stored, now: identity }, 'gateway identity differs from the one this data dir was created with')
    await this.#commit({
      ops: [{ type: 'put', key: IDENTITY_KEY, value: JSON.stringify(identity) }],
      audit: [{ actor: 'gateway', action: stored ? 'gateway.identity-changed' : 'gateway.created', data: { before: stored ?? null, now: identity } }],
    })
  }

  nowS(): number {
    return nowSeconds(this.clock)
  }

  /**
   * The last event seq and the audit head as far as they are on disk: what
   * `…/status` publishes (PROTOCOL §3). Both only grow; a control plane that
   * sees either go back talks to a gateway restored from an old copy.
   */
  get durableHead(): { seq: number; audit: { seq: number; hash: string } } {
    return this.#durable
  }

  /** The audit log's head (last entry's seq and hash) as far as appended in memory. */
  get auditHead(): { seq: number; hash: string } {
    return this.#audit.head
  }

  onDeviceChange(listener: DeviceListener): () => void {
    this.#deviceListeners.add(listener)
    return () => this.#deviceListeners.delete(listener)
  }

  /**
   * Called whenever a device record is replaced in memory (enrollment, a
   * transition, a key or credential change), before the write, with the
   * record before and after: PROTOCOL §4, every change of credential,
   * rights or acl applies to live sessions at once.
   */
  onRecordChange(listener: RecordListener): () => void {
    this.#recordListeners.add(listener)
    return () => this.#recordListeners.delete(listener)
  }

  /**
   * Called with each change as committed (its audit entries and every event
   * asked for, including those left out at the outbox bound), once it is on
   * disk: the one hook for counting what happens (metrics).
   */
  onCommitted(listener: (change: Change) => void): () => void {
    this.#commitListeners.add(listener)
    return () => this.#commitListeners.delete(listener)
  }

  /** Called with the events of each commit, once they are on disk. */
  onEventsStored(listener: (events: StoredEvent[]) => void): () => void {
    this.#eventListeners.add(listener)
    return () => this.#eventListeners.delete(listener)
  }

  /**
   * Build one atomic batch from a change: its own ops, then an audit entry
   * and signed event for each item. Sequence numbers are taken now, so the
   * order of commit() calls is the order on disk. Resolves once durable.
   */
  async #commit(change: Change, opts: { sync: boolean; ready?: Promise<void> | null } = { sync: true }): Promise<StoredEvent[]> {
    const nowMs = this.clock.now()
    const ops: WriteOp[] = [...(change.ops ?? [])]
    // Entries are chained, not signed: the head written with every store batch is (one signature per batch, AuditChain.headOp)
    for (const a of change.audit ?? []) ops.push(...this.#audit.append(a, nowMs).ops)
    const events: StoredEvent[] = []
    /** event signatures being made on the crypto pool: the batch is written once they are */
    let signed: Promise<void>[] | undefined = opts.ready ? [opts.ready] : undefined
    for (const e of change.events ?? []) {
      if (this.outbox.depth >= this.config.outboxMax) {
        // At the bound (uplink down for long): events that only inform are
        // left out, counted and logged (each is still in the audit log);
        // events that carry evidence of a decision are always kept.
        if (DROPPABLE_AT_BOUND.has(e.type)) {
          if (this.#droppedAtBound++ % 1000 === 0) {
            this.#log.warn({ type: e.type, dropped: this.#droppedAtBound, depth: this.outbox.depth, bound: this.config.outboxMax }, 'outbox at its bound: informational event not queued for the control plane (kept in the audit log)')
          }
          continue
        }
        if (!this.#overBoundLogged) {
          this.#overBoundLogged = true
          this.#log.error({ depth: this.outbox.depth, bound: this.config.outboxMax }, 'outbox over its bound: evidence events are still kept, informational ones are dropped until the uplink drains it')
        }
      } else this.#overBoundLogged = false
      const r = this.outbox.append(e, Math.floor(nowMs / 1000))
      events.push(r.event)
      ops.push(...r.ops)
      if (r.ready) (signed ??= []).push(r.ready)
    }
    // One signed head per batch that holds entries or events (see AuditChain.headOp).
    if (change.audit?.length || events.length) ops.push(this.#audit.headOp(this.outbox.lastSeq))
    const mark = { seq: this.outbox.lastSeq, audit: this.#audit.head }
    // Events are always synced: a seq the control plane saw must never be
    // handed out again after a power cut (§3: seq grows by exactly one).
    await this.store.write(ops, { sync: opts.sync || events.length > 0, ready: signed ? Promise.all(signed) : null })
    // Writes complete in order: what this batch made is now on disk.
    if (mark.seq >= this.#durable.seq && mark.audit.seq >= this.#durable.audit.seq) this.#durable = mark
    if (events.length) for (const l of this.#eventListeners) l(events)
    for (const l of this.#commitListeners) {
      try {
        l(change)
      } catch (err) {
        this.#log.error({ err }, 'commit listener failed')
      }
    }
    return events
  }

  /** Commit a change built by a collaborator (command processor, protocol adapters via the core). */
  commit(change: Change, opts?: { sync: boolean }): Promise<StoredEvent[]> {
    return this.#commit(change, opts)
  }

  /** Replace a record in memory (the returned op persists it) and tell record listeners. */
  #setRecord(before: DeviceRecord | undefined, record: DeviceRecord): WriteOp {
    const op = this.registry.set(record)
    for (const l of this.#recordListeners) {
      try {
        l(before, record)
      } catch (err) {
        this.#log.error({ err, deviceId: record.spec.id }, 'record change listener failed')
      }
    }
    return op
  }

  #emit(change: DeviceChange): void {
    for (const l of this.#deviceListeners) {
      try {
        l(change)
      } catch (err) {
        this.#log.error({ err, deviceId: change.record.spec.id }, 'device change listener failed')
      }
    }
  }

  getDevice(id: string): DeviceRecord | undefined {
    return this.registry.get(id)
  }

  requireDevice(id: string): DeviceRecord {
    const d = this.registry.get(id)
    if (!d) throw new EdgewardenError('UNKNOWN_DEVICE', `no device ${id} is enrolled`)
    return d
  }

  /**
   * Add or update a device (PROTOCOL §3 device.enroll). `opts.certificate`:
   * the certificate the site CA just issued for it (x509 with a csr).
   */
  async enroll(input: DeviceSpec | unknown, who: Actor, extraFn: Extra = {}, opts: { certificate?: CertificateRecord; changes?: string[] } = {}): Promise<DeviceRecord> {
    const parsed = parseDeviceSpec(input)
    if (!parsed.ok) throw new EdgewardenError('INVALID_DEVICE', `invalid device: ${parsed.problems.join('; ')}`)
    const spec = parsed.spec
    const now = this.nowS()
    const before = this.registry.get(spec.id)
    const from: FromState = before?.state ?? 'none'
    const to = applyTransition(spec.id, from, 'enroll')
    // The same credential is kept (with its validity and history); a new
    // one, or re-admission after revocation, replaces every older one.
    const keep = before !== undefined && before.state !== 'revoked' && sameCredential(before.spec, spec) && opts.certificate === undefined
    const kind = credentialKind(spec)
    const record: DeviceRecord = {
      spec,
      state: to,
      keys: kind !== 'publicKey' ? [] : keep ? before.keys : [{ publicKey: spec.publicKey!, notBefore: now, notAfter: null }],
      credentialExpiresAt:
        spec.credentialExpiresAt ?? opts.certificate?.notAfter ?? (keep ? before.credentialExpiresAt : now + this.config.credentialLifetimeS),
      credentialIssuedAt: keep ? (before.credentialIssuedAt ?? before.createdAt) : now,
      createdAt: before?.createdAt ?? now,
      updatedAt: now,
      stateChangedAt: from === to ? (before?.stateChangedAt ?? now) : now,
    }
    if (kind === 'x509') {
      const x = spec.x509!
      record.certificates = opts.certificate
        ? [{ ...opts.certificate, role: 'current' }]
        : keep
          ? (before.certificates ?? [])
          : 'certificateSha256' in x
            ? [{ serial: '', sha256: x.certificateSha256, notBefore: 0, notAfter: 0, issuer: 'external', role: 'current' }]
            : []
      if ('bootstrapSecretSha256' in x) record.bootstrap = keep && before.bootstrap ? before.bootstrap : { secretSha256: x.bootstrapSecretSha256 }
    } else if (spec.opcua && before?.certificates?.length && before.state !== 'revoked') {
      // An OPC UA device's application certificates from the site CA (§8) are not its token credential: an update keeps them.
      record.certificates = before.certificates
    }
    if (who.reason !== undefined) record.stateReason = who.reason
    // a record updated in a state it keeps (a quarantine) keeps the reason it is in that state for
    else if (before?.stateReason !== undefined && from === to) record.stateReason = before.stateReason
    if (before?.lastSeenAt !== undefined) record.lastSeenAt = before.lastSeenAt
    // A TOFU pin survives an update of the record, not re-admission nor a move to another endpoint.
    if (before?.opcuaPin && before.state !== 'revoked' && before.spec.opcua?.endpoint === spec.opcua?.endpoint) record.opcuaPin = before.opcuaPin
    const op = this.#setRecord(before, record)
    const cause: Transition = 'enroll'
    this.#emit({ record, from, to, cause })
    const extra = resolveExtra(extraFn, record)
    const ops = [op, ...(extra.ops ?? [])]
    await this.#commit({
      ops,
      audit: [
        {
          actor: who.actor,
          action: 'device.enroll',
          subject: spec.id,
          data: { from, to, credentialKind: kind, publicKey: spec.publicKey, certificate: opts.certificate?.serial, jti: who.jti, claimedBy: who.claimedBy, reason: who.reason, changes: opts.changes },
        },
        ...(extra.audit ?? []),
      ],
      events: [...(from !== to ? [{ type: 'device.state', data: { deviceId: spec.id, from, to, cause } }] : []), ...(extra.events ?? [])],
    })
    return record
  }

  /**
   * Move a device through a transition of §4. A repeat of the state it is in
   * (quarantining a quarantined device) changes nothing and returns changed:
   * false. The in-memory state changes before the write completes, so every
   * admission decision from this moment on sees it; listeners (protocol
   * adapters closing sessions) run before the fsync too.
   */
  async transition(
    id: string,
    t: Transition,
    who: Actor,
    extraFn: Extra = {},
  ): Promise<{ record: DeviceRecord; from: DeviceState; changed: boolean }> {
    const before = this.requireDevice(id)
    const to = applyTransition(id, before.state, t)
    if (to === before.state && t !== 'retire') {
      const extra = resolveExtra(extraFn, before)
      if (extra.ops?.length || extra.audit?.length || extra.events?.length) await this.#commit(extra)
      return { record: before, from: before.state, changed: false }
    }
    const now = this.nowS()
    const record: DeviceRecord = { ...before, state: to, updatedAt: now, stateChangedAt: to === before.state ? before.stateChangedAt : now }
    if (who.reason !== undefined) record.stateReason = who.reason
    else delete record.stateReason
    const op = this.#setRecord(before, record)
    const change = { record, from: before.state as FromState, to, cause: t }
    if (to !== before.state) this.#emit(change)
    const extra = resolveExtra(extraFn, record)
    await this.#commit({
      ops: [op, ...(extra.ops ?? [])],
      audit: [{ actor: who.actor, action: `device.${t}`, subject: id, data: { from: before.state, to, reason: who.reason, jti: who.jti, claimedBy: who.claimedBy } }, ...(extra.audit ?? [])],
      events: [...(to !== before.state ? [{ type: 'device.state', data: { deviceId: id, from: before.state, to, cause: t } }] : []), ...(extra.events ?? [])],
    })
    return { record, from: before.state, changed: to !== before.state }
  }

  /**
   * Change a device's record (keys, credential) without a state transition,
   * with more to write in the same batch.
   */
  async updateDevice(id: string, mutate: (r: DeviceRecord) => DeviceRecord, extra: Change = {}, opts?: { sync: boolean }): Promise<DeviceRecord> {
    const before = this.requireDevice(id)
    const record = mutate(structuredClone(before))
    record.updatedAt = this.nowS()
    const op = this.#setRecord(before, record)
    await this.#commit({ ...extra, ops: [op, ...(extra.ops ?? [])] }, opts)
    return record
  }

  /** Queue an action for a device (PROTOCOL §5): stored, signed and audited before anything sends it. */
  async queueAction(id: string, act: Act, who: Actor, opts: QueueOptions = {}): Promise<QueuedAction> {
    const d = this.requireDevice(id)
    const allowed: Record<Act, readonly DeviceState[]> = {
      wipe: ['active', 'quarantined', 'revoked', 'retiring'],
      reenroll: ['active'],
      renew: ['active'],
      'install-cert': ['active'],
      'revoke-notice': ['revoked', 'quarantined', 'retiring'],
    }
    if (!allowed[act].includes(d.state)) throw new IllegalTransitionError(id, d.state, `${act} queued`, `queueing ${act}`)
    const now = this.nowS()
    const { action, superseded, ops, ready } = this.actions.enqueue(id, act, opts.args ?? {}, now, now + (opts.deadlineS ?? DEFAULT_ACTION_DEADLINE_S))
    // what the caller writes with it, in the same atomic batch (its audit entries first)
    const withIt = opts.with?.(action) ?? {}
    await this.#commit({
      ops: [...(withIt.ops ?? []), ...ops],
      events: [...(withIt.events ?? []), { type: 'action.queued', data: { deviceId: id, actionId: action.id, act } }],
      audit: [
        ...(withIt.audit ?? []),
        { actor: who.actor, action: 'action.queued', subject: id, data: { actionId: action.id, act, seq: action.seq, reason: who.reason, jti: who.jti, claimedBy: who.claimedBy, superseded: superseded.map((a) => a.id) } },
      ],
    }, { sync: true, ready })
    return action
  }

  /**
   * A protocol saw the device (admitted, disconnected, answered the gateway).
   * Kept in memory at once and written lazily by flushSeen(): last-seen is
   * for people, and an fsync per connect would cost admission its speed.
   */
  seen(id: string): void {
    const d = this.registry.get(id)
    if (!d) return
    d.lastSeenAt = this.nowS()
    this.#seenDirty.add(id)
  }

  /** Write the last-seen times noted since the last flush (one batch, not synced). */
  async flushSeen(): Promise<void> {
    if (!this.#seenDirty.size) return
    const ops: WriteOp[] = []
    for (const id of this.#seenDirty) {
      const d = this.registry.get(id)
      if (d) ops.push(this.registry.set(d))
    }
    this.#seenDirty.clear()
    await this.store.write(ops, { sync: false })
  }

  /**
   * Take a revoked device out of the registry, with its pending actions, in
   * one audited batch. Only a revoked one: its sessions are closed and it is
   * refused everywhere already, and once removed it is an unknown id, which
   * is refused too. Local only (the admin socket); PROTOCOL §3 has no op for it.
   */
  async removeDevice(id: string, who: Actor): Promise<void> {
    const before = this.requireDevice(id)
    if (before.state !== 'revoked') throw new IllegalTransitionError(id, before.state, 'removed', 'removal (only of a revoked device)')
    const pending = [...this.actions.pending(id)]
    const ops: WriteOp[] = [this.registry.delete(id), ...pending.map((a) => this.actions.remove(id, a.id)).filter((o): o is WriteOp => o !== null)]
    await this.#commit({
      ops,
      audit: [{ actor: who.actor, action: 'device.removed', subject: id, data: { state: before.state, reason: who.reason, actions: pending.map((a) => a.id), claimedBy: who.claimedBy } }],
    })
  }

  /** Informational events left out at the outbox bound since start. */
  get eventsDroppedAtBound(): number {
    return this.#droppedAtBound
  }

  async close(): Promise<void> {
    await this.store.close()
    await this.crypto.close()
  }
}
