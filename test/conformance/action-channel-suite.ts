// The one conformance suite every action channel runs (ActionChannel in
// agent/actions/action-dispatcher.ts; PROTOCOL §5). The dispatcher knows no
// wire protocol: it trusts a channel's ready() to say a device is listening,
// and its send() to reject when an action did not go out, so that the action
// stays queued and goes out again later. The suite drives each channel in a
// real agent (startTestAgent: channels wired as in production, acks settled
// by the agent's DeviceActions) against a real device running the device
// runtime (firmware-hooks/action-runtime.ts), which verifies the gateway's
// signature, runs its hook once per action id, and signs the ack.
//
// Each implementation supplies a harness: enroll a device for the channel,
// bring it up and take it away, and count the acks it sent. Points an
// implementation does not meet today are declared in `gaps` and run as
// `todo` (see adapter-suite.ts).
import assert from 'node:assert/strict'
import type { TestContext } from 'node:test'
import type { ActionChannel } from '../../agent/actions/action-dispatcher.ts'
import type { Act, QueuedAction } from '../../agent/actions/action-queue.ts'
import type { Protocol } from '../../agent/adapter.ts'
import { exportAuditLog } from '../../agent/store/audit.ts'
import { defaultHooks, type ActionRuntime, type DeviceHooks } from '../../firmware-hooks/action-runtime.ts'
import type { startTestAgent } from '../helpers/agent.ts'
import { eventsOf, eventWhere } from '../helpers/modbus.ts'
import { until, within } from '../helpers/wait.ts'

export type ChannelAgent = Awaited<ReturnType<typeof startTestAgent>>

export interface ChannelDevice {
  readonly id: string
  /** the device's action runtime (verifies, runs hooks once per action id, signs acks) */
  readonly runtime: ActionRuntime
  /** Bring the device up, connected and listening for actions; resolves once the device's end is. */
  up(): Promise<void>
  /** Take the device away (it disconnects, or goes down); resolves once its end is gone. */
  down(): Promise<void>
  /** Acks the device has sent for `action` so far, the first and every repeat. */
  acksSent(action: QueuedAction): number
  /**
   * Where being connected and listening are two steps (MQTT: CONNACK, then
   * the SUBSCRIBE to its command topic): connect without listening; listen()
   * takes the second step.
   */
  connectWithoutListening?(): Promise<{ listen(): Promise<void> }>
}

export interface ChannelHarness {
  agent: ChannelAgent
  /** the channel under test, attached to the agent's protocol adapter */
  channel: ActionChannel
  /** Enroll `id` for this channel, with a device (not up yet) whose runtime runs `hooks`. */
  enroll(id: string, hooks: Partial<DeviceHooks>): Promise<ChannelDevice>
}

export type ChannelPoint = 'ready-unknown' | 'ready-absent' | 'ready-up' | 'send-delivers' | 'send-not-ready' | 'ready-reported' | 'repeat-not-run-twice' | 'repeat-acked-again'

export interface ChannelImplementation {
  name: string
  protocol: Protocol
  /** an act an `active` device receives through this channel and that leaves it usable (so it can be sent again) */
  act: Act
  make(t: TestContext): Promise<ChannelHarness>
  gaps?: Partial<Record<ChannelPoint, string>>
  /**
   * A channel without sessions (Modbus hook registers): it declares so, with
   * why, and is held to what that means instead: ready() says "not known to
   * be down" (so the first action is tried at once) and turns false once a
   * delivery fails; a settled action sent again is answered by the gateway
   * without touching the device (the device's own repeat rule stays its hook's).
   */
  sessionless?: string
}

const WHO = { actor: 'local:conformance' }
const READY_BOUND_MS = 20_000
const ACK_BOUND_MS = 20_000

/** The audit entry that records an action's settlement (written in the same batch as its removal). */
async function ackedAudit(agent: ChannelAgent, actionId: string): Promise<Record<string, unknown>[]> {
  const found: Record<string, unknown>[] = []
  for await (const e of exportAuditLog(agent.gateway.store)) {
    const data = (e.data ?? {}) as Record<string, unknown>
    if (e.action === 'action.acked' && data.actionId === actionId) found.push(data)
  }
  return found
}

export function actionChannelConformance(t: TestContext, impl: ChannelImplementation): Promise<void>[] {
  const gap = (point: ChannelPoint): { todo?: string } => {
    const why = impl.gaps?.[point]
    return why ? { todo: `${impl.name} does not meet this today: ${why}` } : {}
  }
  let n = 0
  const id = (what: string): string => `${impl.protocol}-${what}-${++n}`
  /** The device's hook for the suite's act, counting the action ids it runs. */
  const counted = (): { hooks: Partial<DeviceHooks>; runs: string[] } => {
    const runs: string[] = []
    const hook = defaultHooks[impl.act]
    return { runs, hooks: { [impl.act]: async (ctx: Parameters<typeof hook>[0]) => (runs.push(ctx.actionId), hook(ctx)) } }
  }
  const settled = (agent: ChannelAgent, a: QueuedAction): Promise<Record<string, unknown>> =>
    within(`the core settling ${a.act} ${a.id}`, eventWhere(agent.gateway, 'action.acked', (d) => d.actionId === a.id, ACK_BOUND_MS), ACK_BOUND_MS + 1000)
  /** A device up and, by the channel's account, ready. */
  const upAndReady = async (h: ChannelHarness, what: string): Promise<ChannelDevice & { runs: string[] }> => {
    const c = counted()
    const d = await h.enroll(id(what), c.hooks)
    await d.up()
    await until(`${impl.name}: ready(${d.id}) once the device is up`, () => h.channel.ready(d.id), READY_BOUND_MS)
    return Object.assign(d, { runs: c.runs })
  }

  return [
    t.test('protocol is the channel\'s; ready() is false for ids no device has, and never throws', gap('ready-unknown'), async (t) => {
      const h = await impl.make(t)
      assert.equal(h.channel.protocol, impl.protocol)
      for (const odd of ['ghost-device', '', 'dev/+/#', 'x'.repeat(4096)]) {
        let r: boolean | undefined
        assert.doesNotThrow(() => void (r = h.channel.ready(odd)))
        assert.equal(r, false, `ready(${JSON.stringify(odd.slice(0, 20))})`)
      }
    }),

    impl.sessionless === undefined
      ? t.test('ready() is false for an enrolled device that is not connected, and again once it has gone', gap('ready-absent'), async (t) => {
          const h = await impl.make(t)
          const d = await h.enroll(id('absent'), counted().hooks)
          assert.equal(h.channel.ready(d.id), false, 'enrolled, never connected')
          await d.up()
          await until(`ready(${d.id}) once up`, () => h.channel.ready(d.id), READY_BOUND_MS)
          await d.down()
          await until(`ready(${d.id}) false once the device has gone`, () => !h.channel.ready(d.id), READY_BOUND_MS)
        })
      : t.test(`sessionless (${impl.sessionless}): ready() turns false once a delivery to a device that has gone fails`, gap('ready-absent'), async (t) => {
          const h = await impl.make(t)
          const d = await upAndReady(h, 'absent')
          await d.down()
          const a = await h.agent.gateway.queueAction(d.id, impl.act, WHO)
          await assert.rejects(h.channel.send(a), 'a delivery to a device that has gone fails')
          await until(`ready(${d.id}) false once the device is known down`, () => !h.channel.ready(d.id), READY_BOUND_MS)
          assert.ok(h.agent.gateway.actions.pending(d.id).some((p) => p.id === a.id), 'and the action stays queued')
        }),

    t.test('ready() turns true once the device is connected and listening', gap('ready-up'), async (t) => {
      const h = await impl.make(t)
      const c = counted()
      const d = await h.enroll(id('up'), c.hooks)
      await d.up()
      const ms = await until(`ready(${d.id}) once up`, () => h.channel.ready(d.id), READY_BOUND_MS)
      t.diagnostic(`${impl.name}: ready ${ms.toFixed(0)} ms after the device was up`)
      // Connected is not listening.
      const two = await h.enroll(id('two-step'), counted().hooks)
      if (!two.connectWithoutListening) return
      const connected = await two.connectWithoutListening()
      assert.equal(h.channel.ready(two.id), false, 'connected, not yet listening')
      await connected.listen()
      await until(`ready(${two.id}) once listening`, () => h.channel.ready(two.id), READY_BOUND_MS)
    }),

    t.test('send() delivers a signed action: the device verifies it, acts once and acks; the ack reaches the core, which settles it', gap('send-delivers'), async (t) => {
      const h = await impl.make(t)
      const d = await upAndReady(h, 'deliver')
      // Queued in the store, not handed to the dispatcher: this send is the only delivery.
      const a = await h.agent.gateway.queueAction(d.id, impl.act, WHO)
      const t0 = performance.now()
      await within(`send(${a.id})`, h.channel.send(a), ACK_BOUND_MS)
      const acked = await settled(h.agent, a)
      t.diagnostic(`${impl.name}: ${impl.act} sent, verified, run, acked and settled in ${(performance.now() - t0).toFixed(1)} ms`)
      assert.deepEqual(d.runs, [a.id], 'the device ran its hook once, for this action')
      assert.equal(d.runtime.handled(a.id)?.status, 'done', 'the device verified and handled it')
      // The core may settle before the device hears back about its own ack (an MQTT device counts it at the PUBACK).
      await until('the device counting its ack as sent', () => d.acksSent(a) >= 1, ACK_BOUND_MS)
      assert.equal(acked.status, 'done')
      assert.ok(!h.agent.gateway.actions.pending(d.id).some((p) => p.id === a.id), 'the action left the queue')
      const audit = await ackedAudit(h.agent, a.id)
      assert.equal(audit.length, 1)
      assert.equal(audit[0]!.protocol, impl.protocol, 'settled through this protocol')
    }),

    t.test('send() to a device that is not ready rejects, and the action stays queued', gap('send-not-ready'), async (t) => {
      const h = await impl.make(t)
      const c = counted()
      const d = await h.enroll(id('away'), c.hooks)
      const a = await h.agent.gateway.queueAction(d.id, impl.act, WHO)
      await assert.rejects(within(`send(${a.id}) to a device that is not there`, h.channel.send(a), ACK_BOUND_MS), Error)
      assert.deepEqual(h.agent.gateway.actions.pending(d.id).map((p) => p.id), [a.id], 'still queued')
      assert.deepEqual(c.runs, [])
      assert.equal(d.runtime.handled(a.id), undefined)
    }),

    t.test('an action queued while the device is away goes out once it is ready: the channel tells the core', gap('ready-reported'), async (t) => {
      const h = await impl.make(t)
      const c = counted()
      const d = await h.enroll(id('later'), c.hooks)
      // The production path: queued and handed to the dispatcher, which finds no device to send it to.
      const a = await h.agent.actions.queue(d.id, impl.act, WHO)
      assert.deepEqual(h.agent.gateway.actions.pending(d.id).map((p) => p.id), [a.id])
      const t0 = performance.now()
      await d.up()
      await settled(h.agent, a)
      t.diagnostic(`${impl.name}: delivered and settled ${(performance.now() - t0).toFixed(0)} ms after the device came up`)
      assert.deepEqual(c.runs, [a.id])
      assert.deepEqual(h.agent.gateway.actions.pending(d.id), [])
    }),

    t.test('a repeated action id runs nothing twice, and the core settles it once (PROTOCOL §5)', gap('repeat-not-run-twice'), async (t) => {
      const h = await impl.make(t)
      const d = await upAndReady(h, 'repeat')
      const strayBefore = h.agent.actions.strayAcks
      const a = await h.agent.gateway.queueAction(d.id, impl.act, WHO)
      await h.channel.send(a)
      await settled(h.agent, a)
      // The same action again, as after a reconnect that came before its ack.
      await within(`a repeated send(${a.id})`, h.channel.send(a), ACK_BOUND_MS)
      // Another action behind it on the same channel: once it is settled, whatever the repeat caused has been seen.
      const b = await h.agent.gateway.queueAction(d.id, impl.act, WHO)
      await h.channel.send(b)
      await settled(h.agent, b)
      assert.equal(d.runs.filter((r) => r === a.id).length, 1, 'the hook ran once for the repeated id')
      assert.equal((await eventsOf(h.agent.gateway, 'action.acked')).filter((e) => e.actionId === a.id).length, 1, 'settled once')
      assert.equal((await ackedAudit(h.agent, a.id)).length, 1)
      assert.equal(h.agent.actions.strayAcks, strayBefore, 'a repeated ack is known as one, not counted stray')
    }),

    t.test(
      impl.sessionless === undefined ? 'a repeated action id is acked again by the device (PROTOCOL §5)' : `sessionless (${impl.sessionless}): a settled action sent again is answered by the gateway, the device untouched`,
      gap('repeat-acked-again'),
      async (t) => {
        const h = await impl.make(t)
        const d = await upAndReady(h, 'reack')
        const a = await h.agent.gateway.queueAction(d.id, impl.act, WHO)
        await h.channel.send(a)
        await settled(h.agent, a)
        await until('the device counting its ack as sent', () => d.acksSent(a) >= 1, ACK_BOUND_MS)
        assert.equal(d.acksSent(a), 1)
        await h.channel.send(a)
        const b = await h.agent.gateway.queueAction(d.id, impl.act, WHO)
        await h.channel.send(b)
        await settled(h.agent, b)
        if (impl.sessionless === undefined) assert.equal(d.acksSent(a), 2, 'the device answered the repeated id with its ack again')
        else assert.equal(d.acksSent(a), 1, 'the repeat never reached the device')
        assert.equal(d.runs.filter((r) => r === a.id).length, 1, 'without running it again')
      },
    ),
  ]
}
