// alert.residual-use rate limit: one event per device per interval, folded
// attempts counted into the next one, reported when the window closes.
import assert from 'node:assert/strict'
import { Writable } from 'node:stream'
import { test } from 'node:test'
import { ManualClock } from '../../../agent/runtime/clock.ts'
import { Gateway } from '../../../agent/gateway.ts'
import { createLogger } from '../../../agent/observe/logger.ts'
import { ResidualUseMonitor } from '../../../agent/trust/residual-use.ts'
import { parseJws } from '../../../wire/jws.ts'
import { tempDir, testConfig } from '../../helpers/agent.ts'

test('one alert per device per interval; folded attempts flushed when the window closes; a warn line per attempt', async (t) => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1))
  const gw = await Gateway.open(testConfig(tempDir(t), { residualAlertIntervalS: '60' }), { log: createLogger('silent'), clock })
  t.after(() => gw.close())
  const lines: Record<string, unknown>[] = []
  const sink = new Writable({ write: (c: Buffer, _e, cb) => (lines.push(JSON.parse(c.toString()) as Record<string, unknown>), cb()) })
  const mon = new ResidualUseMonitor(gw, createLogger('warn', sink))
  t.after(() => mon.stop())
  const attempt = { deviceId: 'd1', protocol: 'mqtt' as const, remote: '10.0.0.9', detail: 'connect refused: device is revoked' }
  for (let i = 0; i < 5; i++) mon.record(attempt)
  mon.record({ ...attempt, deviceId: 'd2', protocol: 'modbus' })
  await mon.idle()
  const alerts = async () => (await gw.outbox.pending(gw.store, 0, 100)).filter((e) => e.type === 'alert.residual-use').map((e) => parseJws(e.jws).payload.data as Record<string, unknown>)
  assert.deepEqual((await alerts()).map((a) => [a.deviceId, a.count, a.protocol]), [['d1', 1, 'mqtt'], ['d2', 1, 'modbus']])
  mon.flushDue() // window still open: nothing
  await mon.idle()
  assert.equal((await alerts()).length, 2)
  clock.advance(60_000)
  mon.flushDue()
  await mon.idle()
  const all = await alerts()
  assert.deepEqual(all.map((a) => [a.deviceId, a.count]), [['d1', 1], ['d2', 1], ['d1', 4]])
  assert.equal(all[2]!.remote, '10.0.0.9')
  assert.equal(lines.filter((l) => l.event === 'residual-use').length, 6)
  assert.equal(lines[0]!.level, 'warn')
  assert.equal(mon.attempts('d1'), 5)
})
