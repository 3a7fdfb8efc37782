// The HTTP endpoint (--http-port): metric values after real operations over
// a real Mosquitto uplink and a real MQTT device, the health endpoints, the
// default binding, read-only methods, and the metrics the operations guide
// documents.
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { networkInterfaces } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { adminRequest } from '../../agent/cli/admin-client.ts'
import { startHttpEndpoint } from '../../agent/observe/http-server.ts'
import { createLogger } from '../../agent/observe/logger.ts'
import { loadConfig } from '../../agent/runtime/config.ts'
import { createMetrics } from '../../agent/observe/metrics.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { ControlPlane, publicKeyB64 } from '../../simulators/control-plane.ts'
import { ROOT, spawnAgent, startTestAgent, tempDir } from '../helpers/agent.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { ackFor, testKey } from '../helpers/device-keys.ts'
import { closed, connectDevice, mqttConnect, tokenFor, type TestDevice } from '../helpers/mqtt-devices.ts'

type Samples = Map<string, number>

async function scrape(port: number): Promise<Samples> {
  const r = await fetch(`http://127.0.0.1:${port}/metrics`)
  assert.equal(r.status, 200)
  assert.match(r.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/)
  const samples: Samples = new Map()
  for (const line of (await r.text()).split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$/.exec(line)
    if (m) samples.set(m[1]!, Number(m[2]))
  }
  return samples
}

/** One sample by name and labels, in the order prom-client prints them (the order the metric declares). */
function value(s: Samples, name: string, labels: Record<string, string> = {}): number | undefined {
  const l = Object.entries(labels).map(([k, v]) => `${k}="${v}"`)
  return s.get(l.length ? `${name}{${l.join(',')}}` : name)
}

/** Scrape until `pred` holds (a condition the agent reaches on its own, e.g. an uplink reconnect), within a bound. */
async function scrapeUntil(port: number, pred: (s: Samples) => boolean, what: string, timeoutMs = 20_000): Promise<Samples> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const s = await scrape(port)
    if (pred(s)) return s
    if (Date.now() > end) throw new Error(`metrics never showed ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

async function newDevice(id: string): Promise<TestDevice> {
  const kp = await keygen()
  return { id, secretKey: kp.secretKey, publicKey: publicKeyToB64(kp.publicKey) }
}

/** A GET with any Host header (fetch forbids setting it). */
function rawGet(port: number, path: string, host: string, method = 'GET'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method, headers: { host } }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

test('metrics report the fleet, sessions, actions, commands, revocation latency, residual use, uplink and outbox after real operations', async (t) => {
  const m = await Mosquitto.start(t)
  const cpKey = generateKeyPairSync('ed25519').privateKey
  const agent = await startTestAgent(t, { flags: { uplink: m.url, cpKey: [`cp1=${publicKeyB64(cpKey)}`], httpPort: '0' } })
  const gw = agent.gateway
  const port = agent.http!.port
  const cp = new ControlPlane({ broker: m.url, site: 'site1', gateway: 'gw1', key: cpKey, kid: 'cp1', gatewayKey: gw.key.publicKeyB64 })
  await cp.connect()
  t.after(() => cp.close())

  const empty = await scrape(port)
  assert.equal(value(empty, 'edgewarden_devices', { state: 'active' }), 0)
  assert.equal(value(empty, 'edgewarden_info', { version: '0.1.0', site: 'site1', gateway: 'gw1' }), 1)

  // Two devices by signed command, one through the admin socket.
  const pump1 = await newDevice('pump-1')
  const pump2 = await newDevice('pump-2')
  const valve3 = await newDevice('valve-3')
  for (const d of [pump1, valve3]) assert.equal((await cp.run('device.enroll', { device: { id: d.id, publicKey: d.publicKey, criticality: 'high' } })).type, 'cmd.completed')
  assert.equal((await adminRequest(agent.config.dataDir, 'POST', '/v1/devices', { device: { id: pump2.id, publicKey: pump2.publicKey } })).status, 200)

  const client = await connectDevice(gw, agent.mqttPort, pump1)
  // pump-2 is offline: its wipe waits in the queue.
  assert.equal((await cp.run('device.wipe', { deviceId: 'pump-2' })).type, 'cmd.completed')
  let s = await scrapeUntil(port, (x) => value(x, 'edgewarden_uplink_connected') === 1, 'the uplink connected')
  assert.equal(value(s, 'edgewarden_devices', { state: 'active' }), 3)
  assert.equal(value(s, 'edgewarden_devices', { state: 'quarantined' }), 0)
  assert.equal(value(s, 'edgewarden_sessions', { protocol: 'mqtt' }), 1)
  assert.equal(value(s, 'edgewarden_sessions', { protocol: 'opcua' }), 0)
  assert.equal(value(s, 'edgewarden_pending_actions', { act: 'wipe' }), 1)
  assert.equal(value(s, 'edgewarden_pending_actions', { act: 'renew' }), 0)
  assert.equal(value(s, 'edgewarden_acks_refused_total', { reason: 'bad' }), 0)
  // pump-2's ack of its wipe, forged, handed over twice at once: one checked and refused, its copy given the same answer
  const forged = ackFor(testKey().privateKey, 'pump-2', 'gw1', gw.actions.pending('pump-2')[0]!.id, 'done')
  const answers = await Promise.all([1, 2].map(() => agent.actions.ack('pump-2', forged, 'mqtt')))
  assert.deepEqual(answers.map((a) => a.reason), ['signature is not by a currently valid key of the device', 'signature is not by a currently valid key of the device'])
  s = await scrape(port)
  assert.equal(value(s, 'edgewarden_acks_refused_total', { reason: 'bad' }), 1)
  assert.equal(value(s, 'edgewarden_acks_refused_total', { reason: 'repeated' }), 1)
  assert.equal(value(s, 'edgewarden_pending_actions', { act: 'wipe' }), 1, 'the wipe still pending')
  // Fresh credentials (the default lifetime is far off) on all three active devices.
  const far = ['expired', '1d', '7d', '30d', 'later', 'none'].filter((w) => value(s, 'edgewarden_credentials_expiring', { within: w }) === 3)
  assert.equal(far.length, 1, 'all three in one bucket')
  assert.equal(value(s, 'edgewarden_credentials_expiring', { within: 'expired' }), 0)
  assert.equal(value(s, 'edgewarden_commands_total', { outcome: 'accepted', reason: '' }), 3)
  assert.equal(value(s, 'edgewarden_commands_total', { outcome: 'completed', reason: '' }), 3)
  assert.equal(value(s, 'edgewarden_uplink_configured'), 1)

  // Quarantine the connected device by command: its session is cut, and the latency is observed once.
  const q = await cp.run('device.quarantine', { deviceId: 'pump-1', reason: 'suspect' })
  assert.equal(q.type, 'cmd.completed')
  await closed(client)
  s = await scrape(port)
  assert.equal(value(s, 'edgewarden_devices', { state: 'active' }), 2)
  assert.equal(value(s, 'edgewarden_devices', { state: 'quarantined' }), 1)
  assert.equal(value(s, 'edgewarden_sessions', { protocol: 'mqtt' }), 0)
  assert.equal(value(s, 'edgewarden_revocation_latency_seconds_count', { op: 'quarantine' }), 1)
  const accessRemovedMs = (q.data.evidence as { accessRemovedMs: number }).accessRemovedMs
  assert.ok(Math.abs(value(s, 'edgewarden_revocation_latency_seconds_sum', { op: 'quarantine' })! - accessRemovedMs / 1000) < 1e-9)
  assert.equal(value(s, 'edgewarden_revocation_latency_seconds_bucket', { le: '+Inf', op: 'quarantine' }), 1)
  assert.equal(value(s, 'edgewarden_revocation_latency_seconds_count', { op: 'revoke' }), 0)
  assert.equal(value(s, 'edgewarden_commands_total', { outcome: 'completed', reason: '' }), 4)

  // A refused command and a failed one, each under its reason.
  const rejected = cp.waitFor((e) => e.type === 'cmd.rejected')
  await cp.send('device.revoke', { deviceId: 'ghost' })
  await rejected
  assert.equal((await cp.run('device.reenroll', { deviceId: 'pump-1' })).type, 'cmd.failed')

  // Revoked, pump-1 tries again: refused, and counted as residual use.
  assert.equal((await cp.run('device.revoke', { deviceId: 'pump-1', reason: 'stolen' })).type, 'cmd.completed')
  const refused = await mqttConnect(agent.mqttPort, { clientId: pump1.id, username: pump1.id, password: await tokenFor(gw, pump1) })
  assert.equal(refused.ok, false)
  await agent.mqttPolicy.residual.idle()
  s = await scrape(port)
  assert.equal(value(s, 'edgewarden_commands_total', { outcome: 'rejected', reason: 'unknown-device' }), 1)
  assert.equal(value(s, 'edgewarden_commands_total', { outcome: 'failed', reason: 'illegal-transition' }), 1)
  assert.equal(value(s, 'edgewarden_commands_total', { outcome: 'accepted', reason: '' }), 6)
  assert.equal(value(s, 'edgewarden_commands_total', { outcome: 'completed', reason: '' }), 5)
  assert.equal(value(s, 'edgewarden_revocation_latency_seconds_count', { op: 'revoke' }), 1)
  assert.equal(value(s, 'edgewarden_devices', { state: 'revoked' }), 1)
  assert.equal(value(s, 'edgewarden_residual_use_alerts_total'), 1)
  assert.equal(value(s, 'edgewarden_residual_use_attempts_total'), 1)

  // Central broker down: the site goes on, events wait in the outbox, and drain once it is back.
  await m.stop()
  s = await scrapeUntil(port, (x) => value(x, 'edgewarden_uplink_connected') === 0, 'the uplink down')
  const ready = await fetch(`http://127.0.0.1:${port}/readyz`)
  assert.equal(ready.status, 200, 'a site without its uplink is still ready')
  assert.deepEqual(await ready.json(), { status: 'ready', uplink: 'down' })
  const before = value(s, 'edgewarden_outbox_depth')!
  assert.equal(before, gw.outbox.depth)
  assert.equal((await adminRequest(agent.config.dataDir, 'POST', '/v1/devices/valve-3/quarantine', { reason: 'maintenance' })).status, 200)
  s = await scrape(port)
  assert.equal(value(s, 'edgewarden_outbox_depth'), before + 1, 'one device.state event waits')
  assert.equal(value(s, 'edgewarden_devices', { state: 'quarantined' }), 1)
  await m.restart()
  s = await scrapeUntil(port, (x) => value(x, 'edgewarden_uplink_connected') === 1 && value(x, 'edgewarden_outbox_depth') === 0, 'the outbox drained after reconnect', 30_000)
})

test('/healthz and /readyz, read-only methods, Host check, and the endpoint bound to 127.0.0.1 by default', async (t) => {
  const agent = await startTestAgent(t, { flags: { httpPort: '0' } })
  const port = agent.http!.port
  assert.equal(agent.http!.host, '127.0.0.1')
  const health = await fetch(`http://127.0.0.1:${port}/healthz`)
  assert.equal(health.status, 200)
  assert.deepEqual(await health.json(), { status: 'ok', store: 'open' })
  const ready = await fetch(`http://127.0.0.1:${port}/readyz`)
  assert.equal(ready.status, 200)
  assert.deepEqual(await ready.json(), { status: 'ready', uplink: 'not configured' })

  for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
    const r = await fetch(`http://127.0.0.1:${port}/api/status`, { method })
    assert.equal(r.status, 405, method)
  }
  assert.equal((await fetch(`http://127.0.0.1:${port}/nope`)).status, 404)
  // DNS rebinding: a name other than localhost is refused on a loopback bind.
  assert.equal((await rawGet(port, '/api/status', 'evil.example:80')).status, 403)
  assert.equal((await rawGet(port, '/api/status', `localhost:${port}`)).status, 200)
  assert.equal((await rawGet(port, '/metrics', `[::1]:${port}`)).status, 200)

  // Not reachable on any other address of this machine.
  const others = Object.values(networkInterfaces())
    .flat()
    .filter((a) => a && a.family === 'IPv4' && !a.internal)
    .map((a) => a!.address)
  for (const addr of others) {
    await assert.rejects(fetch(`http://${addr}:${port}/healthz`), `not listening on ${addr}`)
  }
})

test('/readyz says not ready while starting and stopping; /healthz fails once the store is closed', async (t) => {
  const agent = await startTestAgent(t)
  assert.equal(agent.http, null, 'no endpoint without --http-port')
  const metrics = createMetrics({ gateway: agent.gateway, adapters: [agent.broker], uplink: null, residualAttempts: () => 0 })
  t.after(() => metrics.close())
  const ep = await startHttpEndpoint(agent.gateway, { gateway: agent.gateway, adapters: [agent.broker], uplink: null, host: '127.0.0.1', port: 0, metrics: metrics.registry, log: createLogger('silent') })
  t.after(() => ep.close())
  const readyz = async (): Promise<[number, unknown]> => {
    const r = await fetch(`http://127.0.0.1:${ep.port}/readyz`)
    return [r.status, await r.json()]
  }
  assert.deepEqual(await readyz(), [503, { status: 'starting', uplink: 'not configured' }])
  ep.setReadiness('ready')
  assert.deepEqual(await readyz(), [200, { status: 'ready', uplink: 'not configured' }])
  ep.setReadiness('stopping')
  assert.deepEqual(await readyz(), [503, { status: 'stopping', uplink: 'not configured' }])
  ep.setReadiness('ready')
  await agent.stop()
  const health = await fetch(`http://127.0.0.1:${ep.port}/healthz`)
  assert.equal(health.status, 503)
  assert.equal((await readyz())[0], 503)
})

test('the real command: --http-port in the ready line on 127.0.0.1; no endpoint without it', async (t) => {
  const on = await spawnAgent(['--data-dir', tempDir(t), '--mqtt-port', '0', '--http-port', '0', '--log-level', 'info'])
  t.after(() => on.stop('SIGKILL'))
  const http = on.ready.http as { host: string; port: number }
  assert.equal(http.host, '127.0.0.1')
  assert.equal((await fetch(`http://127.0.0.1:${http.port}/readyz`)).status, 200)
  const page = await fetch(`http://127.0.0.1:${http.port}/`)
  assert.equal(page.status, 200)
  assert.match(page.headers.get('content-security-policy') ?? '', /default-src 'none'; script-src 'sha256-/)
  assert.equal(await on.stop(), 0)

  const off = await spawnAgent(['--data-dir', tempDir(t), '--mqtt-port', '0', '--log-level', 'info'])
  t.after(() => off.stop('SIGKILL'))
  assert.equal(off.ready.http, null)
  assert.equal(await off.stop(), 0)
})

test('every metric docs/operations.md explains is on /metrics', async (t) => {
  const agent = await startTestAgent(t, { flags: { httpPort: '0' } })
  const text = await (await fetch(`http://127.0.0.1:${agent.http!.port}/metrics`)).text()
  const exposed = new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((x) => x[1]!))
  const doc = readFileSync(join(ROOT, 'docs', 'operations.md'), 'utf8')
  const documented = new Set([...doc.matchAll(/`(edgewarden_[a-z_]+)(?:\{[^`]*\})?`/g)].map((x) => x[1]!.replace(/_(bucket|sum|count)$/, '')))
  assert.ok(documented.size >= 12, `only ${documented.size} metrics documented`)
  for (const name of documented) assert.ok(exposed.has(name), `${name} is documented but not exposed`)
  for (const name of exposed) if (name.startsWith('edgewarden_')) assert.ok(documented.has(name), `${name} is exposed but not documented`)
})

test('deploy: the systemd unit verifies and the example config is valid', async (t) => {
  const config = loadConfig({ flags: { config: join(ROOT, 'deploy', 'config.example.yaml'), dataDir: tempDir(t) }, env: {} })
  assert.deepEqual(config.http, { host: '127.0.0.1', port: 9464 })
  assert.equal(config.quarantine, 'nftables')
  if (spawnSync('systemd-analyze', ['--version']).error) return t.skip('systemd-analyze is not installed')
  // As deploy/install.sh does: the unit names the node binary of this machine.
  const unit = join(tempDir(t), 'edgewarden.service')
  writeFileSync(unit, readFileSync(join(ROOT, 'deploy', 'edgewarden.service'), 'utf8').replace('/usr/bin/node ', `${process.execPath} `))
  const r = spawnSync('systemd-analyze', ['verify', unit], { encoding: 'utf8', timeout: 30_000 })
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.stderr.trim(), '', 'no unknown or misspelt settings')
})
