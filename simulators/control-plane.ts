// A control plane for operators' tools, tests and demos: signs commands with
// a CP key, publishes them to a gateway's command topic (many at once through
// a bounded window, re-sending what gets no answer), and follows the
// gateway's events and retained status, verifying each signature, watching
// for seq gaps and for a history that goes back (a restored gateway).
// Built on the shared wire code; imports nothing from agent/.
import { createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import mqtt, { type MqttClient } from 'mqtt'
import { utf8 } from '../wire/base64url.ts'
import { newJti } from '../wire/ids.ts'
import { assembleJws, jwsSigningInput, parseJws, type Claims } from '../wire/jws.ts'
import { TERMINAL_EVENTS, topicRoot } from '../wire/protocol.ts'
import { parseStatus, type GatewayStatus } from '../wire/status.ts'
export { parseStatus, type GatewayStatus }

export interface GatewayEvent {
  seq: number
  type: string
  data: Record<string, unknown>
  iat: number
  jti: string
  /** true when verified against the gateway key; null when no key was given */
  verified: boolean | null
  raw: string
}

export interface ControlPlaneOptions {
  broker: string
  site: string
  gateway: string
  /** CP private key: a PKCS#8 PEM file path, or a KeyObject */
  key?: string | KeyObject
  kid?: string
  iss?: string
  /** gateway public key (base64url raw), to verify events */
  gatewayKey?: string
  /** persistent session id: events published while this CP is away are kept for it */
  clientId?: string
  username?: string
  password?: string
  /** TLS material for mqtts:// brokers */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer }
  /** connect() gives up after this long (a refused login or handshake fails sooner); default 30 s */
  connectTimeoutMs?: number
}

export const TERMINAL = TERMINAL_EVENTS

/** Unanswered commands at most: well below Mosquitto's default per-client queue of 1000 (PROTOCOL §3). */
export const DEFAULT_WINDOW = 200
export const DEFAULT_RESEND_AFTER_MS = 10_000
export const DEFAULT_RESEND_MAX_MS = 60_000

/** A mark in the gateway's events as seen here (ControlPlane.sendAll). */
interface EventWatch {
  connects: number
  gaps: number
}

export interface SendAllOptions {
  /** unanswered commands at most (default 200) */
  window?: number
  /** first re-send after this long without an answer (default 10 s); doubles each time up to resendMaxMs (default 60 s) */
  resendAfterMs?: number
  resendMaxMs?: number
  /** the whole run: what is open then is reported as `accepted` or `unanswered` */
  timeoutMs: number
  /** settle at the answer (cmd.accepted, or cmd.duplicate saying accepted) instead of waiting for the outcome */
  untilAccepted?: boolean
  onSettled?(r: CommandResult, index: number): void
  onResend?(jti: string, sentBefore: number): void
}

export interface CommandResult {
  jti: string
  /**
   * completed, failed, rejected: the gateway's verdict (from its event, or a
   * cmd.duplicate naming that state); accepted: taken, no outcome in time;
   * unanswered: no answer at all in time
   */
  outcome: 'completed' | 'failed' | 'rejected' | 'accepted' | 'unanswered'
  reason?: string
  /** the event that settled it */
  event?: GatewayEvent
  /** times published (1: never re-sent) */
  sends: number
}

export interface SendAllReport {
  /** in the order given */
  results: CommandResult[]
  /** publications beyond the first of each command */
  resends: number
  /** cmd.duplicate answers received */
  duplicates: number
}

/**
 * What a control plane remembers of one gateway's history: the last event
 * (seq, jti, iat) and the last status (seq, audit head). JSON as it is.
 */
export interface GatewayHistory {
  seq: number
  jti?: string
  iat?: number
  statusSeq?: number
  audit?: { seq: number; hash: string }
}

export interface Rollback {
  /** which number went back: an event's seq, the status' seq, or the status' audit head */
  what: 'event-seq' | 'status-seq' | 'audit-head'
  remembered: { seq: number; hash?: string }
  seen: { seq: number; hash?: string }
  detail: string
}

/** Events remembered by seq in this run, to tell a re-delivery from a new event at a seq already seen. */
const RECENT_EVENTS = 4096

/**
 * PROTOCOL §3: a gateway's event seq and audit head only grow; seeing either
 * go back means it was restored from an old copy of its data, and every
 * decision sent to it since must be sent again. Fed every verified event
 * and status, it returns a Rollback when that happens, then takes the
 * gateway's new history as the baseline (one warning per restore, not one
 * per event until the old numbers are passed again).
 *
 * Events are re-delivered by design (the gateway re-sends what its broker
 * did not acknowledge; a persistent session re-sends what we did not), so
 * an old seq alone is no proof: it is a rollback when the event at that seq
 * is not the one seen before (another jti), or, for a seq not seen in this
 * run, when it was signed after the last event remembered (a new event, not
 * an old one again). A retained status is the last one the gateway
 * published, maybe before events seen since: its seq is compared with the
 * last status, a live one's with the last event too.
 */
export class HistoryGuard {
  #h: GatewayHistory
  readonly #recent = new Map<number, string>()

  constructor(remembered: GatewayHistory = { seq: 0 }) {
    this.#h = structuredClone(remembered)
  }

  get history(): GatewayHistory {
    return structuredClone(this.#h)
  }

  event(e: { seq: number; jti: string; iat: number }): Rollback | null {
    const h = this.#h
    if (e.seq > h.seq) {
      this.#advance(e)
      return null
    }
    const before = this.#recent.get(e.seq) ?? (e.seq === h.seq ? h.jti : undefined)
    if (before === e.jti) return null
    if (before === undefined && !(h.iat !== undefined && e.iat > h.iat)) return null
    const r: Rollback = {
      what: 'event-seq',
      remembered: { seq: h.seq },
      seen: { seq: e.seq },
      detail: before === undefined ? `event seq ${e.seq}, signed after event ${h.seq}, is a new event at a seq already passed` : `event seq ${e.seq} is not the event seen at that seq before`,
    }
    this.#recent.clear()
    this.#h = { ...h, seq: e.seq, jti: e.jti, iat: e.iat, ...(h.statusSeq !== undefined ? { statusSeq: Math.min(h.statusSeq, e.seq) } : {}) }
    this.#recent.set(e.seq, e.jti)
    return r
  }

  status(s: GatewayStatus, retained: boolean): Rollback | null {
    const h = this.#h
    let r: Rollback | null = null
    if (s.audit && h.audit) {
      if (s.audit.seq < h.audit.seq) r = { what: 'audit-head', remembered: h.audit, seen: s.audit, detail: `audit head went back from entry ${h.audit.seq} to ${s.audit.seq}` }
      else if (s.audit.seq === h.audit.seq && s.audit.hash !== h.audit.hash) r = { what: 'audit-head', remembered: h.audit, seen: s.audit, detail: `audit entry ${s.audit.seq} has another hash than before` }
    }
    if (!r && s.seq !== undefined) {
      const floor = retained ? (h.statusSeq ?? 0) : Math.max(h.seq, h.statusSeq ?? 0)
      if (s.seq < floor) r = { what: 'status-seq', remembered: { seq: floor }, seen: { seq: s.seq }, detail: `status says last event ${s.seq}, ${floor} was seen before` }
    }
    if (s.audit) h.audit = { ...s.audit }
    if (s.seq !== undefined) h.statusSeq = s.seq
    if (r && s.seq !== undefined && s.seq < h.seq) {
      // The restored gateway numbers its next events from s.seq again: those are new, not a second warning.
      this.#recent.clear()
      h.seq = s.seq
      delete h.jti
      delete h.iat
    }
    return r
  }

  #advance(e: { seq: number; jti: string; iat: number }): void {
    this.#h = { ...this.#h, seq: e.seq, jti: e.jti, iat: e.iat }
    this.#recent.set(e.seq, e.jti)
    if (this.#recent.size > RECENT_EVENTS) this.#recent.delete(this.#recent.keys().next().value!)
  }
}

const times = (n: number): string => (n === 1 ? 'once' : `${n} times`)

export function readPrivateKey(path: string): KeyObject {
  return createPrivateKey({ key: readFileSync(path, 'utf8'), format: 'pem' })
}

/** PKCS#8 DER of an Ed25519 private key, up to its 32-byte seed (RFC 8410). */
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')

/**
 * A new CP key, from 32 random bytes rather than generateKeyPairSync: on
 * Node 20 a key-generation job collected by the GC while a key is exported
 * as JWK (publicKeyB64) can deadlock the process (agent/store/keys.ts makes
 * the gateway's keys the same way).
 */
export function newPrivateKey(): KeyObject {
  return createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, randomBytes(32)]), format: 'der', type: 'pkcs8' })
}

export function publicKeyB64(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key
  return pub.export({ format: 'jwk' }).x as string
}

export class ControlPlane {
  readonly #o: ControlPlaneOptions
  readonly #root: string
  readonly #key: KeyObject | null
  readonly #gwKey: KeyObject | null
  #client: MqttClient | null = null
  readonly #listeners = new Set<(e: GatewayEvent) => void>()
  readonly #statusListeners = new Set<(s: GatewayStatus, retained: boolean) => void>()
  #status: GatewayStatus | null = null
  #lastSeq = 0
  /** connections made so far: events published while we were away may be lost to a clean session */
  #connects = 0
  /** performance.now() of the last event from the gateway (any type, verified or not checked) */
  #lastEventAt = -Infinity
  readonly gaps: { from: number; to: number }[] = []
  readonly invalid: string[] = []

  constructor(o: ControlPlaneOptions) {
    this.#o = o
    this.#root = topicRoot(o.site, o.gateway)
    this.#key = o.key === undefined ? null : typeof o.key === 'string' ? readPrivateKey(o.key) : o.key
    this.#gwKey = o.gatewayKey ? createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: o.gatewayKey }, format: 'jwk' }) : null
  }

  get topics(): { cmd: string; evt: string; status: string } {
    return { cmd: `${this.#root}cmd`, evt: `${this.#root}evt`, status: `${this.#root}status` }
  }

  /** The gateway's last status seen, null before any. */
  get status(): GatewayStatus | null {
    return this.#status
  }

  /**
   * Connect and subscribe to the gateway's status and events. Rejects (and
   * stops reconnecting) when the broker refuses the login or the TLS
   * handshake fails, or after connectTimeoutMs.
   */
  async connect(): Promise<void> {
    const o = this.#o
    const client = mqtt.connect(o.broker, {
      clientId: o.clientId ?? `edgewarden-cp-${newJti().slice(0, 12)}`,
      clean: o.clientId === undefined,
      protocolVersion: 4,
      reconnectPeriod: 500,
      ...(o.username !== undefined ? { username: o.username } : {}),
      ...(o.password !== undefined ? { password: o.password } : {}),
      ...o.tls,
    })
    this.#client = client
    // Commands are small and latency matters: no Nagle delay behind unacknowledged PUBACKs.
    client.on('connect', () => {
      this.#connects++
      ;(client.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true)
    })
    // What the status said is known again only once this connection got it
    // (re-delivered as retained on resubscribe): a broker that restarted may
    // have lost what it held for us meanwhile, so "online" must be fresh.
    client.on('close', () => (this.#status = null))
    client.on('message', (topic, payload, packet) => {
      if (topic === this.topics.evt) this.#onEvent(payload.toString('utf8'))
      else if (topic === this.topics.status) this.#onStatus(payload.toString('utf8'), packet.retain)
    })
    const timeoutMs = o.connectTimeoutMs ?? 30_000
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no connection to ${o.broker} within ${timeoutMs} ms`)), timeoutMs)
        client.once('connect', () => (clearTimeout(timer), resolve()))
        client.once('error', (err) => (clearTimeout(timer), reject(err)))
      })
      // Status first: a broker that sends the retained status right after
      // its SUBACK (Mosquitto does) has delivered it before the second
      // SUBACK, so `status` is known once connect() resolves.
      await client.subscribeAsync(this.topics.status, { qos: 1 })
      await client.subscribeAsync(this.topics.evt, { qos: 1 })
    } catch (err) {
      this.#client = null
      client.end(true)
      throw err
    }
  }

  #onStatus(raw: string, retained: boolean): void {
    const s = parseStatus(raw)
    if (!s) return
    this.#status = s
    for (const l of this.#statusListeners) l(s, retained)
  }

  /** Every status as it arrives; `retained` when the broker replayed its stored one (it may be older than events seen since). */
  onStatus(listener: (s: GatewayStatus, retained: boolean) => void): () => void {
    this.#statusListeners.add(listener)
    return () => this.#statusListeners.delete(listener)
  }

  #onEvent(raw: string): void {
    let claims: Claims
    let verified: boolean | null = null
    try {
      const jws = parseJws(raw)
      if (this.#gwKey) verified = verify(null, jws.signingInput, this.#gwKey, jws.signature)
      claims = jws.payload
    } catch (err) {
      this.invalid.push(`${(err as Error).message}: ${raw.slice(0, 80)}`)
      return
    }
    const seq = Number(claims.seq)
    if (verified !== false) this.#lastEventAt = performance.now()
    if (seq > this.#lastSeq + 1 && this.#lastSeq > 0) this.gaps.push({ from: this.#lastSeq + 1, to: seq - 1 })
    if (seq > this.#lastSeq) this.#lastSeq = seq
    const e: GatewayEvent = {
      seq,
      type: String(claims.type),
      data: (claims.data ?? {}) as Record<string, unknown>,
      iat: Number(claims.iat),
      jti: String(claims.jti),
      verified,
      raw,
    }
    for (const l of this.#listeners) l(e)
  }

  onEvent(listener: (e: GatewayEvent) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  /** Resolves once the gateway's retained status says online (its command subscription is in place by then). */
  async waitOnline(timeoutMs = 15_000): Promise<void> {
    if (!this.#client) throw new TypeError('ControlPlane: not connected')
    if (this.#status?.online === true && this.#client.connected) return
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => (off(), reject(new Error(`gateway not online within ${timeoutMs} ms`))), timeoutMs)
      const off = this.onStatus((s) => {
        if (!s.online) return
        clearTimeout(timer)
        off()
        resolve()
      })
    })
  }

  /** A signed command, not yet sent. */
  sign(op: string, args: Record<string, unknown> = {}, opts: { lifetimeS?: number; nowS?: number; jti?: string; aud?: string } = {}): { jti: string; jws: string } {
    if (!this.#key) throw new TypeError('ControlPlane: no signing key')
    const nowS = opts.nowS ?? Math.floor(Date.now() / 1000)
    const jti = opts.jti ?? newJti('cmd.')
    const claims = { iss: this.#o.iss ?? 'cp', aud: opts.aud ?? this.#o.gateway, iat: nowS, exp: nowS + (opts.lifetimeS ?? 3600), jti, op, args }
    const input = jwsSigningInput(this.#o.kid ?? 'cp', claims)
    return { jti, jws: assembleJws(input, new Uint8Array(sign(null, utf8(input), this.#key))) }
  }

  /** Publish a raw payload to the command topic (QoS 1). */
  async publishRaw(payload: string | Buffer): Promise<void> {
    if (!this.#client) throw new TypeError('ControlPlane: not connected')
    await this.#client.publishAsync(this.topics.cmd, payload, { qos: 1 })
  }

  /** A QoS 1 publish to any topic on the same connection (the bench's anchor: the broker's own rate). */
  async publishRawTo(topic: string, payload: string | Buffer): Promise<void> {
    if (!this.#client) throw new TypeError('ControlPlane: not connected')
    await this.#client.publishAsync(topic, payload, { qos: 1 })
  }

  async send(op: string, args: Record<string, unknown> = {}, opts: Parameters<ControlPlane['sign']>[2] = {}): Promise<string> {
    const { jti, jws } = this.sign(op, args, opts)
    await this.publishRaw(jws)
    return jti
  }

  /** The first event matching a predicate (listening starts now). */
  waitFor(pred: (e: GatewayEvent) => boolean, timeoutMs = 15_000): Promise<GatewayEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off()
        reject(new Error(`no matching gateway event within ${timeoutMs} ms`))
      }, timeoutMs)
      const off = this.onEvent((e) => {
        if (!pred(e)) return
        clearTimeout(timer)
        off()
        resolve(e)
      })
    })
  }

  /** Send a command and resolve with its terminal event (completed, failed, rejected or duplicate). */
  async run(op: string, args: Record<string, unknown> = {}, opts: Parameters<ControlPlane['sign']>[2] & { timeoutMs?: number } = {}): Promise<GatewayEvent> {
    const { jti, jws } = this.sign(op, args, opts)
    const done = this.waitFor((e) => TERMINAL.has(e.type) && e.data.jti === jti, opts.timeoutMs)
    await this.publishRaw(jws)
    return done
  }

  /**
   * Send many commands through a bounded window and resolve with each one's
   * outcome (PROTOCOL §3). At most `window` are unanswered at once, so the
   * broker's per-client queue (Mosquitto: max_queued_messages, 1000 by
   * default) never overflows and drops them. One that gets no cmd.accepted,
   * cmd.rejected or cmd.duplicate within its delay is published again, same
   * jti, the delay doubling each time, once it may have been lost: a
   * command sent after it was answered (the broker keeps their order), or,
   * since it was sent, we connected again (a clean session loses what was
   * published while it was away), an event's seq skipped some, or the
   * gateway has answered none of these commands for the delay. So is an
   * accepted one whose outcome may have been lost (the same signs since its
   * acceptance, but the silence is of any event: a lost one shows as a seq
   * gap once another comes), which the gateway answers with cmd.duplicate
   * and its current state. While the gateway keeps answering, an answer not
   * come was not sent yet: the gateway takes commands no faster than it runs
   * them, in arrival order (the rest wait in the broker's queue), a
   * retirement completes only with its wipe ack, and copies would only cost
   * it a check each. Re-sending is safe: the gateway runs a
   * jti once. Nothing is re-sent while the gateway's status says offline:
   * its persistent session holds what was sent, and copies would only fill
   * that queue.
   */
  sendAll(commands: readonly { jti: string; jws: string }[], o: SendAllOptions): Promise<SendAllReport> {
    if (!this.#client) throw new TypeError('ControlPlane: not connected')
    const window = o.window ?? DEFAULT_WINDOW
    const firstDelay = o.resendAfterMs ?? DEFAULT_RESEND_AFTER_MS
    const maxDelay = Math.max(firstDelay, o.resendMaxMs ?? DEFAULT_RESEND_MAX_MS)
    if (!(window >= 1) || !(firstDelay > 0) || !(o.timeoutMs > 0)) throw new TypeError('ControlPlane.sendAll: window, resendAfterMs and timeoutMs must be positive')
    type Slot = {
      i: number
      jti: string
      jws: string
      /** queued: not sent yet, or an accepted one due for a check; sent: unanswered, in the window */
      state: 'queued' | 'sent' | 'accepted' | 'done'
      /** the gateway said accepted once: that stands, whatever its later copies get (a gateway answers a duplicate at most once per 2 s) */
      accepted: boolean
      sends: number
      delayMs: number
      timer: NodeJS.Timeout | null
      result: CommandResult | null
      /** what we had seen of the gateway's events when it was last sent or accepted */
      watch: EventWatch
      /** the order of its last publish among all of this call's, and of its first */
      sentAs: number
      firstSentAs: number
    }
    const slots: Slot[] = commands.map((c, i) => ({ i, jti: c.jti, jws: c.jws, state: 'queued', accepted: false, sends: 0, delayMs: firstDelay, timer: null, result: null, watch: this.#watch(), sentAs: 0, firstSentAs: 0 }))
    const byJti = new Map(slots.map((s) => [s.jti, s]))
    if (byJti.size !== slots.length) throw new TypeError('ControlPlane.sendAll: a jti appears twice')
    const due: Slot[] = [] // accepted ones whose check waits for room in the window
    let next = 0
    let unanswered = 0
    let open = slots.length
    let resends = 0
    let duplicates = 0
    let published = 0
    /**
     * The highest first publish of a command the gateway answered: one sent
     * before it and unanswered was lost on the way (the broker keeps order).
     * (The first: an answer may be to any copy, and a later copy's number
     * would make the commands sent between look lost.)
     */
    let answeredUpTo = 0
    /** performance.now() of the last answer to one of these commands: only they show the gateway is taking them (others' events, replays included, do not) */
    let answeredAt = performance.now()
    return new Promise<SendAllReport>((resolve) => {
      const finish = (): void => {
        clearTimeout(overall)
        off()
        for (const s of slots) {
          if (s.timer) clearTimeout(s.timer)
          s.timer = null
          if (s.result) continue
          s.result = s.accepted
            ? { jti: s.jti, outcome: 'accepted', reason: `accepted, no outcome within ${o.timeoutMs} ms`, sends: s.sends }
            : { jti: s.jti, outcome: 'unanswered', reason: s.sends ? `no answer within ${o.timeoutMs} ms (sent ${times(s.sends)})` : `not sent within ${o.timeoutMs} ms`, sends: s.sends }
        }
        resolve({ results: slots.map((s) => s.result!), resends, duplicates })
      }
      const arm = (s: Slot, ms = s.delayMs): void => {
        if (s.timer) clearTimeout(s.timer)
        s.timer = setTimeout(() => onTimer(s), ms)
      }
      const publish = (s: Slot): void => {
        if (s.sends > 0) {
          resends++
          o.onResend?.(s.jti, s.sends)
        }
        s.sends++
        s.sentAs = ++published
        if (s.firstSentAs === 0) s.firstSentAs = s.sentAs
        s.watch = this.#watch()
        // A publish the client could not hand over is no different from one the broker dropped: the timer covers both.
        this.publishRaw(s.jws).catch(() => {})
        arm(s)
      }
      const fill = (): void => {
        while (unanswered < window) {
          const s = due.shift() ?? slots[next++]
          if (!s) {
            next = slots.length
            return
          }
          if (s.state !== 'queued') continue
          s.state = 'sent'
          unanswered++
          publish(s)
        }
      }
      const onTimer = (s: Slot): void => {
        s.timer = null
        // While the gateway is away, or we are, a copy would only queue behind the original.
        if (this.#status?.online === false || !this.#client?.connected) return arm(s)
        // Every event since reached us and the gateway is answering: an acceptance not come is
        // still to come when nothing sent after it was answered yet (it waits its turn in the
        // broker's queue, behind slow commands); an outcome not come is still to come.
        // (A lost outcome shows as a seq gap once any later event comes, so any event will do for
        // an accepted one; a lost command leaves no trace but the gateway's silence about ours.)
        const quietSince = s.state === 'accepted' ? this.#lastEventAt : answeredUpTo < s.sentAs ? answeredAt : null
        const wait = quietSince === null ? 0 : this.#untilMissable(s.watch, s.delayMs, quietSince)
        if (wait > 0) return arm(s, wait)
        s.delayMs = Math.min(maxDelay, s.delayMs * 2)
        if (s.state === 'sent') publish(s)
        else if (s.state === 'accepted') {
          s.state = 'queued'
          due.push(s)
          fill()
        }
      }
      const settle = (s: Slot, r: CommandResult): void => {
        if (s.state === 'sent') unanswered--
        if (s.timer) clearTimeout(s.timer)
        s.timer = null
        s.state = 'done'
        s.result = r
        o.onSettled?.(r, s.i)
        if (--open === 0) finish()
        else fill()
      }
      const off = this.onEvent((e) => {
        const jti = e.data.jti
        const s = typeof jti === 'string' ? byJti.get(jti) : undefined
        // An event that fails its signature check settles nothing.
        if (!s || e.verified === false) return
        if (e.type === 'cmd.duplicate') duplicates++
        if (s.firstSentAs > answeredUpTo) answeredUpTo = s.firstSentAs
        answeredAt = performance.now()
        if (s.state === 'done') return
        const state = e.type === 'cmd.duplicate' ? String(e.data.state) : e.type.replace('cmd.', '')
        // PROTOCOL §3: a duplicate that says accepted is an acceptance; its outcome is still to come.
        if (state === 'accepted') {
          s.accepted = true
          if (o.untilAccepted) return settle(s, { jti: s.jti, outcome: 'accepted', event: e, sends: s.sends })
          if (s.state === 'sent') {
            unanswered--
            s.state = 'accepted'
            s.watch = this.#watch()
            arm(s)
            fill()
          }
          return
        }
        if (state !== 'completed' && state !== 'failed' && state !== 'rejected') return
        const reason = typeof e.data.reason === 'string' ? e.data.reason : e.type === 'cmd.duplicate' ? `answered cmd.duplicate: ${state}` : undefined
        settle(s, { jti: s.jti, outcome: state, event: e, sends: s.sends, ...(reason !== undefined ? { reason } : {}) })
      })
      const overall = setTimeout(finish, o.timeoutMs)
      if (open === 0) return finish()
      fill()
    })
  }

  /** What has been seen of the gateway's events so far. */
  #watch(): EventWatch {
    return { connects: this.#connects, gaps: this.gaps.length }
  }

  /**
   * 0 when an event the gateway sent since `w` was taken may not have
   * reached us: we connected again (a clean session loses what was published
   * while it was away), a seq gap showed, or nothing came for `quietMs`
   * since `lastAt`. Otherwise how long until that silence would be reached.
   */
  #untilMissable(w: EventWatch, quietMs: number, lastAt: number): number {
    if (this.#connects !== w.connects || this.gaps.length !== w.gaps) return 0
    return Math.max(0, Math.ceil(quietMs - (performance.now() - lastAt)))
  }

  async close(): Promise<void> {
    const c = this.#client
    this.#client = null
    if (c) await c.endAsync()
  }
}

