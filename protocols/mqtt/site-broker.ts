// The site MQTT broker: aedes on plain TCP (and TLS where configured). Policy
// (who may connect, publish, subscribe) is injected, as aedes intends.
import { readFileSync } from 'node:fs'
import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { createServer as createTlsServer } from 'node:tls'
import { Aedes, type AedesOptions, type Client } from 'aedes'
import type { ProtocolAdapter } from '../../agent/adapter.ts'
import type { Logger } from '../../agent/logger.ts'

export interface SiteBrokerOptions {
  host: string
  port: number
  tls: { port: number; certFile: string; keyFile: string } | null
  log: Logger
  /** aedes handlers: authenticate, authorizePublish, authorizeSubscribe, … */
  policy: Partial<AedesOptions>
  /** a connection without CONNECT by then is closed (half-open connections) */
  connectTimeoutMs?: number
  /** a packet whose fixed header announces more is refused and its connection closed */
  maxPacketBytes?: number
}

export class SiteBroker implements ProtocolAdapter {
  readonly protocol = 'mqtt' as const
  readonly #opts: SiteBrokerOptions
  #aedes: Aedes | null = null
  #servers: Server[] = []
  /** live clients by device id (client id = device id, PROTOCOL §5) */
  readonly #clients = new Map<string, Set<Client>>()
  #ports: { mqtt?: number; mqtts?: number } = {}

  constructor(opts: SiteBrokerOptions) {
    this.#opts = opts
  }

  get aedes(): Aedes {
    if (!this.#aedes) throw new TypeError('SiteBroker not started')
    return this.#aedes
  }

  async start(): Promise<void> {
    const log = this.#opts.log
    const aedes = new Aedes({ ...this.#opts.policy, ...(this.#opts.connectTimeoutMs !== undefined ? { connectTimeout: this.#opts.connectTimeoutMs } : {}) })
    await aedes.listen()
    this.#aedes = aedes
    aedes.on('client', (c) => {
      let set = this.#clients.get(c.id)
      if (!set) this.#clients.set(c.id, (set = new Set()))
      set.add(c)
    })
    aedes.on('clientDisconnect', (c) => this.#forget(c))
    aedes.on('clientError', (c, err) => {
      log.debug({ clientId: c.id, err: err.message }, 'mqtt client error')
      this.#forget(c)
    })
    aedes.on('connectionError', (_c, err) => log.debug({ err: err.message }, 'mqtt connection error'))
    const max = this.#opts.maxPacketBytes
    const handle = max === undefined ? aedes.handle : (conn: Socket): void => guardPacketSize(aedes.handle(conn).conn as Socket, max, log)
    // Small packets (CONNACK, SUBACK, actions, PUBACKs): sent at once, not held by Nagle.
    const plain = createTcpServer({ noDelay: true }, handle)
    this.#ports.mqtt = await listen(plain, this.#opts.port, this.#opts.host)
    this.#servers.push(plain)
    const tls = this.#opts.tls
    if (tls) {
      const secure = createTlsServer({ cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile), minVersion: 'TLSv1.2', noDelay: true }, handle)
      this.#ports.mqtts = await listen(secure, tls.port, this.#opts.host)
      this.#servers.push(secure)
    }
  }

  #forget(c: Client): void {
    const set = this.#clients.get(c.id)
    if (!set) return
    set.delete(c)
    if (set.size === 0) this.#clients.delete(c.id)
  }

  closeSessions(deviceId: string): number {
    const set = this.#clients.get(deviceId)
    if (!set) return 0
    const n = set.size
    for (const c of set) c.close()
    this.#clients.delete(deviceId)
    return n
  }

  sessionCount(deviceId: string): number {
    return this.#clients.get(deviceId)?.size ?? 0
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
 * Close a connection as soon as a packet's fixed header announces more than
 * `max` bytes [MQTT-2.2.3], before the parser buffers any of it. It watches
 * the bytes aedes reads ('data' fires on each read() while aedes' 'readable'
 * listener keeps control of the flow), skipping packet bodies.
 */
function guardPacketSize(conn: Socket, max: number, log: Logger): void {
  let skip = 0 // body bytes of the current packet not yet seen
  let lengthBytes = -1 // -1: next byte is a packet type; else remaining-length bytes read so far
  let length = 0
  conn.on('data', (chunk: Buffer) => {
    let i = 0
    while (i < chunk.length) {
      if (skip > 0) {
        const n = Math.min(skip, chunk.length - i)
        skip -= n
        i += n
        continue
      }
      const b = chunk[i++]!
      if (lengthBytes < 0) {
        lengthBytes = 0
        length = 0
        continue
      }
      length += (b & 0x7f) * 128 ** lengthBytes++
      // A partial length is already a lower bound; a fifth length byte is malformed [MQTT-1.5.5].
      if (1 + lengthBytes + length > max || ((b & 0x80) !== 0 && lengthBytes === 4)) {
        log.debug({ remote: conn.remoteAddress, announced: length, max }, 'mqtt packet over the size bound; connection closed')
        conn.destroy()
        return
      }
      if ((b & 0x80) === 0) {
        skip = length
        lengthBytes = -1
      }
    }
  })
}

function listen(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve((server.address() as AddressInfo).port)
    })
  })
}
