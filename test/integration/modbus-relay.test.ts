// The hook relay's probing of an unreachable device, made deterministic:
// its timers and randomness are injected, so the test sees every probe
// delay (exponential, jittered, capped) and decides when each fires. Built
// from the core parts directly (a Gateway, a dispatcher, DeviceActions),
// with a real device coming up on its port at the test's moment.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ActionDispatcher } from '../../agent/actions/action-dispatcher.ts'
import { DeviceActions } from '../../agent/actions/device-actions.ts'
import { Gateway } from '../../agent/gateway.ts'
import { createLogger } from '../../agent/observe/logger.ts'
import { ModbusDeviceIndex } from '../../protocols/modbus/device-index.ts'
import { ModbusHookRelay, type RelayOutcome, type Timers } from '../../protocols/modbus/hook-relay.ts'
import { createHookedModbusDevice } from '../../simulators/modbus-device.ts'
import { freePort, tempDir, testConfig } from '../helpers/agent.ts'

/** Probe timers (>= 100 ms) wait for the test; the relay's short status-poll pauses run for real. */
class TestTimers implements Timers {
  readonly waiting: { ms: number; fn: () => void; handle: number }[] = []
  #next = 1
  #wake: (() => void) | null = null
  setTimeout(fn: () => void, ms: number): unknown {
    if (ms < 100) return setTimeout(fn, ms)
    const handle = this.#next++
    this.waiting.push({ ms, fn, handle })
    this.#wake?.()
    return handle
  }
  clearTimeout(handle: unknown): void {
    if (typeof handle !== 'number') return clearTimeout(handle as NodeJS.Timeout)
    const i = this.waiting.findIndex((w) => w.handle === handle)
    if (i >= 0) this.waiting.splice(i, 1)
  }
  /** The next probe timer, once the relay has set it. */
  async next(timeoutMs = 10_000): Promise<{ ms: number; fire: () => void }> {
    const deadline = Date.now() + timeoutMs
    while (this.waiting.length === 0) {
      if (Date.now() > deadline) throw new Error('the relay set no probe timer')
      await new Promise<void>((resolve) => {
        this.#wake = resolve
        setTimeout(resolve, 50)
      })
      this.#wake = null
    }
    const w = this.waiting.shift()!
    return { ms: w.ms, fire: w.fn }
  }
}

test('an unreachable device is probed with exponential, jittered, capped backoff; the wipe goes out on the first answer', async (t) => {
  const log = createLogger('silent')
  const gw = await Gateway.open(testConfig(tempDir(t), { modbusTimeoutMs: '300' }), { log })
  t.after(() => gw.close())
  const dispatcher = new ActionDispatcher(gw, log)
  const actions = new DeviceActions(gw, dispatcher, log)
  const index = new ModbusDeviceIndex(gw, { timeoutMs: 300, log })
  t.after(() => index.stop())
  const timers = new TestTimers()
  const draws = [0, 1, 0.5, 0.5, 0.5]
  const relay = new ModbusHookRelay(gw, index, actions, { log, timers, random: () => draws.shift() ?? 0.5, probe: { initialMs: 1000, maxMs: 4000, factor: 2, jitter: 0.5 } })
  t.after(() => relay.stop())
  dispatcher.addChannel(relay)

  const port = await freePort()
  const d = await createHookedModbusDevice({ deviceId: 'plc-9', gatewayId: gw.id, gatewayPublicKey: gw.key.publicKeyB64, port })
  t.after(() => d.device.stop())
  await gw.enroll({ id: 'plc-9', publicKey: d.publicKey, modbus: { host: '127.0.0.1', port, unitId: 1 } }, { actor: 'test' })
  const settled = new Promise<RelayOutcome>((resolve) => relay.onSettled(resolve))
  const wipe = await actions.queue('plc-9', 'wipe', { actor: 'test' })

  // 1000 ms x (1 - 0.5 + 2 * 0.5 * r): r = 0, 1, then 0.5 with the base doubling up to the cap
  const delays: number[] = []
  for (let i = 0; i < 4; i++) {
    const probe = await timers.next()
    delays.push(probe.ms)
    assert.equal(relay.reachability('plc-9'), 'down')
    assert.equal(relay.ready('plc-9'), false)
    probe.fire()
  }
  assert.deepEqual(delays, [500, 3000, 4000, 4000])
  assert.deepEqual(gw.actions.pending('plc-9').map((a) => a.id), [wipe.id], 'still queued')
  assert.equal(d.runtime.wiped, false)

  await d.device.start()
  ;(await timers.next()).fire()
  const s = await settled
  assert.deepEqual([s.actionId, s.act, s.status, s.actionSeq], [wipe.id, 'wipe', 'done', wipe.seq])
  assert.equal(d.runtime.wiped, true)
  assert.deepEqual(gw.actions.pending('plc-9'), [])
  assert.equal(relay.reachability('plc-9'), 'up')
  assert.equal(timers.waiting.length, 0, 'probing stopped')
  assert.equal(relay.stats.probes, 5)
})
