// Modbus test clients: mbpoll (libmodbus, the SCADA side) and a raw MBAP
// socket for what no well-behaved client sends; waiting on the gateway's events.
import { execFile } from 'node:child_process'
import { connect, type Socket } from 'node:net'
import type { Gateway } from '../../agent/gateway.ts'
import { parseJws } from '../../wire/jws.ts'
import { encodeFrame, MbapReader, type MbapFrame } from '../../protocols/modbus/mbap.ts'

export interface MbpollResult {
  code: number | null
  stdout: string
  stderr: string
  /** values read, by reference, when the poll succeeded */
  values: number[]
  /** libmodbus' message for a failed request ("Gateway path unavailable", ...) */
  failure: string | null
}

/** mbpoll's messages for the exceptions the proxy answers (libmodbus modbus_strerror). */
export const MBPOLL_EXCEPTION = {
  0x01: 'Illegal function',
  0x02: 'Illegal data address',
  0x03: 'Illegal data value',
  0x0a: 'Gateway path unavailable',
  0x0b: 'Target device failed to respond',
} as const

/**
 * One mbpoll run against the proxy: `-t` table (0 coils, 1 discrete inputs,
 * 3 input registers, 4 holding registers), references 0-based (`-0`),
 * values written when given.
 */
export function mbpoll(port: number, unit: number, o: { table: 0 | 1 | 3 | 4; ref: number; count?: number; values?: number[]; timeoutS?: number }): Promise<MbpollResult> {
  const args = ['-m', 'tcp', '-p', String(port), '-a', String(unit), '-t', String(o.table), '-0', '-r', String(o.ref), '-1', '-o', String(o.timeoutS ?? 5)]
  if (o.count !== undefined) args.push('-c', String(o.count))
  args.push('127.0.0.1', ...(o.values ?? []).map(String))
  return new Promise((resolve) => {
    execFile('mbpoll', args, { timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null) : 0
      const values = [...stdout.matchAll(/^\[(\d+)\]:\s+(-?\d+)/gm)].map((m) => Number(m[2]))
      const failure = /(?:failed|error)[^:\n]*:\s*(.+)$/im.exec(stdout + stderr)?.[1]?.trim() ?? null
      resolve({ code, stdout, stderr, values, failure })
    })
  })
}

/** A bare MBAP client: sends whatever bytes, matches answers by transaction id. */
export class RawModbusClient {
  readonly socket: Socket
  readonly #reader = new MbapReader()
  readonly #waiting = new Map<number, (f: MbapFrame) => void>()
  readonly closed: Promise<void>
  /** every answer, in the order it arrived */
  readonly received: MbapFrame[] = []

  private constructor(socket: Socket) {
    this.socket = socket
    socket.setNoDelay(true)
    socket.on('data', (c: Buffer) => {
      for (const f of this.#reader.push(c).frames) {
        this.received.push(f)
        const w = this.#waiting.get(f.transactionId)
        this.#waiting.delete(f.transactionId)
        w?.(f)
      }
    })
    socket.on('error', () => {})
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()))
  }

  /** Connect from `localAddress` (any of 127/8 on Linux) when given. */
  static open(port: number, localAddress?: string): Promise<RawModbusClient> {
    return new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) }, () => resolve(new RawModbusClient(s)))
      s.once('error', reject)
    })
  }

  /** Wait for the answer with this transaction id (rejects if the connection closes first or after timeoutMs). */
  answer(tid: number, timeoutMs = 10_000): Promise<MbapFrame> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer to transaction ${tid}`)), timeoutMs)
      this.#waiting.set(tid, (f) => {
        clearTimeout(timer)
        resolve(f)
      })
      void this.closed.then(() => {
        clearTimeout(timer)
        reject(new Error(`connection closed before the answer to transaction ${tid}`))
      })
    })
  }

  request(tid: number, unit: number, pdu: Buffer): Promise<MbapFrame> {
    const a = this.answer(tid)
    this.socket.write(encodeFrame(tid, unit, pdu))
    return a
  }

  write(bytes: Uint8Array): void {
    this.socket.write(bytes)
  }

  end(): void {
    this.socket.destroy()
  }
}

export const readHoldingPdu = (start: number, qty: number): Buffer => Buffer.from([3, start >> 8, start & 0xff, qty >> 8, qty & 0xff])

/** Resolves with the data of the first stored event of `type` matching `where`, now or later; bounded. */
export function eventWhere(gw: Gateway, type: string, where: (data: Record<string, unknown>) => boolean = () => true, timeoutMs = 20_000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let off = (): void => {}
    const timer = setTimeout(() => {
      off()
      reject(new Error(`no ${type} event within ${timeoutMs} ms`))
    }, timeoutMs)
    const done = (d: Record<string, unknown>): void => {
      clearTimeout(timer)
      off()
      resolve(d)
    }
    off = gw.onEventsStored((events) => {
      for (const e of events) {
        const p = parseJws(e.jws).payload
        if (p.type === type && where(p.data as Record<string, unknown>)) return done(p.data as Record<string, unknown>)
      }
    })
    void eventsOf(gw, type).then((ds) => {
      const d = ds.find(where)
      if (d) done(d)
    })
  })
}

export async function eventsOf(gw: Gateway, type: string): Promise<Record<string, unknown>[]> {
  const stored = await gw.outbox.pending(gw.store, 0, 100_000)
  return stored.map((e) => parseJws(e.jws).payload).filter((p) => p.type === type).map((p) => p.data as Record<string, unknown>)
}
