// `edgewarden demo` run as an operator would, through bin/edgewarden.js, with
// its standard output a pipe (not a terminal): it must end on its own, exit
// 0, show the four retirements with their evidence (the fourth a device
// with a certificate of the site CA, whose serial goes on the CRL), and
// leave nothing behind (temporary folder, listening ports).
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { spawn } from 'node:child_process'
import { connect } from 'node:net'
import { dirname } from 'node:path'
import { test } from 'node:test'
import { ANSI_ESCAPE } from '../../agent/cli/colour.ts'
import { BIN, ROOT, runCli } from '../helpers/agent.ts'

type Line = Record<string, unknown> & { kind: string; step?: string }

const NO_COLOUR_ENV = { FORCE_COLOR: undefined, NO_COLOR: undefined }

/** Resolves true when something accepts a TCP connection on the port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port })
    s.once('connect', () => (s.destroy(), resolve(true)))
    s.once('error', () => resolve(false))
  })
}

test('edgewarden demo --json: four retirements completed with their evidence, then everything cleaned up', async (t) => {
  const t0 = performance.now()
  const run = await runCli(['demo', '--json'], { env: NO_COLOUR_ENV })
  t.diagnostic(`demo --json ran in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  assert.equal(run.code, 0, run.stderr + run.stdout.slice(-2000))
  const lines = run.stdout.trim().split('\n').map((l) => JSON.parse(l) as Line)
  const steps = (name: string) => lines.filter((l) => l.kind === 'step' && l.step === name)
  const retired = new Map(steps('retired').map((l) => [l.case as string, l]))

  // (a) connected: access removed with its live MQTT session, wiped by a signed ack.
  const a = retired.get('connected')?.evidence as Record<string, any>
  assert.ok(a, 'the connected device was retired')
  assert.equal(a.state, 'retired')
  assert.equal(a.sessionsClosed.mqtt, 1)
  assert.equal(a.wipe.status, 'done')
  assert.match(a.wipe.ackJti, /^[A-Za-z0-9_-]+$/)
  assert.equal(typeof a.accessRemovedMs, 'number')
  const residual = steps('residual')[0]!
  assert.match(residual.refused as string, /Not authorized/, 'a copy of its old key is refused')
  const alert = residual.alert as { deviceId: string; protocol: string }
  assert.deepEqual([alert.deviceId, alert.protocol], ['press-1', 'mqtt'], 'and the control plane hears of it')

  // (b) offline: the wipe was queued while it was away, delivered when it came back.
  const b = retired.get('offline')?.evidence as Record<string, any>
  assert.ok(b, 'the offline device was retired')
  assert.equal(b.sessionsClosed.mqtt, 0, 'nothing was live when it was retired')
  assert.equal(b.wipe.status, 'done')
  const queued = steps('queued')[0]!
  const events = lines.filter((l) => l.kind === 'event') as (Line & { seq: number; type: string; data: Record<string, unknown>; verified: boolean })[]
  const bId = retired.get('offline')!.deviceId
  const delivered = events.find((e) => e.type === 'action.delivered' && e.data.deviceId === bId)!
  assert.ok(lines.indexOf(queued) < lines.indexOf(steps('returns')[0]!), 'queued before it returned')
  assert.ok(lines.indexOf(steps('returns')[0]!) < lines.indexOf(delivered) || delivered.seq > (events.find((e) => e.type === 'action.queued' && e.data.deviceId === bId)!.seq), 'delivered once it returned')

  // (c) legacy Modbus: cut off at the proxy, wipe unsupported, closed by the operator's "wipe": false.
  const c = retired.get('legacy')?.evidence as Record<string, any>
  assert.ok(c, 'the legacy device was retired')
  assert.equal(steps('cut-off')[0]?.modbusException, 0x0a)
  assert.equal(steps('wipe')[0]?.wipe, 'unsupported')
  assert.deepEqual({ status: c.wipe.status, reason: c.wipe.reason }, { status: 'not-performed', reason: steps('operator')[0]?.reason })

  // (d) certificate device: connected over mutual TLS, retired, its serial on the CRL, a copy of certificate and key refused
  const enrolledCamera = steps('enrolled').find((l) => l.deviceId === 'camera-7')
  assert.match(String(enrolledCamera?.serial), /^[0-9a-f]{16,}$/)
  assert.ok(steps('connected').some((l) => l.deviceId === 'camera-7' && l.credential === 'x509' && l.sessions === 1))
  const d = retired.get('certificate')?.evidence as Record<string, any>
  assert.ok(d, 'the certificate device was retired')
  assert.equal(d.wipe.status, 'done')
  assert.deepEqual(d.certificatesRevoked, [enrolledCamera!.serial])
  assert.equal(d.credentialsRevoked, 1, 'its certificate is the credential it held')
  const crl = steps('crl')[0]!
  assert.deepEqual({ serial: crl.serial, reason: crl.reason }, { serial: enrolledCamera!.serial, reason: 'cessationOfOperation' })
  assert.match(String(steps('residual').find((l) => l.deviceId === 'camera-7')?.refused), /Not authorized|refused|5/i)

  // the inventory flags the devices whose offboarding cannot be proven end to end
  const inventory = new Map((steps('inventory')[0]!.devices as { id: string; exceptions?: string[] }[]).map((x) => [x.id, x.exceptions ?? []]))
  assert.deepEqual(inventory.get('plc-5'), ['no-wipe-path'])
  assert.deepEqual(inventory.get('hmi-6'), ['opcua-no-push'])
  assert.deepEqual(inventory.get('meter-3'), [])

  // every event signed and gapless; the audit log verifies; summary says so
  assert.ok(events.length > 20)
  assert.ok(events.every((e) => e.verified === true))
  assert.deepEqual(events.map((e) => e.seq), events.map((_, i) => i + 1))
  assert.equal((steps('audit')[0]?.verdict as { ok: boolean }).ok, true)
  const summary = lines.at(-1)!
  assert.equal(summary.kind, 'summary')
  assert.deepEqual(summary.retired, [
    { deviceId: 'press-1', case: 'connected', wipe: 'done' },
    { deviceId: 'sensor-2', case: 'offline', wipe: 'done' },
    { deviceId: 'plc-5', case: 'legacy', wipe: 'not-performed' },
    { deviceId: 'camera-7', case: 'certificate', wipe: 'done', serial: enrolledCamera!.serial },
  ])

  // nothing left: the temporary folder, the central broker, the site broker, the proxy
  const gw = steps('gateway')[0]!
  assert.equal(existsSync(dirname(gw.dataDir as string)), false, 'temporary folder removed')
  const central = Number(new URL(steps('central')[0]!.url as string).port)
  const site = Number(new URL(gw.siteBroker as string).port)
  for (const port of [central, site, gw.siteBrokerTls as number, gw.modbusProxy as number]) assert.equal(await listening(port), false, `port ${port} closed`)
})

test('demo human output: one readable line per step and event; colour on a terminal only', async () => {
  const { Reporter } = await import('../../agent/cli/demo.ts')
  const { describeEvidence } = await import('../../simulators/demo-scenario.ts')
  const evidence = {
    deviceId: 'press-1', state: 'retired', receivedAt: 1, accessRemovedMs: 3.2, sessionsClosed: { mqtt: 1, opcua: 0, modbus: 0 },
    network: { backend: 'none', rule: 'blocked' }, wipe: { status: 'done', ackJti: 'ack-1', at: 2 }, credentialsRevoked: 1, residualUse: 0,
  }
  const render = (isTTY: boolean, env: NodeJS.ProcessEnv = {}): string => {
    let text = ''
    const r = new Reporter(false, { isTTY, write: (s: string) => (text += s) }, env)
    r.section('(a) Retiring press-1')
    r.event({ seq: 20, type: 'device.state', data: { deviceId: 'press-1', from: 'active', to: 'retiring', cause: 'retire' }, iat: 0, jti: 'e', verified: true, raw: '' })
    r.event({ seq: 21, type: 'action.acked', data: { deviceId: 'press-1', actionId: 'act.1', act: 'wipe', status: 'done' }, iat: 0, jti: 'e', verified: false, raw: '' })
    r.step('retired', `press-1 retired: ${describeEvidence(evidence)}`, {}, 'ok')
    r.summary({}, '3 retirements completed')
    return text
  }
  const plain = render(false)
  assert.doesNotMatch(plain, ANSI_ESCAPE)
  const lines = plain.trim().split('\n')
  assert.equal(lines[0], '(a) Retiring press-1')
  assert.match(lines[1]!, /^ +\d+\.\d\ds  evt #20 +device\.state +press-1: active -> retiring \(retire\)  signed ok$/)
  assert.match(lines[2]!, /action\.acked +press-1: wipe act\.1 status done  SIGNATURE INVALID$/)
  assert.match(lines[3]!, /retired +press-1 retired: access removed in 3\.2 ms \(sessions closed: mqtt 1\); network none\/blocked; wipe done \(device-signed ack ack-1\); 1 credential\(s\) revoked; residual use 0$/)
  assert.match(lines[4]!, /done +3 retirements completed$/)
  assert.match(render(true), /\x1b\[32mretired/, 'green on a terminal')
  assert.doesNotMatch(render(true, { NO_COLOR: '1' }), ANSI_ESCAPE)
})

test('edgewarden demo interrupted (SIGINT) while it starts: exit 130, nothing left behind', async () => {
  const proc = spawn(process.execPath, [BIN, 'demo', '--json'], { cwd: ROOT, env: { ...process.env, ...NO_COLOUR_ENV }, stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)))
  let out = ''
  let err = ''
  proc.stderr.on('data', (c: Buffer) => (err += c.toString()))
  // the gateway and the control plane are up; the simulated devices are still loading or starting
  const lines = await new Promise<Line[]>((resolve, reject) => {
    proc.stdout.on('data', (c: Buffer) => {
      out += c.toString()
      if (/"step":"control"/.test(out)) resolve(out.trim().split('\n').map((l) => JSON.parse(l) as Line))
    })
    void exited.then(() => reject(new Error(`demo ended first: ${out} ${err}`)))
  })
  proc.kill('SIGINT')
  const t0 = performance.now()
  assert.equal(await exited, 130, err)
  assert.ok(performance.now() - t0 < 10_000, 'ends soon after ctrl-c')
  assert.match(err, /demo interrupted \(SIGINT\)/)
  const gw = lines.find((l) => l.step === 'gateway')!
  assert.equal(existsSync(dirname(gw.dataDir as string)), false, 'temporary folder removed')
  const central = Number(new URL(lines.find((l) => l.step === 'central')!.url as string).port)
  for (const port of [central, Number(new URL(gw.siteBroker as string).port), gw.modbusProxy as number]) assert.equal(await listening(port), false, `port ${port} closed`)
})
