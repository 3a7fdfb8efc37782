// Denial of service against the Modbus proxy, from outside, on real sockets:
// a client that sends and never reads its answers (the agent must not hold
// them without bound), idle sockets that would take every connection slot
// from SCADA, many sockets from one address, a socket that never says
// anything. Sources other than 127.0.0.1 are other loopback addresses (the
// whole of 127/8 is local on Linux).
import assert from 'node:assert/strict'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { test } from 'node:test'
import { MbapReader } from '../../protocols/modbus/mbap.ts'
import { createLegacyModbusDevice } from '../../simulators/modbus-device.ts'
import { startTestAgent } from '../helpers/agent.ts'
import { recordFigure, scaled } from '../helpers/figures.ts'
import { mbpoll, RawModbusClient, readHoldingPdu } from '../helpers/modbus.ts'

const AREA = 'denial of service'
const WHO = { actor: 'local:test' }
const MiB = 1024 * 1024

type Ctx = { after(fn: () => Promise<void> | void): void }

async function agentWithProxy(t: Ctx, flags: Record<string, string> = {}) {
  const agent = await startTestAgent(t, { flags: { modbusPort: '0', modbusHost: '127.0.0.1', modbusTimeoutMs: '1000', ...flags } })
  const port = agent.modbus.proxy.port
  assert.ok(port, 'the proxy listens')
  return { ...agent, port }
}

/** A legacy device on `unitId`, running, enrolled. */
async function device(t: Ctx, agent: Awaited<ReturnType<typeof agentWithProxy>>, id: string, unitId: number) {
  const d = await createLegacyModbusDevice()
  await d.device.start()
  t.after(() => d.device.stop())
  await agent.gateway.enroll({ id, publicKey: d.publicKey, modbus: { host: '127.0.0.1', port: d.device.port, unitId, hookBase: null } }, WHO)
  return d.device
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer))
}

/** A plain socket from `localAddress`, connected; `closed` resolves when the peer (or anyone) closes it. */
function rawSocket(port: number, localAddress = '127.0.0.1'): Promise<{ socket: Socket; closed: Promise<void>; isClosed: () => boolean }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, localAddress })
    let closedNow = false
    const closed = new Promise<void>((r) => socket.once('close', () => ((closedNow = true), r())))
    socket.on('error', () => {})
    socket.once('connect', () => resolve({ socket, closed, isClosed: () => closedNow }))
    socket.once('error', reject)
  })
}

test('a client that sends many MiB of requests and never reads: the answers held for it stay under the bound, others are served, and once it reads every answer arrives in order', async (t) => {
  const agent = await agentWithProxy(t)
  const proxy = agent.modbus.proxy
  const plc = await device(t, agent, 'plc-1', 3)
  plc.holding[0] = 99
  // FC 3 for unit 200, which no device claims: the gateway answers each itself (0x0A), as fast as it can.
  const mib = scaled(16)
  const n = Math.floor((mib * MiB) / 12)
  const stream = Buffer.alloc(n * 12)
  for (let i = 0; i < n; i++) {
    const at = i * 12
    stream.writeUInt16BE(i & 0xffff, at)
    stream.writeUInt16BE(6, at + 4)
    stream[at + 6] = 200
    readHoldingPdu(0, 1).copy(stream, at + 7)
  }
  const { socket } = await rawSocket(agent.port)
  t.after(() => void socket.destroy())
  socket.pause() // the attack: never read
  const paused = new Promise<{ bufferedBytes: number; pending: number }>((resolve) => {
    const off = proxy.onBackpressure((e) => (off(), resolve(e)))
  })
  const t0 = performance.now()
  socket.write(stream)
  const atPause = await within(paused, 60_000, 'the proxy did not stop reading a client that does not read')
  const framesAtPause = proxy.stats.frames
  const held = proxy.describe().bufferedBytes as number
  assert.ok(held <= proxy.bufferBound, `${held} bytes held for the client while it does not read (bound ${proxy.bufferBound})`)
  assert.ok(framesAtPause < n, 'the proxy stopped reading before the end of what was sent')
  // Another client is served all the while.
  assert.deepEqual((await mbpoll(agent.port, 3, { table: 4, ref: 0 })).values, [99])
  assert.ok((proxy.describe().bufferedBytes as number) <= proxy.bufferBound)

  // The client reads at last: everything it asked is answered, in order, under its own transaction ids.
  const reader = new MbapReader()
  let got = 0
  let firstWrong: string | null = null
  const all = new Promise<void>((resolve, reject) => {
    socket.on('data', (c: Buffer) => {
      for (const f of reader.push(c).frames) {
        if (firstWrong === null && (f.transactionId !== (got & 0xffff) || f.unitId !== 200 || f.pdu.length !== 2 || f.pdu[0] !== 0x83 || f.pdu[1] !== 0x0a)) {
          firstWrong = `answer ${got}: tid ${f.transactionId}, unit ${f.unitId}, pdu ${f.pdu.toString('hex')}`
        }
        got++
      }
      if (got >= n) resolve()
    })
    socket.once('close', () => reject(new Error(`connection closed after ${got} of ${n} answers`)))
  })
  socket.resume()
  await within(all, 180_000, `not every answer arrived (${n})`)
  const ms = performance.now() - t0
  assert.equal(firstWrong, null)
  assert.equal(got, n)
  const peak = proxy.stats.peakBufferedBytes
  assert.ok(peak <= proxy.bufferBound, `peak ${peak} bytes held for one client (bound ${proxy.bufferBound})`)
  assert.ok(proxy.stats.backpressurePauses >= 1)
  recordFigure(t, {
    area: AREA,
    test: 'Modbus proxy: a client sends FC 3 requests for an unmapped unit and does not read the answers, then reads them',
    size: `${mib} MiB, ${n.toLocaleString('en')} requests`,
    result: `reading paused after ${framesAtPause.toLocaleString('en')} requests with ${atPause.bufferedBytes.toLocaleString('en')} answer bytes held; peak ${peak.toLocaleString('en')} bytes held for the client (bound ${proxy.bufferBound.toLocaleString('en')}); another client served meanwhile; all answers in order once read, ${(ms / 1000).toFixed(1)} s in all`,
    pass: true,
  })
})

test('a connection that sends nothing is closed after modbusIdleTimeoutMs; one that keeps asking, or waits for a slow device, is not', async (t) => {
  const IDLE_MS = 300
  const agent = await agentWithProxy(t, { modbusIdleTimeoutMs: String(IDLE_MS), modbusTimeoutMs: String(3 * IDLE_MS) })
  // a device that takes the connection and never answers: the request waits modbusTimeoutMs (longer than the idle timeout)
  const held: Socket[] = []
  const silent = createServer((s) => void held.push(s))
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r))
  t.after(() => new Promise<void>((r) => (held.forEach((s) => s.destroy()), silent.close(() => r()))))
  const mute = await createLegacyModbusDevice()
  await agent.gateway.enroll({ id: 'mute', publicKey: mute.publicKey, modbus: { host: '127.0.0.1', port: (silent.address() as AddressInfo).port, unitId: 7, hookBase: null } }, WHO)

  const t0 = performance.now()
  const idle = await rawSocket(agent.port)
  let idleMs = 0
  void idle.closed.then(() => (idleMs = performance.now() - t0))
  const busy = await RawModbusClient.open(agent.port)
  t.after(() => busy.end())
  let busyClosed = false
  void busy.closed.then(() => (busyClosed = true))
  const waiting = await RawModbusClient.open(agent.port)
  t.after(() => waiting.end())
  const slow = waiting.request(1, 7, readHoldingPdu(0, 1))
  // the busy client asks back to back for three idle timeouts
  let asked = 0
  while (performance.now() - t0 < 3 * IDLE_MS) await busy.request(++asked & 0xffff, 200, readHoldingPdu(0, 1))
  await within(idle.closed, 10 * IDLE_MS, 'the idle connection was not closed')
  // libuv times from its cached loop clock: a timer may fire a millisecond before performance.now() says
  assert.ok(idleMs >= IDLE_MS - 5 && idleMs < 3 * IDLE_MS, `closed after ${idleMs.toFixed(0)} ms, with a ${IDLE_MS} ms timeout`)
  assert.deepEqual([...(await slow).pdu], [0x83, 0x0b], 'the slow device\'s request was answered 0x0B after modbusTimeoutMs, its connection kept meanwhile')
  assert.equal(busyClosed, false, 'the client that kept asking is still connected')
  assert.ok(agent.modbus.proxy.stats.idleClosed >= 1)
  recordFigure(t, {
    area: AREA,
    test: 'Modbus proxy: a socket that sends nothing, beside one that keeps asking and one waiting for a slow device',
    size: `modbusIdleTimeoutMs ${IDLE_MS}`,
    result: `the silent socket closed after ${idleMs.toFixed(0)} ms; the busy client (${asked} requests) and the one waiting ${3 * IDLE_MS} ms for its device kept`,
    pass: true,
  })
})

test('at most modbusMaxClientsPerAddress from one address: the next one is refused; a proxy full of served connections from few addresses makes room for a new address, fairly', async (t) => {
  const agent = await agentWithProxy(t, { modbusMaxClientsPerAddress: '4', modbusMaxClients: '6' })
  const proxy = agent.modbus.proxy
  const plc = await device(t, agent, 'plc-1', 3)
  plc.holding[0] = 5
  const served: { c: RawModbusClient; from: string; closed: boolean }[] = []
  const serve = async (from: string): Promise<void> => {
    const c = await RawModbusClient.open(agent.port, from)
    t.after(() => c.end())
    assert.deepEqual([...(await c.request(1, 3, readHoldingPdu(0, 1))).pdu], [3, 2, 0, 5])
    const entry = { c, from, closed: false }
    void c.closed.then(() => (entry.closed = true))
    served.push(entry)
  }
  for (let i = 0; i < 4; i++) await serve('127.0.0.2')
  const fifth = await rawSocket(agent.port, '127.0.0.2')
  await within(fifth.closed, 5000, 'the fifth connection from one address was not refused')
  assert.equal(proxy.stats.refused['per-address'], 1)
  // another address still gets in, up to the proxy's limit
  for (let i = 0; i < 2; i++) await serve('127.0.0.3')
  // full, every connection served: a new address takes the place of the longest-idle one of the address holding the most (127.0.0.2: 4)
  await serve('127.0.0.4')
  await within(served[0]!.c.closed, 5000, 'the longest-idle connection of 127.0.0.2 was not displaced')
  await serve('127.0.0.4') // 127.0.0.2 still holds 3, more than 127.0.0.4's 1 + 1
  await within(served[1]!.c.closed, 5000, 'the next longest-idle connection of 127.0.0.2 was not displaced')
  assert.equal(proxy.stats.evicted, 2)
  // now 2, 2 and 2: nobody holds more than the newcomer's address would, so a third from 127.0.0.4 is refused
  const third = await rawSocket(agent.port, '127.0.0.4')
  await within(third.closed, 5000, 'a newcomer that would hold as many as anyone was not refused')
  assert.equal(proxy.stats.refused.full, 1)
  // a fresh address gets its share: one place from an address holding 2 (the first of them, 127.0.0.2)
  await serve('127.0.0.5')
  await within(served[2]!.c.closed, 5000, 'a fresh address got no place')
  // at 1-2-2-1 a second from 127.0.0.5 would hold as many as the most: refused
  const second = await rawSocket(agent.port, '127.0.0.5')
  await within(second.closed, 5000, 'a newcomer that would hold as many as anyone was not refused')
  assert.equal(proxy.stats.refused.full, 2)
  for (const [i, e] of served.entries()) if (!e.closed) assert.deepEqual([...(await e.c.request(100 + i, 3, readHoldingPdu(0, 1))).pdu], [3, 2, 0, 5], `served connection ${i} still works`)
  assert.deepEqual(served.filter((e) => !e.closed).map((e) => e.from).sort(), ['127.0.0.2', '127.0.0.3', '127.0.0.3', '127.0.0.4', '127.0.0.4', '127.0.0.5'])
  assert.equal(proxy.describe().clients, 6)
  recordFigure(t, {
    area: AREA,
    test: 'Modbus proxy full of served connections from two addresses (4 + 2), then newcomers from a third and a fourth address',
    size: 'limits 4 per address, 6 in all',
    result: 'the extra one from an address refused; the third address took two places from the address holding the most (4 → 2), a fourth one more (2 → 1); a newcomer that would hold as many as anyone refused; every kept connection still answered',
    pass: true,
  })
})

test('idle sockets from many addresses fill the proxy: the SCADA client being served stays connected, and a new client still gets in', async (t) => {
  const agent = await agentWithProxy(t)
  const proxy = agent.modbus.proxy
  const plc = await device(t, agent, 'plc-1', 3)
  plc.holding.set([11, 22], 0)
  const scada = await RawModbusClient.open(agent.port)
  t.after(() => scada.end())
  let scadaClosed = false
  void scada.closed.then(() => (scadaClosed = true))
  assert.deepEqual([...(await scada.request(1, 3, readHoldingPdu(0, 2))).pdu], [3, 4, 0, 11, 0, 22])
  // A client whose first request waits for a slow device (modbusTimeoutMs) through the flood: not served yet, but not idle.
  const held: Socket[] = []
  const silent = createServer((s) => void held.push(s))
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r))
  t.after(() => new Promise<void>((r) => (held.forEach((s) => s.destroy()), silent.close(() => r()))))
  const mute = await createLegacyModbusDevice()
  await agent.gateway.enroll({ id: 'mute', publicKey: mute.publicKey, modbus: { host: '127.0.0.1', port: (silent.address() as AddressInfo).port, unitId: 7, hookBase: null } }, WHO)
  const patient = await RawModbusClient.open(agent.port, '127.0.0.8')
  t.after(() => patient.end())
  const slow = patient.request(1, 7, readHoldingPdu(0, 1))

  // Three times the proxy's 128 connections, 16 from each address: none sends a byte.
  const count = scaled(3 * 128)
  const perAddress = 16
  const attackers: Awaited<ReturnType<typeof rawSocket>>[] = []
  t.after(() => attackers.forEach((a) => a.socket.destroy()))
  const t0 = performance.now()
  for (let i = 0; i < count; i++) {
    const n = Math.floor(i / perAddress)
    attackers.push(await rawSocket(agent.port, `127.1.${n >> 8}.${(n & 0xff) + 1}`))
  }
  const floodMs = performance.now() - t0
  assert.ok((proxy.describe().clients as number) <= 128, `${String(proxy.describe().clients)} connections held`)
  assert.equal(scadaClosed, false, 'the SCADA connection was never displaced')
  assert.deepEqual([...(await scada.request(2, 3, readHoldingPdu(0, 2))).pdu], [3, 4, 0, 11, 0, 22], 'and is still served')
  const t1 = performance.now()
  const newcomer = await mbpoll(agent.port, 3, { table: 4, ref: 0, count: 2 })
  const newcomerMs = performance.now() - t1
  assert.deepEqual(newcomer.values, [11, 22], `a new SCADA client gets in: ${newcomer.stdout}${newcomer.stderr}`)
  const other = await RawModbusClient.open(agent.port, '127.0.0.9')
  t.after(() => other.end())
  assert.deepEqual([...(await other.request(1, 3, readHoldingPdu(0, 1))).pdu], [3, 2, 0, 11], 'so does one from another host')
  assert.deepEqual([...(await slow).pdu], [0x83, 0x0b], 'the client waiting for a slow device kept its connection through the flood')
  const closedByProxy = attackers.filter((a) => a.isClosed()).length
  assert.ok(proxy.stats.evicted >= count - 128, `${proxy.stats.evicted} idle connections made room for newcomers`)
  recordFigure(t, {
    area: AREA,
    test: 'Modbus proxy: idle sockets from many addresses fill its 128 connections while a SCADA client is being served',
    size: `${count.toLocaleString('en')} sockets from ${Math.ceil(count / perAddress)} addresses in ${floodMs.toFixed(0)} ms`,
    result: `SCADA connection kept and served; a new mbpoll client answered in ${newcomerMs.toFixed(0)} ms; ${proxy.stats.evicted} never-served connections evicted (${closedByProxy} attack sockets closed), ${String(proxy.describe().clients)} connections held`,
    pass: true,
  })
})
