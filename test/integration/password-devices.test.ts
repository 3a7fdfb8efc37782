// Legacy devices that only know a fixed user name and password (PROTOCOL §3
// `password`, §5), with mosquitto_pub/-sub as the device: admitted by the
// stored scrypt hash, refused on a wrong password without the device itself
// being locked out, rotated by enrolling a new hash (the old password's
// sessions closed at once), retired with wipe "unsupported" at the deadline;
// the password never in a log line, at trace.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { hashPassword, parsePhc, verifyPassword } from '../../agent/trust/password.ts'
import { ManualClock } from '../../agent/runtime/clock.ts'
import { startTestAgent } from '../helpers/agent.ts'
import { mosquitto, WHO } from '../helpers/mqtt-devices.ts'
import { connectPacket, rawExchange } from '../fuzz/mqtt-wire.ts'
import { until } from '../helpers/wait.ts'

const args = (port: number, id: string, password: string): string[] => ['-h', '127.0.0.1', '-p', String(port), '-i', id, '-u', id, '-P', password]

test('scrypt PHC hashes: made and verified; a wrong password, a damaged hash, are refused', async () => {
  const phc = await hashPassword('plug-secret-1', { ln: 10 })
  assert.match(phc, /^\$scrypt\$ln=10,r=8,p=1\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$/)
  assert.ok(parsePhc(phc))
  assert.equal(await verifyPassword(phc, 'plug-secret-1'), true)
  assert.equal(await verifyPassword(phc, 'plug-secret-2'), false)
  assert.equal(await verifyPassword(phc.replace('ln=10', 'ln=11'), 'plug-secret-1'), false)
  assert.equal(await verifyPassword('$scrypt$nonsense', 'x'), false)
})

test('a password device with mosquitto clients: admitted, in its own namespace; a wrong password refused, and a barrage of them does not lock it out', async (t) => {
  const lines: string[] = []
  const agent = await startTestAgent(t, { logLevel: 'trace', logSink: (l) => lines.push(l), flags: { authFailuresPerClient: '3', authFailuresPerAddress: '5' } })
  const gw = agent.gateway
  const port = agent.mqttPort
  const secret = 'Plug#2009-default'
  await gw.enroll({ id: 'plug-1', password: await hashPassword(secret, { ln: 12 }) }, WHO)
  const ok = mosquitto('mosquitto_pub', [...args(port, 'plug-1', secret), '-t', 'dev/plug-1/tele/power', '-m', '42'])
  assert.equal(await ok.exited, 0, ok.stderr())
  const outside = mosquitto('mosquitto_pub', [...args(port, 'plug-1', secret), '-t', 'dev/other/tele', '-m', 'x'])
  await outside.exited
  const wrong = mosquitto('mosquitto_pub', [...args(port, 'plug-1', 'guess'), '-t', 'dev/plug-1/tele', '-m', 'x'])
  assert.notEqual(await wrong.exited, 0)
  assert.match(wrong.stderr(), /not authori[sz]ed/i)
  // someone guesses at plug-1 from the device's own address until both the id and the address are blocked
  for (let i = 0; i < 20; i++) {
    const r = await rawExchange(port, connectPacket({ clientId: 'plug-1', username: 'plug-1', password: `guess-${i}` }))
    assert.notEqual(r.connack, 0)
  }
  assert.ok(agent.mqttPolicy.throttle.check('plug-1', '127.0.0.1'), 'blocked')
  const checks = agent.mqttPolicy.admission.stats.passwordChecks
  const still = mosquitto('mosquitto_pub', [...args(port, 'plug-1', secret), '-t', 'dev/plug-1/tele/power', '-m', '43'])
  assert.equal(await still.exited, 0, `the device's own password still gets in: ${still.stderr()}`)
  assert.equal(agent.mqttPolicy.admission.stats.passwordChecks, checks, 'recognised without running scrypt again')
  assert.ok(!lines.some((l) => l.includes(secret) || l.includes('guess-1')), 'no password in any log line, at trace')
})

test('rotation by enrolling a new hash closes the old password session at once; renew is refused; retirement ends with wipe unsupported at the deadline', async (t) => {
  const clock = new ManualClock(Date.now())
  const agent = await startTestAgent(t, { clock })
  const gw = agent.gateway
  const port = agent.mqttPort
  await gw.enroll({ id: 'bridge-1', password: await hashPassword('old-pass', { ln: 10 }) }, WHO)
  const sub = mosquitto('mosquitto_sub', [...args(port, 'bridge-1', 'old-pass'), '-t', 'dev/bridge-1/cmd', '-q', '1'], 30_000)
  t.after(() => sub.kill())
  await until('a session of bridge-1', () => agent.broker.sessionCount('bridge-1') === 1, 10_000)
  await gw.enroll({ id: 'bridge-1', password: await hashPassword('new-pass', { ln: 10 }) }, WHO)
  assert.equal(await Promise.race([sub.exited.then(() => 'closed'), new Promise((r) => setTimeout(() => r('still open'), 5000))]), 'closed', 'the old password session is closed at once')
  const old = mosquitto('mosquitto_pub', [...args(port, 'bridge-1', 'old-pass'), '-t', 'dev/bridge-1/tele', '-m', 'x'])
  assert.notEqual(await old.exited, 0, 'the old password is refused')
  const fresh = mosquitto('mosquitto_pub', [...args(port, 'bridge-1', 'new-pass'), '-t', 'dev/bridge-1/tele', '-m', 'x'])
  assert.equal(await fresh.exited, 0, fresh.stderr())
  // renew: not for a fixed password
  const { opTable } = await import('../../agent/commands/ops.ts')
  const ops = opTable({ gw, enforcer: agent.enforcer, actions: agent.actions, retirements: agent.retirements, pki: agent.pki })
  await assert.rejects(ops['device.renew']({ deviceId: 'bridge-1' }, { who: WHO, receivedAt: 0, receivedAtS: gw.nowS() }), /fixed password/)
  // retire: nothing can wipe it; at the deadline it is retired with wipe unsupported, and blocked on the network
  const r = await agent.retirements.start('bridge-1', { deadlineS: 3600, receivedAt: performance.now(), receivedAtS: gw.nowS() }, WHO)
  assert.deepEqual(r, { done: false, wipeActionId: null })
  clock.advance(3601_000)
  await agent.maintenance.tick()
  assert.equal(gw.getDevice('bridge-1')?.state, 'retired')
  const { exportAuditLog } = await import('../../agent/store/audit.ts')
  let evidence: { wipe?: { status: string }; credentialsRevoked?: number } | undefined
  for await (const e of exportAuditLog(gw.store)) if (e.action === 'device.retired' && e.subject === 'bridge-1') evidence = e.data as typeof evidence
  assert.equal(evidence?.wipe?.status, 'unsupported', 'the evidence says it could not be wiped')
  assert.equal(evidence?.credentialsRevoked, 1, 'its password was the credential it held')
  const retired = await rawExchange(port, connectPacket({ clientId: 'bridge-1', username: 'bridge-1', password: 'new-pass' }))
  assert.equal(retired.connack, 5)
})

test('edgewarden device add --password-stdin: hashed on the command line, the device admitted by mosquitto_pub with it; the password in no log and not in the record', async (t) => {
  const { runCli, spawnAgent, tempDir } = await import('../helpers/agent.ts')
  const dataDir = tempDir(t)
  const agent = await spawnAgent(['--data-dir', dataDir, '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--log-level', 'trace'])
  t.after(async () => void (await agent.stop('SIGKILL')))
  const secret = 'smart-plug-factory-pw'
  const add = await runCli(['device', 'add', 'plug-9', '--password-stdin', '--json', '--data-dir', dataDir], { input: `${secret}\n` })
  assert.equal(add.code, 0, add.stderr)
  assert.doesNotMatch(add.stdout, new RegExp(secret))
  const port = (agent.ready.mqtt as { mqtt: number }).mqtt
  const pub = mosquitto('mosquitto_pub', [...args(port, 'plug-9', secret), '-t', 'dev/plug-9/tele', '-m', 'on'])
  assert.equal(await pub.exited, 0, pub.stderr())
  const show = await runCli(['device', 'show', 'plug-9', '--json', '--data-dir', dataDir])
  assert.match(show.stdout, /"credentialKind":"password"/)
  assert.match(show.stdout, /\$scrypt\$ln=14,r=8,p=1\$/)
  // an exception a person sees: it cannot be wiped, its offboarding is containment
  assert.equal((JSON.parse(show.stdout) as { exceptions: { code: string }[] }).exceptions[0]?.code, 'no-wipe-path')
  const ls = await runCli(['device', 'ls', '--data-dir', dataDir])
  assert.match(ls.stdout, /plug-9 .* password .* ! no-wipe-path/)
  assert.match(ls.stdout, /1 device\(s\) whose offboarding cannot be proven end to end/)
  const human = await runCli(['device', 'show', 'plug-9', '--data-dir', dataDir])
  assert.match(human.stdout, /offboarding +! no-wipe-path: fixed password/)
  assert.ok(!agent.lines.some((l) => JSON.stringify(l).includes(secret)), 'not in any log line at trace')
  const empty = await runCli(['device', 'add', 'plug-x', '--password-stdin', '--data-dir', dataDir], { input: '' })
  assert.equal(empty.code, 2)
})
