// Refusals you can see: a refused device connect is counted by reason and
// protocol in edgewarden_connects_refused_total and logged at info with the
// reason a person can act on ("aud is gw-1, this gateway is gw-2"), once a
// minute per device and reason (the next line says how many were not
// logged), and at most ten lines a second in all, never with the password.
// The device is mosquitto_pub; the metrics are scraped over HTTP.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ManualClock } from '../../agent/runtime/clock.ts'
import { REFUSAL_LOG_EVERY_MS } from '../../agent/trust/admission.ts'
import { startTestAgent } from '../helpers/agent.ts'
import { enrollDevice, mosquitto, mqttArgs, tokenFor } from '../helpers/mqtt-devices.ts'

async function refusedMetric(port: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  const out = new Map<string, number>()
  for (const m of text.matchAll(/^edgewarden_connects_refused_total\{protocol="(\w+)",reason="([\w-]+)"\} (\d+)$/gm)) out.set(`${m[1]} ${m[2]}`, Number(m[3]))
  return out
}

test('refused connects: counted by reason, logged at info with what to do, once a minute per device and reason, never the token', async (t) => {
  const clock = new ManualClock(Date.now())
  const lines: Record<string, unknown>[] = []
  const agent = await startTestAgent(t, { clock, logLevel: 'info', logSink: (l) => lines.push(JSON.parse(l) as Record<string, unknown>), flags: { httpPort: '0', gateway: 'gw-2', authFailuresPerClient: '1000', authFailuresPerAddress: '1000' } })
  const gw = agent.gateway
  const dev = await enrollDevice(gw, 'pump-1')
  const pub = async (password: string, id = dev.id): Promise<number | null> => {
    const p = mosquitto('mosquitto_pub', [...mqttArgs(agent.mqttPort, id, password), '-t', `dev/${id}/tele`, '-m', 'x'])
    return p.exited
  }
  // a token for another gateway, three times; one replayed; one from a clock an hour ahead; an id nobody enrolled
  const foreign = await tokenFor(gw, dev, { gatewayId: 'gw-1' })
  for (let i = 0; i < 3; i++) assert.notEqual(await pub(await tokenFor(gw, dev, { gatewayId: 'gw-1' })), 0)
  const good = await tokenFor(gw, dev)
  assert.equal(await pub(good), 0)
  assert.notEqual(await pub(good), 0)
  assert.notEqual(await pub(await tokenFor(gw, dev, { nowS: gw.nowS() + 3600 })), 0)
  assert.notEqual(await pub(foreign, 'nobody-9'), 0)

  const m = await refusedMetric(agent.http!.port)
  assert.equal(m.get('mqtt wrong-audience'), 3)
  assert.equal(m.get('mqtt replayed'), 1)
  assert.equal(m.get('mqtt not-yet-valid'), 1)
  assert.ok((m.get('mqtt identity-mismatch') ?? 0) + (m.get('mqtt unknown-device') ?? 0) >= 1, JSON.stringify([...m]))

  const refusals = lines.filter((l) => l.level === 'info' && typeof l.reason === 'string' && String(l.msg).startsWith('connect of '))
  const aud = refusals.filter((l) => l.reason === 'wrong-audience')
  assert.equal(aud.length, 1, 'three refusals of one device for one reason: one line a minute')
  assert.match(String(aud[0]!.msg), /aud is "gw-1", this gateway is "gw-2"/)
  assert.match(String(refusals.find((l) => l.reason === 'replayed')?.msg), /already used: a device makes a new token/)
  assert.match(String(refusals.find((l) => l.reason === 'not-yet-valid')?.msg), /3\d{3} s ahead of the verifier's clock/)
  for (const l of lines) assert.ok(!JSON.stringify(l).includes(good.split('.')[2]!), 'no token (its signature) in any log line')

  // a minute later the next refusal of that device for that reason is logged, saying how many were not
  assert.notEqual(await pub(await tokenFor(gw, dev, { gatewayId: 'gw-1' })), 0)
  clock.advance(REFUSAL_LOG_EVERY_MS)
  assert.notEqual(await pub(await tokenFor(gw, dev, { gatewayId: 'gw-1' })), 0)
  const later = lines.filter((l) => l.level === 'info' && l.reason === 'wrong-audience')
  assert.equal(later.length, 2)
  assert.equal(later[1]!.alsoSince, 3, 'the two of the first minute not logged, and the one before the minute passed')
})

test('a flood of made-up ids: at most ten refusal lines a second, the rest summed up in one line', async (t) => {
  const clock = new ManualClock(Date.now())
  const lines: Record<string, unknown>[] = []
  const agent = await startTestAgent(t, { clock, logLevel: 'info', logSink: (l) => lines.push(JSON.parse(l) as Record<string, unknown>), flags: { authFailuresPerClient: '1000', authFailuresPerAddress: '100000' } })
  const { connectPacket, rawExchange } = await import('../fuzz/mqtt-wire.ts')
  for (let i = 0; i < 40; i++) await rawExchange(agent.mqttPort, connectPacket({ clientId: `ghost-${i}`, username: `ghost-${i}`, password: 'x.y.z' }))
  clock.advance(1000)
  await rawExchange(agent.mqttPort, connectPacket({ clientId: 'ghost-last', username: 'ghost-last', password: 'x.y.z' }))
  const perId = lines.filter((l) => l.level === 'info' && String(l.msg).startsWith('connect of ghost-'))
  assert.equal(perId.length, 11, 'ten in the first second, then one')
  const summary = lines.find((l) => typeof l.unlogged === 'number')
  assert.equal(summary?.unlogged, 30)
})
