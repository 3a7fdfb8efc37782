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
//     0x03 (or 0x02 for a range past 65535), answered by the gateway itself.
// Forwarded: FC 1-6, 15, 16, 22 (mask write) and 23 (read/write).
//
// Residual use: a SCADA request for a cut device is not that device trying
// to get back in (the client is the SCADA, not the device's identity), so
// it raises no `alert.residual-use`; it is a debug log line and counted per
// device in describe().
//
// A client that breaks MBAP framing (protocol id not 0, a length field
// outside 2..254) is disconnected once the frames read before are answered:
// TCP has no frame markers to resync on.
// A frame left incomplete for frameTimeoutMs also ends its connection. No
// client's bad input touches another's connection or a device's queue.
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import type { ProtocolAdapter } from '../../agent/adapter.ts'
import type { Logger } from '../../agent/logger.ts'
import { hookBaseOf, touchesHook, type ModbusDeviceIndex } from './device-index.ts'
import { ModbusLinkError } from './device-link.ts'
import { checkRequest, encodeFrame, exceptionPdu, MbapReader, ModbusException, type ExceptionCode, type MbapFrame } from './mbap.ts'

export interface ModbusProxyOptions {
  /** where SCADA clients connect; null: no listener (the index and links still serve the relay and closeSessions) */
  listen: { host: string; port: number } | null
  log: Logger
  maxClients?: number
  /** requests one client may have outstanding before its socket is paused (backpressure) */
  maxInFlightPerClient?: number
  /** how long an incomplete frame may wait for its remaining bytes */
  frameTimeoutMs?: number
}

export const PROXY_DEFAULTS = { maxClients: 128, maxInFlightPerClient: 16, frameTimeoutMs: 5000 }

export class ModbusProxy implements ProtocolAdapter {
  readonly protocol = 'modbus' as const
  readonly #index: ModbusDeviceIndex
  readonly #opts: ModbusProxyOptions & typeof PROXY_DEFAULTS
  readonly #log: Logger
  readonly #clients = new Set<Socket>()
  #server: Server | null = null
  #port: number | null = null
  /** requests refused with 0x0A per device (a cut device's SCADA traffic) */
  readonly refusedByDevice = new Map<string, number>()
  readonly stats = { frames: 0, framingErrors: 0, forwarded: 0, exceptions: 0 }

  constructor(index: ModbusDeviceIndex, opts: ModbusProxyOptions) {
    this.#index = index
    this.#opts = { ...PROXY_DEFAULTS, ...opts }
    this.#log = opts.log
  }

  get port(): number | null {
    return this.#port
  }

  async start(): Promise<void> {
    const listen = this.#opts.listen
    if (!listen || this.#server) return
    const server = createServer((sock) => this.#accept(sock))
    server.maxConnections = this.#opts.maxClients
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
    for (const c of this.#clients) c.destroy()
    this.#clients.clear()
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  closeSessions(deviceId: string): number {
    return this.#index.closeSessions(deviceId)
  }

  sessionCount(deviceId: string): number {
    return this.#index.sessionCount(deviceId)
  }

  describe(): Record<string, unknown> {
    return { modbus: this.#port, clients: this.#clients.size }
  }

  #accept(sock: Socket): void {
    this.#clients.add(sock)
    sock.setNoDelay(true)
    const remote = `${sock.remoteAddress}:${sock.remotePort}`
    const reader = new MbapReader()
    let inFlight = 0
    /** framing lost: read nothing more, answer what was read, then close */
    let broken = false
    let partialTimer: NodeJS.Timeout | null = null
    const clearPartial = (): void => {
      if (partialTimer) clearTimeout(partialTimer)
      partialTimer = null
    }
    const closeWhenAnswered = (): void => {
      if (broken && inFlight === 0 && !sock.destroyed) sock.end(() => sock.destroy())
    }
    sock.on('data', (chunk: Buffer) => {
      if (broken) return
      const { frames, error } = reader.push(chunk)
      for (const frame of frames) {
        this.stats.frames++
        inFlight++
        if (inFlight >= this.#opts.maxInFlightPerClient) sock.pause()
        void this.#answer(frame, remote).then((pdu) => {
          inFlight--
          if (!sock.destroyed) sock.write(encodeFrame(frame.transactionId, frame.unitId, pdu))
          if (broken) closeWhenAnswered()
          else if (inFlight < this.#opts.maxInFlightPerClient && sock.isPaused()) sock.resume()
        })
      }
      clearPartial()
      if (error) {
        this.stats.framingErrors++
        this.#log.debug({ remote, error }, 'modbus client broke MBAP framing: disconnected')
        broken = true
        closeWhenAnswered()
        return
      }
      if (reader.pending > 0) {
        partialTimer = setTimeout(() => {
          this.#log.debug({ remote, pending: reader.pending }, 'modbus client left a frame incomplete: disconnected')
          sock.destroy()
        }, this.#opts.frameTimeoutMs)
        partialTimer.unref()
      }
    })
    sock.on('error', (err) => this.#log.debug({ err, remote }, 'modbus client connection error'))
    sock.once('close', () => {
      clearPartial()
      this.#clients.delete(sock)
    })
  }

  /** The answer PDU for one request: the device's, or the gateway's exception. Never rejects. */
  async #answer(frame: MbapFrame, remote: string): Promise<Buffer> {
    const fc = frame.pdu[0]!
    const refuse = (code: ExceptionCode): Buffer => {
      this.stats.exceptions++
      return exceptionPdu(fc, code)
    }
    const route = this.#index.route(frame.unitId)
    if (route.kind !== 'device') {
      this.#log.debug({ remote, unitId: frame.unitId, route: route.kind }, 'modbus request for a unit id with no single enrolled device')
      return refuse(ModbusException.GATEWAY_PATH_UNAVAILABLE)
    }
    const { record, link } = route
    const deviceId = record.spec.id
    if (record.state !== 'active') {
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
    try {
      const answer = await link.request(frame.pdu, 'proxy')
      this.stats.forwarded++
      return answer
    } catch (err) {
      const kind = err instanceof ModbusLinkError ? err.kind : 'unreachable'
      this.#log.debug({ remote, deviceId, kind, err }, 'modbus request not answered by the device')
      if (kind === 'closed') return refuse(ModbusException.GATEWAY_PATH_UNAVAILABLE)
      if (kind === 'busy') return refuse(ModbusException.SERVER_DEVICE_BUSY)
      return refuse(ModbusException.GATEWAY_TARGET_FAILED)
    }
  }
}
