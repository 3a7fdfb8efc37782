// Raw MQTT bytes for the fuzzing and brute-force tests: a small encoder that
// can also say what no well-behaved client would (bad levels, lying lengths,
// property floods), and a raw TCP connect that reads the CONNACK.
import { connect, type Socket } from 'node:net'
// The variable byte integer [MQTT-1.5.5] is the load generator's (any value;
// over 4 bytes is malformed on purpose): one encoder for bench and tests.
import { varint } from '../../bench/mqtt-wire.ts'
export { varint }

/** A length-prefixed UTF-8 string or binary [MQTT-1.5.4]. */
export function str(s: string | Uint8Array): Buffer {
  const b = typeof s === 'string' ? Buffer.from(s) : Buffer.from(s)
  const len = Buffer.alloc(2)
  len.writeUInt16BE(b.length & 0xffff)
  return Buffer.concat([len, b])
}

export function packet(firstByte: number, ...body: Buffer[]): Buffer {
  const b = Buffer.concat(body)
  return Buffer.concat([Buffer.from([firstByte]), varint(b.length), b])
}

export interface ConnectOptions {
  clientId: string
  username?: string
  password?: string | Uint8Array
  /** protocol level: 4 (3.1.1), 5; anything else on purpose */
  level?: number
  protocolName?: string
  keepaliveS?: number
  /** MQTT 5 properties block (already encoded, without its length) */
  properties?: Buffer
  /** override the connect flags byte */
  flags?: number
}

export function connectPacket(o: ConnectOptions): Buffer {
  const level = o.level ?? 4
  let flags = 0x02 // clean session
  if (o.username !== undefined) flags |= 0x80
  if (o.password !== undefined) flags |= 0x40
  const ka = Buffer.alloc(2)
  ka.writeUInt16BE(o.keepaliveS ?? 30)
  const props = level === 5 ? [varint(o.properties?.length ?? 0), o.properties ?? Buffer.alloc(0)] : []
  return packet(
    0x10,
    str(o.protocolName ?? 'MQTT'),
    Buffer.from([level, o.flags ?? flags]),
    ka,
    ...props,
    str(o.clientId),
    ...(o.username !== undefined ? [str(o.username)] : []),
    ...(o.password !== undefined ? [str(o.password)] : []),
  )
}

/** MQTT 5 user properties (0x26), `n` of them. */
export function userProperties(n: number, size = 8): Buffer {
  const one = Buffer.concat([Buffer.from([0x26]), str('k'.repeat(size)), str('v'.repeat(size))])
  return Buffer.concat(Array.from({ length: n }, () => one))
}

export function subscribePacket(id: number, filter: string, qos = 0): Buffer {
  const pid = Buffer.alloc(2)
  pid.writeUInt16BE(id)
  return packet(0x82, pid, str(filter), Buffer.from([qos]))
}

export function publishPacket(topic: string, payload: Buffer | string, qos = 0, id = 1): Buffer {
  const pid = Buffer.alloc(2)
  pid.writeUInt16BE(id)
  return packet(0x30 | (qos << 1), str(topic), ...(qos > 0 ? [pid] : []), Buffer.from(payload))
}

export interface RawResult {
  /** the CONNACK return code (3.1.1) or reason code (5), null when none came */
  connack: number | null
  /** the server closed the connection */
  closed: boolean
  socket: Socket
}

/**
 * Open a TCP connection (from `localAddress` when given), send `bytes`, and
 * resolve at the CONNACK, at the close, or after `timeoutMs`. The socket is
 * destroyed unless `keep` is set.
 */
export function rawExchange(
  port: number,
  bytes: Buffer | Buffer[],
  o: { localAddress?: string; timeoutMs?: number; keep?: boolean } = {},
): Promise<RawResult> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, ...(o.localAddress ? { localAddress: o.localAddress } : {}) })
    let got = Buffer.alloc(0)
    let done = false
    const finish = (r: Omit<RawResult, 'socket'>): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      if (!o.keep || r.closed) socket.destroy()
      resolve({ ...r, socket })
    }
    const timer = setTimeout(() => finish({ connack: null, closed: false }), o.timeoutMs ?? 10_000)
    socket.on('error', () => {})
    socket.on('connect', () => {
      for (const b of Array.isArray(bytes) ? bytes : [bytes]) socket.write(b)
    })
    socket.on('data', (c: Buffer) => {
      got = Buffer.concat([got, c])
      // CONNACK: 0x20, remaining length, flags, code
      if (got.length >= 4 && got[0] === 0x20) finish({ connack: got[3]!, closed: false })
    })
    socket.on('close', () => finish({ connack: null, closed: true }))
  })
}

/** Resolves when the server closes the socket (true) or after timeoutMs (false). */
export function closedWithin(socket: Socket, timeoutMs: number): Promise<boolean> {
  if (socket.destroyed || socket.readyState === 'closed') return Promise.resolve(true)
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), timeoutMs)
    socket.once('close', () => {
      clearTimeout(timer)
      resolve(true)
    })
  })
}
