// MBAP framing and request checks of the Modbus proxy (Modbus Messaging on
// TCP/IP Implementation Guide §3.1.3, Modbus App Proto §6): frames split and
// joined any way TCP likes, length fields that lie, oversize quantities,
// ranges past 65535, the hook range, and the relay's probe backoff; the
// answers that fit a request, Read Device Identification (§6.21) and Report
// Server ID (§6.13); the forwarded functions as the help and docs list them.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { USAGE } from '../../../agent/cli/usage.ts'
import { HOOK_REGISTERS, touchesHook } from '../../../protocols/modbus/device-index.ts'
import { backoffDelay, PROBE_BACKOFF } from '../../../protocols/modbus/hook-relay.ts'
import { DeviceIdRefused, parseDeviceIdAnswer, printable, readBasicIdentification, readDeviceIdPdu } from '../../../protocols/modbus/identification.ts'
import { checkRequest, encodeFrame, exceptionPdu, FORWARDED_FUNCTIONS, isResponseTo, MAX_PDU_LEN, MbapReader, ModbusException } from '../../../protocols/modbus/mbap.ts'

const fc3 = (start: number, qty: number): Buffer => Buffer.from([3, start >> 8, start & 0xff, qty >> 8, qty & 0xff])
const fc16 = (start: number, values: number[], over: { qty?: number; byteCount?: number } = {}): Buffer => {
  const qty = over.qty ?? values.length
  const data = Buffer.alloc(values.length * 2)
  values.forEach((v, i) => data.writeUInt16BE(v, i * 2))
  return Buffer.concat([Buffer.from([16, start >> 8, start & 0xff, qty >> 8, qty & 0xff, over.byteCount ?? data.length]), data])
}
const header = (tid: number, protocolId: number, length: number, unit: number): Buffer => {
  const b = Buffer.alloc(7)
  b.writeUInt16BE(tid, 0)
  b.writeUInt16BE(protocolId, 2)
  b.writeUInt16BE(length, 4)
  b.writeUInt8(unit, 6)
  return b
}

test('a frame round-trips; its length field counts unit id and PDU', () => {
  const f = encodeFrame(0xbeef, 7, fc3(10, 2))
  assert.deepEqual([...f.subarray(0, 7)], [0xbe, 0xef, 0, 0, 0, 6, 7])
  const { frames, error } = new MbapReader().push(f)
  assert.equal(error, null)
  assert.equal(frames.length, 1)
  assert.deepEqual({ ...frames[0], pdu: [...frames[0]!.pdu] }, { transactionId: 0xbeef, unitId: 7, pdu: [...fc3(10, 2)] })
})

test('a frame split over many segments comes out once whole; two frames in one segment come out both', () => {
  const a = encodeFrame(1, 1, fc3(0, 1))
  const b = encodeFrame(2, 1, fc16(5, [1, 2, 3]))
  const r = new MbapReader()
  const out = []
  for (const byte of Buffer.concat([a, b])) out.push(...r.push(Buffer.from([byte])).frames)
  assert.deepEqual(out.map((f) => f.transactionId), [1, 2])
  assert.equal(r.pending, 0)
  const both = new MbapReader().push(Buffer.concat([a, b, a.subarray(0, 4)]))
  assert.deepEqual(both.frames.map((f) => f.transactionId), [1, 2])
})

test('a truncated frame waits, holding at most one frame, and never comes out', () => {
  const r = new MbapReader()
  const f = encodeFrame(9, 1, fc16(0, [1, 2, 3, 4]))
  assert.deepEqual(r.push(f.subarray(0, f.length - 1)).frames, [])
  assert.equal(r.pending, f.length - 1)
  assert.equal(r.error, null)
})

test('a lying length field is refused as soon as the header is in: below 2, above 254 (PDU over 253 bytes)', () => {
  for (const length of [0, 1, 255, 300, 0xffff]) {
    const r = new MbapReader()
    const { frames, error } = r.push(header(1, 0, length, 1).subarray(0, 6))
    assert.deepEqual(frames, [])
    assert.equal(error, 'bad-length', `length ${length}`)
    assert.equal(r.push(encodeFrame(2, 1, fc3(0, 1))).error, 'bad-length', 'the stream stays lost')
  }
  // the largest legal PDU is fine
  const max = Buffer.concat([Buffer.from([16]), Buffer.alloc(MAX_PDU_LEN - 1)])
  const ok = new MbapReader().push(Buffer.concat([header(3, 0, MAX_PDU_LEN + 1, 1), max]))
  assert.equal(ok.error, null)
  assert.equal(ok.frames[0]!.pdu.length, MAX_PDU_LEN)
  assert.throws(() => encodeFrame(1, 1, Buffer.alloc(MAX_PDU_LEN + 1)), TypeError)
})

test('stray bytes that are not MBAP (protocol id not 0) end the stream; frames before them still come out', () => {
  const r = new MbapReader()
  const { frames, error } = r.push(Buffer.concat([encodeFrame(5, 1, fc3(0, 1)), Buffer.from('GET / HTTP/1.1\r\n')]))
  assert.deepEqual(frames.map((f) => f.transactionId), [5])
  assert.equal(error, 'bad-protocol-id')
  assert.equal(r.pending, 0)
})

test('requests: quantities over the spec limits are 0x03, ranges past 65535 are 0x02, unknown functions 0x01', () => {
  const exc = (pdu: Buffer): number | null => {
    const c = checkRequest(pdu)
    return c.ok ? null : c.exception
  }
  assert.equal(exc(fc3(0, 125)), null)
  assert.equal(exc(fc3(0, 126)), ModbusException.ILLEGAL_DATA_VALUE)
  assert.equal(exc(fc3(0, 0)), ModbusException.ILLEGAL_DATA_VALUE)
  assert.equal(exc(fc3(65535, 1)), null)
  assert.equal(exc(fc3(65535, 2)), ModbusException.ILLEGAL_DATA_ADDRESS)
  assert.equal(exc(Buffer.from([1, 0, 0, 0x07, 0xd0])), null, 'FC1 2000 coils')
  assert.equal(exc(Buffer.from([1, 0, 0, 0x07, 0xd1])), ModbusException.ILLEGAL_DATA_VALUE, 'FC1 2001 coils')
  assert.equal(exc(Buffer.from([3, 0, 0, 0])), ModbusException.ILLEGAL_DATA_VALUE, 'short FC3')
  assert.equal(exc(Buffer.from([5, 0, 1, 0xff, 0x00])), null)
  assert.equal(exc(Buffer.from([5, 0, 1, 0x12, 0x34])), ModbusException.ILLEGAL_DATA_VALUE, 'FC5 value neither 0 nor 0xFF00')
  assert.equal(exc(fc16(0, Array(123).fill(1))), null)
  assert.equal(exc(fc16(0, Array(124).fill(1))), ModbusException.ILLEGAL_DATA_VALUE, 'FC16 124 registers')
  assert.equal(exc(fc16(0, [1, 2], { qty: 3 })), ModbusException.ILLEGAL_DATA_VALUE, 'quantity and data disagree')
  assert.equal(exc(fc16(0, [1, 2], { byteCount: 6 })), ModbusException.ILLEGAL_DATA_VALUE, 'byte count lies')
  assert.equal(exc(fc16(65535, [1, 2])), ModbusException.ILLEGAL_DATA_ADDRESS)
  assert.equal(exc(Buffer.from([15, 0, 0, 0, 9, 2, 0xff, 0x01])), null, 'FC15 9 coils in 2 bytes')
  assert.equal(exc(Buffer.from([15, 0, 0, 0, 9, 1, 0xff])), ModbusException.ILLEGAL_DATA_VALUE)
  assert.equal(exc(Buffer.from([0x2b, 0x0e, 1, 0])), null, 'FC43/14 Read Device Identification, basic stream')
  assert.equal(exc(Buffer.from([0x2b, 0x0e, 4, 0x80])), null, 'FC43/14 one private object')
  assert.equal(exc(Buffer.from([0x2b, 0x0e, 5, 0])), ModbusException.ILLEGAL_DATA_VALUE, 'FC43/14 Read Device ID code 5 (§6.21: 0x03)')
  assert.equal(exc(Buffer.from([0x2b, 0x0e, 0, 0])), ModbusException.ILLEGAL_DATA_VALUE, 'FC43/14 Read Device ID code 0')
  assert.equal(exc(Buffer.from([0x2b, 0x0e, 1])), ModbusException.ILLEGAL_DATA_VALUE, 'FC43/14 without its object id')
  assert.equal(exc(Buffer.from([0x2b, 0x0e, 1, 0, 0])), ModbusException.ILLEGAL_DATA_VALUE, 'FC43/14 a byte too long')
  assert.equal(exc(Buffer.from([0x2b, 0x0d, 0, 0])), ModbusException.ILLEGAL_FUNCTION, 'FC43 MEI type 13 (CANopen) is not forwarded')
  assert.equal(exc(Buffer.from([0x2b])), ModbusException.ILLEGAL_DATA_VALUE, 'FC43 without its MEI type')
  assert.equal(exc(Buffer.from([17])), null, 'FC17 Report Server ID')
  assert.equal(exc(Buffer.from([17, 0])), ModbusException.ILLEGAL_DATA_VALUE, 'FC17 takes no data')
  for (const fc of [1, 2, 3, 4, 5, 6, 15, 16, 22, 23]) assert.equal(exc(Buffer.from([fc, 0])), ModbusException.ILLEGAL_DATA_VALUE, `FC${fc} short: 0x03, not forwarded`)
  assert.equal(exc(Buffer.from([8, 0, 0, 0, 0])), ModbusException.ILLEGAL_FUNCTION, 'FC8 diagnostics is not forwarded')
  const fc23 = Buffer.from([23, 0, 0, 0, 2, 0xf0, 0x00, 0, 1, 2, 0, 9])
  const c23 = checkRequest(fc23)
  assert.ok(c23.ok)
  assert.deepEqual(c23.request.writes, [{ start: 0xf000, quantity: 1 }], 'FC23 writes are known, for the hook check')
  const c22 = checkRequest(Buffer.from([22, 0xf0, 0x00, 0xff, 0xff, 0, 0]))
  assert.ok(c22.ok)
  assert.deepEqual(c22.request.writes, [{ start: 0xf000, quantity: 1 }])
})

test('hook range: [hookBase, hookBase + 5 + 8192), any overlap counts', () => {
  assert.equal(HOOK_REGISTERS, 5 + 8192)
  assert.equal(touchesHook(61440, 61440, 1), true)
  assert.equal(touchesHook(61440, 61439, 1), false)
  assert.equal(touchesHook(61440, 61430, 11), true, 'a write that ends inside')
  assert.equal(touchesHook(61440, 65535, 1), true)
  assert.equal(touchesHook(50, 50 + HOOK_REGISTERS - 1, 1), true)
  assert.equal(touchesHook(50, 50 + HOOK_REGISTERS, 1), false)
  assert.equal(touchesHook(50, 0, 50), false)
})

test('answers fit their request: same function, or its exception of exactly 2 bytes', () => {
  assert.equal(isResponseTo(3, Buffer.from([3, 2, 0, 1])), true)
  assert.equal(isResponseTo(3, exceptionPdu(3, 2)), true)
  assert.equal(isResponseTo(3, Buffer.from([0x83, 2, 0])), false)
  assert.equal(isResponseTo(3, Buffer.from([4, 2, 0, 1])), false)
  assert.deepEqual([...exceptionPdu(16, ModbusException.GATEWAY_PATH_UNAVAILABLE)], [0x90, 0x0a])
})

test('answers fit their request: byte counts of the quantity asked, writes echoed (Modbus App Proto §6)', () => {
  assert.equal(isResponseTo(fc3(0, 2), Buffer.from([3, 4, 0, 1, 0, 2])), true)
  assert.equal(isResponseTo(fc3(0, 3), Buffer.from([3, 4, 0, 1, 0, 2])), false, 'two registers for a read of three')
  assert.equal(isResponseTo(3, Buffer.from([3, 6, 0, 1, 0, 2])), false, 'a byte count the PDU does not have')
  assert.equal(isResponseTo(Buffer.from([1, 0, 0, 0, 9]), Buffer.from([1, 2, 0xff, 1])), true, '9 coils in 2 bytes')
  assert.equal(isResponseTo(Buffer.from([1, 0, 0, 0, 9]), Buffer.from([1, 1, 0xff])), false)
  const w6 = Buffer.from([6, 0, 20, 0x12, 0x34])
  assert.equal(isResponseTo(w6, Buffer.from(w6)), true, 'FC6 echoes')
  assert.equal(isResponseTo(w6, Buffer.from([6, 0, 21, 0x12, 0x34])), false, 'FC6 echo of another address')
  const w16 = fc16(30, [1, 2, 3])
  assert.equal(isResponseTo(w16, Buffer.from([16, 0, 30, 0, 3])), true, 'FC16: address and quantity')
  assert.equal(isResponseTo(w16, Buffer.from([16, 0, 30, 0, 2])), false)
  assert.equal(isResponseTo(Buffer.from([23, 0, 0, 0, 2, 0, 9, 0, 1, 2, 0, 1]), Buffer.from([23, 4, 0, 0, 0, 0])), true, 'FC23: the registers read')
  // FC17: byte count, server id, run indicator, device-specific data
  assert.equal(isResponseTo(17, Buffer.from([17, 3, 0x42, 0xff, 0x41])), true)
  assert.equal(isResponseTo(17, Buffer.from([17, 5, 0x42, 0xff])), false, 'FC17 byte count lies')
  assert.equal(isResponseTo(17, exceptionPdu(17, 1)), true)
})

test('Read Device Identification (Modbus App Proto §6.21): the answer parsed, malformed ones refused, text made printable', () => {
  const obj = (id: number, text: string): Buffer => Buffer.concat([Buffer.from([id, text.length]), Buffer.from(text, 'latin1')])
  const answer = (code: number, objects: Buffer[], o: { more?: number; next?: number; count?: number } = {}): Buffer =>
    Buffer.concat([Buffer.from([0x2b, 0x0e, code, 0x81, o.more ?? 0, o.next ?? 0, o.count ?? objects.length]), ...objects])
  const req = readDeviceIdPdu(1, 0)
  assert.deepEqual([...req], [0x2b, 0x0e, 1, 0])
  const ok = answer(1, [obj(0, 'Acme'), obj(1, 'PLC-9'), obj(2, 'V2.11')])
  assert.equal(isResponseTo(req, ok), true)
  const parsed = parseDeviceIdAnswer(ok)
  assert.deepEqual(parsed?.objects.map((o) => [o.id, o.value.toString()]), [[0, 'Acme'], [1, 'PLC-9'], [2, 'V2.11']])
  assert.equal(parsed?.moreFollows, false)
  assert.equal(isResponseTo(readDeviceIdPdu(4, 1), ok), false, 'the Read Device ID code is echoed')
  assert.equal(isResponseTo(req, answer(1, [obj(0, 'Acme')], { count: 3 })), true, 'fewer objects than announced: the count of the whole stream, as in the §6.21 example')
  assert.equal(isResponseTo(req, answer(1, [obj(0, 'Acme'), obj(1, 'X')], { count: 1 })), false, 'more objects than announced')
  assert.equal(isResponseTo(req, Buffer.concat([answer(1, [obj(0, 'Acme')]), Buffer.from([0])])), false, 'a byte after the last object')
  assert.equal(isResponseTo(req, answer(1, [Buffer.from([0, 9, 0x41])])), false, 'an object longer than the PDU')
  assert.equal(isResponseTo(req, answer(1, [], { more: 0x01 })), false, 'More Follows neither 0x00 nor 0xFF')
  assert.equal(isResponseTo(req, Buffer.from([0x2b, 0x0d, 1, 0x81, 0, 0, 0])), false, 'another MEI type')
  assert.equal(isResponseTo(req, exceptionPdu(0x2b, 1)), true, 'its exception: 0xAB')
  assert.equal(printable(Buffer.from('Acme\u001b[31m\u0000\u0000', 'latin1')), 'Acme?[31m', 'NUL padding cut, escapes defused')
})

test('the basic identification is read in parts when the device says more follows; an exception is DeviceIdRefused', async () => {
  const parts = new Map<number, Buffer>([
    [0, Buffer.concat([Buffer.from([0x2b, 0x0e, 1, 0x01, 0xff, 2, 2, 0, 4]), Buffer.from('Acme'), Buffer.from([1, 5]), Buffer.from('PLC-9')])],
    [2, Buffer.concat([Buffer.from([0x2b, 0x0e, 1, 0x01, 0, 0, 1, 2, 3]), Buffer.from('1.2')])],
  ])
  const asked: number[] = []
  const info = await readBasicIdentification(async (pdu) => {
    asked.push(pdu[3]!)
    return parts.get(pdu[3]!)!
  })
  assert.deepEqual(asked, [0, 2])
  assert.deepEqual(info, { vendorName: 'Acme', productCode: 'PLC-9', majorMinorRevision: '1.2' })
  await assert.rejects(readBasicIdentification(async () => exceptionPdu(0x2b, 1)), DeviceIdRefused)
  // a device that keeps saying "more follows" from the same object is not followed around
  let n = 0
  await readBasicIdentification(async () => (n++, Buffer.from([0x2b, 0x0e, 1, 0x01, 0xff, 0, 0])))
  assert.equal(n, 1)
})

test('probe backoff: exponential, capped, jitter within bounds, deterministic with an injected random', () => {
  const b = { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 }
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((n) => backoffDelay(n, b, () => 0.5)), [100, 200, 400, 800, 1000, 1000])
  assert.equal(backoffDelay(0, b, () => 0), 50)
  assert.equal(backoffDelay(0, b, () => 1), 150)
  assert.equal(backoffDelay(10, b, () => 1), 1500)
  assert.ok(PROBE_BACKOFF.maxMs <= 60_000 && PROBE_BACKOFF.jitter > 0)
})

test('the forwarded function codes are in `edgewarden --help` and in docs/operations.md', () => {
  const codes = [...FORWARDED_FUNCTIONS].map((f) => (f === 43 ? '43/14' : String(f)))
  assert.match(USAGE, new RegExp(`--modbus-port .*\\n\\s+proxy forwards FC ${codes.join(', ')} `))
  const ops = readFileSync(new URL('../../../docs/operations.md', import.meta.url), 'utf8')
  const section = ops.slice(ops.indexOf('## Modbus proxy'), ops.indexOf('\n## ', ops.indexOf('## Modbus proxy') + 1))
  assert.ok(section.length > 100, 'docs/operations.md has a Modbus proxy section')
  for (const phrase of ['1-4', '5, 6, 15, 16', '22', '23', '17 (Report Server ID)', '43 with MEI type 14', 'strictUnitId', 'modbusIdleTimeoutMs', 'modbusMaxClients', 'modbusMaxClientsPerAddress']) {
    assert.ok(section.includes(phrase), `the section names ${phrase}`)
  }
})
