// A device that authenticates with an X.509 certificate of the site CA
// (PROTOCOL §5, §9), free of any transport. It holds a P-256 or Ed25519 key
// and its certificate chain; asks for a certificate with a PKCS#10 request
// for a new key (at enrollment, and to renew); answers `renew` and
// `reenroll` with such a request, in an ack signed by its current key;
// stores what `install-cert` brings once the chain is for a key it asked
// for, and only then uses the new key; erases key and chain on a wipe, once
// the wipe's ack is out. Actions run through the ActionRuntime, which is
// handed the device's keys (ExternalKeys) instead of holding an Ed25519 seed.
// The MQTT binding is mqtt-cert-device.ts; EST (RFC 7030) is est-client.ts.
//
// WebCrypto and @peculiar/x509 only: no node: imports.
import { ActionRuntime, MemoryDeviceStorage, MemoryJsonStorage, serialQueue, type ActionContext, type DeviceHooks, type DeviceSigner, type DeviceStorage, type ExternalKeys, type HookResult } from './action-runtime.ts'
import { b64urlDecode, b64urlEncode } from '../wire/base64url.ts'
import { isId } from '../wire/ids.ts'
import {
  certificateFacts,
  certificateRequest,
  checkChain,
  generateCertKey,
  importCertKey,
  isCertKeyAlg,
  jwsAlgOf,
  orderChain,
  pemBlocks,
  privateKeyPem,
  sameBytes,
  signWith,
  type CertificateFacts,
  type CertKey,
  type CertKeyAlg,
} from './x509-keys.ts'

/** Keys made for requests still unanswered, at most; older ones are forgotten (their certificates can no longer be installed). */
export const MAX_PENDING_KEYS = 4

/**
 * Everything a certificate device keeps across restarts, JSON. Keys are
 * PKCS#8 DER, base64url. The storage holds private keys: keep it like a key
 * file (PROTOCOL §1).
 */
export interface CertDeviceState {
  v: 1
  alg: CertKeyAlg
  /** the key the current certificate is for; null before the first certificate, and once wiped */
  key: string | null
  /** PEM, the device certificate first, then its CA chain; empty while key is null */
  chain: string[]
  /**
   * Keys made for requests whose certificates have not come yet, oldest
   * first; `ref` is the renew/reenroll action id, or `enroll`, `est-enroll`,
   * `est-reenroll`. Made durable before the request leaves.
   */
  pending: { ref: string; key: string }[]
}

/** Where a certificate device keeps its key and chain; the same error contract as DeviceStorage. */
export interface CertStorage {
  load(): Promise<CertDeviceState | null>
  save(state: CertDeviceState): Promise<void>
}

/** A certificate device's key and chain held in memory (tests, simulators). */
export class MemoryCertStorage extends MemoryJsonStorage<CertDeviceState> implements CertStorage {}

const isKeyText = (v: unknown): v is string => typeof v === 'string' && (b64urlDecode(v)?.length ?? 0) >= 16

/** Check the shape of loaded state, so a corrupt store fails at open and not mid-renewal. */
export function validateCertDeviceState(v: unknown): CertDeviceState {
  const bad = (what: string): never => {
    throw new TypeError(`certificate device state: ${what}`)
  }
  if (v === null || typeof v !== 'object') bad('not an object')
  const s = v as Record<string, unknown>
  if (s.v !== 1) bad(`unsupported version ${JSON.stringify(s.v)}`)
  if (!isCertKeyAlg(s.alg)) bad('alg')
  if (s.key !== null && !isKeyText(s.key)) bad('key')
  if (!Array.isArray(s.chain) || !s.chain.every((p) => typeof p === 'string') || (s.key === null) !== (s.chain.length === 0)) bad('chain')
  if (!Array.isArray(s.pending) || s.pending.length > MAX_PENDING_KEYS || !s.pending.every((p: { ref?: unknown; key?: unknown }) => p && typeof p.ref === 'string' && isKeyText(p.key))) bad('pending')
  return v as CertDeviceState
}

/** A client certificate and its key, PEM, as a TLS stack takes them (mqtt-device.ts `clientCertificate`). */
export interface TlsCredentials {
  /** PKCS#8 */
  key: string
  /** the device certificate, then its CA chain */
  cert: string
}

/** How a certificate came to be installed. */
export type InstalledVia = 'install-cert' | 'enroll' | 'est'

export interface InstalledCertificate extends CertificateFacts {
  via: InstalledVia
}

export type InstallListener = (cert: InstalledCertificate) => Promise<void> | void

/** What the device needs of an EST client (RFC 7030); est-client.ts is one. */
export interface EstEnrollment {
  /** the CA certificates, PEM */
  cacerts(): Promise<string[]>
  /** simpleenroll, authenticated by the device id and its one-time bootstrap secret (PROTOCOL §9); the certificates answered, PEM */
  simpleEnroll(csrDer: Uint8Array, auth: { id: string; secret: string }): Promise<string[]>
  /** simplereenroll, authenticated by the device's current certificate */
  simpleReenroll(csrDer: Uint8Array, client: TlsCredentials): Promise<string[]>
}

export interface CertDeviceOptions {
  deviceId: string
  gatewayId: string
  /** the gateway's public key, base64url of the raw 32 bytes (PROTOCOL §1): it signs install-cert and every action */
  gatewayPublicKey: string
  /** key algorithm of a device made now (default P-256); a stored device keeps its own */
  alg?: CertKeyAlg
  /** key and chain (default: memory) */
  storage?: CertStorage
  /** the action runtime's handled actions (default: memory) */
  runtimeStorage?: DeviceStorage
  /** the device's own hooks (its data erased on wipe, revoke-notice…); renew, reenroll and install-cert are the certificate's unless given here */
  hooks?: Partial<DeviceHooks>
  /** seconds since the epoch, for the acks' iat */
  nowS?: () => number
  handledLimit?: number
}

export class CertDevice {
  readonly id: string
  readonly alg: CertKeyAlg
  #runtime: ActionRuntime | null = null
  readonly #storage: CertStorage
  #state: CertDeviceState
  #current: CertKey | null
  #facts: CertificateFacts | null
  /** imported pending keys, by their stored text */
  readonly #pendingKeys = new Map<string, CertKey>()
  readonly #listeners = new Set<InstallListener>()
  readonly #saves = serialQueue()
  /** the last failure of an install listener (a reconnect that was refused…) */
  lastError: Error | null = null

  private constructor(id: string, storage: CertStorage, state: CertDeviceState, current: CertKey | null) {
    this.id = id
    this.alg = state.alg
    this.#storage = storage
    this.#state = state
    this.#current = current
    this.#facts = state.chain[0] ? certificateFacts(state.chain[0]) : null
  }

  /** The action runtime the device's actions run through; its keys are this device's. */
  get runtime(): ActionRuntime {
    if (!this.#runtime) throw new TypeError('CertDevice used before open() resolved')
    return this.#runtime
  }

  /** Load the device (or make it, without a key until its first certificate). Throws TypeError on bad options or unreadable state. */
  static async open(o: CertDeviceOptions): Promise<CertDevice> {
    if (!isId(o.deviceId)) throw new TypeError('deviceId is not a PROTOCOL §1 identifier')
    if (o.alg !== undefined && !isCertKeyAlg(o.alg)) throw new TypeError('alg must be P-256 or Ed25519')
    const storage = o.storage ?? new MemoryCertStorage()
    const loaded = await storage.load()
    let state: CertDeviceState
    if (loaded) state = validateCertDeviceState(loaded)
    else {
      state = { v: 1, alg: o.alg ?? 'P-256', key: null, chain: [], pending: [] }
      await storage.save(state)
    }
    const current = state.key === null ? null : await importCertKey(state.alg, b64urlDecode(state.key)!)
    if (current && !sameBytes(current.spki, certificateFacts(state.chain[0]!).spki)) throw new TypeError('certificate device state: the stored certificate is not for the stored key')
    const device = new CertDevice(o.deviceId, storage, state, current)
    device.#runtime = await ActionRuntime.open({
      deviceId: o.deviceId,
      gatewayId: o.gatewayId,
      gatewayPublicKey: o.gatewayPublicKey,
      keys: device.#externalKeys(),
      storage: o.runtimeStorage ?? new MemoryDeviceStorage(),
      hooks: { ...device.#hooks(), ...o.hooks },
      ...(o.nowS ? { nowS: o.nowS } : {}),
      ...(o.handledLimit !== undefined ? { handledLimit: o.handledLimit } : {}),
    })
    return device
  }

  /** Whether it holds a certificate (and its key). */
  get enrolled(): boolean {
    return this.#current !== null
  }
  get wiped(): boolean {
    return this.runtime.wiped
  }
  /** PEM, the device certificate first; empty before enrollment and once wiped. */
  get chain(): readonly string[] {
    return this.#state.chain
  }
  /** The current certificate's facts (serial, notAfter, SAN id…), or null. */
  get certificate(): CertificateFacts | null {
    return this.#facts
  }
  /** Requests made whose certificates have not come yet. */
  get pendingRequests(): number {
    return this.#state.pending.length
  }

  /** What a TLS client presents now: the current key (PKCS#8 PEM) and chain; null without a certificate. */
  tlsCredentials(): TlsCredentials | null {
    if (!this.#current) return null
    return { key: privateKeyPem(this.#current), cert: this.#state.chain.join('') }
  }

  /** Called with each certificate once installed (after install-cert's ack is out): the transport reconnects with it. Returns an unsubscribe function. */
  onInstalled(listener: InstallListener): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  /**
   * A request for a certificate for a new key: the first one (for
   * `device.enroll` with `x509.csr`), or any later one. The key is kept
   * (durably, before this resolves) until its certificate is installed.
   * PKCS#10, DER.
   */
  async requestCertificate(ref = 'enroll'): Promise<Uint8Array> {
    return (await this.#request(ref)).csr
  }

  /**
   * Store a chain issued for one of the keys this device asked for (the
   * answer to device.enroll, or an EST answer): PEM, the device certificate
   * first, as an array or one bundle. The key becomes current. Throws
   * TypeError when the chain is not for this device or for a key it asked
   * for.
   */
  async installChain(chain: string[] | string, via: InstalledVia = 'enroll'): Promise<InstalledCertificate> {
    const pems = typeof chain === 'string' ? pemBlocks(chain) : chain
    const r = await this.#install(pems, via)
    await this.#announce(r.cert)
    return r.cert
  }

  /** EST simpleenroll (RFC 7030 §4.2.1) with the one-time bootstrap secret: a new key, its certificate installed. */
  async enrollOverEst(est: EstEnrollment, secret: string): Promise<InstalledCertificate> {
    if (typeof secret !== 'string' || secret === '') throw new TypeError('secret must be a non-empty string')
    const { csr, key } = await this.#request('est-enroll')
    return this.#installFromEst(est, await est.simpleEnroll(csr, { id: this.id, secret }), key)
  }

  /** EST simplereenroll (RFC 7030 §4.2.2) with the current certificate: a new key, its certificate installed. */
  async reenrollOverEst(est: EstEnrollment): Promise<InstalledCertificate> {
    const client = this.tlsCredentials()
    if (!client) throw new TypeError(`device ${this.id} has no certificate to re-enroll with`)
    const { csr, key } = await this.#request('est-reenroll')
    return this.#installFromEst(est, await est.simpleReenroll(csr, client), key)
  }

  async #installFromEst(est: EstEnrollment, certs: string[], key: CertKey): Promise<InstalledCertificate> {
    // RFC 7030 §4.2.3 answers the certificate; the CAs above it may have to come from /cacerts
    let chain = orderChain(certs, key.spki)
    if (!chain) throw new TypeError('the EST answer holds no certificate for the key this device asked for')
    const top = certificateFacts(chain[chain.length - 1]!)
    if (top.subject !== top.issuer) chain = orderChain([...certs, ...(await est.cacerts())], key.spki)!
    return this.installChain(chain, 'est')
  }

  // --- the ActionRuntime's side ---

  #externalKeys(): ExternalKeys {
    let cached: { key: CertKey; signer: DeviceSigner } | null = null
    return {
      current: () => {
        const key = this.#current
        if (!key) return null
        if (cached?.key !== key) cached = { key, signer: { alg: jwsAlgOf(key.alg), sign: (m) => signWith(key, m) } }
        return cached.signer
      },
      erase: () => this.#erase(),
    }
  }

  #hooks(): Partial<DeviceHooks> {
    const rekey = async (ctx: ActionContext): Promise<HookResult> => {
      if (!this.#current) return { status: 'failed', detail: 'this device has no certificate to renew' }
      // PROTOCOL §5: the request for the new key goes in the done ack (signed by the current key, as the runtime does).
      const { csr } = await this.#request(ctx.actionId)
      return { status: 'done', csr: b64urlEncode(csr) }
    }
    return {
      renew: rekey,
      reenroll: rekey,
      'install-cert': async (ctx) => {
        const r = await this.#install(ctx.args.chain, 'install-cert') // a TypeError acks `failed` with its message
        if (r.already) return { status: 'done', detail: 'already installed' }
        // Current from now on, so the ack is signed by the new key (the gateway holds its certificate as current);
        // reconnecting with it waits for the ack to be out.
        return { status: 'done', after: () => this.#announce(r.cert) }
      },
    }
  }

  async #request(ref: string): Promise<{ csr: Uint8Array; key: CertKey }> {
    if (this.#runtime?.wiped) throw new TypeError(`device ${this.id} is wiped`)
    const key = await generateCertKey(this.alg)
    const csr = await certificateRequest(key, this.id)
    const text = b64urlEncode(key.pkcs8)
    this.#pendingKeys.set(text, key)
    await this.#update((s) => ({ ...s, pending: [...s.pending, { ref, key: text }].slice(-MAX_PENDING_KEYS) }))
    return { csr, key }
  }

  async #pendingKey(text: string): Promise<CertKey> {
    let key = this.#pendingKeys.get(text)
    if (!key) {
      key = await importCertKey(this.alg, b64urlDecode(text)!)
      this.#pendingKeys.set(text, key)
    }
    return key
  }

  /** Check a chain and make it current with the pending key it is for. `already`: it is the current one (a repeat after a crash). */
  async #install(chain: unknown, via: InstalledVia): Promise<{ cert: InstalledCertificate; already: boolean }> {
    if (this.#runtime?.wiped) throw new TypeError(`device ${this.id} is wiped`)
    const facts = await checkChain(chain, this.id)
    const pems = chain as string[]
    const cert = { ...facts, via }
    if (this.#current && sameBytes(this.#current.spki, facts.spki)) {
      const same = pems.length === this.#state.chain.length && pems.every((p, i) => p.trim() === this.#state.chain[i]!.trim())
      if (!same) await this.#update((s) => ({ ...s, chain: pems.map(normalPem) }))
      this.#facts = facts
      return { cert, already: same }
    }
    const pending = this.#state.pending
    for (let i = pending.length - 1; i >= 0; i--) {
      const key = await this.#pendingKey(pending[i]!.key)
      if (!sameBytes(key.spki, facts.spki)) continue
      // Requests older than the one answered are superseded by it: their keys are no longer needed.
      const text = pending[i]!.key
      await this.#update((s) => ({ ...s, key: text, chain: pems.map(normalPem), pending: s.pending.slice(s.pending.findIndex((p) => p.key === text) + 1) }))
      for (const p of pending.slice(0, i + 1)) this.#pendingKeys.delete(p.key)
      this.#current = key
      this.#facts = facts
      return { cert, already: false }
    }
    throw new TypeError(`certificate ${facts.serial} is not for a key this device asked a certificate for`)
  }

  async #announce(cert: InstalledCertificate): Promise<void> {
    for (const l of [...this.#listeners]) {
      try {
        await l(cert)
      } catch (err) {
        // the certificate is stored: a listener's failure (a refused reconnect) must not undo it
        this.lastError = err as Error
      }
    }
  }

  /** PROTOCOL §6: key, chain and pending keys gone. */
  async #erase(): Promise<void> {
    await this.#update((s) => ({ v: 1, alg: s.alg, key: null, chain: [], pending: [] }))
    this.#current = null
    this.#facts = null
    this.#pendingKeys.clear()
  }

  /** Saves run one at a time, each from the latest state. */
  #update(fn: (s: CertDeviceState) => CertDeviceState): Promise<void> {
    return this.#saves(async () => {
      const next = fn(this.#state)
      await this.#storage.save(next)
      this.#state = next
    })
  }
}

const normalPem = (p: string): string => `${p.trim()}\n`
