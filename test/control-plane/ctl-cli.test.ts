// `edgewarden ctl send|bulk --control-plane URL` as an operator runs it,
// through bin/edgewarden.js: the service (PGlite, in this process) signs,
// stores and sends; a real gateway on a real Mosquitto runs the commands.
// No broker, key, site or gateway on the command line but to enroll.
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { generateKeyPair } from '../../agent/store/keys.ts'
import { runCli, tempDir } from '../helpers/agent.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { until } from '../helpers/wait.ts'
import { startTestCp } from './helpers/cp.ts'
import { newLedger, register, startGateway } from './helpers/gateway.ts'

test('ctl send and bulk --control-plane URL go through the service and wait for the gateway\'s answer', async (t) => {
  const m = await Mosquitto.start(t)
  const c = await startTestCp(t, { broker: m.url })
  const ledger = newLedger()
  const gw = await startGateway(t, { broker: m.url, cpPublicKey: c.key.publicKey, ledger })
  await register(c, gw)
  const dir = tempDir(t)
  const tokenFile = join(dir, 'cp.token')
  const operator = (await c.api('POST', '/v1/tokens', { name: 'operator', scopes: ['command', 'read'] })).json
  writeFileSync(tokenFile, `${operator.token}\n`, { mode: 0o600 })
  const ctl = (args: string[], input?: string) => runCli(['ctl', ...args.slice(0, 1), '--control-plane', c.base, '--token-file', tokenFile, ...args.slice(1)], { timeoutMs: 60_000, ...(input !== undefined ? { input } : {}) })

  const devices = ['pump-7', 'cam-1', 'cam-2'].map((id) => JSON.stringify({ id, publicKey: generateKeyPair().publicKeyB64 }))
  const enrolled = await ctl(['bulk', '--site', 's1', '--gateway', 'gw1', '--wait', '--json', 'device.enroll'], `${devices.join('\n')}\n`)
  assert.equal(enrolled.code, 0, enrolled.stderr + enrolled.stdout)
  assert.deepEqual(JSON.parse(enrolled.stdout), { total: 3, completed: 3 })

  // One device by id alone: the service knows where it lives.
  const revoked = await ctl(['send', '--wait', 'device.revoke', '{"deviceId":"pump-7","reason":"reported stolen"}'])
  assert.equal(revoked.code, 0, revoked.stderr + revoked.stdout)
  assert.match(revoked.stdout, /^completed: \{/)
  assert.equal(gw.gateway.getDevice('pump-7')?.state, 'revoked')

  const ids = join(dir, 'ids.txt')
  writeFileSync(ids, 'cam-1\ncam-2\n')
  const quarantined = await ctl(['bulk', '--file', ids, '--args', '{"reason":"anomaly"}', '--wait', 'device.quarantine'])
  assert.equal(quarantined.code, 0, quarantined.stderr + quarantined.stdout)
  assert.match(quarantined.stdout.trim(), /^2 completed$/)
  for (const id of ['cam-1', 'cam-2']) assert.equal(gw.gateway.getDevice(id)?.state, 'quarantined')

  // The API's record says who asked: the token's name, for every command the CLI made.
  const cmds = (await c.api('GET', '/v1/commands')).json.items as { createdBy: string; state: string; jti: string }[]
  assert.equal(cmds.length, 6)
  assert.ok(cmds.every((x) => x.createdBy === 'operator' && x.state === 'completed'))
  for (const x of cmds) assert.equal(ledger.accepted.get(x.jti), 1, `${x.jti} ran once on the gateway`)

  // Without --wait: stored, not waited for; the service still sends it.
  const queued = await ctl(['send', '--json', 'device.release', '{"deviceId":"cam-1"}'])
  assert.equal(queued.code, 0, queued.stderr)
  const jti = JSON.parse(queued.stdout).commands[0].jti as string
  await until('release completed', async () => (await c.api('GET', `/v1/commands/${jti}`)).json.state === 'completed', 15_000, 50)

  // Refusals are one line and an exit code: a device the service never saw, a token it does not know.
  const unknown = await ctl(['send', 'device.revoke', '{"deviceId":"ghost-9"}'])
  assert.equal(unknown.code, 1)
  assert.match(unknown.stderr, /^edgewarden: CP_UNKNOWN_DEVICE: .*ghost-9/)
  writeFileSync(tokenFile, 'ewcp.AAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n')
  const refused = await ctl(['send', 'device.revoke', '{"deviceId":"cam-2"}'])
  assert.equal(refused.code, 1)
  assert.match(refused.stderr, /CP_UNAUTHORIZED/)
  assert.equal((await c.api('GET', '/v1/commands')).json.items.length, 7, 'nothing stored by the refused calls')
})
