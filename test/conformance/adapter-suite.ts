// The one conformance suite every protocol adapter runs (agent/adapter.ts,
// STYLE.md: one suite per pluggable interface, as MQTT.js' abstract store
// tests). It holds each adapter to the contract the core relies on, with a
// real session to a real device: the enforcer cuts a device off with
// closeSessions() and reports its count as evidence, so a count that is not
// what was closed, a session that survives, or a throw, is a trust failure.
//
// Each implementation supplies a small harness: make a device with a live
// session, make one with none, let a device hang up by itself, and tell from
// the device's own end whether its session is still there. Where an
// implementation does not meet a point today, it names the point and why
// (`gaps`); the suite then runs that check as a `todo`: it still runs and
// reports, and turns into a pass once the implementation is fixed.
import assert from 'node:assert/strict'
import { connect, createServer, type Server } from 'node:net'
import type { TestContext } from 'node:test'
import type { Protocol, ProtocolAdapter } from '../../agent/adapter.ts'
import type { DeviceRecord } from '../../agent/devices/device.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { freePort } from '../helpers/agent.ts'
import { until, within } from '../helpers/wait.ts'

/** A device's end of one session. */
export interface LiveSession {
  /** the device's end still has it */
  readonly open: boolean
  /** resolves once the device's end has seen it closed */
  readonly closed: Promise<void>
}

export interface AdapterHarness {
  /** started, in a running agent (wired as in production) */
  adapter: ProtocolAdapter
  /** Enroll `id` for this protocol and open one live session with a real device; resolves once both ends have it. */
  connect(id: string): Promise<LiveSession>
  /** Enroll `id` for this protocol with nothing behind it: no session can exist. */
  enrollAbsent(id: string): Promise<void>
  /** The device ends its session from its own side (a client leaving, a device going down). */
  hangUp(id: string): Promise<void>
  /** The device's record as the registry holds it. */
  record(id: string): DeviceRecord | undefined
  /** Where the adapter accepts connections, if anywhere. */
  listeningPort(): number | null
  /** Resolves once inventory(id) reports what the adapter learnt of a connected device (adapters that learn something). */
  learnt?(id: string): Promise<void>
}

/** Contract points an implementation may declare it does not meet (with why); run as `todo`. */
export type AdapterPoint =
  | 'start-rejects-port-taken'
  | 'stop-idempotent'
  | 'stop-closes-listener'
  | 'stop-closes-sessions'
  | 'close-sessions'
  | 'close-sessions-none'
  | 'session-count-follows'
  | 'describe-plain'
  | 'review-sessions'
  | 'inventory'

export interface AdapterImplementation {
  name: string
  /** what `protocol` must say */
  protocol: Protocol
  /** does the adapter listen (bind a port) at all? The OPC UA relay is a client of its devices. */
  listens: boolean
  make(t: TestContext): Promise<AdapterHarness>
  /** A new adapter of this kind, never started, that would listen on `port` where it listens. */
  unstarted(t: TestContext, port: number): Promise<ProtocolAdapter>
  gaps?: Partial<Record<AdapterPoint, string>>
}

/** How long a device's end may take to see a close the adapter made (the adapter says it was closed at once). */
const CLOSE_BOUND_MS = 5000
const STOP_BOUND_MS = 10_000

const PROTOCOLS: readonly Protocol[] = ['mqtt', 'opcua', 'modbus']
/** ids no device has: unknown, empty, a topic wildcard, path characters, overlong */
const ODD_IDS = ['ghost-device', '', 'dev/+/#', '../../etc', 'x'.repeat(4096)]

/** A plain JSON object: what JSON.parse(JSON.stringify(v)) gives back unchanged (no undefined, Date, Map, class, NaN, function). */
export function assertPlainJson(v: unknown, what: string): void {
  assert.ok(v !== null && typeof v === 'object' && !Array.isArray(v), `${what}: an object`)
  assert.equal(Object.getPrototypeOf(v), Object.prototype, `${what}: a plain object`)
  assert.deepStrictEqual(JSON.parse(JSON.stringify(v)), v, `${what}: JSON-serialisable as it is`)
}

/** A port some other listener holds now. */
async function takenPort(t: TestContext): Promise<{ port: number; server: Server }> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return { port: (server.address() as { port: number }).port, server }
}

/** Is anything accepting TCP connections on 127.0.0.1:port? */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port })
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

/** The record after a re-key that drops every key it had: sessions opened under the old key are no longer admitted. */
async function rekeyed(before: DeviceRecord): Promise<DeviceRecord> {
  const after = structuredClone(before)
  const publicKey = publicKeyToB64((await keygen()).publicKey)
  after.spec = { ...after.spec, publicKey }
  after.keys = [{ publicKey, notBefore: Math.floor(Date.now() / 1000), notAfter: null }]
  return after
}

export function adapterConformance(t: TestContext, impl: AdapterImplementation): Promise<void>[] {
  const gap = (point: AdapterPoint): { todo?: string } => {
    const why = impl.gaps?.[point]
    return why ? { todo: `${impl.name} does not meet this today: ${why}` } : {}
  }
  const noListener = impl.listens ? {} : { skip: `${impl.name} binds no port: it is a client of its devices` }
  let n = 0
  const id = (what: string): string => `${impl.protocol}-${what}-${++n}`

  return [
    t.test('protocol is one of mqtt | opcua | modbus, the one the implementation is for', async (t) => {
      const h = await impl.make(t)
      assert.ok(PROTOCOLS.includes(h.adapter.protocol), `protocol ${String(h.adapter.protocol)}`)
      assert.equal(h.adapter.protocol, impl.protocol)
      const fresh = await impl.unstarted(t, await freePort())
      assert.equal(fresh.protocol, impl.protocol, 'declared before start too')
      await fresh.stop()
    }),

    t.test('start() rejects when its port cannot be bound; stop() then resolves and nothing stays bound', { ...noListener, ...gap('start-rejects-port-taken') }, async (t) => {
      const { port, server } = await takenPort(t)
      const adapter = await impl.unstarted(t, port)
      await assert.rejects(within('start() on a taken port', adapter.start(), STOP_BOUND_MS), (err: unknown) => {
        assert.ok(err instanceof Error, 'rejects with an Error')
        t.diagnostic(`${impl.name}: start() on a taken port rejected: ${(err as NodeJS.ErrnoException).code ?? ''} ${err.message}`)
        return true
      })
      assertPlainJson(adapter.describe(), 'describe() after a failed start')
      await within('stop() after a failed start', adapter.stop(), STOP_BOUND_MS)
      // The port is still the other listener's alone: once it lets go, nothing answers there.
      await new Promise<void>((resolve) => server.close(() => resolve()))
      assert.equal(await accepts(port), false, 'the failed adapter left nothing listening')
    }),

    t.test('stop() never rejects: before start, twice, and after a start', gap('stop-idempotent'), async (t) => {
      const never = await impl.unstarted(t, await freePort())
      await within('stop() before start', never.stop(), STOP_BOUND_MS)
      await within('a second stop() before start', never.stop(), STOP_BOUND_MS)
      const started = await impl.unstarted(t, await freePort())
      await within('start()', started.start(), STOP_BOUND_MS)
      await within('stop() after start', started.stop(), STOP_BOUND_MS)
      await within('a second stop()', started.stop(), STOP_BOUND_MS)
    }),

    t.test('sessionCount counts a live session, and is 0 for a device with none and for an unknown id', gap('session-count-follows'), async (t) => {
      const h = await impl.make(t)
      const live = id('live')
      const absent = id('absent')
      await h.enrollAbsent(absent)
      const s = await h.connect(live)
      assert.equal(s.open, true)
      assert.equal(h.adapter.sessionCount(live), 1)
      assert.equal(h.adapter.sessionCount(absent), 0)
      for (const odd of ODD_IDS) assert.equal(h.adapter.sessionCount(odd), 0, `sessionCount(${JSON.stringify(odd.slice(0, 20))})`)
    }),

    t.test('closeSessions(id) closes every live session of the device at once, returns how many, and the device sees it closed', gap('close-sessions'), async (t) => {
      const h = await impl.make(t)
      const a = id('cut')
      const b = id('bystander')
      const sa = await h.connect(a)
      const sb = await h.connect(b)
      const before = h.adapter.sessionCount(a)
      assert.ok(before >= 1)
      const t0 = performance.now()
      const closed = h.adapter.closeSessions(a)
      // "At once": counted out before closeSessions returns, not at some later tick.
      assert.equal(closed, before, 'returns the number of sessions it closed')
      assert.equal(h.adapter.sessionCount(a), 0, 'sessionCount follows at once')
      assert.equal(h.adapter.closeSessions(a), 0, 'nothing left to close')
      await within(`the device's end of ${a} seeing its session closed`, sa.closed, CLOSE_BOUND_MS)
      t.diagnostic(`${impl.name}: the device saw its session closed ${(performance.now() - t0).toFixed(1)} ms after closeSessions()`)
      assert.equal(sa.open, false)
      // Only that device: another device's session is untouched.
      assert.equal(sb.open, true, 'another device keeps its session')
      assert.equal(h.adapter.sessionCount(b), 1)
    }),

    t.test('closeSessions() never throws and returns 0 for a device with no session and for unknown ids', gap('close-sessions-none'), async (t) => {
      const h = await impl.make(t)
      const absent = id('absent')
      await h.enrollAbsent(absent)
      assert.equal(h.adapter.closeSessions(absent), 0, 'an enrolled device with no session')
      for (const odd of ODD_IDS) {
        let r: number | undefined
        assert.doesNotThrow(() => void (r = h.adapter.closeSessions(odd)), `closeSessions(${JSON.stringify(odd.slice(0, 20))})`)
        assert.equal(r, 0)
      }
      // A device that had a session and hung up by itself has none left to close.
      const gone = id('gone')
      await h.connect(gone)
      await h.hangUp(gone)
      await until(`sessionCount(${gone}) back to 0`, () => h.adapter.sessionCount(gone) === 0, CLOSE_BOUND_MS)
      assert.equal(h.adapter.closeSessions(gone), 0)
    }),

    t.test('sessionCount follows a device that leaves by itself', gap('session-count-follows'), async (t) => {
      const h = await impl.make(t)
      const d = id('leaves')
      const s = await h.connect(d)
      assert.equal(h.adapter.sessionCount(d), 1)
      await h.hangUp(d)
      await within('the device ending its session', s.closed, CLOSE_BOUND_MS)
      const ms = await until(`sessionCount(${d}) back to 0`, () => h.adapter.sessionCount(d) === 0, CLOSE_BOUND_MS)
      t.diagnostic(`${impl.name}: sessionCount followed the device's hang-up within ${ms.toFixed(0)} ms`)
    }),

    t.test('describe() returns a plain JSON-serialisable object: never started, running with a session, stopped', gap('describe-plain'), async (t) => {
      const fresh = await impl.unstarted(t, await freePort())
      assertPlainJson(fresh.describe(), 'describe() before start')
      await fresh.stop()
      const h = await impl.make(t)
      await h.connect(id('described'))
      assertPlainJson(h.adapter.describe(), 'describe() while running')
      await h.adapter.stop()
      assertPlainJson(h.adapter.describe(), 'describe() after stop')
    }),

    t.test('stop() closes the listener and resolves within its bound; a second stop() resolves too; nothing throws after it', gap('stop-closes-listener'), async (t) => {
      const h = await impl.make(t)
      const d = id('at-stop')
      await h.connect(d)
      const port = h.listeningPort()
      if (impl.listens) {
        assert.ok(port, 'the running adapter says where it listens')
        assert.equal(await accepts(port), true, 'listening before stop')
      }
      const t0 = performance.now()
      await within('stop()', h.adapter.stop(), STOP_BOUND_MS)
      t.diagnostic(`${impl.name}: stop() with a live session took ${(performance.now() - t0).toFixed(1)} ms`)
      if (port) assert.equal(await accepts(port), false, 'nothing accepts on its port after stop')
      await within('a second stop()', h.adapter.stop(), STOP_BOUND_MS)
      // The enforcer may still cut a device off while the agent stops.
      assert.doesNotThrow(() => h.adapter.closeSessions(d), 'closeSessions() after stop')
      assert.doesNotThrow(() => h.adapter.sessionCount(d), 'sessionCount() after stop')
    }),

    t.test('stop() closes every live session: the device sees it closed', gap('stop-closes-sessions'), async (t) => {
      const h = await impl.make(t)
      const d = id('at-stop')
      const s = await h.connect(d)
      await within('stop()', h.adapter.stop(), STOP_BOUND_MS)
      assert.equal(h.adapter.sessionCount(d), 0, 'no session counted once stop() resolved')
      await within(`the device's end of ${d} seeing its session closed by stop()`, s.closed, CLOSE_BOUND_MS)
    }),

    t.test('reviewSessions (where implemented) returns a number, keeps what the record still admits, closes what it no longer does, never throws', gap('review-sessions'), async (t) => {
      const h = await impl.make(t)
      const review = h.adapter.reviewSessions?.bind(h.adapter)
      if (!review) return t.skip(`${impl.name} leaves reviewSessions out (it opens its sessions itself)`)
      const d = id('reviewed')
      const s = await h.connect(d)
      const record = h.record(d)
      assert.ok(record)
      // The same record admits the same session.
      let kept: number | undefined
      assert.doesNotThrow(() => void (kept = review(record, structuredClone(record))))
      assert.equal(kept, 0)
      assert.equal(h.adapter.sessionCount(d), 1)
      assert.equal(s.open, true, 'an unchanged record leaves the session alone')
      // A record of a device with no session.
      const absent = id('absent')
      await h.enrollAbsent(absent)
      const absentRecord = h.record(absent)!
      assert.equal(review(absentRecord, await rekeyed(absentRecord)), 0)
      // A record whose keys are all new: the session under the old key is no longer admitted.
      const before = h.adapter.sessionCount(d)
      let closed: number | undefined
      const after = await rekeyed(record)
      assert.doesNotThrow(() => void (closed = review(record, after)))
      assert.ok(Number.isInteger(closed) && closed! >= 0, `a count, got ${String(closed)}`)
      assert.equal(closed, before, 'the session opened under the dropped key is closed, and counted')
      assert.equal(h.adapter.sessionCount(d), 0, 'sessionCount follows at once')
      await within(`the device's end of ${d} seeing its session closed`, s.closed, CLOSE_BOUND_MS)
    }),

    t.test('inventory (where implemented) is undefined or a flat JSON object, given at once', gap('inventory'), async (t) => {
      const h = await impl.make(t)
      const inventory = h.adapter.inventory?.bind(h.adapter)
      if (!inventory) return t.skip(`${impl.name} leaves inventory out (it learns nothing of its devices)`)
      const check = (v: unknown, what: string): void => {
        assert.ok(!(v instanceof Promise) && typeof (v as { then?: unknown } | undefined)?.then !== 'function', `${what}: not a promise (it must not wait)`)
        if (v === undefined) return
        assertPlainJson(v, what)
        for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
          assert.ok(x === null || ['string', 'number', 'boolean'].includes(typeof x), `${what}: ${k} is flat (${typeof x})`)
          if (typeof x === 'string') assert.doesNotMatch(x, /[\u0000-\u001f\u007f]/, `${what}: ${k} is safe to print`)
        }
      }
      for (const odd of ODD_IDS) {
        let v: unknown
        assert.doesNotThrow(() => void (v = inventory(odd)))
        assert.equal(v, undefined, 'nothing known of an unknown id')
      }
      const d = id('inventoried')
      await h.connect(d)
      check(inventory(d), `inventory(${d}) right after connect`)
      if (h.learnt) {
        await h.learnt(d)
        const v = inventory(d)
        assert.notEqual(v, undefined, 'what was learnt is reported')
        check(v, `inventory(${d}) once learnt`)
        t.diagnostic(`${impl.name}: inventory ${JSON.stringify(v)}`)
      }
    }),
  ]
}
