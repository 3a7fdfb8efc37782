// The gateway's own Modbus TCP connection to one device. Every request to
// that device, the proxy's and the hook relay's alike, goes through its
// queue, one at a time (many Modbus devices take one request at a time, and
// the relay's envelope writes must not interleave with anything). The
// connection is always opened by the gateway, so it keeps working under the
// wipe-only network rule set.
//
// One request is outstanding per connection, so an answer that fits the
// request (isResponseTo) is its answer even when its transaction id is not
// the one sent: some devices answer with a constant or their own counter.
// What the device did with the first answer on a connection decides: one
// that echoed the transaction id has told us its ids mean something, and
// an answer from it with another id is a stale repeat of an earlier answer
// (some serial gateways repeat themselves), skipped so it is never taken
// for the next request's data. An answer whose unit id is
// not the device's is accepted (`strictUnitId: false`: devices that answer
// with a fixed unit id) or fails that one request at once (the default);
// either way the connection stays up, since nothing is out of step.
import { connect, type Socket } from 'node:net'
import type { Logger } from '../../agent/observe/logger.ts'
import { encodeFrame, isResponseTo, MbapReader } from './mbap.ts'
import { EdgewardenError } from '../../agent/runtime/errors.ts'

export interface ModbusTarget {
  host: string
  port: number
  unitId: number
  /** false: accept an answer whatever its unit id (device `modbus.strictUnitId`, default true) */
  strictUnitId?: boolean
}

/**
 * Why a request got no answer from the device: `closed` (the gateway cut
 * the device off, closeSessions), `unreachable` (no connection, or it broke),
 * `timeout` (no answer within the bound), `bad-response` (an answer that
 * does not fit the request), `wrong-unit` (an answer that fits, from another
 * unit id, to a link with strictUnitId), `busy` (the queue for this device
 * is full).
 */
export type LinkFailure = 'closed' | 'unreachable' | 'timeout' | 'bad-response' | 'wrong-unit' | 'busy'

export class ModbusLinkError extends EdgewardenError {
  readonly kind: LinkFailure
  constructor(kind: LinkFailure, message: string, options?: { cause?: unknown }) {
    super('MODBUS_LINK', message, options)
    this.name = 'ModbusLinkError'
    this.kind = kind
  }
}

/** who asked: a SCADA client through the proxy, the hook relay, or the gateway itself (the inventory's identification read) */
export type RequestOrigin = 'proxy' | 'relay' | 'gateway'

interface Job {
  pdu: Buffer
  origin: RequestOrigin
  resolve: (pdu: Buffer) => void
  reject: (err: ModbusLinkError) => void
  settled: boolean
}

export interface DeviceLinkOptions {
  /** bound on one request, connecting included (config modbusTimeoutMs) */
  timeoutMs: number
  /** requests waiting beyond this are refused as `busy` */
  maxQueue?: number
  log: Logger
  /** a request was answered (true) or the device did not answer (false) */
  onReachability?: (up: boolean) => void
}

export const DEFAULT_MAX_QUEUE = 64

export class DeviceLink {
  readonly target: ModbusTarget
  readonly #opts: DeviceLinkOptions
  readonly #queue: Job[] = []
  #current: Job | null = null
  #socket: Socket | null = null
  #connected = false
  #reader = new MbapReader()
  #tid = 0
  /** on this connection, the device's first answer carried the transaction id sent (echoes) or not (own) */
  #tids: 'unknown' | 'echoes' | 'own' = 'unknown'
  #toldTid = false
  /** the answer the current request waits for */
  #waiting: { tid: number; request: Buffer; finish: (err: ModbusLinkError | null, pdu?: Buffer) => void } | null = null
  /** ends the exchange in progress */
  #abort: ((err: ModbusLinkError) => void) | null = null
  #destroyed = false

  constructor(target: ModbusTarget, opts: DeviceLinkOptions) {
    this.target = target
    this.#opts = opts
  }

  /** Upstream connections open now (0 or 1). */
  get connections(): number {
    return this.#socket && !this.#socket.destroyed ? 1 : 0
  }

  /** Requests waiting or in flight. */
  get backlog(): number {
    return this.#queue.length + (this.#current ? 1 : 0)
  }

  /**
   * Send a request PDU to the device and resolve with its answer PDU (an
   * exception answer included: the device answered). Rejects with a
   * ModbusLinkError only; never throws.
   */
  request(pdu: Buffer, origin: RequestOrigin): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      if (this.#destroyed) return reject(new ModbusLinkError('closed', 'link is closed'))
      if (this.#queue.length >= (this.#opts.maxQueue ?? DEFAULT_MAX_QUEUE)) return reject(new ModbusLinkError('busy', 'too many requests waiting for this device'))
      this.#queue.push({ pdu, origin, resolve, reject, settled: false })
      if (!this.#current) void this.#pump()
    })
  }

  /**
   * Cut off: close the connection and fail every request waiting or in
   * flight as `closed`. The link stays usable (the relay may open a new
   * connection for a wipe). Returns the connections closed.
   */
  close(reason = 'closed by the gateway'): number {
    const closed = this.connections
    const err = (): ModbusLinkError => new ModbusLinkError('closed', reason)
    for (const job of this.#queue.splice(0)) this.#fail(job, err())
    if (this.#current) this.#fail(this.#current, err())
    this.#abort?.(err())
    this.#dropSocket()
    return closed
  }

  /** Close for good (target changed, agent stopping). */
  destroy(): void {
    this.#destroyed = true
    this.close('link destroyed')
  }

  async #pump(): Promise<void> {
    while (!this.#current && this.#queue.length > 0) {
      const job = this.#queue.shift()!
      this.#current = job
      try {
        const answer = await this.#exchange(job)
        if (!job.settled) {
          job.settled = true
          job.resolve(answer)
        }
        this.#opts.onReachability?.(true)
      } catch (e) {
        const err = e instanceof ModbusLinkError ? e : new ModbusLinkError('unreachable', String(e), { cause: e })
        this.#fail(job, err)
        if (err.kind === 'unreachable' || err.kind === 'timeout') this.#opts.onReachability?.(false)
      } finally {
        this.#current = null
      }
    }
  }

  #fail(job: Job, err: ModbusLinkError): void {
    if (job.settled) return
    job.settled = true
    job.reject(err)
  }

  /** One request: connect if needed, send, wait for the answer with this transaction id; one deadline for all of it. */
  #exchange(job: Job): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      let done = false
      const finish = (err: ModbusLinkError | null, pdu?: Buffer): void => {
        if (done) return
        done = true
        clearTimeout(timer)
        this.#waiting = null
        this.#abort = null
        if (err) reject(err)
        else resolve(pdu!)
      }
      // close() ends the exchange at once, so the queue moves on
      this.#abort = finish
      const timer = setTimeout(() => {
        finish(new ModbusLinkError('timeout', `no answer from ${this.target.host}:${this.target.port} within ${this.#opts.timeoutMs} ms`))
        // A late answer must never be taken for the next request's: drop the connection.
        this.#dropSocket()
      }, this.#opts.timeoutMs)
      const send = (): void => {
        if (done) return
        const sock = this.#socket
        if (!sock || !this.#connected) return finish(new ModbusLinkError('unreachable', 'connection lost'))
        // 1..65535: a device that answers with transaction id 0 never looks like a duplicate
        this.#tid = (this.#tid % 0xffff) + 1
        this.#waiting = { tid: this.#tid, request: job.pdu, finish }
        sock.write(encodeFrame(this.#tid, this.target.unitId, job.pdu))
      }
      if (this.#connected && this.#socket && !this.#socket.destroyed) send()
      else this.#open().then(send, (err: ModbusLinkError) => finish(err))
    })
  }

  #open(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#dropSocket()
      const sock = connect({ host: this.target.host, port: this.target.port })
      this.#socket = sock
      this.#reader = new MbapReader()
      this.#tids = 'unknown'
      sock.setNoDelay(true)
      sock.once('connect', () => {
        this.#connected = true
        resolve()
      })
      sock.on('data', (chunk: Buffer) => this.#onData(sock, chunk))
      sock.on('error', (err) => {
        this.#opts.log.debug({ err, target: `${this.target.host}:${this.target.port}` }, 'modbus device connection error')
        reject(new ModbusLinkError('unreachable', err.message, { cause: err }))
      })
      sock.once('close', () => {
        reject(new ModbusLinkError('unreachable', 'connection closed before it was open'))
        if (this.#socket !== sock) return
        this.#socket = null
        this.#connected = false
        this.#waiting?.finish(new ModbusLinkError('unreachable', 'the device closed the connection'))
      })
    })
  }

  #onData(sock: Socket, chunk: Buffer): void {
    if (sock !== this.#socket) return
    const { frames, error } = this.#reader.push(chunk)
    for (const f of frames) {
      const w = this.#waiting
      // An answer with no request waiting (to one that already failed) is nobody's.
      if (!w) continue
      const fits = isResponseTo(w.request, f.pdu)
      if (f.transactionId !== w.tid) {
        if (!fits || this.#tids === 'echoes') continue
        this.#tids = 'own'
        if (!this.#toldTid) {
          this.#toldTid = true
          this.#opts.log.debug({ target: this.#name, sent: w.tid, answered: f.transactionId }, 'modbus device answers with another transaction id: answers taken by their fit to the one request outstanding')
        }
      }
      if (!fits) {
        w.finish(new ModbusLinkError('bad-response', `answer with function ${f.pdu[0]} to a request with function ${w.request[0]}`))
        this.#dropSocket()
        return
      }
      if (this.#tids === 'unknown') this.#tids = 'echoes'
      if (f.unitId !== this.target.unitId && this.target.strictUnitId !== false) {
        w.finish(new ModbusLinkError('wrong-unit', `answer from unit id ${f.unitId} to a request for unit id ${this.target.unitId} (strictUnitId)`))
        continue
      }
      w.finish(null, f.pdu)
    }
    if (error) {
      this.#waiting?.finish(new ModbusLinkError('bad-response', `device stream is not MBAP (${error})`))
      this.#dropSocket()
    }
  }

  get #name(): string {
    return `${this.target.host}:${this.target.port}`
  }

  #dropSocket(): void {
    const sock = this.#socket
    this.#socket = null
    this.#connected = false
    if (sock && !sock.destroyed) sock.destroy()
  }
}
