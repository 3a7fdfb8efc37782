// Modbus TCP framing (Modbus Messaging on TCP/IP Implementation Guide v1.0b
// §3.1.3): the MBAP header and the PDU of the requests the proxy forwards.
// The proxy owns this rather than modbus-serial's ServerTCP, which can
// neither answer gateway exceptions 0x0A/0x0B nor hold up under a length
// field that lies. Pure: bytes in, frames or a verdict out.
import { FC_MEI, MEI_READ_DEVICE_ID, parseDeviceIdAnswer, READ_DEVICE_ID_CODES } from './identification.ts'
import { MODBUS_FORWARDED_FUNCTIONS } from '../../wire/protocol.ts'

/** MBAP header: transaction id, protocol id, length, unit id. */
export const MBAP_HEADER_LEN = 7
/** Modbus App Proto §4.1: a PDU is at most 253 bytes. */
export const MAX_PDU_LEN = 253
/** The MBAP length field counts the unit id and the PDU. */
export const MAX_LENGTH_FIELD = MAX_PDU_LEN + 1
export const MAX_ADU_LEN = MBAP_HEADER_LEN - 1 + MAX_LENGTH_FIELD

/** Exception codes (Modbus App Proto §7). */
export const ModbusException = {
  ILLEGAL_FUNCTION: 0x01,
  ILLEGAL_DATA_ADDRESS: 0x02,
  ILLEGAL_DATA_VALUE: 0x03,
  SERVER_DEVICE_FAILURE: 0x04,
  SERVER_DEVICE_BUSY: 0x06,
  GATEWAY_PATH_UNAVAILABLE: 0x0a,
  GATEWAY_TARGET_FAILED: 0x0b,
} as const
export type ExceptionCode = (typeof ModbusException)[keyof typeof ModbusException]

export interface MbapFrame {
  transactionId: number
  unitId: number
  /** function code and data; 1..253 bytes */
  pdu: Buffer
}

/** Why a byte stream can no longer be read as MBAP frames. After this the connection is closed: TCP has no frame markers to resynchronise on. */
export type FramingError = 'bad-protocol-id' | 'bad-length'

export function encodeFrame(transactionId: number, unitId: number, pdu: Uint8Array): Buffer {
  if (pdu.length < 1 || pdu.length > MAX_PDU_LEN) throw new TypeError(`PDU length ${pdu.length} is outside 1..${MAX_PDU_LEN}`)
  const out = Buffer.allocUnsafe(MBAP_HEADER_LEN + pdu.length)
  out.writeUInt16BE(transactionId & 0xffff, 0)
  out.writeUInt16BE(0, 2)
  out.writeUInt16BE(pdu.length + 1, 4)
  out.writeUInt8(unitId & 0xff, 6)
  out.set(pdu, MBAP_HEADER_LEN)
  return out
}

export function exceptionPdu(functionCode: number, code: ExceptionCode | number): Buffer {
  return Buffer.from([(functionCode | 0x80) & 0xff, code & 0xff])
}

/**
 * Incremental MBAP reader for one TCP stream: push() whatever arrived, get
 * the complete frames out; a frame split over segments waits for the rest,
 * several in one segment come out together. A reader that must not take
 * more frames than it can answer (the proxy, under backpressure) feed()s
 * the bytes and takes frames one by one with next(): what it holds is then
 * what was fed and not yet taken, at most one read of the socket. A header
 * that cannot be MBAP (protocol id not 0, length field outside 2..254) is a
 * FramingError: the stream is lost and the caller closes it.
 */
export class MbapReader {
  #buf: Buffer = Buffer.alloc(0)
  #error: FramingError | null = null

  /** Bytes held: an incomplete frame, and frames fed but not yet taken. */
  get pending(): number {
    return this.#buf.length
  }

  get error(): FramingError | null {
    return this.#error
  }

  push(chunk: Uint8Array): { frames: MbapFrame[]; error: FramingError | null } {
    this.feed(chunk)
    const frames: MbapFrame[] = []
    for (let f = this.next(); f; f = this.next()) frames.push(f)
    return { frames, error: this.#error }
  }

  feed(chunk: Uint8Array): void {
    if (this.#error) return
    this.#buf = this.#buf.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.#buf, chunk])
  }

  /** The next complete frame, or null: more bytes are needed, or the stream is lost (see `error`). */
  next(): MbapFrame | null {
    if (this.#error || this.#buf.length < 6) return null
    const protocolId = this.#buf.readUInt16BE(2)
    const length = this.#buf.readUInt16BE(4)
    // The header is checked as soon as its first six bytes are in, so a
    // lying length field is caught before anything is waited for.
    if (protocolId !== 0) return this.#fail('bad-protocol-id')
    if (length < 2 || length > MAX_LENGTH_FIELD) return this.#fail('bad-length')
    const total = 6 + length
    if (this.#buf.length < total) return null
    const frame = {
      transactionId: this.#buf.readUInt16BE(0),
      unitId: this.#buf.readUInt8(6),
      pdu: Buffer.from(this.#buf.subarray(MBAP_HEADER_LEN, total)),
    }
    this.#buf = this.#buf.subarray(total)
    return frame
  }

  #fail(error: FramingError): null {
    this.#error = error
    this.#buf = Buffer.alloc(0)
    return null
  }
}

// --- requests ---------------------------------------------------------------

/** The function codes the proxy forwards (wire/protocol.ts, PROTOCOL §7); anything else is answered 0x01. */
export const FORWARDED_FUNCTIONS = MODBUS_FORWARDED_FUNCTIONS

export interface RequestShape {
  functionCode: number
  /** the table ranges the request writes: [start, start + quantity) */
  writes: { start: number; quantity: number }[]
}

export type RequestCheck = { ok: true; request: RequestShape } | { ok: false; exception: ExceptionCode }

const u16 = (b: Buffer, at: number): number => b.readUInt16BE(at)

/**
 * Check a request PDU the way a server must before acting on it (Modbus App
 * Proto §6, and the state diagrams there): the function is one the proxy
 * forwards (else 0x01), the PDU has exactly the length its function calls
 * for and quantities are within the spec's limits (else 0x03), and the
 * addressed range stays inside 0..65535 (else 0x02).
 */
export function checkRequest(pdu: Buffer): RequestCheck {
  const fc = pdu[0]!
  const bad = (exception: ExceptionCode): RequestCheck => ({ ok: false, exception })
  if (!FORWARDED_FUNCTIONS.has(fc)) return bad(ModbusException.ILLEGAL_FUNCTION)
  const range = (start: number, quantity: number): boolean => start + quantity <= 0x10000
  switch (fc) {
    case 1:
    case 2:
    case 3:
    case 4: {
      if (pdu.length !== 5) return bad(ModbusException.ILLEGAL_DATA_VALUE)
      const [start, qty] = [u16(pdu, 1), u16(pdu, 3)]
      // §6.1-6.4: coils/inputs 1..2000 (0x7D0), registers 1..125 (0x7D)
      if (qty < 1 || qty > (fc <= 2 ? 2000 : 125)) return bad(ModbusException.ILLEGAL_DATA_VALUE)
      if (!range(start, qty)) return bad(ModbusException.ILLEGAL_DATA_ADDRESS)
      return { ok: true, request: { functionCode: fc, writes: [] } }
    }
    case 5:
    case 6: {
      if (pdu.length !== 5) return bad(ModbusException.ILLEGAL_DATA_VALUE)
      // §6.5: a coil is written with 0x0000 or 0xFF00 only
      if (fc === 5 && u16(pdu, 3) !== 0 && u16(pdu, 3) !== 0xff00) return bad(ModbusException.ILLEGAL_DATA_VALUE)
      return { ok: true, request: { functionCode: fc, writes: [{ start: u16(pdu, 1), quantity: 1 }] } }
    }
    case 15:
    case 16: {
      if (pdu.length < 6) return bad(ModbusException.ILLEGAL_DATA_VALUE)
      const [start, qty, byteCount] = [u16(pdu, 1), u16(pdu, 3), pdu[5]!]
      // §6.11: coils 1..1968 (0x7B0); §6.12: registers 1..123 (0x7B)
      const expected = fc === 15 ? Math.ceil(qty / 8) : qty * 2
      if (qty < 1 || qty > (fc === 15 ? 1968 : 123) || byteCount !== expected || pdu.length !== 6 + byteCount) {
        return bad(ModbusException.ILLEGAL_DATA_VALUE)
      }
      if (!range(start, qty)) return bad(ModbusException.ILLEGAL_DATA_ADDRESS)
      return { ok: true, request: { functionCode: fc, writes: [{ start, quantity: qty }] } }
    }
    case 22: {
      // §6.16 mask write register: a write too
      if (pdu.length !== 7) return bad(ModbusException.ILLEGAL_DATA_VALUE)
      return { ok: true, request: { functionCode: fc, writes: [{ start: u16(pdu, 1), quantity: 1 }] } }
    }
    case 23: {
      // §6.17 read/write multiple registers: read 1..125, write 1..121
      if (pdu.length < 10) return bad(ModbusException.ILLEGAL_DATA_VALUE)
      const [readStart, readQty, writeStart, writeQty, byteCount] = [u16(pdu, 1), u16(pdu, 3), u16(pdu, 5), u16(pdu, 7), pdu[9]!]
      if (readQty < 1 || readQty > 125 || writeQty < 1 || writeQty > 121 || byteCount !== writeQty * 2 || pdu.length !== 10 + byteCount) {
        return bad(ModbusException.ILLEGAL_DATA_VALUE)
      }
      if (!range(readStart, readQty) || !range(writeStart, writeQty)) return bad(ModbusException.ILLEGAL_DATA_ADDRESS)
      return { ok: true, request: { functionCode: fc, writes: [{ start: writeStart, quantity: writeQty }] } }
    }
    case 17: {
      // §6.13 Report Server ID: the function code alone
      if (pdu.length !== 1) return bad(ModbusException.ILLEGAL_DATA_VALUE)
      return { ok: true, request: { functionCode: fc, writes: [] } }
    }
    case FC_MEI: {
      // §6.19: other MEI types (13, CANopen General Reference) are not forwarded
      if (pdu.length >= 2 && pdu[1] !== MEI_READ_DEVICE_ID) return bad(ModbusException.ILLEGAL_FUNCTION)
      // §6.21: MEI type, Read Device ID code 1..4, object id; a bad code is 0x03
      if (pdu.length !== 4 || !(READ_DEVICE_ID_CODES as readonly number[]).includes(pdu[2]!)) return bad(ModbusException.ILLEGAL_DATA_VALUE)
      return { ok: true, request: { functionCode: fc, writes: [] } }
    }
    default:
      return bad(ModbusException.ILLEGAL_FUNCTION)
  }
}

/**
 * Does a device's answer fit the request it answers (Modbus App Proto §6,
 * the response of each function)? Its exception (function | 0x80 and one
 * code byte), or the same function with the length that function's answer
 * has. Given the request PDU rather than only its function code, the answer
 * must also match it: the byte count of a read is that of the quantity
 * asked, a write echoes the address (and value or quantity) written, Read
 * Device Identification echoes the Read Device ID code. The link keeps one
 * request outstanding per connection, so an answer that fits is the answer.
 */
export function isResponseTo(request: Buffer | number, pdu: Buffer): boolean {
  const req = typeof request === 'number' ? null : request
  const requestFc = typeof request === 'number' ? request : request[0]!
  if (pdu.length < 2 || pdu.length > MAX_PDU_LEN) return false
  const fc = pdu[0]!
  if (fc === (requestFc | 0x80)) return pdu.length === 2
  if (fc !== requestFc) return false
  const byteCount = pdu[1]!
  const counted = byteCount === pdu.length - 2
  const qty = (at: number): number | null => (req && req.length >= at + 2 ? u16(req, at) : null)
  switch (fc) {
    case 1:
    case 2: {
      const q = qty(3)
      return counted && byteCount >= 1 && (q === null || byteCount === Math.ceil(q / 8))
    }
    case 3:
    case 4: {
      const q = qty(3)
      return counted && byteCount >= 2 && byteCount % 2 === 0 && (q === null || byteCount === q * 2)
    }
    case 23: {
      const q = qty(3)
      return counted && byteCount >= 2 && byteCount % 2 === 0 && (q === null || byteCount === q * 2)
    }
    case 5:
    case 6:
      // the answer is the request echoed
      return pdu.length === 5 && (req === null || pdu.equals(req))
    case 15:
    case 16:
      return pdu.length === 5 && (req === null || pdu.subarray(1, 5).equals(req.subarray(1, 5)))
    case 22:
      return pdu.length === 7 && (req === null || pdu.equals(req))
    case 17:
      // byte count, then the server id and the run indicator, then device-specific data
      return counted && byteCount >= 1
    case FC_MEI: {
      const answer = parseDeviceIdAnswer(pdu)
      return answer !== null && (req === null || (req[1] === MEI_READ_DEVICE_ID && answer.code === req[2]))
    }
    default:
      return true
  }
}
