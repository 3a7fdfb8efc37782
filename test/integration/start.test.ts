// `edgewarden start` as a real process: it listens, admits nobody without a
// verified token, keeps its key, stops cleanly on SIGTERM, refuses a second
// agent on its data dir, and takes its config from EDGEWARDEN_* variables.
import assert from 'node:assert/strict'
import { readFileSync, statSync } from 'node:fs'
import { generateKeyPairSync, sign } from 'node:crypto'
import { connect } from 'node:net'
import { join } from 'node:path'
import { test } from 'node:test'
import { readKeyFile } from '../../agent/store/keys.ts'
// MQTT remaining length [MQTT-2.2.3]: the load generator's encoder, shared with the fuzz tests
import { varint as remainingLength } from '../../bench/mqtt-wire.ts'
import { freePort, runCli, spawnAgent, tempDir, type SpawnedAgent } from '../helpers/agent.ts'

/** Env without any EDGEWARDEN_* of the developer's shell, so only what a test sets applies. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('EDGEWARDEN_')) env[k] = v
  return { ...env, ...extra }
}

async function spawnClean(t: { after(fn: () => Promise<void>): void }, args: string[], env: Record<string, string> = {}): Promise<SpawnedAgent> {
  const agent = await spawnAgent(args, { env: cleanEnv(env) })
  t.after(async () => void (await agent.stop('SIGKILL')))
  return agent
}

/** MQTT 3.1.1 CONNECT (client id = user name), with or without a password; resolves to the broker's first 4 bytes. */
function connectOnce(port: number, clientId: string, password?: string): Promise<Buffer> {
  const str = (s: string): Buffer => {
    const b = Buffer.from(s)
    return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b])
  }
  const flags = 0x80 | (password === undefined ? 0 : 0x40) | 0x02 // user name, password?, clean session
  const variable = Buffer.concat([str('MQTT'), Buffer.from([0x04, flags, 0x00, 0x3c])]) // protocol level 4
  const payload = Buffer.concat([str(clientId), str(clientId), ...(password === undefined ? [] : [str(password)])])
  const packet = Buffer.concat([Buffer.from([0x10]), remainingLength(variable.length + payload.length), variable, payload])
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1')
    let got = Buffer.alloc(0)
    sock.setTimeout(5000, () => sock.destroy(new Error('no CONNACK within 5 s')))
    sock.on('connect', () => sock.write(packet))
    sock.on('data', (c: Buffer) => {
      got = Buffer.concat([got, c])
      if (got.length >= 4) {
        sock.destroy()
        resolve(got.subarray(0, 4))
      }
    })
    sock.on('error', reject)
    sock.on('close', () => reject(new Error(`connection closed after ${got.length} bytes`)))
  })
}

/** A well-formed device token (PROTOCOL §5), signed by a key nobody enrolled. */
function unenrolledToken(deviceId: string, gatewayId: string): string {
  const { privateKey } = generateKeyPairSync('ed25519')
  const b64 = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url')
  const iat = Math.floor(Date.now() / 1000)
  const input = `${b64({ alg: 'EdDSA', kid: deviceId })}.${b64({ iss: deviceId, aud: gatewayId, iat, exp: iat + 600, jti: `t-${iat}-${deviceId}` })}`
  return `${input}.${sign(null, Buffer.from(input), privateKey).toString('base64url')}`
}

/** Refused: CONNACK 5 (not authorized). Without any password, 4 (bad user name or password) is tolerated too, see the report. */
async function assertRefused(port: number, gatewayId: string, clientId: string): Promise<void> {
  const bare = await connectOnce(port, clientId)
  assert.deepEqual([...bare.subarray(0, 3)], [0x20, 0x02, 0x00], 'a CONNACK')
  assert.ok(bare[3] === 5 || bare[3] === 4, `CONNECT without password refused (return code ${bare[3]})`)
  assert.deepEqual(await connectOnce(port, clientId, unenrolledToken(clientId, gatewayId)), CONNACK_NOT_AUTHORIZED)
}

const CONNACK_NOT_AUTHORIZED = Buffer.from([0x20, 0x02, 0x00, 0x05])

test('start: listens, refuses an unauthenticated CONNECT, reuses its key, stops on SIGTERM, locks its data dir', { timeout: 90_000 }, async (t) => {
  const dataDir = join(tempDir(t), 'data')
  const keyFile = join(dataDir, 'gateway.key')
  const first = await spawnClean(t, ['--data-dir', dataDir, '--mqtt-port', '0'])

  const mqtt = first.ready.mqtt as { host: string; mqtt: number }
  assert.equal(typeof mqtt.mqtt, 'number')
  assert.ok(mqtt.mqtt > 0, 'the ready line names the port actually bound')
  assert.equal(statSync(keyFile).mode & 0o777, 0o600, 'gateway.key created 0600 on first start')
  const key = readKeyFile(keyFile)
  assert.equal(first.ready.publicKey, key.publicKeyB64, 'the ready line names the public key')
  const keyPem = readFileSync(keyFile, 'utf8')

  // PROTOCOL §5: no verified token, no admission
  const gatewayId = String(first.ready.gateway)
  await assertRefused(mqtt.mqtt, gatewayId, 'dev-1')

  // a second agent on the same data dir
  const second = await runCli(['start', '--data-dir', dataDir, '--mqtt-port', '0', '--mqtt-host', '127.0.0.1'], { env: cleanEnv() })
  assert.notEqual(second.code, 0)
  assert.match(second.stderr, /data dir .* is in use/)
  assert.doesNotMatch(second.stderr, /\n\s+at \S/)
  // ...did not disturb the first one
  await assertRefused(mqtt.mqtt, gatewayId, 'dev-2')

  const t0 = Date.now()
  first.proc.kill('SIGTERM')
  const code = await first.exited
  assert.equal(code, 0)
  assert.ok(Date.now() - t0 < 5000, `stopped in ${Date.now() - t0} ms`)
  assert.ok(first.lines.some((l) => l.msg === 'stopped'))

  const again = await spawnClean(t, ['--data-dir', dataDir, '--mqtt-port', '0', '--mqtt-host', '127.0.0.1'])
  assert.equal(again.ready.publicKey, key.publicKeyB64, 'the second start reuses gateway.key')
  assert.equal(readFileSync(keyFile, 'utf8'), keyPem)
  assert.equal(statSync(keyFile).mode & 0o777, 0o600)
  assert.equal(await again.stop(), 0)
})

test('start: configured entirely through EDGEWARDEN_* variables', { timeout: 60_000 }, async (t) => {
  const dataDir = join(tempDir(t), 'env-data')
  const port = await freePort()
  const agent = await spawnClean(t, [], {
    EDGEWARDEN_DATA_DIR: dataDir,
    EDGEWARDEN_MQTT_HOST: '127.0.0.1',
    EDGEWARDEN_MQTT_PORT: String(port),
    EDGEWARDEN_SITE: 'env-site',
    EDGEWARDEN_GATEWAY: 'env-gw',
  })
  assert.equal(agent.ready.site, 'env-site')
  assert.equal(agent.ready.gateway, 'env-gw')
  assert.deepEqual(agent.ready.mqtt, { host: '127.0.0.1', mqtt: port })
  assert.equal(statSync(join(dataDir, 'gateway.key')).mode & 0o777, 0o600)
  await assertRefused(port, 'env-gw', 'dev-1')
  assert.equal(await agent.stop(), 0)
})

test('edgewarden --help exits 0 with the usage', async () => {
  const r = await runCli(['--help'])
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /^Usage:/m)
  assert.match(r.stdout, /edgewarden start/)
  assert.match(r.stdout, /--mqtt-port/)
})
