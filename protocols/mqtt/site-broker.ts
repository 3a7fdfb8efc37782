// The site MQTT broker: aedes on plain TCP (and TLS where configured). Policy
// (who may connect, publish, subscribe) is injected, as aedes intends.
import { readFileSync } from 'node:fs'
import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { createServer as createTlsServer } from 'node:tls'
import { Aedes, type AedesOptions, type Client } from 'aedes'
import type { ProtocolAdapter } from '../../agent/adapter.ts'
import type { DeviceRecord } from '../../agent/devices/device.ts'
import type { Logger } from '../../agent/observe/logger.ts'
import { SessionsById } from './sessions-by-id.ts'

/** The part of aedes' persistence (aedes-persistence) that holds a client's session between connections. */
interface StoredSessions {
  cleanSubscriptions(client: { id: string }): Promise<void>
  outgoingEnqueue(sub: { clientId: string }, packet: { payload?: Buffer | string }): Promise<void>
  outgoingEnqueueCombi(subs: { clientId: string }[], packet: { payload?: Buffer | string }): Promise<void>
  outgoingStream(client: { id: string }): AsyncIterable<unknown>
  outgoingClearMessageId(client: { id: string }, packet: unknown): Promise<unknown>
  delWill(client: { id: string }): Promise<unknown>
  cleanIncoming?(client: { id: string }): Promise<void>
}
const persistenceOf = (aedes: Aedes): StoredSessions => (aedes as unknown as { persistence: StoredSessions }).persistence

/** How live sessions follow a change of their device's record (PROTOCOL §4): the admission policy's. */
export interface SessionReview {
  keeps(client: Client, after: DeviceRecord): boolean
  narrowed(before: DeviceRecord, after: DeviceRecord): boolean
}

export interface SiteBrokerOptions {
  host: string
  /** the plain listener's port; null: none */
  port: number | null
  /** the TLS listener: its certificate chain and key (PEM), and the CAs client certificates may chain to */
  tls: { port: number; cert: string; key: string; ca: string[] } | null
  log: Logger
  /** aedes handlers: authenticate, authorizePublish, authorizeSubscribe, … */
  policy: Partial<AedesOptions>
  /** a connection without CONNECT by then is closed (half-open connections); over TLS, also one whose handshake has not finished by then */
  connectTimeoutMs?: number
  /** connections each listener holds until aedes takes them (listen(2) backlog; Node's default 511) */
  listenBacklog?: number
  /** a packet whose fixed header announces more is refused and its connection closed */
  maxPacketBytes?: number
  /** a client that stops reading is disconnected once this much waits unsent for it (default 16 × maxPacketBytes, at least 1 MiB) */
  maxClientBufferBytes?: number
  /** QoS 1/2 messages held for one client (offline with a stored session, or not yet acknowledged) at most, and their payload bytes; more are not kept for it (default 1000, 8 MiB) */
  sessionQueue?: { messages: number; bytes: number }
  sessions?: SessionReview
}

export class SiteBroker implements ProtocolAdapter {
  readonly protocol = 'mqtt' as const
  readonly #opts: SiteBrokerOptions
  #aedes: Aedes | null = null
  #servers: Server[] = []
  /** live clients by device id (client id = device id, PROTOCOL §5) */
  readonly #clients = new SessionsById<Client>()
  #ports: { mqtt?: number; mqtts?: number } = {}
  /** stored sessions being forgotten */
  readonly #forgetting = new Set<Promise<void>>()
  /**
   * Device ids admitted with a stored session (clean session off) since
   * start: only they can leave anything in aedes' (in-memory) persistence
   * once their connection is gone. aedes keeps nothing of a clean session
   * after it closes (no queue while offline, its will and QoS 2 state
   * deleted), so cutting a device that has no live session and is not here
   * has nothing to forget, and a bulk retire of offline devices walks no
   * queues. Bounded by the registry: only admitted ids are added.
   */
  readonly #persistent = new Set<string>()
  /** what aedes holds per client id: QoS 1/2 messages queued and their payload bytes (kept within sessionQueue) */
  readonly #queued = new Map<string, { messages: number; bytes: number; dropped: number }>()
  /** messages not kept for a client whose queue was full, since start */
  droppedFromQueues = 0
  /** who published the retained message of each topic (aedes keeps the message, not its publisher) */
  readonly #retainedBy = new Map<string, string>()

  constructor(opts: SiteBrokerOptions) {
    this.#opts = opts
  }

  get aedes(): Aedes {
    if (!this.#aedes) throw new TypeError('SiteBroker not started')
    return this.#aedes
  }

  async start(): Promise<void> {
    const log = this.#opts.log
    const authenticate = this.#opts.policy.authenticate
    const aedes = new Aedes({
      ...this.#opts.policy,
      ...(authenticate
        ? {
            authenticate: (client, username, password, done) =>
              authenticate(client, username, password, (err, ok) => {
                // marked before aedes restores or stores anything of the session (aedes sets client.clean before it authenticates)
                if (!err && ok && client.clean === false) this.#persistent.add(client.id)
                done(err, ok)
              }),
          }
        : {}),
      ...(this.#opts.connectTimeoutMs !== undefined ? { connectTimeout: this.#opts.connectTimeoutMs } : {}),
    })
    await aedes.listen()
    this.#aedes = aedes
    this.#boundQueues(persistenceOf(aedes))
    aedes.on('client', (c) => this.#clients.add(c.id, c))
    aedes.on('publish', (packet, client) => {
      if (!client || !packet.retain) return
      if (packet.payload.length === 0) this.#retainedBy.delete(packet.topic)
      else this.#retainedBy.set(packet.topic, client.id)
    })
    // A session's count from its queue as aedes holds it once it is up (what a clean session threw away is not counted again).
    // A clean session without a count is not walked again (one pass over aedes' outgoing
    // stream per connect): aedes delivers and clears what it holds for it at once, through
    // the counting clear below. A stored session is always recounted: a count can be lost
    // in a race (a recount or a forget running while messages are queued), and this heals it.
    aedes.on('clientReady', (c) => {
      if (!c.clean || this.#queued.has(c.id)) void this.#recount(c.id)
    })
    aedes.on('clientDisconnect', (c) => this.#forget(c))
    aedes.on('clientError', (c, err) => {
      log.debug({ clientId: c.id, err: err.message }, 'mqtt client error')
      this.#forget(c)
    })
    aedes.on('connectionError', (_c, err) => log.debug({ err: err.message }, 'mqtt connection error'))
    const max = this.#opts.maxPacketBytes
    const maxBuffered = this.#opts.maxClientBufferBytes ?? Math.max(1 << 20, 16 * (max ?? 65536))
    const handle = (conn: Socket): void => {
      const c = aedes.handle(conn).conn as Socket
      guardConnection(c, max, maxBuffered, log)
    }
    try {
      // Small packets (CONNACK, SUBACK, actions, PUBACKs): sent at once, not held by Nagle.
      if (this.#opts.port !== null) {
        const plain = createTcpServer({ noDelay: true }, handle)
        this.#ports.mqtt = await listen(plain, this.#opts.port, this.#opts.host, this.#opts.listenBacklog)
        this.#servers.push(plain)
      }
      const tls = this.#opts.tls
      if (tls) {
        // Client certificates are asked for, not required (token devices use
        // this listener too), and judged by admission, not by the handshake:
        // a revoked certificate or one past its grace is refused at CONNECT,
        // every time (PROTOCOL §5). A session resumed from an earlier
        // handshake carries that handshake's certificate and is judged again
        // like a new one, so resumption cannot bring a revoked certificate back.
        // The handshake has the connect timeout too (aedes' starts once it is
        // done): a client that stalls in it holds its socket no longer than
        // one that stalls before CONNECT, instead of Node's 120 s.
        const secure = createTlsServer(
          {
            cert: tls.cert,
            key: tls.key,
            ...(tls.ca.length ? { ca: tls.ca } : {}),
            requestCert: tls.ca.length > 0,
            rejectUnauthorized: false,
            minVersion: 'TLSv1.2',
            noDelay: true,
            handshakeTimeout: this.#opts.connectTimeoutMs,
          },
          handle,
        )
        // A handshake that failed or timed out: Node emits this and leaves the socket open.
        secure.on('tlsClientError', (err, socket) => {
          log.debug({ err: err.message, remote: socket.remoteAddress }, 'mqtt TLS handshake failed; connection closed')
          socket.destroy()
        })
        this.#ports.mqtts = await listen(secure, tls.port, this.#opts.host, this.#opts.listenBacklog)
        this.#servers.push(secure)
      }
    } catch (err) {
      // A port taken: the aedes instance (its timers) and a listener already
      // bound would keep the process alive after a failed start.
      await this.stop()
      throw err
    }
    const backlog = this.#opts.listenBacklog
    const cap = kernelListenCap()
    if (backlog !== undefined && cap !== null && cap < backlog) {
      log.warn(
        { listenBacklog: backlog, somaxconn: cap },
        `the MQTT listeners hold at most ${cap} pending connections (net.core.somaxconn), not listenBacklog ${backlog}: when more devices connect at once, the rest wait for their own retransmits; raise it with sysctl -w net.core.somaxconn=${backlog}`,
      )
    }
  }

  #forget(c: Client): void {
    this.#clients.delete(c.id, c)
  }

  /**
   * Close every live session of a device, and forget its stored session
   * (subscriptions, messages queued for it, will): PROTOCOL §4, a device
   * that leaves `active` keeps nothing on the broker, so nothing published
   * while it was cut reaches it later, and nothing piles up for it.
   */
  closeSessions(deviceId: string): number {
    const sessions = this.#clients.take(deviceId)
    for (const c of sessions) cutOff(c)
    if (sessions.length > 0 || this.#persistent.has(deviceId)) this.#forgetStored(deviceId)
    return sessions.length
  }

  /** PROTOCOL §4: close the sessions a changed record no longer admits (key, rights, acl); returns how many. */
  reviewSessions(before: DeviceRecord, after: DeviceRecord): number {
    const review = this.#opts.sessions
    if (!review) return 0
    const id = after.spec.id
    let closed = 0
    for (const c of this.#clients.of(id)) {
      if (review.keeps(c, after)) continue
      this.#clients.delete(id, c)
      cutOff(c)
      closed++
    }
    if (closed > 0 || (!this.#clients.has(id) && this.#persistent.has(id) && review.narrowed(before, after))) this.#forgetStored(id)
    return closed
  }

  /**
   * A client's queue in aedes (its stored session while offline with clean
   * session off, and QoS 1/2 messages it has not acknowledged) is kept
   * within sessionQueue, as Mosquitto's max_queued_messages: a message for a
   * client whose queue is full is not kept for that client (others get it),
   * counted, and logged once per client until its queue drains.
   */
  #boundQueues(p: StoredSessions): void {
    const bound = this.#opts.sessionQueue ?? { messages: 1000, bytes: 8 << 20 }
    const admit = (subs: { clientId: string }[], packet: { payload?: Buffer | string }): { clientId: string }[] => {
      const size = sizeOf(packet)
      const kept: { clientId: string }[] = []
      for (const sub of subs) {
        let q = this.#queued.get(sub.clientId)
        if (!q) this.#queued.set(sub.clientId, (q = { messages: 0, bytes: 0, dropped: 0 }))
        if (q.messages >= bound.messages || q.bytes + size > bound.bytes) {
          this.droppedFromQueues++
          if (q.dropped++ === 0) this.#opts.log.warn({ clientId: sub.clientId, messages: q.messages, bytes: q.bytes, bound }, 'mqtt client queue full: further messages are not kept for it until it catches up')
          continue
        }
        q.messages++
        q.bytes += size
        kept.push(sub)
      }
      return kept
    }
    const enqueueCombi = p.outgoingEnqueueCombi.bind(p)
    const enqueue = p.outgoingEnqueue.bind(p)
    const clear = p.outgoingClearMessageId.bind(p)
    p.outgoingEnqueueCombi = (subs, packet) => enqueueCombi(admit(subs, packet), packet)
    p.outgoingEnqueue = async (sub, packet) => {
      if (admit([sub], packet).length) await enqueue(sub, packet)
    }
    p.outgoingClearMessageId = async (client, packet) => {
      const removed = (await clear(client, packet)) as { payload?: Buffer | string } | undefined
      const q = this.#queued.get(client.id)
      if (removed && q) {
        q.messages = Math.max(0, q.messages - 1)
        q.bytes = Math.max(0, q.bytes - sizeOf(removed))
        if (q.messages === 0) this.#queued.delete(client.id)
        else if (q.messages < bound.messages / 2) q.dropped = 0
      }
      return removed
    }
  }

  async #recount(clientId: string): Promise<void> {
    if (!this.#aedes) return
    let messages = 0
    let bytes = 0
    try {
      for await (const packet of persistenceOf(this.#aedes).outgoingStream({ id: clientId })) {
        messages++
        bytes += sizeOf(packet as { payload?: Buffer | string })
      }
    } catch {
      return
    }
    if (messages === 0) this.#queued.delete(clientId)
    else this.#queued.set(clientId, { messages, bytes, dropped: this.#queued.get(clientId)?.dropped ?? 0 })
  }

  /** Drop what aedes keeps for a client id between connections. */
  #forgetStored(deviceId: string): void {
    if (!this.#aedes) return
    const p = persistenceOf(this.#aedes)
    const c = { id: deviceId }
    const done: Promise<void> = (async () => {
      await p.cleanSubscriptions(c)
      // No call empties a client's queue at once: clear its packets one by one (a snapshot of the queue).
      for await (const packet of p.outgoingStream(c)) await p.outgoingClearMessageId(c, packet)
      await p.delWill(c)
      await p.cleanIncoming?.(c)
      this.#queued.delete(deviceId)
    })()
      .catch((err: unknown) => this.#opts.log.error({ err, deviceId }, 'forgetting a stored MQTT session failed'))
      .finally(() => this.#forgetting.delete(done))
    this.#forgetting.add(done)
  }

  /** Resolves once every stored session asked to be forgotten so far is gone. */
  async storedSessionsSettled(): Promise<void> {
    while (this.#forgetting.size) await Promise.all([...this.#forgetting])
  }

  /** Messages queued in the stored session of a client id (tests, metrics). */
  async storedQueueLength(deviceId: string): Promise<number> {
    let n = 0
    for await (const _ of persistenceOf(this.aedes).outgoingStream({ id: deviceId })) n++
    return n
  }

  /** The device whose retained message a topic holds now (undefined: none, or one the broker itself set). */
  retainedPublisher(topic: string): string | undefined {
    return this.#retainedBy.get(topic)
  }

  sessionCount(deviceId: string): number {
    return this.#clients.count(deviceId)
  }

  get connectedClients(): number {
    return this.#aedes?.connectedClients ?? 0
  }

  describe(): Record<string, unknown> {
    return { ...this.#ports }
  }

  async stop(): Promise<void> {
    const servers = this.#servers
    this.#servers = []
    const aedes = this.#aedes
    // Stop accepting first; aedes.close() then ends every client, which lets the servers finish closing.
    const closed = servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())))
    if (aedes) await new Promise<void>((resolve) => aedes.close(() => resolve()))
    await Promise.all(closed)
  }
}

/**
 * End a session at once: aedes' close() destroys the socket only after its
 * unsubscribe bookkeeping has gone through its callbacks (later in the
 * event loop's turn, or a turn after), so the socket is destroyed here in
 * the same step, and nothing more reaches the device or comes from it.
 * close() still runs first: it marks the client closed and stops reading
 * its packets, and cleans up as before (destroying twice is a no-op).
 */
export function cutOff(client: Client): void {
  client.close()
  client.conn.destroy()
}

/** A queued message's payload bytes, as sessionQueue counts them. */
function sizeOf(packet: { payload?: Buffer | string }): number {
  return typeof packet.payload === 'string' ? Buffer.byteLength(packet.payload) : (packet.payload?.length ?? 0)
}

/**
 * Each connection's two guards, as one small object and two functions shared
 * by every connection (a closure per guard and per connection cost ~300
 * bytes a connected device; issue 19).
 *
 * Packet size: the connection is closed as soon as a packet's fixed header
 * announces more than `maxPacket` bytes [MQTT-2.2.3], before the parser
 * buffers any of it. It watches the bytes aedes reads ('data' fires on each
 * read() while aedes' 'readable' listener keeps control of the flow),
 * skipping packet bodies.
 *
 * Write buffer: a client that stops reading holds up nobody but itself, and
 * costs at most `maxBuffered` bytes: aedes waits for `drain` after a write
 * that reports backpressure, with at most `concurrency` deliveries in flight
 * across the whole broker, so one stalled QoS 1 subscriber would stop every
 * delivery to everyone until aedes' own drain timeout (60 s). Here a write
 * never reports backpressure: what the socket cannot take yet waits in its
 * buffer, and once `maxBuffered` bytes wait unsent the client is disconnected.
 */
class ConnGuard {
  skip = 0 // body bytes of the current packet not yet seen
  lengthBytes = -1 // -1: next byte is a packet type; else remaining-length bytes read so far
  length = 0
  cut = false
  constructor(
    readonly maxPacket: number | undefined,
    readonly maxBuffered: number,
    readonly write: Socket['write'],
    readonly log: Logger,
  ) {}
}

const GUARD = Symbol('edgewarden.connGuard')
type Guarded = Socket & { [GUARD]: ConnGuard }

function guardConnection(conn: Socket, maxPacket: number | undefined, maxBuffered: number, log: Logger): void {
  const g = new ConnGuard(maxPacket, maxBuffered, conn.write, log)
  ;(conn as Guarded)[GUARD] = g
  if (maxPacket !== undefined) conn.on('data', watchPacketSizes)
  conn.write = writeUnblocked as Socket['write']
}

function watchPacketSizes(this: Guarded, chunk: Buffer): void {
  const g = this[GUARD]
  const max = g.maxPacket!
  let i = 0
  while (i < chunk.length) {
    if (g.skip > 0) {
      const n = Math.min(g.skip, chunk.length - i)
      g.skip -= n
      i += n
      continue
    }
    const b = chunk[i++]!
    if (g.lengthBytes < 0) {
      g.lengthBytes = 0
      g.length = 0
      continue
    }
    g.length += (b & 0x7f) << (7 * g.lengthBytes++) // at most 2^28: stays a small integer
    // A partial length is already a lower bound; a fifth length byte is malformed [MQTT-1.5.5].
    if (1 + g.lengthBytes + g.length > max || ((b & 0x80) !== 0 && g.lengthBytes === 4)) {
      g.log.debug({ remote: this.remoteAddress, announced: g.length, max }, 'mqtt packet over the size bound; connection closed')
      this.destroy()
      return
    }
    if ((b & 0x80) === 0) {
      g.skip = g.length
      g.lengthBytes = -1
    }
  }
}

// Called as the socket's method (`conn.write(…)`, as mqtt-packet and aedes do), never detached.
function writeUnblocked(this: Guarded, ...args: unknown[]): boolean {
  const g = this[GUARD]
  ;(g.write as (...a: unknown[]) => boolean).apply(this, args)
  if (!g.cut && this.writableLength > g.maxBuffered) {
    g.cut = true
    g.log.info({ remote: this.remoteAddress, buffered: this.writableLength, max: g.maxBuffered }, 'mqtt client stopped reading; connection closed')
    // Not in the middle of aedes' write: the packet being written finishes first.
    setImmediate(destroyLater, this)
  }
  return true
}

const destroyLater = (conn: Socket): void => void conn.destroy()

/** The kernel's cap on a listen(2) backlog (Linux net.core.somaxconn, of this network namespace); null where it cannot be read. */
export function kernelListenCap(): number | null {
  try {
    const n = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8').trim())
    return Number.isInteger(n) && n > 0 ? n : null
  } catch {
    return null
  }
}

function listen(server: Server, port: number, host: string, backlog: number | undefined): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen({ port, host, backlog }, () => {
      server.off('error', reject)
      resolve((server.address() as AddressInfo).port)
    })
  })
}
