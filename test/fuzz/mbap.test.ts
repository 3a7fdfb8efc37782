// Property tests of Modbus TCP framing (protocols/modbus/mbap.ts): random
// bytes never make the reader throw and what it reports adds up; valid frames
// come out exactly as encoded however TCP splits them; request and response
// checks never throw.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import fc from 'fast-check'
import { checkRequest, encodeFrame, isResponseTo, MAX_ADU_LEN, MAX_PDU_LEN, MbapReader, type MbapFrame } from '../../protocols/modbus/mbap.ts'

/** The answer's function code: mostly the request's (or its exception), sometimes any. */
const pick = (random: number, fn: number): number => (random % 3 === 0 ? fn : random % 3 === 1 ? fn | 0x80 : random)

/** Cut `bytes` at the given points (each taken modulo the length). */
function split(bytes: Buffer, cuts: number[]): Buffer[] {
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b)
  const out: Buffer[] = []
  let from = 0
  for (const c of [...at, bytes.length]) {
    out.push(bytes.subarray(from, c))
    from = c
  }
  return out
}

const frame = fc.record({ transactionId: fc.integer({ min: 0, max: 0xffff }), unitId: fc.integer({ min: 0, max: 255 }), pdu: fc.uint8Array({ minLength: 1, maxLength: MAX_PDU_LEN }) })
const encoded = frame.map((f) => encodeFrame(f.transactionId, f.unitId, f.pdu))
/** Random bytes, valid frames, truncated frames and frames with a lying length field, mixed. */
const chunk = fc.oneof(
  fc.uint8Array({ maxLength: 300 }),
  encoded,
  fc.tuple(encoded, fc.nat()).map(([b, n]) => b.subarray(0, n % b.length)),
  fc.tuple(encoded, fc.integer({ min: 0, max: 0xffff })).map(([b, len]) => (b.writeUInt16BE(len, 4), b)),
)

test('MbapReader on random byte streams: never throws; frames, held bytes and the error add up to the input', () => {
  fc.assert(
    fc.property(fc.array(chunk, { maxLength: 8 }), (chunks) => {
      const r = new MbapReader()
      let consumed = 0
      let error = null
      for (const c of chunks) {
        const out = r.push(c)
        for (const f of out.frames) {
          assert.ok(f.pdu.length >= 1 && f.pdu.length <= MAX_PDU_LEN)
          consumed += 7 + f.pdu.length
        }
        if (out.error) error = out.error
        else assert.equal(error, null, 'an error is final')
        assert.ok(r.pending < MAX_ADU_LEN, `holds ${r.pending} bytes: at most one incomplete frame`)
      }
      const total = chunks.reduce((n, c) => n + c.length, 0)
      if (error === null) assert.equal(consumed + r.pending, total, 'every byte is in a frame or held')
      else assert.equal(r.pending, 0)
    }),
    { numRuns: 2000 },
  )
})

test('valid frames come out exactly as encoded however the stream is split', () => {
  fc.assert(
    fc.property(fc.array(frame, { maxLength: 10 }), fc.array(fc.nat(), { maxLength: 12 }), (frames, cuts) => {
      const stream = Buffer.concat(frames.map((f) => encodeFrame(f.transactionId, f.unitId, f.pdu)))
      const r = new MbapReader()
      const got: MbapFrame[] = []
      for (const c of split(stream, cuts)) {
        const out = r.push(c)
        assert.equal(out.error, null)
        got.push(...out.frames)
      }
      assert.equal(r.pending, 0)
      assert.deepEqual(
        got.map((f) => ({ transactionId: f.transactionId, unitId: f.unitId, pdu: new Uint8Array(f.pdu) })),
        frames.map((f) => ({ ...f, pdu: new Uint8Array(f.pdu) })),
      )
    }),
    { numRuns: 1000 },
  )
})

test('frames taken one by one (feed, then next) are those push gives, and the reader holds what was not taken', () => {
  fc.assert(
    fc.property(fc.array(chunk, { maxLength: 8 }), fc.array(fc.nat({ max: 4 }), { maxLength: 8 }), (chunks, takes) => {
      const all = new MbapReader()
      const lazy = new MbapReader()
      const want: MbapFrame[] = []
      const got: MbapFrame[] = []
      chunks.forEach((c, i) => {
        want.push(...all.push(c).frames)
        lazy.feed(c)
        for (let n = takes[i] ?? 1; n > 0; n--) {
          const f = lazy.next()
          if (f) got.push(f)
        }
      })
      for (let f = lazy.next(); f; f = lazy.next()) got.push(f)
      assert.deepEqual(got.map((f) => [f.transactionId, f.unitId, [...f.pdu]]), want.map((f) => [f.transactionId, f.unitId, [...f.pdu]]))
      assert.equal(lazy.error, all.error)
      assert.equal(lazy.pending, all.pending)
    }),
    { numRuns: 1000 },
  )
})

test('a lying header (protocol id not 0, length outside 2..254) is a framing error as soon as its six bytes are in', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }), (tid, proto, length) => {
      fc.pre(proto !== 0 || length < 2 || length > 254)
      const h = Buffer.alloc(6)
      h.writeUInt16BE(tid, 0)
      h.writeUInt16BE(proto, 2)
      h.writeUInt16BE(length, 4)
      const out = new MbapReader().push(h)
      assert.equal(out.error, proto !== 0 ? 'bad-protocol-id' : 'bad-length')
    }),
    { numRuns: 1000 },
  )
})

test('checkRequest and isResponseTo never throw on random PDUs; an accepted request has the length its function calls for', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: MAX_PDU_LEN }), fc.integer({ min: 0, max: 255 }), (pdu, fc0) => {
      const b = Buffer.from(pdu)
      const r = checkRequest(b)
      if (r.ok) {
        assert.equal(r.request.functionCode, b[0])
        for (const w of r.request.writes) assert.ok(w.quantity >= 1 && w.start + w.quantity <= 0x10000)
        if (b[0]! <= 6) assert.equal(b.length, 5)
      } else assert.ok([1, 2, 3].includes(r.exception))
      assert.equal(typeof isResponseTo(fc0, b), 'boolean')
    }),
    { numRuns: 3000 },
  )
  // Answers checked against a request PDU, both random (a short request included): a verdict, never a throw.
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 12 }), fc.uint8Array({ minLength: 0, maxLength: MAX_PDU_LEN + 2 }), fc.constantFrom(1, 2, 3, 4, 5, 6, 15, 16, 17, 22, 23, 43), (req, answer, fn) => {
      const request = Buffer.from([fn, ...req.subarray(1)])
      const pdu = Buffer.from(answer.length > 0 ? [pick(answer[0]!, fn), ...answer.subarray(1)] : [])
      assert.equal(typeof isResponseTo(request, pdu), 'boolean')
    }),
    { numRuns: 3000 },
  )
  // Requests of a forwarded function with their right length, random fields: only 0x02/0x03 refusals.
  fc.assert(
    fc.property(fc.constantFrom(1, 2, 3, 4, 5, 6), fc.uint8Array({ minLength: 4, maxLength: 4 }), (fn, rest) => {
      const r = checkRequest(Buffer.from([fn, ...rest]))
      if (!r.ok) assert.ok(r.exception === 2 || r.exception === 3)
    }),
    { numRuns: 1000 },
  )
})
