// The operator's CLI against a real agent process: device verbs go through
// admin.sock, are audited as local:<user>, and illegal ones change nothing.
import assert from 'node:assert/strict'
import { readFileSync, statSync } from 'node:fs'
import { userInfo } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import type { MqttClient } from 'mqtt'
import type { AuditEntry } from '../../agent/store/audit.ts'
import type { DeviceView } from '../../agent/observe/views.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { mintToken } from '../../firmware-hooks/token.ts'
import { ROOT, runCli, spawnAgent, tempDir } from '../helpers/agent.ts'
import { closed, Inbox, mqttConnect } from '../helpers/mqtt-devices.ts'

const NO_STACK = /\n\s+at \S/

test('edgewarden device/audit/identity verbs against a running agent', { timeout: 90_000 }, async (t) => {
  const dataDir = join(tempDir(t), 'data')
  const agent = await spawnAgent(['--data-dir', dataDir, '--mqtt-port', '0', '--mqtt-host', '127.0.0.1', '--gateway', 'gw1'])
  t.after(async () => void (await agent.stop('SIGKILL')))
  const D = ['--data-dir', dataDir]
  const cli = (...args: string[]) => runCli([...args, ...D])
  const devKeyFile = join(dataDir, '..', 'd1.key')
  const user = userInfo().username

  // admin.sock is only for the agent's own user
  assert.equal(statSync(join(dataDir, 'admin.sock')).mode & 0o777, 0o600)

  const [keygen, unknownVerb, unknownFlag, idRunning] = await Promise.all([
    runCli(['keygen', '--out', devKeyFile]),
    runCli(['frobnicate', ...D]),
    cli('device', 'ls', '--bogus'),
    cli('identity', '--json'),
  ])
  assert.equal(keygen.code, 0, keygen.stderr)
  const devKey = keygen.stdout.trim()
  assert.match(devKey, /^[A-Za-z0-9_-]{43}$/)

  await t.test('unknown verb and unknown flag exit 2, naming the verbs and the help to read', () => {
    assert.equal(unknownVerb.code, 2)
    assert.match(unknownVerb.stderr, /unknown verb "frobnicate"\nverbs: start, identity, /)
    assert.match(unknownVerb.stderr, /\(see edgewarden --help\)\n$/)
    assert.equal(unknownFlag.code, 2)
    assert.match(unknownFlag.stderr, /^edgewarden: unknown option --bogus; options: --data-dir --json\n\(see edgewarden device ls --help\)\n$/)
    for (const r of [unknownVerb, unknownFlag]) assert.doesNotMatch(r.stderr, NO_STACK)
  })

  const add = await cli(
    'device', 'add', 'd1', '--public-key', devKey, '--criticality', 'high', '--owner', 'line 3 ops',
    '--modbus', '127.0.0.1:5020/3', '--ip', '10.0.0.7', '--mac', '02:00:00:00:00:01',
  )
  assert.equal(add.code, 0, add.stderr)
  assert.match(add.stdout, /enrolled d1 \(active\)/)

  const [ls, lsJson, show] = await Promise.all([cli('device', 'ls'), cli('device', 'ls', '--json'), cli('device', 'show', 'd1')])
  await t.test('device ls, ls --json, show', () => {
    assert.equal(ls.code, 0, ls.stderr)
    const rows = ls.stdout.trim().split('\n')
    assert.match(rows[0] ?? '', /^ID\s+STATE\s+CRITICALITY\s+PROTOCOLS/)
    assert.match(rows[1] ?? '', /^d1\s+active\s+high\s+modbus\s+token key\s+0\s.*\sprovable$/)
    assert.equal(rows.length, 2)

    assert.equal(lsJson.code, 0, lsJson.stderr)
    const list = JSON.parse(lsJson.stdout) as DeviceView[]
    assert.equal(list.length, 1)
    const d = list[0]!
    assert.equal(d.id, 'd1')
    assert.equal(d.state, 'active')
    assert.equal(d.criticality, 'high')
    assert.equal(d.owner, 'line 3 ops')
    assert.equal(d.publicKey, devKey)
    assert.deepEqual(d.protocols, ['modbus'])
    assert.deepEqual(d.spec.modbus, { host: '127.0.0.1', port: 5020, unitId: 3 })
    assert.deepEqual(d.spec.network, { ip: '10.0.0.7', mac: '02:00:00:00:00:01' })

    assert.equal(show.code, 0, show.stderr)
    assert.match(show.stdout, /^id\s+d1$/m)
    assert.match(show.stdout, /^state\s+active/m)
    assert.match(show.stdout, /^criticality\s+high$/m)
    assert.match(show.stdout, /^owner\s+line 3 ops$/m)
    assert.match(show.stdout, /^protocols\s+modbus$/m)
    assert.ok(show.stdout.includes(devKey))
  })

  const q = await cli('device', 'quarantine', 'd1', '--reason', 'odd traffic')
  assert.equal(q.code, 0, q.stderr)
  assert.match(q.stdout, /quarantine d1: quarantined/)
  const rel = await cli('device', 'release', 'd1', '--reason', 'cleared')
  assert.equal(rel.code, 0, rel.stderr)
  assert.match(rel.stdout, /release d1: active/)
  const rev = await cli('device', 'revoke', 'd1', '--reason', 'stolen', '--json')
  assert.equal(rev.code, 0, rev.stderr)
  const revBody = JSON.parse(rev.stdout) as { result: { from: string; to: string }; device: DeviceView }
  assert.deepEqual([revBody.result.from, revBody.result.to, revBody.device.stateReason], ['active', 'revoked', 'stolen'])

  await t.test('an illegal verb (release of a revoked device) exits 1 with a clear message', async () => {
    const bad = await cli('device', 'release', 'd1', '--reason', 'oops')
    assert.equal(bad.code, 1)
    assert.equal(bad.stdout, '')
    assert.match(bad.stderr, /^edgewarden: device d1: release cannot move it from revoked to active\n$/)
  })

  const retire = await cli('device', 'retire', 'd1', '--reason', 'end of life', '--json')
  assert.equal(retire.code, 0, retire.stderr)
  const retired = JSON.parse(retire.stdout) as { result: { from: string; to: string; wipeActionId: string }; device: DeviceView }
  // the refused release left the device revoked
  assert.equal(retired.result.from, 'revoked')
  assert.equal(retired.result.to, 'retiring')
  assert.deepEqual(retired.device.pendingActions.map((a) => [a.act, a.id]), [['wipe', retired.result.wipeActionId]])

  const [exp, verify] = await Promise.all([cli('audit', 'export'), cli('audit', 'verify')])
  await t.test('audit export and verify while the agent runs (through admin.sock)', () => {
    assert.equal(exp.code, 0, exp.stderr)
    const entries = exp.stdout.trim().split('\n').map((l) => JSON.parse(l) as AuditEntry)
    assert.deepEqual(
      entries.map((e) => [e.action, e.actor, e.subject ?? null]),
      [
        ['gateway.created', 'gateway', null],
        ['device.enroll', `local:${user}`, 'd1'],
        ['device.quarantine', `local:${user}`, 'd1'],
        ['device.release', `local:${user}`, 'd1'],
        ['device.revoke', `local:${user}`, 'd1'],
        // no entry for the refused release
        ['device.retire', `local:${user}`, 'd1'],
        ['retire.access-removed', `local:${user}`, 'd1'],
        ['action.queued', `local:${user}`, 'd1'],
      ],
    )
    assert.deepEqual(entries.map((e) => e.seq), [1, 2, 3, 4, 5, 6, 7, 8])
    assert.equal((entries[2]!.data as { reason: string }).reason, 'odd traffic')
    assert.equal((entries[4]!.data as { reason: string }).reason, 'stolen')
    assert.equal(verify.code, 0, verify.stderr)
    assert.match(verify.stdout, /audit log verifies: 8 entries/)
  })

  assert.equal(idRunning.code, 0, idRunning.stderr)
  const running = JSON.parse(idRunning.stdout) as { site: string; gateway: string; publicKey: string }
  assert.equal(running.publicKey, agent.ready.publicKey)
  assert.equal(running.gateway, 'gw1')

  assert.equal(await agent.stop(), 0)
  await t.test('identity --json after the agent stopped gives the same key', async () => {
    const idStopped = await cli('identity', '--json')
    assert.equal(idStopped.code, 0, idStopped.stderr)
    assert.deepEqual(JSON.parse(idStopped.stdout), running)
  })
})

test('device add --acl-publish/--acl-subscribe grant topics through the running agent; --modbus-legacy; a $ publish closes the connection', { timeout: 90_000 }, async (t) => {
  const dataDir = join(tempDir(t), 'data')
  const agent = await spawnAgent(['--data-dir', dataDir, '--mqtt-port', '0', '--mqtt-host', '127.0.0.1', '--gateway', 'gw1'])
  t.after(async () => void (await agent.stop('SIGKILL')))
  const cli = (...args: string[]) => runCli([...args, '--data-dir', dataDir])
  const [historian, pump, plc] = await Promise.all([keygen(), keygen(), keygen()])
  const key = (k: { publicKey: Uint8Array }): string => `--public-key=${publicKeyToB64(k.publicKey)}`

  const [add, addPump, addPlc, badFilter, legacyAlone] = await Promise.all([
    cli('device', 'add', 'historian', key(historian), '--acl-subscribe', 'dev/+/tele/#', '--acl-subscribe', 'site/alarms/#', '--acl-publish', 'site/alarms/historian', '--json'),
    cli('device', 'add', 'pump-7', key(pump)),
    cli('device', 'add', 'plc-3', key(plc), '--modbus', '127.0.0.1:5020/1', '--modbus-legacy'),
    cli('device', 'add', 'bad-acl', key(pump), '--acl-subscribe', 'a/#/b'),
    cli('device', 'add', 'lonely', key(plc), '--modbus-legacy'),
  ])
  assert.equal(add.code, 0, add.stderr)
  assert.deepEqual((JSON.parse(add.stdout) as DeviceView).spec.acl, { publish: ['site/alarms/historian'], subscribe: ['dev/+/tele/#', 'site/alarms/#'] })
  assert.equal(addPump.code, 0, addPump.stderr)
  assert.equal(addPlc.code, 0, addPlc.stderr)

  await t.test('the acl and hookBase: null are in the record (device show --json), and in device show', async () => {
    const [showJson, show, plcJson] = await Promise.all([cli('device', 'show', 'historian', '--json'), cli('device', 'show', 'historian'), cli('device', 'show', 'plc-3', '--json')])
    assert.equal(showJson.code, 0, showJson.stderr)
    assert.deepEqual((JSON.parse(showJson.stdout) as DeviceView).spec.acl, { publish: ['site/alarms/historian'], subscribe: ['dev/+/tele/#', 'site/alarms/#'] })
    assert.match(show.stdout, /^acl publish\s+site\/alarms\/historian$/m)
    assert.match(show.stdout, /^acl subscribe\s+dev\/\+\/tele\/# site\/alarms\/#$/m)
    assert.equal(plcJson.code, 0, plcJson.stderr)
    assert.deepEqual((JSON.parse(plcJson.stdout) as DeviceView).spec.modbus, { host: '127.0.0.1', port: 5020, unitId: 1, hookBase: null })
  })

  await t.test('an invalid filter is refused by the agent; --modbus-legacy without --modbus is a usage error', () => {
    assert.equal(badFilter.code, 1)
    assert.match(badFilter.stderr, /not a valid MQTT topic filter/)
    assert.doesNotMatch(badFilter.stderr, NO_STACK)
    assert.equal(legacyAlone.code, 2)
    assert.match(legacyAlone.stderr, /--modbus-legacy goes with --modbus/)
  })

  await t.test('--help lists the flags', async () => {
    const help = await runCli(['device', 'add', '--help'])
    for (const f of ['--acl-publish FILTER', '--acl-subscribe FILTER', '--modbus-legacy', '--opcua-tofu']) assert.ok(help.stdout.includes(f), `${f} in --help`)
  })

  await t.test('the grant works on the broker; a publish to a $ topic closes the connection (docs/operations.md says so)', async () => {
    const port = (agent.ready.mqtt as { mqtt: number }).mqtt
    const connect = async (id: string, secretKey: Uint8Array): Promise<MqttClient> => {
      const r = await mqttConnect(port, { clientId: id, username: id, password: await mintToken({ deviceId: id, gatewayId: 'gw1', secretKey }) })
      assert.ok(r.ok, `${id} admitted${r.ok ? '' : `: ${r.message}`}`)
      t.after(() => r.client.endAsync(true))
      return r.client
    }
    const h = await connect('historian', historian.secretKey)
    const p = await connect('pump-7', pump.secretKey)
    const inbox = new Inbox(h)
    const granted = await h.subscribeAsync('dev/+/tele/#', { qos: 1 })
    assert.deepEqual(granted.map((g) => g.qos), [1], 'granted by the acl')
    // not in the acl: SUBACK 0x80, which mqtt.js reports as a failed subscribe; the connection stays
    await assert.rejects(h.subscribeAsync('plant/other/#', { qos: 1 }), /Subscribe error/)
    assert.ok(h.connected)
    await p.publishAsync('dev/pump-7/tele/temp', '21.5', { qos: 1 })
    await inbox.waitFor((m) => m.topic === 'dev/pump-7/tele/temp' && m.payload === '21.5')
    const gone = closed(p)
    p.publish('$SYS/edgewarden/hello', 'x', { qos: 1 })
    await gone
    const ops = readFileSync(join(ROOT, 'docs', 'operations.md'), 'utf8')
    const section = ops.slice(ops.indexOf('## Site broker topic rules'))
    assert.ok(ops.includes('## Site broker topic rules'), 'docs/operations.md has the topic rules')
    for (const s of ['`$`', 'closes the connection', 'U+0000', 'maxPacketBytes', '--acl-subscribe']) assert.ok(section.includes(s), `the topic rules mention ${s}`)
  })
  assert.equal(await agent.stop(), 0)
})

test('the audit actor is the admin socket owner, not a name the client sends (kept as an unconfirmed claim)', async (t) => {
  const { startTestAgent } = await import('../helpers/agent.ts')
  const { request } = await import('node:http')
  const agent = await startTestAgent(t)
  const post = (path: string, body: unknown, actorHeader: string): Promise<number> =>
    new Promise((resolve, reject) => {
      const payload = JSON.stringify(body)
      const req = request({ socketPath: agent.adminPath, method: 'POST', path, headers: { 'content-type': 'application/json', 'x-edgewarden-actor': actorHeader, 'content-length': Buffer.byteLength(payload) } }, (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode ?? 0))
      })
      req.on('error', reject)
      req.end(payload)
    })
  const key = publicKeyToB64((await keygen()).publicKey)
  assert.equal(await post('/v1/devices', { device: { id: 'd9', publicKey: key } }, 'ceo'), 200)
  assert.equal(await post('/v1/devices/d9/quarantine', { reason: 'odd' }, 'root-impersonator'), 200)
  const { exportAuditLog } = await import('../../agent/store/audit.ts')
  const entries: AuditEntry[] = []
  for await (const e of exportAuditLog(agent.gateway.store)) entries.push(e)
  const mine = entries.filter((e) => e.subject === 'd9')
  assert.deepEqual(mine.map((e) => e.actor), [`local:${userInfo().username}`, `local:${userInfo().username}`])
  assert.deepEqual(mine.map((e) => (e.data as { claimedBy?: string }).claimedBy), ['ceo', 'root-impersonator'])
})

test('the admin socket runs the op table the control plane runs: a local retire takes wipe: false and deadlineS, and bad arguments are refused by the same schema', async (t) => {
  const { startTestAgent } = await import('../helpers/agent.ts')
  const { adminRequest } = await import('../../agent/cli/admin-client.ts')
  const agent = await startTestAgent(t)
  const key = publicKeyToB64((await keygen()).publicKey)
  await agent.gateway.enroll({ id: 'gone-1', publicKey: key }, { actor: 'local:test' })
  await agent.gateway.enroll({ id: 'late-1', publicKey: publicKeyToB64((await keygen()).publicKey) }, { actor: 'local:test' })
  const dir = agent.config.dataDir
  const bad = await adminRequest(dir, 'POST', '/v1/devices/late-1/retire', { deadlineS: -5 })
  assert.equal(bad.status, 400)
  assert.match(bad.text, /deadlineS/)
  assert.equal(agent.gateway.getDevice('late-1')?.state, 'active', 'refused arguments change nothing')
  // destroyed on site: closed at once, no wipe, with the operator's reason
  const gone = await adminRequest(dir, 'POST', '/v1/devices/gone-1/retire', { wipe: false, reason: 'shredded' })
  assert.equal(gone.status, 200, gone.text)
  const body = gone.body as { result: { to: string; evidence: { wipe: { status: string; reason: string } } } }
  assert.equal(body.result.to, 'retired')
  assert.deepEqual([body.result.evidence.wipe.status, body.result.evidence.wipe.reason], ['not-performed', 'shredded'])
  // a deadline of its own: the retirement waits for the wipe until then
  const late = await adminRequest(dir, 'POST', '/v1/devices/late-1/retire', { deadlineS: 3600 })
  assert.equal(late.status, 200, late.text)
  assert.equal(agent.gateway.getDevice('late-1')?.state, 'retiring')
  const wipe = agent.gateway.actions.pending('late-1').find((a) => a.act === 'wipe')!
  assert.ok(Math.abs(wipe.deadline - (agent.gateway.nowS() + 3600)) <= 2, `the wipe's deadline follows deadlineS: ${wipe.deadline}`)
})
