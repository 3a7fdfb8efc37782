// Secrets never reach a log line (the real command at log level trace, every
// line it writes captured): the gateway private key, device tokens presented
// as MQTT passwords (admitted, replayed, forged), a password that is not a
// token, the uplink password (wrong, then right). A key file readable by
// group or others is refused (unit cases: test/unit/keys.test.ts); the admin
// socket is 0600.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { generateKeyPair } from '../../agent/store/keys.ts'
import { chmodSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { keygen, publicKeyToB64, seedFromPkcs8Pem } from '../../firmware-hooks/crypto.ts'
import { mintToken } from '../../firmware-hooks/token.ts'
import { b64urlEncode } from '../../wire/base64url.ts'
import { ControlPlane, publicKeyB64 } from '../../simulators/control-plane.ts'
import { runCli, spawnAgent, tempDir, type SpawnedAgent } from '../helpers/agent.ts'
import { recordFigure } from '../helpers/figures.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { mqttConnect } from '../helpers/mqtt-devices.ts'

const UPLINK_PASSWORD = 'uplink-pw-Zq81xT4e'
const WRONG_UPLINK_PASSWORD = 'wrong-uplink-pw-Lk29vB'
const NOT_A_TOKEN = 'hunter2-device-pw-Qm47'

/** Every form a secret could be printed in. */
function forms(secret: string | Uint8Array): string[] {
  if (typeof secret === 'string') return [secret]
  const b = Buffer.from(secret)
  return [b.toString('hex'), b.toString('base64'), b64urlEncode(b), b.toString('base64').replace(/=+$/, '')]
}

test('no private key, token or password in any log line at trace; key files open to others refused; admin socket 0600', async (t) => {
  const pwDir = tempDir(t)
  const pwFile = join(pwDir, 'passwd')
  execFileSync('mosquitto_passwd', ['-c', '-b', pwFile, 'gw1-user', UPLINK_PASSWORD], { stdio: 'pipe' })
  execFileSync('mosquitto_passwd', ['-b', pwFile, 'cp', 'cp-pw'], { stdio: 'pipe' })
  chmodSync(pwDir, 0o755)
  chmodSync(pwFile, 0o644) // Mosquitto run as root reads it as its own user
  const central = await Mosquitto.start(t, [`password_file ${pwFile}`, 'allow_anonymous false'])
  const cpKey = generateKeyPair().privateKey
  const dataDir = tempDir(t)
  const args = ['--data-dir', dataDir, '--site', 'site1', '--gateway', 'gw1', '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--log-level', 'trace', '--uplink', central.url, '--uplink-username', 'gw1-user', '--cp-key', `cp1=${publicKeyB64(cpKey)}`]
  const logs: string[] = []
  const collect = async (a: SpawnedAgent): Promise<void> => {
    const out = a.proc.stdout!
    const drained = out.readableEnded ? Promise.resolve() : new Promise((r) => out.once('close', r))
    await a.stop()
    await drained // every line the process wrote has been read
    logs.push(...a.lines.map((l) => JSON.stringify(l)), a.stderr())
  }

  // 1. The wrong uplink password (from the environment, as configuration.md advises): refused by the broker, retried.
  const wrong = await spawnAgent(args, { env: { EDGEWARDEN_UPLINK_PASSWORD: WRONG_UPLINK_PASSWORD } })
  t.after(async () => void (await wrong.stop('SIGKILL')))
  await until(() => wrong.lines.some((l) => l.msg === 'uplink reconnecting'), 'the refused uplink retries')
  await collect(wrong)

  // 2. The right one; devices connect with tokens, good and bad.
  const agent = await spawnAgent(args, { env: { EDGEWARDEN_UPLINK_PASSWORD: UPLINK_PASSWORD } })
  t.after(async () => void (await agent.stop('SIGKILL')))
  const port = (agent.ready.mqtt as { mqtt: number }).mqtt
  assert.equal(statSync(agent.ready.admin as string).mode & 0o777, 0o600, 'the admin socket is 0600')
  const cp = new ControlPlane({ broker: central.url, site: 'site1', gateway: 'gw1', key: cpKey, kid: 'cp1', gatewayKey: agent.ready.publicKey as string, username: 'cp', password: 'cp-pw' })
  await cp.connect()
  t.after(() => cp.close())
  await cp.waitOnline()
  const dev = await keygen()
  const stranger = await keygen()
  assert.equal((await cp.run('device.enroll', { device: { id: 'pump-1', publicKey: publicKeyToB64(dev.publicKey) } })).type, 'cmd.completed')
  const tokens: string[] = []
  const mint = async (secretKey: Uint8Array): Promise<string> => {
    const tk = await mintToken({ deviceId: 'pump-1', gatewayId: 'gw1', secretKey })
    tokens.push(tk)
    return tk
  }
  const good = await mint(dev.secretKey)
  const ok = await mqttConnect(port, { clientId: 'pump-1', username: 'pump-1', password: good })
  assert.ok(ok.ok, 'admitted')
  const replay = await mqttConnect(port, { clientId: 'pump-1', username: 'pump-1', password: good })
  assert.equal(replay.ok, false, 'a replayed token is refused')
  const forged = await mqttConnect(port, { clientId: 'pump-1', username: 'pump-1', password: await mint(stranger.secretKey) })
  assert.equal(forged.ok, false, 'a token by another key is refused')
  const mismatch = await mqttConnect(port, { clientId: 'pump-1', username: 'pump-2', password: await mint(dev.secretKey) })
  assert.equal(mismatch.ok, false, 'a user name that is not the client id is refused')
  const plain = await mqttConnect(port, { clientId: 'pump-1', username: 'pump-1', password: NOT_A_TOKEN })
  assert.equal(plain.ok, false, 'a password that is not a token is refused')
  assert.equal((await cp.run('device.wipe', { deviceId: 'pump-1' })).type, 'cmd.completed', 'a signed action queued for the device')
  if (ok.ok) await ok.client.endAsync()
  await collect(agent)

  // What the agent held: its key file, and what it took over the wire.
  const pem = readFileSync(join(dataDir, 'gateway.key'), 'utf8')
  const secrets: [string, string[]][] = [
    ['gateway key file (PEM body)', [pem.replace(/-----[^-]+-----|\s/g, '')]],
    ['gateway key seed', forms(seedFromPkcs8Pem(pem))],
    ['device key seeds', [...forms(dev.secretKey), ...forms(stranger.secretKey)]],
    ['device tokens', tokens.flatMap((tk) => [tk, tk.split('.')[2]!])],
    ['a password that is not a token', [NOT_A_TOKEN]],
    ['uplink passwords', [UPLINK_PASSWORD, WRONG_UPLINK_PASSWORD]],
  ]
  const text = logs.join('\n')
  const lines = text.split('\n').length
  assert.match(text, /"level":"debug"/, 'debug lines were written')
  assert.match(text, /"msg":"connect of pump-1 refused \(/, 'the refusals were logged (without their secrets)')
  assert.match(text, /uplink error/, 'the refused uplink was logged')
  for (const [what, values] of secrets) {
    for (const v of values) assert.ok(!text.includes(v), `${what} appears in the logs`)
  }

  // Key files readable by group or others: the agent refuses to start, and says why without the key.
  chmodSync(join(dataDir, 'gateway.key'), 0o640)
  const refused = await runCli(['start', ...args], { env: { EDGEWARDEN_UPLINK_PASSWORD: UPLINK_PASSWORD } })
  assert.equal(refused.code, 1)
  assert.match(refused.stderr, /must not be readable by group or others \(chmod 600 /)
  assert.ok(!refused.stderr.includes(pem.split('\n')[1]!), 'the refusal does not print the key')

  recordFigure(t, {
    area: 'secrets',
    test: 'log lines at trace searched for every secret the agent handled',
    size: `${lines} log lines, 2 agent runs; ${tokens.length} tokens (admitted, replayed, forged, mismatched), 1 plain password, 2 uplink passwords, gateway key (PEM and seed in hex/base64/base64url)`,
    result: 'no secret in any line; key file mode 0640 refused (exit 1, chmod 600 advice); admin socket 0600',
    pass: true,
  })
})

async function until(cond: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 25))
  }
}
