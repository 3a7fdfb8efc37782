// The benchmark's load generator: a child process of bench/run.ts, driven
// over IPC, so the broker under test keeps its own core. It plays N devices
// with raw MQTT 3.1.1 sockets (bench/mqtt-wire.ts): CONNECT with a device
// token, SUBSCRIBE to dev/<id>/cmd, answer each action with a signed `done`
// ack (PROTOCOL §5). Tokens and acks are signed with node:crypto: this is a
// load generator, not device firmware, and noble (~700 signs/s) would make
// the generator the bottleneck. Tokens are minted before each timed window.
// Every connect is bounded by a timeout and never retried.
//
// Over TLS (connect with `tls`): node:tls, one full handshake per connect
// (no session is ever offered for resumption; a reused one is counted).
// `mtls`: the device's own P-256 key and certificate (initTls), CONNECT with
// the client id alone (PROTOCOL §5: the certificate is the credential);
// `token`: server-authenticated TLS, the token in CONNECT as on plain TCP.
// Each device's TLS context (key, certificate, the CA it trusts the server
// with) is built once in initTls, outside every timed window, as a device
// loads its credentials once.
import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto'
import { connect as tcpConnect, type Socket } from 'node:net'
import { connect as tlsConnect, createSecureContext, type SecureContext } from 'node:tls'
import { performance } from 'node:perf_hooks'
import { ControlPlane } from '../simulators/control-plane.ts'
import { utf8 } from '../wire/base64url.ts'
import { newJti } from '../wire/ids.ts'
import { assembleJws, jwsSigningInput, parseJws } from '../wire/jws.ts'
import { watchLoop, type LoopWindow } from './loop-watch.ts'
import { CONNACK, connectPacket, DISCONNECT, PacketReader, PUBACK, PUBLISH, publishPacket, pubackPacket, readPublish, SUBACK, subscribePacket } from './mqtt-wire.ts'

export interface LoadDevice {
  id: string
  /** base64url Ed25519 seed */
  d: string
}

/** A certificate device (PROTOCOL §9): its P-256 key (PKCS#8 PEM) and the certificate the site CA issued it (PEM). */
export interface TlsDevice {
  id: string
  key: string
  cert: string
}

/** How a connect goes over TLS: `mtls` with the device's certificate, `token` with server authentication only and the token in CONNECT. */
export type TlsMode = 'mtls' | 'token'

export interface CpSpec {
  url: string
  site: string
  gateway: string
  kid: string
  keyPem: string
}

export type LoadRequest =
  | { op: 'init'; devices: LoadDevice[]; gatewayId: string; gatewayPublicKey: string }
  | { op: 'initTls'; ca: string; devices: TlsDevice[] }
  | { op: 'mint'; ids: string[]; lifetimeS: number }
  | { op: 'connect'; port: number; ids: string[]; concurrency: number; timeoutMs: number; retryMs?: number; deadlineMs?: number; tls?: TlsMode }
  | { op: 'disconnect'; ids: string[] | 'all' }
  | { op: 'revoke'; cp: CpSpec; ids: string[]; gapMs: number; timeoutMs: number }
  | { op: 'count' }
  | { op: 'gc' }
  | { op: 'exit' }

export interface ConnectReply {
  connected: number
  failed: number
  elapsedMs: number
  /** a few failure reasons, for the report */
  errors: string[]
  /** connects tried again after a failure (with retryMs) */
  retries: number
  /** epoch ms (timeOrigin + now) when the last device was listening */
  lastAt: number
  /** TLS connects whose session was resumed (should stay 0: none is ever offered) */
  resumed: number
  /** CPU time of the load generator over the run (user + system), ms: near elapsedMs means it, not the broker, was the limit */
  cpuMs: number
}

export interface RevokeReply {
  latenciesMs: number[]
  /** command handed to the socket to the central broker's PUBACK, for each sample */
  brokerAckMs: number[]
  /** each sample's device and when (epoch ms, timeOrigin + now, as the agent host reads it) its command was published and its socket was seen closed */
  samples: { id: string; publishedAt: number; seenClosedAt: number }[]
  timeouts: number
  /** the load generator's own event loop and garbage collection over the window (from the first publish to the last close seen) */
  loop: LoopWindow
}

interface Conn {
  socket: Socket
  closed: Promise<void>
}

const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')

const epochMs = (): number => performance.timeOrigin + performance.now()

class LoadGenerator {
  readonly #keys = new Map<string, KeyObject>()
  readonly #tokens = new Map<string, string[]>()
  readonly #conns = new Map<string, Conn>()
  /** per certificate device: its key, certificate and the CA */
  readonly #tlsContexts = new Map<string, SecureContext>()
  /** token devices over TLS: the CA alone */
  #serverAuthContext: SecureContext | null = null
  #resumed = 0
  #gatewayId = ''
  #gatewayKey: KeyObject | null = null
  acksSent = 0
  lastAckAt = 0
  actionsSeen = 0

  init(devices: LoadDevice[], gatewayId: string, gatewayPublicKey: string): void {
    for (const d of devices) {
      const der = Buffer.concat([PKCS8_ED25519_PREFIX, Buffer.from(d.d, 'base64url')])
      this.#keys.set(d.id, createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }))
    }
    this.#gatewayId = gatewayId
    this.#gatewayKey = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: gatewayPublicKey }, format: 'jwk' })
  }

  initTls(ca: string, devices: TlsDevice[]): void {
    this.#serverAuthContext = createSecureContext({ ca, minVersion: 'TLSv1.2' })
    for (const d of devices) this.#tlsContexts.set(d.id, createSecureContext({ key: d.key, cert: d.cert, ca, minVersion: 'TLSv1.2' }))
  }

  #sign(id: string, claims: Record<string, unknown>): string {
    const input = jwsSigningInput(id, claims)
    return assembleJws(input, new Uint8Array(sign(null, utf8(input), this.#keys.get(id)!)))
  }

  /** One fresh token per device (PROTOCOL §5: one connect per token), made ahead of the timed window. */
  mint(ids: string[], lifetimeS: number): void {
    const iat = Math.floor(Date.now() / 1000)
    for (const id of ids) {
      const list = this.#tokens.get(id) ?? []
      list.push(this.#sign(id, { iss: id, aud: this.#gatewayId, iat, exp: iat + lifetimeS, jti: newJti() }))
      this.#tokens.set(id, list)
    }
  }

  /** Connect and subscribe one device: resolves once it is listening on dev/<id>/cmd. */
  #connectOne(port: number, id: string, timeoutMs: number, tls?: TlsMode): Promise<Conn> {
    const token = tls === 'mtls' ? null : (this.#tokens.get(id)?.shift() ?? 'no-token')
    const secureContext = tls === 'mtls' ? this.#tlsContexts.get(id) : tls === 'token' ? this.#serverAuthContext : undefined
    if (tls && !secureContext) return Promise.reject(new Error(tls === 'mtls' ? `${id}: no certificate (initTls)` : 'no CA (initTls)'))
    return new Promise((resolve, reject) => {
      const connectPkt = token === null ? connectPacket(id) : connectPacket(id, id, token)
      // No `session` is ever passed: every TLS connect is a full handshake.
      let socket: Socket
      if (secureContext) {
        const s = tlsConnect({ host: '127.0.0.1', port, secureContext }, () => {
          if (s.isSessionReused()) this.#resumed++
          s.write(connectPkt)
        })
        s.setNoDelay(true)
        socket = s
      } else {
        socket = tcpConnect({ host: '127.0.0.1', port, noDelay: true })
      }
      const reader = new PacketReader()
      let settled = false
      let ackId = 1
      const closed = new Promise<void>((r) => socket.once('close', () => r()))
      const fail = (why: string): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        socket.destroy()
        reject(new Error(why))
      }
      const timer = setTimeout(() => fail('timeout'), timeoutMs)
      socket.on('error', (err) => fail(err.message))
      socket.once('close', () => fail('closed before SUBACK'))
      socket.on('data', (chunk: Buffer) => {
        try {
          reader.push(chunk, (p) => {
            if (p.type === CONNACK) {
              const rc = p.body[1]
              if (rc !== 0) return fail(`CONNACK ${rc}`)
              socket.write(subscribePacket(1, `dev/${id}/cmd`, 1))
            } else if (p.type === SUBACK) {
              if (p.body[2] === 0x80) return fail('subscription denied')
              if (settled) return
              settled = true
              clearTimeout(timer)
              resolve({ socket, closed })
            } else if (p.type === PUBLISH) {
              const pub = readPublish(p)
              if (pub.packetId) socket.write(pubackPacket(pub.packetId))
              const ack = this.#answer(id, pub.payload)
              if (ack) socket.write(publishPacket(`dev/${id}/ack`, ack, 1, (ackId = (ackId % 65535) + 1)))
            } else if (p.type === PUBACK) {
              this.acksSent++
              this.lastAckAt = epochMs()
            }
          })
        } catch (err) {
          fail((err as Error).message)
        }
      })
      if (!secureContext) socket.write(connectPkt)
    })
  }

  /** The device side of an action: verify it is the gateway's and ours, answer `done`. */
  #answer(id: string, payload: Buffer): string | null {
    this.actionsSeen++
    if (!this.#keys.has(id)) return null // a certificate device of the TLS runs: no actions are sent to them
    let jws
    try {
      jws = parseJws(payload)
    } catch {
      return null
    }
    if (!verify(null, jws.signingInput, this.#gatewayKey!, jws.signature)) return null
    const c = jws.payload
    if (c.aud !== id || typeof c.jti !== 'string') return null
    return this.#sign(id, { iss: id, aud: this.#gatewayId, iat: Math.floor(Date.now() / 1000), jti: newJti('ack.'), ref: c.jti, status: 'done' })
  }

  /**
   * Connect `ids`, `concurrency` at a time. Without `retryMs` a failed
   * connect is counted and not tried again (the admission runs); with it, a
   * device whose connect failed tries again after retryMs (± 50 %) with a
   * fresh token, as a real device does, until `deadlineMs` has passed.
   */
  async connect(port: number, ids: string[], concurrency: number, timeoutMs: number, retryMs = 0, deadlineMs = 0, tls?: TlsMode): Promise<ConnectReply> {
    let next = 0
    let failed = 0
    let retries = 0
    const errors: string[] = []
    const resumedBefore = this.#resumed
    const cpu = process.cpuUsage()
    const start = performance.now()
    let lastAt = 0
    const worker = async (): Promise<void> => {
      while (next < ids.length) {
        const id = ids[next++]!
        for (;;) {
          try {
            this.#conns.set(id, await this.#connectOne(port, id, timeoutMs, tls))
            lastAt = epochMs()
            break
          } catch (err) {
            if (errors.length < 5) errors.push(`${id}: ${(err as Error).message}`)
            if (retryMs > 0 && performance.now() - start < deadlineMs) {
              retries++
              await new Promise((r) => setTimeout(r, retryMs * (0.5 + Math.random())))
              if (tls !== 'mtls') this.mint([id], 1800)
              continue
            }
            failed++
            break
          }
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, ids.length) }, worker))
    const elapsedMs = performance.now() - start
    const used = process.cpuUsage(cpu)
    return { connected: ids.length - failed, failed, elapsedMs, errors, lastAt, retries, resumed: this.#resumed - resumedBefore, cpuMs: (used.user + used.system) / 1000 }
  }

  async disconnect(ids: string[] | 'all'): Promise<number> {
    const list = ids === 'all' ? [...this.#conns.keys()] : ids
    const waits: Promise<void>[] = []
    for (const id of list) {
      const c = this.#conns.get(id)
      if (!c) continue
      this.#conns.delete(id)
      if (!c.socket.destroyed) c.socket.end(DISCONNECT)
      waits.push(Promise.race([c.closed, new Promise<void>((r) => setTimeout(r, 5000).unref())]).then(() => void c.socket.destroy()))
    }
    await Promise.all(waits)
    return waits.length
  }

  /**
   * Revocation latency, one device at a time: from the moment the signed
   * command is handed to the central broker's socket to the moment the
   * device's own socket is closed by the gateway.
   */
  async revoke(spec: CpSpec, ids: string[], gapMs: number, timeoutMs: number): Promise<RevokeReply> {
    const cp = new ControlPlane({ broker: spec.url, site: spec.site, gateway: spec.gateway, key: createPrivateKey({ key: spec.keyPem, format: 'pem' }), kid: spec.kid, iss: 'bench' })
    await cp.connect()
    await cp.waitOnline(timeoutMs * 4)
    const latenciesMs: number[] = []
    const brokerAckMs: number[] = []
    const samples: RevokeReply['samples'] = []
    let timeouts = 0
    const watch = watchLoop()
    try {
      for (const id of ids) {
        const conn = this.#conns.get(id)
        if (!conn || conn.socket.destroyed) {
          timeouts++
          continue
        }
        const { jws } = cp.sign('device.revoke', { deviceId: id, reason: 'bench: revocation latency' })
        let closedAt = 0
        const closed = conn.closed.then(() => (closedAt = performance.now()))
        const t0 = performance.now()
        const acked = cp.publishRaw(jws).then(() => brokerAckMs.push(performance.now() - t0))
        const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), timeoutMs).unref())
        const r = await Promise.race([closed.then(() => 'closed' as const), timer])
        await acked
        this.#conns.delete(id)
        if (r === 'timeout') timeouts++
        else {
          latenciesMs.push(closedAt - t0)
          samples.push({ id, publishedAt: performance.timeOrigin + t0, seenClosedAt: performance.timeOrigin + closedAt })
        }
        await new Promise((res) => setTimeout(res, gapMs))
      }
    } finally {
      await cp.close()
    }
    return { latenciesMs, brokerAckMs, samples, timeouts, loop: watch.end() }
  }

  get connectedCount(): number {
    let n = 0
    for (const c of this.#conns.values()) if (!c.socket.destroyed) n++
    return n
  }
}

async function serve(): Promise<void> {
  const gen = new LoadGenerator()
  const reply = (id: number, result: unknown, error?: string): void => void process.send!({ id, result, ...(error ? { error } : {}) })
  process.on('message', (msg: { id: number; req: LoadRequest }) => {
    const { id, req } = msg
    const run = async (): Promise<unknown> => {
      switch (req.op) {
        case 'init':
          return gen.init(req.devices, req.gatewayId, req.gatewayPublicKey)
        case 'initTls':
          return gen.initTls(req.ca, req.devices)
        case 'mint':
          return gen.mint(req.ids, req.lifetimeS)
        case 'connect':
          return gen.connect(req.port, req.ids, req.concurrency, req.timeoutMs, req.retryMs, req.deadlineMs, req.tls)
        case 'disconnect':
          return gen.disconnect(req.ids)
        case 'revoke':
          return gen.revoke(req.cp, req.ids, req.gapMs, req.timeoutMs)
        case 'gc':
          // the generator's own garbage collected before a latency window (it runs with --expose-gc), so a
          // scavenge of what its connects left does not land in the broker's figure
          for (let i = 0; i < 2; i++) globalThis.gc?.()
          return { collected: typeof globalThis.gc === 'function' }
        case 'count':
          return { connected: gen.connectedCount, acksSent: gen.acksSent, lastAckAt: gen.lastAckAt, actionsSeen: gen.actionsSeen }
        case 'exit':
          await gen.disconnect('all')
          setImmediate(() => process.exit(0))
          return null
      }
    }
    run().then(
      (r) => reply(id, r ?? null),
      (err: unknown) => reply(id, null, (err as Error).stack ?? String(err)),
    )
  })
  // The parent going away ends the generator too: no orphaned sockets.
  process.on('disconnect', () => process.exit(0))
}

if (process.send) await serve()
