// The device side of PROTOCOL §5 actions, free of any transport: verify an
// action envelope against the gateway key, run the device's hook once, sign
// the ack with the device's current key, and remember the outcome durably so
// a repeated action id is answered again without acting twice. The MQTT
// binding (mqtt-action-device.ts) and, later, the Modbus (§7) and OPC UA (§8)
// hooks all feed envelopes to handle() and carry the ack back.
//
// A token device's key is an Ed25519 seed the runtime holds itself; a
// certificate device (cert-device.ts) hands it its keys instead
// (ExternalKeys), and its acks are signed ES256 or EdDSA by its certificate's
// key.
//
// Plain JS (noble, WebCrypto): no node: imports, so it runs in any runtime.
import { keygen, publicKeyFromB64, publicKeyOf, publicKeyToB64, sign, verify } from './crypto.ts'
import { b64urlDecode, b64urlEncode, utf8 } from '../wire/base64url.ts'
import { isId, isJti, newJti } from '../wire/ids.ts'
import { assembleJws, JwsFormatError, jwsSigningInput, parseJws, type Claims, type JwsAlg, type ParsedJws } from '../wire/jws.ts'
import { isAct, type Act, type AckStatus } from '../wire/protocol.ts'

/** PROTOCOL §5 `act` values. */
export { ACTS, type Act, type AckStatus } from '../wire/protocol.ts'


/** How many handled action ids are remembered (oldest forgotten first). */
export const DEFAULT_HANDLED_LIMIT = 1024

// --- persistent state ----------------------------------------------------

export interface HandledAction {
  actionId: string
  /** the `act` as received (may be one this device does not know) */
  act: string
  status: AckStatus
  /** the signed ack, replayed as is for a repeated action id */
  ack: string
  at: number
}

/**
 * Everything a device keeps across restarts. JSON-serializable; keys are
 * base64url of the 32-byte seed. A storage saves and loads it whole.
 */
export interface DeviceState {
  v: 1
  /** the current key; null once wiped */
  secretKey: string | null
  /**
   * A key made for a reenroll/renew whose `done` ack was signed but not yet
   * known to be out: it becomes current once the ack is published. Kept
   * here so a crash in between does not lose it.
   */
  pendingKey: { actionId: string; secretKey: string } | null
  /** handled actions, oldest first */
  handled: HandledAction[]
  /** the device's own data blobs (erased by a wipe) */
  data: Record<string, string>
  /** set when a wipe was acked `done`; keyErased once the key material is gone */
  wiped: { actionId: string; at: number; keyErased: boolean } | null
  /** revoke-notice actions received */
  notices: { actionId: string; at: number; args: Record<string, unknown> }[]
}

/**
 * Where a device keeps its state. Error contract: load() resolves null when
 * nothing was ever saved and rejects when stored state cannot be read (the
 * runtime does not start on unreadable state); save() resolves only once the
 * state is durable (for a file, written and renamed into place) and rejects
 * otherwise, leaving the previous state intact.
 */
export interface DeviceStorage {
  load(): Promise<DeviceState | null>
  save(state: DeviceState): Promise<void>
}

/** For tests, simulators and devices without persistent storage: any JSON state. Stores a copy, never the caller's object. */
export class MemoryJsonStorage<T> {
  #json: string | null = null
  saves = 0
  async load(): Promise<T | null> {
    return this.peek()
  }
  async save(state: T): Promise<void> {
    this.#json = JSON.stringify(state)
    this.saves++
  }
  /** the stored state as it would be read back (tests) */
  peek(): T | null {
    return this.#json === null ? null : (JSON.parse(this.#json) as T)
  }
}

/** A device's state held in memory (DeviceStorage). */
export class MemoryDeviceStorage extends MemoryJsonStorage<DeviceState> implements DeviceStorage {}

/** Check the shape of loaded state, so a corrupt store fails at open and not mid-action. */
export function validateDeviceState(v: unknown): DeviceState {
  const bad = (what: string): never => {
    throw new TypeError(`device state: ${what}`)
  }
  if (v === null || typeof v !== 'object') bad('not an object')
  const s = v as Record<string, unknown>
  if (s.v !== 1) bad(`unsupported version ${JSON.stringify(s.v)}`)
  if (s.secretKey !== null && (typeof s.secretKey !== 'string' || b64urlDecode(s.secretKey)?.length !== 32)) bad('secretKey')
  const pk = s.pendingKey as DeviceState['pendingKey'] | undefined
  if (pk !== null && (typeof pk !== 'object' || pk === undefined || !isJti(pk.actionId) || b64urlDecode(String(pk.secretKey))?.length !== 32)) bad('pendingKey')
  if (!Array.isArray(s.handled) || !s.handled.every((h: HandledAction) => h && isJti(h.actionId) && typeof h.ack === 'string')) bad('handled')
  if (s.data === null || typeof s.data !== 'object' || Array.isArray(s.data)) bad('data')
  if (s.wiped !== null && (typeof s.wiped !== 'object' || !isJti((s.wiped as { actionId?: unknown }).actionId))) bad('wiped')
  if (!Array.isArray(s.notices)) bad('notices')
  return v as DeviceState
}

// --- hooks ---------------------------------------------------------------

export interface ActionContext {
  actionId: string
  act: Act
  args: Record<string, unknown>
  /** the action's `iat` (it may be weeks old: actions wait for offline devices) */
  iat: number
  runtime: ActionRuntime
}

export type HookResult =
  | {
      status: 'done'
      detail?: string
      /** reenroll/renew: the new 32-byte seed; made with noble when absent */
      newSecretKey?: Uint8Array
      /**
       * reenroll/renew of a device with external keys (a certificate device):
       * its PKCS#10 request for a new key, base64url DER, which the ack
       * carries instead of newPublicKey/newKeyProof (PROTOCOL §5)
       */
      csr?: string
      /** device work to do once the ack is out (before the runtime's own: key switch or key erasure) */
      after?: () => Promise<void>
    }
  | { status: 'failed'; detail: string }
  | { status: 'unsupported'; detail?: string }

/**
 * A device's own action. A hook that throws acks `failed` with the error's
 * message as `detail`. For `wipe` the hook erases the device's data before
 * the ack is signed (so `done` is true when it is sent); the runtime itself
 * erases the key material after the ack is out, since the ack needs it.
 */
export type ActionHook = (ctx: ActionContext) => Promise<HookResult>
export type DeviceHooks = Record<Act, ActionHook>

export const defaultHooks: DeviceHooks = {
  wipe: async (ctx) => {
    await ctx.runtime.eraseData()
    return { status: 'done' }
  },
  reenroll: async () => ({ status: 'done', newSecretKey: (await keygen()).secretKey }),
  renew: async () => ({ status: 'done', newSecretKey: (await keygen()).secretKey }),
  'revoke-notice': async () => ({ status: 'done' }), // the runtime records the notice
  'install-cert': async () => ({ status: 'unsupported', detail: 'this device authenticates with a token key, not a certificate' }),
}

// --- the runtime ----------------------------------------------------------

/** Runs tasks one at a time, in call order: each starts once the one before it settled; one that fails does not stop the next. */
export function serialQueue(): <T>(task: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve()
  return (task) => {
    const run = tail.then(task)
    tail = run.catch(() => {})
    return run
  }
}

export type HandleResult =
  | {
      kind: 'ack'
      /** the signed ack (PROTOCOL §5), to publish on `dev/<id>/ack` or return from the hook */
      ack: string
      /** the act as received */
      act: string
      actionId: string
      status: AckStatus
      /** true when this action id was handled before: the stored ack, nothing re-run */
      repeat: boolean
      /**
       * Call once the ack is out (MQTT: after the PUBACK). Switches to the
       * new key after a reenroll/renew, erases the key after a wipe. Absent
       * when there is nothing left to do.
       */
      after?: () => Promise<void>
    }
  | { kind: 'ignored'; reason: IgnoreReason; detail: string }

/**
 * Why an envelope was neither acted on nor acked: `malformed` (not a JWS of
 * the §1 shape, bad claims), `bad-alg`, `unknown-key` (kid is not the
 * gateway), `bad-signature`, `wrong-issuer`, `wrong-audience`, `wiped` (this
 * device was wiped: only the wipe itself is acked again), `no-key` (no key
 * to sign an ack with).
 */
export type IgnoreReason = 'malformed' | 'bad-alg' | 'unknown-key' | 'bad-signature' | 'wrong-issuer' | 'wrong-audience' | 'wiped' | 'no-key'

/** How a device signs its acks: the JWS `alg` and a signature over the signing input (PROTOCOL §1, §5). */
export interface DeviceSigner {
  readonly alg: JwsAlg
  sign(message: Uint8Array): Promise<Uint8Array>
}

/**
 * Keys the runtime does not hold itself: a certificate device's (PROTOCOL
 * §9), whose key is a WebCrypto key the gateway knows by its certificate.
 * Error contract: current() never throws; erase() resolves only once the key
 * material is durably gone, and is called again after a crash in between.
 */
export interface ExternalKeys {
  /** the signer of the key the gateway knows now; null when there is none (not enrolled yet, or wiped) */
  current(): DeviceSigner | null
  /** PROTOCOL §6: erase the key material; called once the wipe's ack is out */
  erase(): Promise<void>
}

export interface ActionRuntimeOptions {
  deviceId: string
  gatewayId: string
  /** the gateway's public key, base64url of the raw 32 bytes (PROTOCOL §1) */
  gatewayPublicKey: string
  /** the device's key at first start; once storage holds a key, the stored one is current */
  secretKey?: Uint8Array
  /**
   * Instead of secretKey: the device's keys live elsewhere (a certificate
   * device). The runtime then keeps no key of its own, and a reenroll or
   * renew hook must return `csr`.
   */
  keys?: ExternalKeys
  storage: DeviceStorage
  hooks?: Partial<DeviceHooks>
  /** seconds since the epoch, for the ack's iat */
  nowS?: () => number
  handledLimit?: number
}

export type KeyChangeListener = (change: { publicKeyB64: string | null; secretKey: Uint8Array | null; cause: 'reenroll' | 'renew' | 'wipe' | 'recovered' }) => void

export class ActionRuntime {
  readonly deviceId: string
  readonly gatewayId: string
  readonly #gatewayKey: Uint8Array
  readonly #storage: DeviceStorage
  readonly #hooks: DeviceHooks
  readonly #nowS: () => number
  readonly #handledLimit: number
  readonly #keys: ExternalKeys | null
  #state: DeviceState
  #secretKey: Uint8Array | null
  #publicKeyB64: string | null
  readonly #keyListeners = new Set<KeyChangeListener>()
  /** handle() calls run one at a time, so one action id is never run twice concurrently */
  readonly #lock = serialQueue()
  readonly #saves = serialQueue()

  private constructor(opts: ActionRuntimeOptions, gatewayKey: Uint8Array, state: DeviceState, secretKey: Uint8Array | null, publicKeyB64: string | null) {
    this.deviceId = opts.deviceId
    this.gatewayId = opts.gatewayId
    this.#gatewayKey = gatewayKey
    this.#storage = opts.storage
    this.#hooks = { ...defaultHooks, ...opts.hooks }
    this.#nowS = opts.nowS ?? (() => Math.floor(Date.now() / 1000))
    this.#handledLimit = opts.handledLimit ?? DEFAULT_HANDLED_LIMIT
    this.#keys = opts.keys ?? null
    this.#state = state
    this.#secretKey = secretKey
    this.#publicKeyB64 = publicKeyB64
  }

  /** Load the device's state (or start it with `secretKey`). Throws TypeError on bad options or unreadable state. */
  static async open(opts: ActionRuntimeOptions): Promise<ActionRuntime> {
    if (!isId(opts.deviceId)) throw new TypeError('deviceId is not a PROTOCOL §1 identifier')
    if (!isId(opts.gatewayId)) throw new TypeError('gatewayId is not a PROTOCOL §1 identifier')
    const gatewayKey = publicKeyFromB64(opts.gatewayPublicKey)
    if (!gatewayKey) throw new TypeError('gatewayPublicKey is not base64url of 32 bytes')
    if (opts.handledLimit !== undefined && (!Number.isSafeInteger(opts.handledLimit) || opts.handledLimit < 1)) throw new TypeError('handledLimit must be a positive integer')
    const external = opts.keys !== undefined
    if (external && (typeof opts.keys?.current !== 'function' || typeof opts.keys.erase !== 'function')) throw new TypeError('keys must have current() and erase()')
    if (external && opts.secretKey !== undefined) throw new TypeError('secretKey and keys exclude each other')
    const loaded = await opts.storage.load()
    let state: DeviceState
    if (loaded) {
      state = validateDeviceState(loaded)
    } else {
      if (!external && (!(opts.secretKey instanceof Uint8Array) || opts.secretKey.length !== 32)) throw new TypeError('secretKey (32 bytes) is required on first open')
      state = { v: 1, secretKey: external ? null : b64urlEncode(opts.secretKey!), pendingKey: null, handled: [], data: {}, wiped: null, notices: [] }
      await opts.storage.save(state)
    }
    const secretKey = external || state.secretKey === null ? null : b64urlDecode(state.secretKey)
    const publicKeyB64 = secretKey ? publicKeyToB64(await publicKeyOf(secretKey)) : null
    return new ActionRuntime(opts, gatewayKey, state, secretKey, publicKeyB64)
  }

  /** The current key (null once wiped, and always with external keys). Tokens and acks are signed with it. */
  get secretKey(): Uint8Array | null {
    return this.#secretKey
  }
  /** Whether there is a key to sign acks with (its own, or the external one). */
  get hasKey(): boolean {
    return this.#signer() !== null
  }
  get publicKeyB64(): string | null {
    return this.#publicKeyB64
  }
  /** A new key whose ack was signed but not yet confirmed out; see recoverPendingKey(). */
  get pendingKey(): Uint8Array | null {
    const p = this.#state.pendingKey
    return p ? b64urlDecode(p.secretKey) : null
  }
  get wiped(): boolean {
    return this.#state.wiped !== null
  }
  get notices(): readonly { actionId: string; at: number; args: Record<string, unknown> }[] {
    return this.#state.notices
  }
  /** The stored outcome of an action id, if it was handled. */
  handled(actionId: string): HandledAction | undefined {
    return this.#state.handled.find((h) => h.actionId === actionId)
  }

  onKeyChange(listener: KeyChangeListener): () => void {
    this.#keyListeners.add(listener)
    return () => this.#keyListeners.delete(listener)
  }

  // --- device data ---

  getData(name: string): string | undefined {
    return Object.hasOwn(this.#state.data, name) ? this.#state.data[name] : undefined
  }
  async setData(name: string, value: string): Promise<void> {
    if (this.wiped) throw new TypeError('device is wiped')
    await this.#update((s) => ({ ...s, data: { ...s.data, [name]: value } }))
  }
  /** Erase the device's data blobs (the default wipe hook). */
  async eraseData(): Promise<void> {
    await this.#update((s) => ({ ...s, data: {} }))
  }

  // --- actions ---

  /** Verify an action envelope, act on it once, return the signed ack; see HandleResult. Never throws on wire input. */
  handle(envelope: string | Uint8Array): Promise<HandleResult> {
    return this.#lock(() => this.#handle(envelope))
  }

  async #handle(envelope: string | Uint8Array): Promise<HandleResult> {
    const checked = await this.#verify(envelope)
    if ('reason' in checked) return { kind: 'ignored', ...checked }
    const { claims } = checked
    const actionId = claims.jti as string
    const act = claims.act

    // PROTOCOL §5: a repeated action id is answered again, nothing re-run.
    const seen = this.handled(actionId)
    if (seen) return this.#repeat(seen)
    if (this.#state.wiped) return { kind: 'ignored', reason: 'wiped', detail: `device was wiped by action ${this.#state.wiped.actionId}` }
    if (!this.#signer()) return { kind: 'ignored', reason: 'no-key', detail: 'no key to sign an ack with' }

    if (!isAct(act)) return this.#finish(actionId, String(act), { status: 'unsupported', detail: `unknown act ${JSON.stringify(act ?? null)}` })
    const args = claims.args ?? {}
    if (args === null || typeof args !== 'object' || Array.isArray(args)) return this.#finish(actionId, act, { status: 'failed', detail: 'args is not an object' })

    let result: HookResult
    try {
      result = await this.#hooks[act]({ actionId, act, args: args as Record<string, unknown>, iat: claims.iat as number, runtime: this })
    } catch (err) {
      result = { status: 'failed', detail: err instanceof Error ? err.message : String(err) }
    }
    return this.#finish(actionId, act, result, args as Record<string, unknown>)
  }

  /** Everything checked before anything is done; a failure here is never acked. */
  async #verify(envelope: string | Uint8Array): Promise<{ claims: Claims } | { reason: IgnoreReason; detail: string }> {
    let jws: ParsedJws
    try {
      if (typeof envelope !== 'string' && !(envelope instanceof Uint8Array)) throw new JwsFormatError('malformed', 'envelope is not a string or bytes')
      jws = parseJws(envelope)
    } catch (err) {
      if (err instanceof JwsFormatError) return { reason: err.reason, detail: err.message }
      return { reason: 'malformed', detail: String(err) }
    }
    // PROTOCOL §2: the gateway signs with kid = its gateway id.
    if (jws.header.kid !== this.gatewayId) return { reason: 'unknown-key', detail: `kid ${jws.header.kid} is not the gateway ${this.gatewayId}` }
    if (!(await verify(jws.signature, jws.signingInput, this.#gatewayKey))) return { reason: 'bad-signature', detail: 'not signed by the gateway key' }
    const c = jws.payload
    if (c.iss !== this.gatewayId) return { reason: 'wrong-issuer', detail: `iss ${JSON.stringify(c.iss ?? null)} is not the gateway` }
    if (c.aud !== this.deviceId) return { reason: 'wrong-audience', detail: `aud ${JSON.stringify(c.aud ?? null)} is not this device` }
    if (!isJti(c.jti)) return { reason: 'malformed', detail: 'jti missing or not 1-64 of [A-Za-z0-9._:-]' }
    // No exp and no age limit: an action may wait weeks for an offline
    // device, and many devices have no trustworthy clock, so iat is not
    // compared with the device's time either.
    if (!Number.isSafeInteger(c.iat)) return { reason: 'malformed', detail: 'iat is not an integer' }
    return { claims: c }
  }

  #repeat(seen: HandledAction): HandleResult {
    const res: HandleResult = { kind: 'ack', ack: seen.ack, act: seen.act, actionId: seen.actionId, status: seen.status, repeat: true }
    // The first ack may never have got out (connection lost before the
    // PUBACK, or a crash): what was to follow it is still owed.
    const after = this.#afterFor(seen.actionId)
    if (after) res.after = after
    return res
  }

  async #finish(actionId: string, act: string, result: HookResult, args: Record<string, unknown> = {}): Promise<HandleResult> {
    const claims: Claims = { iss: this.deviceId, aud: this.gatewayId, iat: this.#nowS(), jti: newJti(), ref: actionId, status: result.status }
    if (result.detail !== undefined) claims.detail = result.detail
    const done = result.status === 'done'
    let pendingKey: DeviceState['pendingKey'] = null
    if (done && (act === 'reenroll' || act === 'renew') && this.#keys) {
      // PROTOCOL §5: a certificate device's new key travels as a request; its signature is the proof of possession.
      if (typeof result.csr !== 'string' || !/^[A-Za-z0-9_-]{16,}$/.test(result.csr)) {
        return this.#finish(actionId, act, { status: 'failed', detail: 'a device with a certificate renews with a certificate request: the hook returned no csr' })
      }
      claims.csr = result.csr
    } else if (done && (act === 'reenroll' || act === 'renew')) {
      const newKey = result.newSecretKey ?? (await keygen()).secretKey
      if (!(newKey instanceof Uint8Array) || newKey.length !== 32) {
        return this.#finish(actionId, act, { status: 'failed', detail: 'hook returned a new key that is not 32 bytes' })
      }
      // PROTOCOL §5: proof of possession, the new key's signature over the action id.
      claims.newPublicKey = publicKeyToB64(await publicKeyOf(newKey))
      claims.newKeyProof = b64urlEncode(await sign(utf8(actionId), newKey))
      pendingKey = { actionId, secretKey: b64urlEncode(newKey) }
    }
    // Signed with the key the gateway knows now: the old one, even after a re-key
    // (read after the hook ran: an install-cert hook makes the new certificate's key current).
    const signer = this.#signer()
    if (!signer) return { kind: 'ignored', reason: 'no-key', detail: 'the hook left no key to sign an ack with' }
    const input = jwsSigningInput(this.deviceId, claims, signer.alg)
    const ack = assembleJws(input, await signer.sign(utf8(input)))
    const at = this.#nowS()
    const entry: HandledAction = { actionId, act, status: result.status, ack, at }
    // Durable before the ack can leave: a restart answers the same way.
    await this.#update((s) => ({
      ...s,
      handled: [...s.handled, entry].slice(-this.#handledLimit),
      ...(pendingKey ? { pendingKey } : {}),
      ...(done && act === 'wipe' ? { wiped: { actionId, at, keyErased: false } } : {}),
      ...(done && act === 'revoke-notice' ? { notices: [...s.notices, { actionId, at, args }] } : {}),
    }))
    const res: HandleResult = { kind: 'ack', ack, act, actionId, status: result.status, repeat: false }
    const hookAfter = result.status === 'done' ? result.after : undefined
    const own = this.#afterFor(actionId)
    if (hookAfter || own) {
      let ran = false
      res.after = async () => {
        if (!ran && hookAfter) await hookAfter()
        ran = true
        await own?.()
      }
    }
    return res
  }

  /** The key acks are signed with now: the external one, or the runtime's own Ed25519 key. */
  #signer(): DeviceSigner | null {
    if (this.#keys) return this.#keys.current()
    const key = this.#secretKey
    return key ? { alg: 'EdDSA', sign: (m) => sign(m, key) } : null
  }

  /** The runtime's own follow-up for an acked action, while it is still owed. */
  #afterFor(actionId: string): (() => Promise<void>) | undefined {
    const s = this.#state
    if (s.pendingKey?.actionId === actionId) {
      const cause = this.handled(actionId)?.act === 'reenroll' ? 'reenroll' : 'renew'
      return () => this.#promote(actionId, cause)
    }
    if (s.wiped?.actionId === actionId && !s.wiped.keyErased) return () => this.#eraseKeys(actionId)
    return undefined
  }

  async #promote(actionId: string, cause: 'reenroll' | 'renew' | 'recovered'): Promise<void> {
    const p = this.#state.pendingKey
    if (!p || p.actionId !== actionId || this.#state.wiped) return
    await this.#update((s) => ({ ...s, secretKey: p.secretKey, pendingKey: null }))
    await this.#setKey(b64urlDecode(p.secretKey), cause)
  }

  /**
   * Make the pending key current without having seen its ack go out: for a
   * device that restarted between sending a reenroll/renew ack and
   * switching keys, and whose old key the gateway now refuses. Returns
   * false when there is no pending key.
   */
  async recoverPendingKey(): Promise<boolean> {
    const p = this.#state.pendingKey
    if (!p) return false
    await this.#promote(p.actionId, 'recovered')
    return true
  }

  /** PROTOCOL §6 wipe: key material and data gone; only the wipe's own ack is kept, to answer it again. */
  async #eraseKeys(actionId: string): Promise<void> {
    const s = this.#state
    if (!s.wiped || s.wiped.actionId !== actionId || s.wiped.keyErased) return
    // external keys first: keyErased is only recorded once they are gone too
    await this.#keys?.erase()
    const wiped = { ...s.wiped, keyErased: true }
    await this.#update((cur) => ({ v: 1, secretKey: null, pendingKey: null, handled: cur.handled.filter((h) => h.actionId === actionId), data: {}, wiped, notices: [] }))
    this.#secretKey?.fill(0)
    await this.#setKey(null, 'wipe')
  }

  async #setKey(secretKey: Uint8Array | null, cause: 'reenroll' | 'renew' | 'wipe' | 'recovered'): Promise<void> {
    this.#secretKey = secretKey
    this.#publicKeyB64 = secretKey ? publicKeyToB64(await publicKeyOf(secretKey)) : null
    for (const l of [...this.#keyListeners]) {
      try {
        l({ publicKeyB64: this.#publicKeyB64, secretKey, cause })
      } catch {
        // a listener's failure must not undo a key change that is already durable
      }
    }
  }

  /** Saves run one at a time, each from the latest state, so the last one written is the newest. */
  #update(fn: (s: DeviceState) => DeviceState): Promise<void> {
    return this.#saves(async () => {
      const next = fn(this.#state)
      await this.#storage.save(next)
      this.#state = next
    })
  }
}
