// The gateway's Modbus TCP proxy (PROTOCOL §7). Modbus has no
// authentication at all, so this is where device trust is enforced on a
// plant network: SCADA and HMI clients talk to the gateway, and a request
// for unit id N goes to the enrolled device whose `modbus.unitId` is N,
// through that device's one serialized link, only while the device is
// `active`:
//   - a unit id no device claims, or a device not `active`: exception 0x0A
//     (gateway path unavailable);
//   - a device that does not answer within modbusTimeoutMs: 0x0B;
//   - a write into the device's hook registers: 0x02 (only the gateway
//     commands a device); coil writes (FC 5, 15) into the same addresses
//     too, since some devices overlay their tables;
//   - a function the proxy does not forward: 0x01; a malformed request:
//     0x03 (or 0x02 for a range past 65535), answered by the gateway itself;
//   - an answer from another unit id, for a device with strictUnitId (the
//     default): 0x0B for that request, the device's connection stays up.
// Forwarded (mbap.ts FORWARDED_FUNCTIONS): FC 1-6, 15, 16, 22 (mask
// write), 23 (read/write), and the read-only 17 (Report Server ID) and
// 43/14 (Read Device Identification).
//
// Residual use: a SCADA request for a cut device is not that device trying
// to get back in (the client is the SCADA, not the device's identity), so
// it raises no `alert.residual-use`; it is a debug log line and counted per
// device in describe().
//
// Connections (client-connection.ts): answers in request order, bounded
// per connection (reading pauses while its answers are not read); idle
// ones closed after idleTimeoutMs; a client that breaks MBAP framing, or
// leaves a frame incomplete for frameTimeoutMs, is disconnected. No
// client's bad input touches another's connection or a device's queue.
//
// Admission, so that idle or hostile sockets cannot lock SCADA out: at most
// maxClientsPerAddress connections from one source address (an IPv6 source
// by its /64: one host holds a whole /64), more are refused; at maxClients,
// a new connection takes the place of the longest-idle connection that was
// never served (no device has answered one of its requests) and has nothing
// in flight; failing that, of the longest-idle connection with nothing in
// flight of the address holding the most connections, when that address
// would still hold more than the newcomer's; else it is refused. So a few
// addresses that fill the proxy with connections they keep served cannot
// keep a new SCADA host out, and many addresses with one connection each
// displace nobody.
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import type { ProtocolAdapter } from '../../agent/adapter.ts'
import { addressKey } from '../../agent/trust/auth-throttle.ts'
import type { Logger } from '../../agent/observe/logger.ts'
import { bufferBound, ClientConnection, type Answer } from './client-connection.ts'
import { hookBaseOf, touchesHook, type ModbusDeviceIndex } from './device-index.ts'
import { ModbusLinkError } from './device-link.ts'
import { checkRequest, exceptionPdu, ModbusException, type ExceptionCode, type MbapFrame } from './mbap.ts'
import { inService } from '../../agent/trust/rights.ts'

export interface ModbusProxyOptions {
  /** where SCADA clients connect; null: no listener (the index and links still serve the relay and closeSessions) */
  listen: { host: string; port: number } | null
  log: Logger
  /** connections at once (config modbusMaxClients) */
  maxClients?: number
  /** connections at once from one source address, IPv6 by /64 (config modbusMaxClientsPerAddress) */
  maxClientsPerAddress?: number
  /** a connection with nothing to do this long is closed (config modbusIdleTimeoutMs) */
  idleTimeoutMs?: number
  /** requests one client may have read and not yet answered before its socket is paused */
  maxPendingPerClient?: number
  /** answer bytes held for one client (queued, and in its socket's buffer) at which its socket is paused */
  maxBufferedBytesPerClient?: number
  /** how long an incomplete frame may wait for its remaining bytes */
  frameTimeoutMs?: number
}

export const PROXY_DEFAULTS = {
  maxClients: 128,
  maxClientsPerAddress: 32,
  idleTimeoutMs: 120_000,
  maxPendingPerClient: 16,
  maxBufferedBytesPerClient: 32 * 1024,
  frameTimeoutMs: 5000,
}

/** Why a connection was turned away at accept. */
export type Refusal = 'per-address' | 'full'

export class ModbusProxy implements ProtocolAdapter {
  readonly protocol = 'modbus' as const
  readonly #index: ModbusDeviceIndex
  readonly #opts: ModbusProxyOptions & typeof PROXY_DEFAULTS
  readonly #log: Logger
  readonly #clients = new Set<ClientConnection>()
  /** addressKey -> connections open from it */
  readonly #perAddress = new Map<string, number>()
  readonly #keyOf = new Map<ClientConnection, string>()
  readonly #pausedListeners = new Set<(e: { remote: string; bufferedBytes: number; pending: number }) => void>()
  #server: Server | null = null
  #port: number | null = null
  /** requests refused with 0x0A per device (a cut device's SCADA traffic) */
  readonly refusedByDevice = new Map<string, number>()
  readonly stats = {
    frames: 0,
    framingErrors: 0,
    forwarded: 0,
    exceptions: 0,
    /** connections turned away at accept, by reason */
    refused: { 'per-address': 0, full: 0 } as Record<Refusal, number>,
    /** never-served connections closed to make room for a new one */
    evicted: 0,
    idleClosed: 0,
    /** times a connection's reading paused because its answers were not read */
    backpressurePauses: 0,
    /** the most answer bytes one connection held at once, since start */
    peakBufferedBytes: 0,
  }

  constructor(index: ModbusDeviceIndex, opts: ModbusProxyOptions) {
    this.#index = index
    this.#opts = { ...PROXY_DEFAULTS, ...opts }
    this.#log = opts.log
  }

  get port(): number | null {
    return this.#port
  }

  /** What one connection can make the gateway hold, at most (bytes). */
  get bufferBound(): number {
    return bufferBound({ maxPending: this.#opts.maxPendingPerClient, maxBufferedBytes: this.#opts.maxBufferedBytesPerClient })
  }

  async start(): Promise<void> {
    const listen = this.#opts.listen
    if (!listen || this.#server) return
    const server = createServer({ allowHalfOpen: true }, (sock) => this.#accept(sock))
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(listen.port, listen.host, () => {
        server.off('error', reject)
        resolve()
      })
    })
    server.on('error', (err) => this.#log.error({ err }, 'modbus proxy listener error'))
    this.#server = server
    this.#port = (server.address() as AddressInfo).port
    this.#log.info({ host: listen.host, port: this.#port }, 'modbus proxy listening')
  }

  async stop(): Promise<void> {
    const server = this.#server
    this.#server = null
    for (const c of this.#clients) c.close()
    this.#clients.clear()
    this.#perAddress.clear()
    this.#keyOf.clear()
    // ProtocolAdapter: stop closes the sessions too (the gateway's links to devices)
    this.#index.closeAll()
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  closeSessions(deviceId: string): number {
    return this.#index.closeSessions(deviceId)
  }

  sessionCount(deviceId: string): number {
    return this.#index.sessionCount(deviceId)
  }

  /** Read Device Identification of the device, as it answered the gateway (Modbus App Proto §6.21). */
  inventory(deviceId: string): Record<string, unknown> | undefined {
    const id = this.#index.identification(deviceId)
    return id ? { ...id.info, identifiedAt: id.atS } : undefined
  }

  describe(): Record<string, unknown> {
    let buffered = 0
    for (const c of this.#clients) buffered += c.bufferedBytes
    return { modbus: this.#port, clients: this.#clients.size, bufferedBytes: buffered, peakBufferedBytes: this.stats.peakBufferedBytes }
  }

  /** Called when a connection stops being read because its answers are not read (backpressure). */
  onBackpressure(listener: (e: { remote: string; bufferedBytes: number; pending: number }) => void): () => void {
    this.#pausedListeners.add(listener)
    return () => this.#pausedListeners.delete(listener)
  }

  #accept(sock: Socket): void {
    sock.on('error', () => {}) // a refused socket's reset is nobody's concern
    const key = addressKey(sock.remoteAddress ?? '')
    const remote = `${sock.remoteAddress}:${sock.remotePort}`
    if ((this.#perAddress.get(key) ?? 0) >= this.#opts.maxClientsPerAddress) return this.#refuse(sock, 'per-address', remote)
    if (this.#clients.size >= this.#opts.maxClients) {
      const victim = this.#evictable(key)
      if (!victim) return this.#refuse(sock, 'full', remote)
      this.stats.evicted++
      this.#log.debug({ remote: victim.remote, for: remote }, 'modbus proxy full: closed the longest-idle connection of the address holding the most')
      this.#forget(victim)
      victim.close()
    }
    const conn = new ClientConnection(sock, {
      log: this.#log,
      maxPending: this.#opts.maxPendingPerClient,
      maxBufferedBytes: this.#opts.maxBufferedBytesPerClient,
      idleTimeoutMs: this.#opts.idleTimeoutMs,
      frameTimeoutMs: this.#opts.frameTimeoutMs,
      answer: (frame, from) => {
        this.stats.frames++
        return this.#answer(frame, from)
      },
      onPaused: (c) => {
        this.stats.backpressurePauses++
        for (const l of this.#pausedListeners) l({ remote: c.remote, bufferedBytes: c.bufferedBytes, pending: c.pending })
      },
      onBuffered: (bytes) => {
        if (bytes > this.stats.peakBufferedBytes) this.stats.peakBufferedBytes = bytes
      },
      onFramingError: () => void this.stats.framingErrors++,
      onIdle: () => void this.stats.idleClosed++,
      onClose: (c) => this.#forget(c),
    })
    this.#clients.add(conn)
    this.#keyOf.set(conn, key)
    this.#perAddress.set(key, (this.#perAddress.get(key) ?? 0) + 1)
  }

  #refuse(sock: Socket, why: Refusal, remote: string): void {
    this.stats.refused[why]++
    this.#log.debug({ remote, why }, why === 'full' ? 'modbus proxy full, every connection served: connection refused' : 'modbus proxy: too many connections from this address: refused')
    sock.destroy()
  }

  /**
   * The connection a newcomer from `newcomer` (an address key) may replace:
   * one never served, idle the longest; else the longest-idle connection of
   * the address holding the most, if it would still hold more than the
   * newcomer's address. One with a request still to be answered is not
   * idle: a SCADA client's request may be waiting for its device.
   */
  #evictable(newcomer: string): ClientConnection | null {
    let victim: ClientConnection | null = null
    for (const c of this.#clients) if (!c.served && c.pending === 0 && (!victim || c.lastActiveAt < victim.lastActiveAt)) victim = c
    if (victim) return victim
    let most: string | null = null
    for (const [k, n] of this.#perAddress) if (most === null || n > this.#perAddress.get(most)!) most = k
    if (most === null || this.#perAddress.get(most)! <= (this.#perAddress.get(newcomer) ?? 0) + 1) return null
    for (const c of this.#clients) if (this.#keyOf.get(c) === most && c.pending === 0 && (!victim || c.lastActiveAt < victim.lastActiveAt)) victim = c
    return victim
  }

  #forget(c: ClientConnection): void {
    if (!this.#clients.delete(c)) return
    const key = this.#keyOf.get(c)!
    this.#keyOf.delete(c)
    const n = (this.#perAddress.get(key) ?? 1) - 1
    if (n > 0) this.#perAddress.set(key, n)
    else this.#perAddress.delete(key)
  }

  /**
   * The answer to one request: the device's, or the gateway's exception.
   * The gateway's own refusals come back at once (no promise), so a flood of
   * requests it refuses costs no round through the event loop. Never rejects.
   */
  #answer(frame: MbapFrame, remote: string): Answer | Promise<Answer> {
    const fc = frame.pdu[0]!
    const refuse = (code: ExceptionCode): Answer => {
      this.stats.exceptions++
      return { pdu: exceptionPdu(fc, code), served: false }
    }
    const route = this.#index.route(frame.unitId)
    if (route.kind !== 'device') {
      this.#log.debug({ remote, unitId: frame.unitId, route: route.kind }, 'modbus request for a unit id with no single enrolled device')
      return refuse(ModbusException.GATEWAY_PATH_UNAVAILABLE)
    }
    const { record, link } = route
    const deviceId = record.spec.id
    if (!inService(record.state)) {
      // Not the device's own attempt: no residual-use alert (see the header).
      this.refusedByDevice.set(deviceId, (this.refusedByDevice.get(deviceId) ?? 0) + 1)
      this.#log.debug({ remote, deviceId, state: record.state, fc }, 'modbus request for a device that is not active: 0x0A')
      return refuse(ModbusException.GATEWAY_PATH_UNAVAILABLE)
    }
    const check = checkRequest(frame.pdu)
    if (!check.ok) return refuse(check.exception)
    const hookBase = hookBaseOf(record)
    if (hookBase !== null && check.request.writes.some((w) => touchesHook(hookBase, w.start, w.quantity))) {
      // PROTOCOL §7: only the gateway commands a device.
      this.#log.warn({ remote, deviceId, fc, writes: check.request.writes }, 'modbus client write into the hook registers refused: 0x02')
      return refuse(ModbusException.ILLEGAL_DATA_ADDRESS)
    }
    return link.request(frame.pdu, 'proxy').then(
      (pdu): Answer => {
        this.stats.forwarded++
        return { pdu, served: true }
      },
      (err: unknown): Answer => {
        const kind = err instanceof ModbusLinkError ? err.kind : 'unreachable'
        this.#log.debug({ remote, deviceId, kind, err }, 'modbus request not answered by the device')
        if (kind === 'closed') return refuse(ModbusException.GATEWAY_PATH_UNAVAILABLE)
        if (kind === 'busy') return refuse(ModbusException.SERVER_DEVICE_BUSY)
        // Modbus App Proto §7: 0x0B, the target device failed to respond (or answered for another unit)
        return refuse(ModbusException.GATEWAY_TARGET_FAILED)
      },
    )
  }
}
