// `edgewarden demo --control-plane` run as an operator would, through
// bin/edgewarden.js, its output a pipe: the control-plane service is the
// demo's control plane (everything through its HTTP API); it must end on
// its own, exit 0, show both retirements with their evidence (one while the
// gateway was offline, which the API said was waiting), an export that
// verifies offline, and leave nothing behind (temporary folder, ports).
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { connect } from 'node:net'
import { dirname } from 'node:path'
import { test } from 'node:test'
import { runCli } from '../helpers/agent.ts'

type Line = Record<string, any> & { kind: string; step?: string }

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port })
    s.once('connect', () => (s.destroy(), resolve(true)))
    s.once('error', () => resolve(false))
  })
}

test('edgewarden demo --control-plane --json: retirements through the service, with evidence, then everything cleaned up', async (t) => {
  const t0 = performance.now()
  const run = await runCli(['demo', '--control-plane', '--json'], { env: { FORCE_COLOR: undefined, NO_COLOR: undefined }, timeoutMs: 120_000 })
  t.diagnostic(`demo --control-plane ran in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  assert.equal(run.code, 0, run.stderr + run.stdout.slice(-2000))
  const lines = run.stdout.trim().split('\n').map((l) => JSON.parse(l) as Line)
  const step = (name: string): Line[] => lines.filter((l) => l.kind === 'step' && l.step === name)

  const service = step('service')[0]!
  assert.equal(service.database, 'pglite')
  assert.match(service.url, /^http:\/\/127\.0\.0\.1:\d+$/)
  assert.equal(step('enrolled').length, 2)
  assert.ok(step('enrolled').every((l) => l.state === 'completed'))

  const retired = new Map(step('retired').map((l) => [l.case as string, l]))
  const a = retired.get('connected')!
  assert.equal(a.deviceId, 'press-1')
  assert.equal(a.evidence.wipe.status, 'done')
  assert.equal(a.evidence.state, 'retired')
  assert.ok(['closed', 'closed-with-exceptions'].includes(a.verdict), a.verdict)
  // (b) the API said the command waited for the offline gateway, then it ran when the gateway was back
  const waiting = step('waiting')[0]!
  assert.equal(waiting.state, 'sent')
  assert.match(waiting.waiting, /offline/)
  const b = retired.get('gateway-offline')!
  assert.equal(b.deviceId, 'sensor-2')
  assert.equal(b.evidence.wipe.status, 'done')
  assert.ok(lines.indexOf(step('offline')[0]!) < lines.indexOf(waiting) && lines.indexOf(waiting) < lines.indexOf(step('returns')[0]!) && lines.indexOf(step('returns')[0]!) < lines.indexOf(b))

  const exported = step('export')[0]!
  assert.equal(exported.failures, 0)
  assert.ok(exported.events >= 15, `${exported.events} events`)
  assert.deepEqual(step('fleet')[0]!.devicesByState, [{ state: 'retired', total: 2, bySite: { 'demo-site': 2 } }])
  const summary = lines.at(-1)!
  assert.equal(summary.kind, 'summary')
  assert.deepEqual(summary.retired.map((x: Line) => [x.deviceId, x.case, x.wipe]), [['press-1', 'connected', 'done'], ['sensor-2', 'gateway-offline', 'done']])

  // nothing left: the temporary folder, the central broker, the service, the site broker
  const gw = step('gateway')[0]!
  assert.equal(existsSync(dirname(gw.dataDir)), false, 'temporary folder removed')
  const ports = [new URL(step('central')[0]!.url).port, new URL(service.url).port, new URL(gw.siteBroker).port].map(Number)
  for (const port of ports) assert.equal(await listening(port), false, `port ${port} closed`)
})
