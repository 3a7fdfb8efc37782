// One device's story and finishing work locally, through the real CLI against
// a real agent process: device history (running and stopped) and audit export
// --device; device show with live sessions per protocol and the last refusal;
// device add of an existing id refused unless --replace (saying what
// changes), a credential of another id refused; device action ls|cancel;
// retire --deadline and --no-wipe --reason closing a retirement at once;
// device remove. Each refusal is one line and changes nothing.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { test } from 'node:test'
import { adminRequest } from '../../agent/cli/admin-client.ts'
import type { AuditEntry } from '../../agent/store/audit.ts'
import type { HistoryItem } from '../../agent/observe/device-history.ts'
import type { DeviceView } from '../../agent/observe/views.ts'
import { hashPassword } from '../../agent/trust/password.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { mintToken } from '../../firmware-hooks/token.ts'
import { SimulatedMqttDevice } from '../../simulators/mqtt-device.ts'
import { runCli, spawnAgent, tempDir } from '../helpers/agent.ts'
import { mqttConnect } from '../helpers/mqtt-devices.ts'
import { until } from '../helpers/wait.ts'

const NO_STACK = /\n\s+at \S/

test('a device\'s story, told by device history and device show, and work finished and corrected locally', { timeout: 120_000 }, async (t) => {
  const dataDir = join(tempDir(t), 'data')
  // a mistyped variable: warned at start, never its value
  const agent = await spawnAgent(['--data-dir', dataDir, '--mqtt-port', '0', '--mqtt-host', '127.0.0.1', '--gateway', 'gw1'], { env: { EDGEWARDEN_QUARANTIN: 'nftables-secret' } })
  t.after(async () => void (await agent.stop('SIGKILL')))
  const cli = (...args: string[]) => runCli([...args, '--data-dir', dataDir])
  const json = <T>(r: { code: number | null; stdout: string; stderr: string }): T => {
    assert.equal(r.code, 0, r.stderr)
    return JSON.parse(r.stdout) as T
  }
  const port = (agent.ready.mqtt as { mqtt: number }).mqtt

  await t.test('an unknown EDGEWARDEN_* variable is a warning at start, with the one meant and without its value', () => {
    const warn = agent.lines.find((l) => l.variable === 'EDGEWARDEN_QUARANTIN')
    assert.ok(warn, 'warned')
    assert.equal(warn.level, 'warn')
    assert.equal(warn.didYouMean, 'EDGEWARDEN_QUARANTINE')
    assert.ok(!JSON.stringify(agent.lines).includes('nftables-secret'))
  })

  // pump-7: a real device runtime on the site broker (it acks what it is sent)
  const pump = await SimulatedMqttDevice.create({ url: `mqtt://127.0.0.1:${port}`, deviceId: 'pump-7', gatewayId: 'gw1', gatewayPublicKey: agent.ready.publicKey as string })
  t.after(() => pump.goOffline())
  const pumpKey = pump.runtime.publicKeyB64!
  const valve = await keygen()
  const meter = await keygen()
  const add = await cli('device', 'add', 'pump-7', '--public-key', pumpKey, '--criticality', 'high')
  assert.equal(add.code, 0, add.stderr)

  await t.test('the same token key or password hash for a second id is refused, naming the holder; nothing changes', async () => {
    const twin = await cli('device', 'add', 'pump-8', '--public-key', pumpKey)
    assert.equal(twin.code, 1)
    assert.equal(twin.stderr, 'edgewarden: device pump-8: its token key is already the credential of device pump-7 (active); every device needs its own\n')
    const hash = await hashPassword('plug-secret', { ln: 10 })
    assert.equal((await adminRequest(dataDir, 'POST', '/v1/devices', { device: { id: 'plug-1', password: hash } })).status, 200)
    const copy = await adminRequest(dataDir, 'POST', '/v1/devices', { device: { id: 'plug-2', password: hash } })
    assert.equal(copy.status, 409)
    assert.match(copy.text, /DUPLICATE_CREDENTIAL.*its password hash is already the credential of device plug-1/)
    assert.ok(!copy.text.includes(hash), 'the hash is not echoed')
    const ids = json<DeviceView[]>(await cli('device', 'ls', '--json')).map((d) => d.id)
    assert.deepEqual(ids, ['plug-1', 'pump-7'])
  })

  await t.test('device add of an enrolled id is refused, saying what would change; --replace changes it, says so, and keeps the quarantine and its reason', async () => {
    const first = await cli('device', 'add', 'valve-3', '--public-key', publicKeyToB64(valve.publicKey), '--owner', 'line 2')
    assert.equal(first.code, 0, first.stderr)
    assert.equal((await cli('device', 'quarantine', 'valve-3', '--reason', 'odd traffic')).code, 0)
    const other = await keygen()
    const again = await cli('device', 'add', 'valve-3', '--public-key', publicKeyToB64(other.publicKey), '--criticality', 'safety')
    assert.equal(again.code, 1)
    assert.match(again.stderr, /^edgewarden: device valve-3 is already enrolled \(quarantined: odd traffic\); replacing it would change: token key .+ -> .+: the old key ends now and its live sessions are closed; criticality medium -> safety; owner line 2 -> \(none\)\. Give --replace to replace it\n$/)
    assert.doesNotMatch(again.stderr, NO_STACK)
    const kept = json<DeviceView>(await cli('device', 'show', 'valve-3', '--json'))
    assert.deepEqual([kept.publicKey, kept.criticality, kept.owner], [publicKeyToB64(valve.publicKey), 'medium', 'line 2'], 'nothing changed')
    const replaced = await cli('device', 'add', 'valve-3', '--public-key', publicKeyToB64(valve.publicKey), '--owner', 'line 2', '--criticality', 'safety', '--replace')
    assert.equal(replaced.code, 0, replaced.stderr)
    assert.equal(replaced.stdout, 'replaced valve-3 (quarantined): \n  criticality medium -> safety\n')
    const after = json<DeviceView>(await cli('device', 'show', 'valve-3', '--json'))
    assert.deepEqual([after.state, after.stateReason, after.criticality], ['quarantined', 'odd traffic', 'safety'])
    assert.equal((await cli('device', 'release', 'valve-3')).code, 0)
  })

  await t.test('device show: live sessions per protocol, last seen, and the last refused connect with the reason to act on', async () => {
    assert.ok(await pump.goOnline(), 'pump-7 admitted')
    const live = json<DeviceView>(await cli('device', 'show', 'pump-7', '--json'))
    assert.deepEqual(live.sessions, { mqtt: 1, opcua: 0, modbus: 0 })
    assert.ok(live.lastSeenAt !== null)
    assert.equal(live.lastRefusal, undefined)
    assert.equal((await cli('device', 'add', 'meter-1', '--public-key', publicKeyToB64(meter.publicKey))).code, 0)
    // a token for another gateway
    const token = await mintToken({ deviceId: 'meter-1', gatewayId: 'gw-2', secretKey: meter.secretKey })
    const refused = await mqttConnect(port, { clientId: 'meter-1', username: 'meter-1', password: token })
    assert.equal(refused.ok, false)
    const shown = await cli('device', 'show', 'meter-1')
    assert.equal(shown.code, 0, shown.stderr)
    assert.match(shown.stdout, /^sessions\s+mqtt 0, opcua 0, modbus 0$/m)
    assert.match(shown.stdout, /^last refusal\s+\S+ over mqtt from 127\.0\.0\.1: wrong-audience \(.*gw-2.*\)$/m)
    const pumpShown = await cli('device', 'show', 'pump-7')
    assert.match(pumpShown.stdout, /^sessions\s+mqtt 1, opcua 0, modbus 0$/m)
    assert.match(pumpShown.stdout, /^credential\s+token key, expires \d{4}-/m)
  })

  await t.test('an action queued for a live device is delivered and acked: its history has each step in order', async () => {
    const renew = await cli('device', 'renew', 'pump-7', '--json')
    assert.equal(renew.code, 0, renew.stderr)
    const actionId = (JSON.parse(renew.stdout) as { result: { actionId: string } }).result.actionId
    await until('the renewal acked', () => pump.acked.has(actionId), 15_000)
    await until('and settled', async () => json<DeviceView>(await cli('device', 'show', 'pump-7', '--json')).pendingActions.length === 0, 15_000)
    const h = json<{ deviceId: string; items: HistoryItem[] }>(await cli('device', 'history', 'pump-7', '--json'))
    const steps = h.items.map((i) => i.action)
    for (const want of ['device.enroll', 'action.queued', 'action.delivered', 'action.acked']) assert.ok(steps.includes(want), `${want} in ${steps.join(', ')}`)
    assert.ok(steps.indexOf('action.queued') < steps.indexOf('action.delivered') && steps.indexOf('action.delivered') < steps.indexOf('action.acked'), 'in order')
    const seqs = h.items.map((i) => i.seq)
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b))
    assert.match(h.items.find((i) => i.action === 'action.acked')!.summary, new RegExp(`renew acked done over mqtt \\(${actionId}\\)`))
    const table = await cli('device', 'history', 'pump-7')
    assert.match(table.stdout, /^SEQ\s+TIME\s+ACTOR\s+WHAT\s+REASON$/m)
    assert.match(table.stdout, /renew delivered over mqtt/)
  })

  let wipeId = ''
  await t.test('device action ls and cancel: a pending action taken back, audited with its reason; a wrong id is refused, naming what is pending', async () => {
    await pump.goOffline()
    const q = json<{ result: { actionId: string } }>(await cli('device', 'reenroll', 'valve-3', '--json'))
    const ls = json<{ id: string; act: string }[]>(await cli('device', 'action', 'ls', 'valve-3', '--json'))
    assert.deepEqual(ls.map((a) => [a.id, a.act]), [[q.result.actionId, 'reenroll']])
    const table = await cli('device', 'action', 'ls', 'valve-3')
    assert.match(table.stdout, new RegExp(`^${q.result.actionId.replace('.', '\\.')}\\s+reenroll\\s`, 'm'))
    const wrong = await cli('device', 'action', 'cancel', 'valve-3', 'act.nope')
    assert.equal(wrong.code, 1)
    assert.equal(wrong.stderr, `edgewarden: no action act.nope is pending for valve-3 (pending: reenroll ${q.result.actionId})\n`)
    const cancel = await cli('device', 'action', 'cancel', 'valve-3', q.result.actionId, '--reason', 'sent by mistake')
    assert.equal(cancel.code, 0, cancel.stderr)
    assert.equal(cancel.stdout, `cancelled reenroll ${q.result.actionId} of valve-3\n`)
    assert.deepEqual(json<unknown[]>(await cli('device', 'action', 'ls', 'valve-3', '--json')), [])
    const h = json<{ items: HistoryItem[] }>(await cli('device', 'history', 'valve-3', '--json'))
    const c = h.items.find((i) => i.action === 'action.cancelled')!
    assert.equal(c.reason, 'sent by mistake')
    assert.match(c.actor, /^local:/)
  })

  await t.test('retire --deadline waits for the wipe that long; its wipe is not cancelled; --no-wipe needs a reason and closes it at once', async () => {
    const bad = await cli('device', 'retire', 'valve-3', '--deadline', 'soon')
    assert.equal(bad.code, 2)
    assert.match(bad.stderr, /--deadline soon: a duration such as 3600, 36h, 7d or 2w/)
    const typo = await cli('device', 'retire', 'valve-3', '--dedline', '2h')
    assert.equal(typo.code, 2)
    assert.match(typo.stderr, /^edgewarden: unknown option --dedline \(did you mean --deadline\?\)\n\(see edgewarden device retire --help\)\n$/)
    const retire = json<{ result: { to: string; wipeActionId: string }; device: DeviceView }>(await cli('device', 'retire', 'valve-3', '--deadline', '2h', '--reason', 'line 2 rebuilt', '--json'))
    assert.equal(retire.result.to, 'retiring')
    wipeId = retire.result.wipeActionId
    const [wipe] = json<{ id: string; deadline: number; queuedAt: number }[]>(await cli('device', 'action', 'ls', 'valve-3', '--json'))
    assert.equal(wipe!.id, wipeId)
    assert.ok(Math.abs(wipe!.deadline - wipe!.queuedAt - 7200) <= 2, `deadline 2 h: ${wipe!.deadline - wipe!.queuedAt} s`)
    const cancel = await cli('device', 'action', 'cancel', 'valve-3', wipeId)
    assert.equal(cancel.code, 1)
    assert.match(cancel.stderr, /the retirement of valve-3 waits for this wipe: close it without one instead \(edgewarden device retire valve-3 --no-wipe --reason TEXT\)/)
    const noReason = await cli('device', 'retire', 'valve-3', '--no-wipe')
    assert.equal(noReason.code, 2)
    assert.match(noReason.stderr, /--no-wipe needs --reason TEXT/)
    assert.equal(json<DeviceView>(await cli('device', 'show', 'valve-3', '--json')).state, 'retiring', 'refusals changed nothing')
    const closed = await cli('device', 'retire', 'valve-3', '--no-wipe', '--reason', 'destroyed in the fire of line 2')
    assert.equal(closed.code, 0, closed.stderr)
    assert.equal(closed.stdout, 'retire valve-3: retired (wipe not-performed)\n')
    const h = json<{ items: HistoryItem[] }>(await cli('device', 'history', 'valve-3', '--json'))
    // (the sweep's device.key-expired may come after it whenever its tick comes, as below)
    const last = h.items.filter((i) => i.action !== 'device.key-expired').at(-1)!
    assert.equal(last.action, 'device.retired')
    assert.equal(last.summary, 'retirement closed: wipe not-performed')
    assert.equal(last.reason, 'destroyed in the fire of line 2')
    // (the sweep drops the key --replace left in its overlap window whenever its tick comes: device.key-expired, not part of the story told here)
    assert.deepEqual(
      h.items.map((i) => i.action).filter((a) => a !== 'device.key-expired'),
      ['device.enroll', 'device.quarantine', 'device.enroll', 'device.release', 'action.queued', 'action.cancelled', 'device.retire', 'retire.access-removed', 'action.queued', 'device.retire', 'device.retire-complete', 'action.cancelled', 'device.retired'],
    )
    const dropped = h.items.filter((i) => i.action !== 'device.key-expired').at(-2)!
    assert.deepEqual([(dropped.data as { actionId: string }).actionId, dropped.reason], [wipeId, 'the device is retired'], 'the wipe it waited for is not left queued')
    assert.deepEqual(json<unknown[]>(await cli('device', 'action', 'ls', 'valve-3', '--json')), [])
  })

  await t.test('audit export --device gives the same entries as JSON lines', async () => {
    const r = await cli('audit', 'export', '--device', 'valve-3')
    assert.equal(r.code, 0, r.stderr)
    const entries = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as AuditEntry)
    assert.equal(entries.filter((e) => e.action !== 'device.key-expired').length, 13)
    assert.ok(entries.every((e) => e.subject === 'valve-3'))
  })

  await t.test('device remove: an active device is revoked and leaves the registry; its history stays; a retired one stays', async () => {
    const retired = await cli('device', 'remove', 'valve-3')
    assert.equal(retired.code, 1)
    assert.match(retired.stderr, /device valve-3 is retired: only an active or revoked device is removed/)
    const r = await cli('device', 'remove', 'meter-1', '--reason', 'test bench device')
    assert.equal(r.code, 0, r.stderr)
    assert.ok(!json<DeviceView[]>(await cli('device', 'ls', '--json')).some((d) => d.id === 'meter-1'))
    const h = json<{ items: HistoryItem[] }>(await cli('device', 'history', 'meter-1', '--json'))
    assert.deepEqual(h.items.map((i) => i.action), ['device.enroll', 'device.revoke', 'device.removed'])
    assert.equal(h.items.at(-1)!.reason, 'test bench device')
  })

  await t.test('mistyped verbs and sub-verbs get "did you mean"; each verb\'s --help is its own', async () => {
    const [verb, sub, help, addHelp] = await Promise.all([runCli(['devcie', 'ls']), cli('device', 'histroy', 'x'), runCli(['audit', '--help']), runCli(['device', 'add', '--help'])])
    assert.equal(verb.code, 2)
    assert.match(verb.stderr, /^edgewarden: unknown verb "devcie" \(did you mean device\?\)\n/)
    assert.equal(sub.code, 2)
    assert.match(sub.stderr, /^edgewarden: unknown device verb "histroy" \(did you mean history\?\)\n/)
    assert.equal(help.code, 0)
    assert.match(help.stdout, /^Usage:\n {2}edgewarden audit verify/)
    assert.doesNotMatch(help.stdout, /edgewarden device|Options of start/)
    assert.match(addHelp.stdout, /edgewarden device add ID/)
    assert.doesNotMatch(addHelp.stdout, /edgewarden device history/)
  })

  assert.equal(await agent.stop(), 0)
  await t.test('device history of a stopped agent reads its store', async () => {
    const h = json<{ items: HistoryItem[] }>(await cli('device', 'history', 'valve-3', '--json'))
    assert.equal(h.items.filter((i) => i.action !== 'device.key-expired').length, 13, h.items.map((i) => i.action).join(', '))
    const none = await cli('device', 'history', 'nobody')
    assert.equal(none.code, 2)
    assert.match(none.stderr, /no device nobody in the audit log/)
  })
})
