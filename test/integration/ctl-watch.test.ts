// `ctl watch` remembers each gateway's last event seq and audit head in a
// state file and says loudly when a later run sees them go back (PROTOCOL
// §3: the gateway was restored from an old copy of its data). Statuses and
// events are published here, signed as the gateway signs them, to a real
// Mosquitto; two and more runs of the real command share one state file.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import mqtt, { type MqttClient } from 'mqtt'
import { signJws } from '../../agent/store/jws.ts'
import { generateKeyPair, writeKeyFile, type KeyPair } from '../../agent/store/keys.ts'
import { BIN, ROOT, runCli, startTestAgent, tempDir } from '../helpers/agent.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'

const ROOT_TOPIC = 'edgewarden/v1/site1/gw1/'
const PLAIN = { FORCE_COLOR: undefined, NO_COLOR: undefined }

/** A stand-in gateway on the central broker: retained status, signed events as agent/outbox.ts makes them. */
async function fakeGateway(t: TestContext, m: Mosquitto, key: KeyPair) {
  const client: MqttClient = await mqtt.connectAsync(m.url, { clientId: `fake-gw1-${key.publicKeyB64.slice(0, 8)}`, protocolVersion: 4 })
  t.after(() => client.endAsync())
  const nowS = Math.floor(Date.now() / 1000)
  const signed = new Map<number, string>()
  return {
    status: (s: Record<string, unknown>) => client.publishAsync(`${ROOT_TOPIC}status`, JSON.stringify(s), { qos: 1, retain: true }),
    /** iatOffset: seconds after the test started that the gateway signed it */
    event: async (seq: number, iatOffset: number, tag = 'a'): Promise<string> => {
      const jws = signJws(key.privateKey, 'gw1', { iss: 'gw1', aud: 'cp', iat: nowS + iatOffset, jti: `gw1.${seq}.${tag}${iatOffset}`, seq, type: 'inventory', data: { part: 1, parts: 1, devices: [] } })
      signed.set(seq, jws)
      await client.publishAsync(`${ROOT_TOPIC}evt`, jws, { qos: 1 })
      return jws
    },
    /** the very event published before, again (as the gateway re-sends what its broker did not acknowledge) */
    again: (seq: number) => client.publishAsync(`${ROOT_TOPIC}evt`, signed.get(seq)!, { qos: 1 }),
  }
}

/** ctl watch as a process; resolves `ready` once it is subscribed, `done` at its exit; `until` waits for its output to say something. */
function watch(t: TestContext, args: string[], env: NodeJS.ProcessEnv = PLAIN) {
  const proc = spawn(process.execPath, [BIN, 'ctl', 'watch', ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(() => void proc.kill('SIGKILL'))
  let stdout = ''
  let stderr = ''
  const waiters: { re: RegExp; resolve(): void; reject(e: Error): void }[] = []
  proc.stdout.on('data', (c: Buffer) => {
    stdout += c.toString()
    for (const w of [...waiters]) if (w.re.test(stdout)) (waiters.splice(waiters.indexOf(w), 1), w.resolve())
  })
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => proc.once('exit', (code) => resolve({ code, stdout, stderr })))
  // Whatever is awaited fails at once if the process ends first: no test hangs on a watch that stopped.
  const ended = (what: string) => done.then((r) => Promise.reject(new Error(`ctl watch exited (${r.code}) before ${what}: ${r.stdout}${r.stderr}`)))
  const ready = Promise.race([new Promise<void>((resolve) => proc.stderr.on('data', (c: Buffer) => ((stderr += c.toString()), stderr.includes('watching ') && resolve()))), ended('it subscribed')])
  const until = (re: RegExp): Promise<void> =>
    re.test(stdout) ? Promise.resolve() : Promise.race([new Promise<void>((resolve, reject) => waiters.push({ re, resolve, reject })), ended(`printing ${re}`)])
  return { ready, done, until, stop: () => void proc.kill('SIGINT') }
}

const jsonLines = (s: string): Record<string, any>[] => s.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, any>)

test('ctl watch across runs: the audit head going back (retained status of a restored gateway) is said on both streams and in the exit code, once', async (t) => {
  const m = await Mosquitto.start(t)
  const key = generateKeyPair()
  const gw = await fakeGateway(t, m, key)
  const state = join(tempDir(t), 'nested', 'watch.json')
  const link = ['--broker', m.url, '--site', 'site1', '--gateway', 'gw1', '--gateway-key', key.publicKeyB64, '--state', state, '--json']

  // Run 1: the gateway's history grows; nothing to say.
  await gw.status({ online: true, version: '0.2.0', seq: 0, audit: { seq: 3, hash: 'h3' } })
  const w1 = watch(t, [...link, '--count', '3'])
  await w1.ready
  await gw.event(1, 1)
  await gw.event(2, 2)
  await gw.status({ online: true, version: '0.2.0', seq: 2, audit: { seq: 6, hash: 'h6' } })
  await gw.event(3, 3)
  const r1 = await w1.done
  assert.equal(r1.code, 0, r1.stderr)
  assert.deepEqual(jsonLines(r1.stdout).map((l) => l.seq), [1, 2, 3])
  const remembered = JSON.parse(readFileSync(state, 'utf8')) as Record<string, Record<string, unknown>>
  assert.deepEqual({ ...remembered['site1/gw1'], updatedAt: undefined, jti: undefined, iat: undefined }, { seq: 3, statusSeq: 2, audit: { seq: 6, hash: 'h6' }, gatewayKey: key.publicKeyB64, updatedAt: undefined, jti: undefined, iat: undefined })

  // The gateway is restored from a copy taken at audit entry 4 and comes back.
  await gw.status({ online: true, version: '0.2.0', seq: 1, audit: { seq: 4, hash: 'h4' } })
  const w2 = watch(t, [...link, '--count', '1'])
  await w2.ready
  await gw.event(2, 10, 'restored') // its next event: seq 2 again, a new one
  const r2 = await w2.done
  assert.equal(r2.code, 1, 'exit 1 on a rollback')
  const lines = jsonLines(r2.stdout)
  const rollbacks = lines.filter((l) => l.rollback)
  assert.equal(rollbacks.length, 1, `one warning for one restore: ${r2.stdout}`)
  assert.deepEqual(
    { ...rollbacks[0]!.rollback, detail: undefined },
    { site: 'site1', gateway: 'gw1', what: 'audit-head', remembered: { seq: 6, hash: 'h6' }, seen: { seq: 4, hash: 'h4' }, detail: undefined },
  )
  assert.match(r2.stderr, /ROLLBACK site1\/gw1: audit head went back from entry 6 to 4\. This gateway was restored from an old copy of its data: .*send them again/)
  assert.deepEqual(lines.filter((l) => l.seq !== undefined).map((l) => l.seq), [2])

  // Run 3: the restored history is the baseline now; its events go on without a second warning.
  const w3 = watch(t, [...link, '--count', '1'])
  await w3.ready
  await gw.event(3, 11, 'restored')
  const r3 = await w3.done
  assert.equal(r3.code, 0, r3.stdout + r3.stderr)
  assert.ok(!r3.stdout.includes('rollback'))
})

test('ctl watch across runs: a new event at a seq already seen is a rollback (red on a terminal); a re-delivered one and a reinstalled gateway are not', async (t) => {
  const m = await Mosquitto.start(t)
  const key = generateKeyPair()
  const gw = await fakeGateway(t, m, key)
  const state = join(tempDir(t), 'watch.json')
  // A status without seq or audit, as gateways before this one publish it: the events alone tell.
  await gw.status({ online: true, version: '0.1.0' })
  const link = ['--broker', m.url, '--site', 'site1', '--gateway', 'gw1', '--state', state]

  const w1 = watch(t, [...link, '--gateway-key', key.publicKeyB64, '--count', '5'])
  await w1.ready
  for (let s = 1; s <= 5; s++) await gw.event(s, s)
  const r1 = await w1.done
  assert.equal(r1.code, 0, r1.stderr)

  // Run 2: event 5 once more (the gateway re-sends what its broker did not acknowledge): nothing to say.
  // Then an event 4 signed later than event 5: a restored gateway numbering again.
  const w2 = watch(t, [...link, '--gateway-key', key.publicKeyB64, '--count', '2'], { FORCE_COLOR: '1', NO_COLOR: undefined })
  await w2.ready
  await gw.again(5)
  await gw.event(4, 20, 'restored')
  const r2 = await w2.done
  assert.equal(r2.code, 1)
  const out = r2.stdout.split('\n')
  assert.equal(out.filter((l) => l.includes('ROLLBACK')).length, 1, r2.stdout)
  assert.match(r2.stdout, /\x1b\[31mROLLBACK site1\/gw1: event seq 4, signed after event 5, is a new event at a seq already passed\. .*PROTOCOL §3\)\.\x1b\[0m/)
  assert.ok(out.findIndex((l) => /^\s+5 inventory/.test(l)) < out.findIndex((l) => l.includes('ROLLBACK')), 'the re-delivered event 5 raised nothing')
  assert.match(r2.stderr, /\x1b\[31medgewarden: ROLLBACK site1\/gw1: event seq 4/)

  // Another gateway key under the same name is another gateway (reinstalled), its seq 1 no rollback.
  const other = generateKeyPair()
  const gw2 = await fakeGateway(t, m, other)
  const w3 = watch(t, [...link, '--gateway-key', other.publicKeyB64, '--count', '1', '--json'])
  await w3.ready
  await gw2.event(1, 30)
  const r3 = await w3.done
  assert.equal(r3.code, 0, r3.stdout + r3.stderr)
  assert.match(r3.stderr, /another gateway key than last time/)
})

test('ctl watch and a real agent: its live status and events over a restart raise nothing; restoring an old copy of its data dir is said', async (t) => {
  const m = await Mosquitto.start(t)
  const dir = tempDir(t)
  const cpKey = generateKeyPair()
  const keyFile = join(dir, 'cp.key')
  writeKeyFile(keyFile, cpKey)
  const dataDir = join(dir, 'data')
  const backup = join(dir, 'backup')
  const state = join(dir, 'watch.json')
  const flags = { uplink: m.url, cpKey: [`ops=${cpKey.publicKeyB64}`] }
  let agent = await startTestAgent(t, { dataDir, flags })
  const gwKey = agent.gateway.key.publicKeyB64
  const link = ['--broker', m.url, '--site', 'site1', '--gateway', 'gw1', '--gateway-key', gwKey]
  const enroll = async (prefix: string): Promise<void> => {
    const ids = join(dir, `${prefix}.txt`)
    // one device record a line, each with a key of its own (a key shared by two ids is refused)
    writeFileSync(ids, Array.from({ length: 20 }, (_, i) => JSON.stringify({ id: `${prefix}-${i}`, publicKey: generateKeyPair().publicKeyB64 })).join('\n'))
    const r = await runCli(['ctl', 'bulk', ...link, '--key', keyFile, '--kid', 'ops', '--file', ids, '--json', 'device.enroll'])
    assert.equal(r.code, 0, r.stderr + r.stdout)
  }

  const w1 = watch(t, [...link, '--state', state, '--json'])
  await w1.ready
  await enroll('a')
  await agent.stop()
  cpSync(dataDir, backup, { recursive: true }) // the backup: stopped, copied
  agent = await startTestAgent(t, { dataDir, flags })
  await enroll('b')
  const last = agent.gateway.outbox.lastSeq
  await agent.stop() // a clean stop publishes the final status (seq, audit head) too
  await w1.until(new RegExp(`"seq":${last},`))
  w1.stop()
  const r1 = await w1.done
  assert.equal(r1.code, 0, r1.stdout + r1.stderr)
  assert.ok(!r1.stdout.includes('rollback'), 'a restart is no rollback')
  const remembered = (JSON.parse(readFileSync(state, 'utf8')) as Record<string, { seq: number; audit?: { seq: number } }>)['site1/gw1']!
  assert.equal(remembered.seq, last)
  assert.ok(remembered.audit && remembered.audit.seq > 0, `the status carries the audit head: ${JSON.stringify(remembered)}`)

  // Restored from the backup: seq and audit head of back then.
  rmSync(dataDir, { recursive: true })
  cpSync(backup, dataDir, { recursive: true })
  const w2 = watch(t, [...link, '--state', state, '--json'])
  await w2.ready
  agent = await startTestAgent(t, { dataDir, flags })
  await w2.until(/"rollback"/)
  w2.stop()
  const r2 = await w2.done
  assert.equal(r2.code, 1)
  const rb = jsonLines(r2.stdout).filter((l) => l.rollback)
  assert.equal(rb.length, 1, r2.stdout)
  assert.match(r2.stderr, /ROLLBACK site1\/gw1/)
  t.diagnostic(`restored gateway: ${rb[0]!.rollback.detail}`)
})
