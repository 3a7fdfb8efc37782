// A control plane for operators' tools, tests and demos: signs commands with
// a CP key, publishes them to a gateway's command topic, and follows the
// gateway's events, verifying each signature and watching for seq gaps.
// Built on the shared wire code; imports nothing from agent/.
import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import mqtt, { type MqttClient } from 'mqtt'
import { utf8 } from '../firmware-hooks/wire/base64url.ts'
import { newJti } from '../firmware-hooks/wire/ids.ts'
import { assembleJws, jwsSigningInput, parseJws, type Claims } from '../firmware-hooks/wire/jws.ts'

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
}

export const TERMINAL = new Set(['cmd.completed', 'cmd.failed', 'cmd.rejected', 'cmd.duplicate'])

export function readPrivateKey(path: string): KeyObject {
  return createPrivateKey({ key: readFileSync(path, 'utf8'), format: 'pem' })
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
  #lastSeq = 0
  readonly gaps: { from: number; to: number }[] = []
  readonly invalid: string[] = []

  constructor(o: ControlPlaneOptions) {
    this.#o = o
    this.#root = `edgewarden/v1/${o.site}/${o.gateway}/`
    this.#key = o.key === undefined ? null : typeof o.key === 'string' ? readPrivateKey(o.key) : o.key
    this.#gwKey = o.gatewayKey ? createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: o.gatewayKey }, format: 'jwk' }) : null
  }

  get topics(): { cmd: string; evt: string; status: string } {
    return { cmd: `${this.#root}cmd`, evt: `${this.#root}evt`, status: `${this.#root}status` }
  }

  /** Connect and subscribe to the gateway's events. */
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
    client.on('connect', () => (client.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true))
    client.on('message', (topic, payload) => {
      if (topic === this.topics.evt) this.#onEvent(payload.toString('utf8'))
    })
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve())
      client.once('error', reject)
    })
    await client.subscribeAsync(this.topics.evt, { qos: 1 })
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
    const client = this.#client
    if (!client) throw new TypeError('ControlPlane: not connected')
    const topic = this.topics.status
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => (client.off('message', onMessage), reject(new Error(`gateway not online within ${timeoutMs} ms`))), timeoutMs)
      const onMessage = (t: string, p: Buffer): void => {
        if (t !== topic) return
        try {
          if ((JSON.parse(p.toString()) as { online?: boolean }).online !== true) return
        } catch {
          return
        }
        clearTimeout(timer)
        client.off('message', onMessage)
        void client.unsubscribeAsync(topic)
        resolve()
      }
      client.on('message', onMessage)
      client.subscribe(topic, { qos: 1 })
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

  async close(): Promise<void> {
    const c = this.#client
    this.#client = null
    if (c) await c.endAsync()
  }
}

