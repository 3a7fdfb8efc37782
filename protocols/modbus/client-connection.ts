// One SCADA client's connection to the proxy: frames read with
// backpressure, answers written in request order, and the timers that end a
// connection nobody uses.
//
// Answers go out in the order the requests came in (an ordered reply
// queue), whichever device answers first: a client that pipelines requests
// for two units gets each answer under its own transaction id, in order.
// The queue is also the bound on what one client can make the gateway hold:
// at most maxPending requests read and not yet written (at a device, or
// answered and waiting their turn), and reading pauses while the answer
// bytes held (queued, plus the socket's own write buffer) reach
// maxBufferedBytes, or while write() asks to wait for 'drain'. A client
// that sends and never reads stops being read from; what it sent waits in
// its own kernel buffers, not in the gateway. So what the gateway holds for
// one connection never exceeds bufferBound().
//
// A connection with nothing to do for idleTimeoutMs (no bytes in, no answer
// written, none awaited from a device) is closed; one that never reads its
// answers is such a connection. A frame left incomplete for frameTimeoutMs,
// from its first byte (more bytes one at a time do not keep it alive), ends
// the connection too. A client that breaks MBAP framing is answered what it
// sent before, then closed.
import type { Socket } from 'node:net'
import type { Logger } from '../../agent/observe/logger.ts'
import { encodeFrame, MAX_ADU_LEN, MbapReader, type MbapFrame } from './mbap.ts'

/** An answer PDU, and whether a device answered it (the client was served) or the gateway refused. */
export interface Answer {
  pdu: Buffer
  served: boolean
}

export interface ClientConnectionOptions {
  log: Logger
  /** requests read and not yet written before reading pauses */
  maxPending: number
  /** answer bytes held (queued and in the socket's buffer) at which reading pauses */
  maxBufferedBytes: number
  idleTimeoutMs: number
  frameTimeoutMs: number
  /** the answer to one request; never rejects */
  answer: (frame: MbapFrame, remote: string) => Answer | Promise<Answer>
  /** reading paused: the reply queue is full */
  onPaused?: (c: ClientConnection) => void
  /** the answer bytes held now, each time they grow */
  onBuffered?: (bytes: number) => void
  onFramingError?: () => void
  onIdle?: () => void
  onClose?: (c: ClientConnection) => void
}

/** The most answer bytes one connection can hold (see the header): reading stops below maxBufferedBytes with at most maxPending answers to come, each at most one ADU. */
export function bufferBound(o: { maxPending: number; maxBufferedBytes: number }): number {
  return o.maxBufferedBytes + o.maxPending * MAX_ADU_LEN
}

interface Reply {
  transactionId: number
  unitId: number
  /** the encoded answer, once there is one */
  out: Buffer | null
}

export class ClientConnection {
  readonly socket: Socket
  readonly remote: string
  readonly openedAt = performance.now()
  /** a device answered one of this client's requests */
  served = false
  /** when bytes last came in or an answer went out (performance.now()) */
  lastActiveAt = performance.now()
  readonly #opts: ClientConnectionOptions
  readonly #reader = new MbapReader()
  readonly #queue: Reply[] = []
  #unsentBytes = 0
  #needDrain = false
  #paused = false
  /** framing lost: read nothing more, answer what was read, then close */
  #broken = false
  /** the client half-closed: answer what it sent, then close */
  #ended = false
  #closed = false
  readonly #idleTimer: NodeJS.Timeout
  #frameTimer: NodeJS.Timeout | null = null

  constructor(socket: Socket, opts: ClientConnectionOptions) {
    this.socket = socket
    this.#opts = opts
    this.remote = `${socket.remoteAddress}:${socket.remotePort}`
    socket.setNoDelay(true)
    this.#idleTimer = setTimeout(() => this.#onIdle(), opts.idleTimeoutMs)
    this.#idleTimer.unref()
    socket.on('data', (chunk: Buffer) => {
      if (this.#broken) return
      this.#touch()
      this.#reader.feed(chunk)
      this.#pump()
    })
    // The server is half-open: a client that sends its requests and then its FIN still gets every answer.
    socket.once('end', () => {
      this.#ended = true
      this.#pump()
    })
    socket.on('drain', () => {
      this.#needDrain = false
      this.#pump()
    })
    socket.on('error', (err) => opts.log.debug({ err, remote: this.remote }, 'modbus client connection error'))
    socket.once('close', () => {
      this.#closed = true
      clearTimeout(this.#idleTimer)
      this.#clearFrameTimer()
      opts.onClose?.(this)
    })
  }

  /** Answer bytes held for this client: queued, and in the socket's write buffer. */
  get bufferedBytes(): number {
    return this.#unsentBytes + this.socket.writableLength
  }

  /** Requests read and not yet written. */
  get pending(): number {
    return this.#queue.length
  }

  get paused(): boolean {
    return this.#paused
  }

  close(): void {
    this.socket.destroy()
  }

  #touch(): void {
    this.lastActiveAt = performance.now()
    this.#idleTimer.refresh()
  }

  #room(): boolean {
    return !this.#needDrain && this.#queue.length < this.#opts.maxPending && this.bufferedBytes < this.#opts.maxBufferedBytes
  }

  /** Take frames while there is room for their answers, write what is answered, then pause or resume reading. */
  #pump(): void {
    if (this.#closed) return
    let took = false
    /** every complete frame read has been taken */
    let drained = false
    while (!this.#broken) {
      if (!this.#room()) {
        this.#flush()
        if (!this.#room()) break
      }
      const frame = this.#reader.next()
      if (!frame) {
        drained = true
        break
      }
      took = true
      this.#start(frame)
    }
    if (this.#reader.error && !this.#broken) {
      this.#broken = true
      this.#opts.onFramingError?.()
      this.#opts.log.debug({ remote: this.remote, error: this.#reader.error }, 'modbus client broke MBAP framing: disconnected')
    }
    this.#flush()
    const reading = !this.#broken && !this.#ended && this.#room()
    if (reading && this.#paused) {
      this.#paused = false
      this.socket.resume()
    } else if (!reading && !this.#paused) {
      this.#paused = true
      this.socket.pause()
      if (!this.#broken && !this.#ended) this.#opts.onPaused?.(this)
    }
    // While reading, what the reader holds is an incomplete frame; its clock starts with its first byte.
    if (!reading || took || this.#reader.pending === 0) this.#clearFrameTimer()
    if (reading && this.#reader.pending > 0 && !this.#frameTimer) {
      this.#frameTimer = setTimeout(() => {
        this.#opts.log.debug({ remote: this.remote, pending: this.#reader.pending }, 'modbus client left a frame incomplete: disconnected')
        this.socket.destroy()
      }, this.#opts.frameTimeoutMs)
      this.#frameTimer.unref()
    }
    // An incomplete frame left at the client's FIN will never be whole: it is dropped with the connection.
    if ((this.#broken || (this.#ended && drained)) && this.#queue.length === 0 && !this.socket.writableEnded) this.socket.end(() => this.socket.destroy())
  }

  #start(frame: MbapFrame): void {
    const reply: Reply = { transactionId: frame.transactionId, unitId: frame.unitId, out: null }
    this.#queue.push(reply)
    const a = this.#opts.answer(frame, this.remote)
    if (a instanceof Promise) {
      void a.then((answer) => {
        this.#ready(reply, answer)
        this.#pump()
      })
    } else this.#ready(reply, a)
  }

  #ready(reply: Reply, answer: Answer): void {
    if (this.#closed) return
    reply.out = encodeFrame(reply.transactionId, reply.unitId, answer.pdu)
    this.#unsentBytes += reply.out.length
    if (answer.served) this.served = true
    this.#opts.onBuffered?.(this.bufferedBytes)
  }

  /** Write the answers at the head of the queue that are ready, in one write, unless the socket asked to wait. */
  #flush(): void {
    if (this.#needDrain || this.#closed || this.socket.writableEnded) return
    let n = 0
    while (n < this.#queue.length && this.#queue[n]!.out) n++
    if (n === 0) return
    const outs = this.#queue.splice(0, n).map((r) => r.out!)
    const batch = outs.length === 1 ? outs[0]! : Buffer.concat(outs)
    this.#unsentBytes -= batch.length
    // write() says false at the socket's high-water mark: wait for 'drain' before writing or reading more. Our
    // own bound may lie below that mark (Node 22 raised the default to 64 KiB): then write() says true and no
    // 'drain' comes, so this write's callback (the bytes handed to the kernel) is what ends the wait.
    const ok = this.socket.write(batch, this.#written)
    if (!ok || this.socket.writableLength >= this.#opts.maxBufferedBytes) this.#needDrain = true
    this.#touch()
  }

  /** A write's callback, one for every write (made once: this is the per-request path). */
  readonly #written = (): void => {
    if (this.#needDrain && !this.#closed && this.socket.writableLength < this.#opts.maxBufferedBytes) {
      this.#needDrain = false
      this.#pump()
    }
  }

  #onIdle(): void {
    if (this.#closed) return
    // Waiting for a device is not idle: that wait has its own bound (modbusTimeoutMs).
    if (this.#queue.some((r) => r.out === null)) {
      this.#idleTimer.refresh()
      return
    }
    this.#opts.log.debug({ remote: this.remote, idleTimeoutMs: this.#opts.idleTimeoutMs }, 'modbus client idle: disconnected')
    this.#opts.onIdle?.()
    this.socket.destroy()
  }

  #clearFrameTimer(): void {
    if (this.#frameTimer) clearTimeout(this.#frameTimer)
    this.#frameTimer = null
  }
}
