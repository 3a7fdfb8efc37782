// The one conformance suite every uplink transport runs (UplinkTransport in
// agent/uplink/uplink.ts; PROTOCOL §3). The Uplink keeps the durable outbox
// and the command processor; it relies on the transport for exactly this:
// an event counts as delivered only once publishEvent() resolves (the
// broker's PUBACK), a command is acknowledged to the broker only once
// onCommand()'s promise resolves (its fate is on disk), so that a crash or a
// lost connection in between means the broker sends it again; onUp/onDown
// say when to re-send the outbox; the retained status says what the gateway
// has durably done; stop() is bounded whatever the broker does.
//
// Each implementation supplies a harness: a transport not yet started, the
// broker it talks to (which can be stopped and started again), a client of
// that broker with the control plane's rights, and a TCP pass-through
// between the transport and the broker (helpers/tcp-tap.ts) to hold the
// broker's answers or cut the connection at a moment the test chooses.
import assert from 'node:assert/strict'
import { EventEmitter } from 'node:events'
import type { TestContext } from 'node:test'
import type { MqttClient } from 'mqtt'
import type { UplinkHandlers, UplinkTransport } from '../../agent/uplink/uplink.ts'
import { eventWhere, Inbox } from '../helpers/mqtt-devices.ts'
import type { TcpTap } from '../helpers/tcp-tap.ts'
import { settledFlag, until, within } from '../helpers/wait.ts'

export interface UplinkHarness {
  /** not started; it reaches the broker through `tap` */
  transport: UplinkTransport
  /** the gateway's topic root on the broker, `edgewarden/v1/<site>/<gateway>/` */
  root: string
  tap: TcpTap
  /** A client of the broker (not through the tap) with the control plane's rights: publish `…/cmd`, subscribe `…/evt` and `…/status`. */
  peer(): Promise<MqttClient>
  broker: { stop(): Promise<void>; start(): Promise<void> }
}

export type UplinkPoint = 'before-start' | 'on-up' | 'status' | 'event-puback' | 'command-ack' | 'on-down' | 'stop-offline' | 'stop-bounded' | 'stop-closes-connection'

export interface UplinkImplementation {
  name: string
  make(t: TestContext): Promise<UplinkHarness>
  gaps?: Partial<Record<UplinkPoint, string>>
}

const UP_BOUND_MS = 15_000
const MSG_BOUND_MS = 10_000
/** stop() waits for the broker at most this long, whatever it does (MqttUplinkTransport: 2 s for the offline status, 1 s for the goodbye) */
const STOP_BOUND_MS = 5000

/** What a transport tells its Uplink, recorded, with a say in how each command ends. */
class Recorder extends EventEmitter implements UplinkHandlers {
  ups = 0
  downs = 0
  /** `connected` as the transport said it inside each onUp */
  connectedAtUp: boolean[] = []
  readonly commands: Buffer[] = []
  current: Record<string, unknown> = { seq: 0, audit: { seq: 0, hash: 'genesis' } }
  /** how the n-th delivery (1-based) of a command ends; default: recorded */
  decide: (payload: Buffer, n: number) => Promise<void> = async () => {}
  #transport: UplinkTransport | null = null

  constructor() {
    super()
    this.setMaxListeners(100)
  }

  watch(transport: UplinkTransport): this {
    this.#transport = transport
    return this
  }

  deliveries(payload: Buffer): number {
    return this.commands.filter((c) => c.equals(payload)).length
  }

  onCommand(payload: Uint8Array): Promise<void> {
    const p = Buffer.from(payload)
    this.commands.push(p)
    const result = this.decide(p, this.deliveries(p))
    this.emit('command', p)
    return result
  }
  onUp(): void {
    this.ups++
    this.connectedAtUp.push(this.#transport?.connected ?? false)
    this.emit('up', this.ups)
  }
  onDown(): void {
    this.downs++
    this.emit('down', this.downs)
  }
  status(): Record<string, unknown> {
    return this.current
  }

  /** The `n`-th onUp (counting from the first), now or later. */
  up(n: number): Promise<unknown> {
    if (this.ups >= n) return Promise.resolve()
    return eventWhere<[number]>(this, 'up', (k) => k >= n, UP_BOUND_MS)
  }
  down(n: number): Promise<unknown> {
    if (this.downs >= n) return Promise.resolve()
    return eventWhere<[number]>(this, 'down', (k) => k >= n, UP_BOUND_MS)
  }
  /** Resolves once `payload` has been delivered `times` times. */
  delivered(payload: Buffer, times = 1): Promise<unknown> {
    if (this.deliveries(payload) >= times) return Promise.resolve()
    return eventWhere<[Buffer]>(this, 'command', (p) => p.equals(payload) && this.deliveries(payload) >= times, MSG_BOUND_MS)
  }
}

/** Some bytes that are no valid UTF-8, tagged so each command is told apart by its payload. */
const commandBytes = (tag: string): Buffer => Buffer.concat([Buffer.from(`${tag}:`), Buffer.from([0x00, 0xff, 0xfe, 0x80, 0xc3])])

const parse = (payload: string): Record<string, unknown> => JSON.parse(payload) as Record<string, unknown>

/** Publish QoS 1 and resolve once the broker has it (its PUBACK to the peer). */
function publish(peer: MqttClient, topic: string, payload: Buffer): Promise<void> {
  return peer.publishAsync(topic, payload, { qos: 1 }).then(() => {})
}

async function subscribed(peer: MqttClient, filter: string): Promise<Inbox> {
  const inbox = new Inbox(peer)
  await peer.subscribeAsync(filter, { qos: 1 })
  return inbox
}

/** What a new subscriber to the status topic gets: the retained status. */
async function retainedStatus(h: UplinkHarness, pred: (s: Record<string, unknown>) => boolean): Promise<{ status: Record<string, unknown>; retain: boolean }> {
  const fresh = await h.peer()
  try {
    const inbox = await subscribed(fresh, `${h.root}status`)
    await inbox.waitFor((m) => pred(parse(m.payload)), MSG_BOUND_MS)
    const m = inbox.messages.find((x) => pred(parse(x.payload)))!
    return { status: parse(m.payload), retain: m.retain }
  } finally {
    await fresh.endAsync()
  }
}

export function uplinkTransportConformance(t: TestContext, impl: UplinkImplementation): Promise<void>[] {
  const gap = (point: UplinkPoint): { todo?: string } => {
    const why = impl.gaps?.[point]
    return why ? { todo: `${impl.name} does not meet this today: ${why}` } : {}
  }
  /** A harness with its transport started; stopped at the end of the test (a second stop must be harmless). */
  const started = async (t: TestContext, setup: (r: Recorder, h: UplinkHarness) => Promise<void> = async () => {}): Promise<{ h: UplinkHarness; r: Recorder }> => {
    const h = await impl.make(t)
    const r = new Recorder().watch(h.transport)
    await setup(r, h)
    t.after(() => h.transport.stop())
    h.transport.start(r)
    await r.up(1)
    return { h, r }
  }

  return [
    t.test('before start: connected is false, publishEvent rejects, publishStatus does nothing, stop() resolves', gap('before-start'), async (t) => {
      const h = await impl.make(t)
      assert.equal(h.transport.connected, false)
      await assert.rejects(within('publishEvent before start', h.transport.publishEvent('{"seq":1}'), MSG_BOUND_MS))
      assert.doesNotThrow(() => h.transport.publishStatus())
      await within('stop() before start', h.transport.stop(), STOP_BOUND_MS)
      await within('a second stop() before start', h.transport.stop(), STOP_BOUND_MS)
      assert.equal(h.transport.connected, false)
    }),

    t.test('onUp is called once when connected, with connected true from then on', gap('on-up'), async (t) => {
      const { h, r } = await started(t)
      assert.deepEqual(r.connectedAtUp, [true], 'connected when onUp runs')
      assert.equal(h.transport.connected, true)
      // A round trip on the connection: no second onUp came with it.
      await within('publishEvent', h.transport.publishEvent('{"seq":1}'), MSG_BOUND_MS)
      assert.equal(r.ups, 1)
      assert.equal(r.downs, 0)
    }),

    t.test('the retained status says online with what handlers.status() gives; publishStatus() publishes it again when that changes', gap('status'), async (t) => {
      const watch: { live?: Inbox } = {}
      const { h, r } = await started(t, async (r, h) => {
        r.current = { seq: 7, audit: { seq: 3, hash: 'h-3' } }
        watch.live = await subscribed(await h.peer(), `${h.root}status`)
      })
      const live = watch.live!
      // Once a subscriber has it, the broker holds it: a new subscriber then gets it as the retained status.
      await live.waitFor((m) => parse(m.payload).seq === 7, MSG_BOUND_MS)
      const first = await retainedStatus(h, (s) => s.seq === 7)
      assert.equal(first.retain, true, 'retained')
      assert.equal(first.status.online, true)
      assert.equal(typeof first.status.version, 'string', 'with the version')
      assert.deepEqual(first.status.audit, { seq: 3, hash: 'h-3' })
      r.current = { seq: 42, audit: { seq: 9, hash: 'h-9' } }
      h.transport.publishStatus()
      await live.waitFor((m) => parse(m.payload).seq === 42, MSG_BOUND_MS)
      const again = await retainedStatus(h, (s) => s.seq === 42)
      assert.equal(again.retain, true)
      assert.equal(again.status.online, true)
      assert.deepEqual(again.status.audit, { seq: 9, hash: 'h-9' })
    }),

    t.test('publishEvent publishes QoS 1 and resolves on the broker\'s PUBACK, not before', gap('event-puback'), async (t) => {
      const { h } = await started(t)
      const peer = await h.peer()
      t.after(() => peer.endAsync())
      const qos: number[] = []
      peer.on('message', (_topic, _payload, packet) => void qos.push(packet.qos))
      const events = await subscribed(peer, `${h.root}evt`)
      // The broker's answers to the transport are held: its PUBACK cannot arrive.
      h.tap.hold()
      const payload = '{"seq":1,"type":"test.event"}'
      const p = h.transport.publishEvent(payload)
      const flag = settledFlag(p)
      await events.waitFor((m) => m.payload === payload, MSG_BOUND_MS)
      // The broker has the event (it forwarded it): only its PUBACK is missing, so nothing may have resolved.
      assert.equal(flag.settled, false, 'publishEvent resolved without the PUBACK')
      h.tap.release()
      await within('publishEvent once the PUBACK gets through', p, MSG_BOUND_MS)
      assert.deepEqual(qos, [1], 'delivered at QoS 1 to a QoS 1 subscriber: published at QoS 1')
    }),

    t.test('a command on …/cmd reaches onCommand as sent; it is acknowledged only once the promise resolves, and delivered again after a reconnect until then', gap('command-ack'), async (t) => {
      const A = commandBytes('A-resolved')
      const D = commandBytes('D-rejected-first')
      const C = commandBytes('C-unresolved-first')
      const { h, r } = await started(t, async (r) => {
        r.decide = (p, n) => {
          if (p.equals(D) && n === 1) return Promise.reject(new Error('storage error (test)'))
          if (p.equals(C) && n === 1) return new Promise<void>(() => {}) // never settles
          return Promise.resolve()
        }
      })
      const peer = await h.peer()
      t.after(() => peer.endAsync())
      const cmd = `${h.root}cmd`
      await publish(peer, cmd, A)
      await r.delivered(A)
      assert.deepEqual(r.commands[0], A, 'the bytes as published')
      // Once resolved its PUBACK goes out; an event published after it is acknowledged after the broker had that PUBACK.
      await new Promise((resolve) => setImmediate(resolve))
      await within('publishEvent after the command', h.transport.publishEvent('{"seq":1}'), MSG_BOUND_MS)
      await publish(peer, cmd, D)
      await r.delivered(D)
      await publish(peer, cmd, C)
      await r.delivered(C)
      // Connection lost; the broker keeps the session.
      h.tap.cut()
      await r.down(1)
      await r.up(2)
      await r.delivered(D, 2)
      await r.delivered(C, 2)
      // Whatever the broker had to send again came first: a command published now comes after it.
      const B = commandBytes('B-marker')
      await publish(peer, cmd, B)
      await r.delivered(B)
      assert.equal(r.deliveries(A), 1, 'a resolved command is not delivered again')
      assert.equal(r.deliveries(D), 2, 'a rejected command is delivered again')
      assert.equal(r.deliveries(C), 2, 'an unresolved command is delivered again')
      // Resolved the second time: acknowledged now, so not delivered a third time.
      await new Promise((resolve) => setImmediate(resolve))
      await within('publishEvent after the commands', h.transport.publishEvent('{"seq":2}'), MSG_BOUND_MS)
      h.tap.cut()
      await r.up(3)
      const E = commandBytes('E-marker')
      await publish(peer, cmd, E)
      await r.delivered(E)
      assert.deepEqual([r.deliveries(A), r.deliveries(D), r.deliveries(C), r.deliveries(B)], [1, 2, 2, 1])
    }),

    t.test('onDown is called once when the broker goes, connected turns false and publishEvent rejects; onUp again once it is back', gap('on-down'), async (t) => {
      const { h, r } = await started(t)
      await h.broker.stop()
      await r.down(1)
      assert.equal(h.transport.connected, false)
      await assert.rejects(within('publishEvent while the broker is away', h.transport.publishEvent('{"seq":1}'), MSG_BOUND_MS))
      assert.doesNotThrow(() => h.transport.publishStatus())
      await h.broker.start()
      await r.up(2)
      assert.equal(h.transport.connected, true)
      await within('publishEvent once back', h.transport.publishEvent('{"seq":1}'), MSG_BOUND_MS)
      assert.equal(r.downs, 1, 'one onDown for one loss (failed reconnects are not more losses)')
      assert.deepEqual(r.connectedAtUp, [true, true])
    }),

    t.test('stop() publishes the offline status, closes the connection and resolves within its bound', gap('stop-offline'), async (t) => {
      const { h, r } = await started(t, async (r) => void (r.current = { seq: 5, audit: { seq: 2, hash: 'h-2' } }))
      const peer = await h.peer()
      t.after(() => peer.endAsync())
      const live = await subscribed(peer, `${h.root}status`)
      await live.waitFor((m) => parse(m.payload).online === true, MSG_BOUND_MS)
      const t0 = performance.now()
      await within('stop()', h.transport.stop(), STOP_BOUND_MS)
      t.diagnostic(`${impl.name}: stop() took ${(performance.now() - t0).toFixed(1)} ms`)
      await live.waitFor((m) => parse(m.payload).online === false, MSG_BOUND_MS)
      const retained = await retainedStatus(h, (s) => s.online === false)
      assert.equal(retained.retain, true, 'the offline status is the retained one')
      assert.equal(h.transport.connected, false)
      await until('the transport\'s connection closed', () => h.tap.live.length === 0, MSG_BOUND_MS)
      await assert.rejects(h.transport.publishEvent('{"seq":6}'))
      assert.equal(r.ups, 1)
    }),

    t.test('stop() resolves within its bound when the broker does not answer; a second stop() resolves too', gap('stop-bounded'), async (t) => {
      const { h } = await started(t)
      h.tap.hold()
      const t0 = performance.now()
      await within('stop() with a broker that does not answer', h.transport.stop(), STOP_BOUND_MS)
      t.diagnostic(`${impl.name}: stop() against a silent broker took ${(performance.now() - t0).toFixed(0)} ms`)
      await within('a second stop()', h.transport.stop(), STOP_BOUND_MS)
      h.tap.release()
    }),

    t.test('stop() leaves no connection behind, even when the broker does not answer: connected is false once it resolves', gap('stop-closes-connection'), async (t) => {
      const { h } = await started(t)
      h.tap.hold()
      await within('stop() with a broker that does not answer', h.transport.stop(), STOP_BOUND_MS)
      assert.equal(h.transport.connected, false, 'connected once stop() resolved')
      await until('the transport\'s connection closed', () => h.tap.live.length === 0, 2000)
      h.tap.release()
    }),
  ]
}
