// Property tests of config parsing (agent/config.ts loadConfig): random
// flags, environment and config-file contents give either a valid AgentConfig
// or one ConfigError (code CONFIG_INVALID, exit code 2), never a crash or any
// other error; values that are valid come back as given.
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import fc from 'fast-check'
import { envName, loadConfig, OPTIONS, type AgentConfig } from '../../agent/runtime/config.ts'
import { ConfigError } from '../../agent/runtime/errors.ts'
import { runCli, tempDir } from '../helpers/agent.ts'

const settable = OPTIONS.filter((o) => o.key !== 'config')
const text = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.integer({ min: -10, max: 100_000 }).map(String),
  fc.constantFrom('0', '65535', '65536', '1e3', ' 42 ', '-1', 'none', 'nftables', 'debug', 'mqtt://127.0.0.1:1', 'cp=AAAA', 'high=0.5', ''),
)
/** What parseArgs can hand over: strings, and lists of strings for list options. */
const flags = fc.uniqueArray(fc.constantFrom(...settable), { maxLength: 6, selector: (o) => o.key }).chain((opts) =>
  fc.tuple(...opts.map((o) => (o.type === 'list' ? fc.array(text, { maxLength: 3 }) : text))).map((values) => Object.fromEntries(opts.map((o, i) => [o.key, values[i]]))),
)
const env = fc.uniqueArray(fc.constantFrom(...OPTIONS), { maxLength: 5, selector: (o) => o.key }).chain((opts) =>
  fc.tuple(...opts.map(() => text)).map((values) => Object.fromEntries(opts.map((o, i) => [envName(o), values[i]]))),
)
/** A config file: a mapping of (mostly known) keys to any values, or any text at all. */
const fileBody = fc.oneof(
  fc.dictionary(fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...OPTIONS.map((o) => o.key)) }, fc.string({ maxLength: 10 })), fc.oneof(text, fc.jsonValue({ maxDepth: 2 })), { maxKeys: 6 }).map((d) => JSON.stringify(d)),
  fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v) ?? ''),
  fc.string({ maxLength: 200 }),
  fc.string({ unit: fc.constantFrom(...'ab:- \n[]{}"\'&*!|>%@`#,?'.split('')), maxLength: 80 }),
)

/** loadConfig, allowing only ConfigError out. */
function load(src: Parameters<typeof loadConfig>[0]): AgentConfig | ConfigError {
  try {
    return loadConfig(src)
  } catch (err) {
    assert.ok(err instanceof ConfigError, `threw ${(err as Error)?.stack ?? String(err)}`)
    assert.equal(err.code, 'CONFIG_INVALID')
    assert.ok(err.problems.length > 0 && err.problems.every((p) => typeof p === 'string' && p.length > 0))
    return err
  }
}

test('loadConfig on random flags, environment and config files: a valid config or a ConfigError, nothing else', (t) => {
  const dir = tempDir(t)
  let n = 0
  let valid = 0
  fc.assert(
    fc.property(flags, env, fc.option(fc.tuple(fileBody, fc.constantFrom('yaml', 'json')), { nil: undefined }), (f, e, file) => {
      let configFlag: Record<string, string> = {}
      if (file) {
        const path = join(dir, `c${n++}.${file[1]}`)
        writeFileSync(path, file[0])
        configFlag = { config: path }
      }
      const r = load({ flags: { ...f, ...configFlag }, env: e, cwd: dir })
      if (!(r instanceof ConfigError)) {
        valid++
        assert.ok(r.mqtt.port === null || (r.mqtt.port >= 0 && r.mqtt.port <= 65535))
        assert.ok(Number.isSafeInteger(r.authThrottle.perClient) && r.authThrottle.perClient >= 0)
        assert.ok(r.dataDir.startsWith('/'))
      }
    }),
    { numRuns: 400 },
  )
  t.diagnostic(`${valid} of 400 random configurations were valid`)
})

/** Where each whole-number option lands in AgentConfig. */
const INT_AT: Record<string, (c: AgentConfig) => number | undefined> = {
  mqttPort: (c) => c.mqtt.port ?? undefined,
  mqttsPort: (c) => c.mqtt.tls?.port,
  estPort: (c) => c.pki.est?.port,
  modbusMaxClients: (c) => c.modbusClients.maxClients,
  modbusMaxClientsPerAddress: (c) => c.modbusClients.maxClientsPerAddress,
  modbusIdleTimeoutMs: (c) => c.modbusClients.idleTimeoutMs,
  rejectReportIntervalS: (c) => c.rejectReportIntervalS,
  modbusPort: (c) => c.modbus?.port,
  modbusTimeoutMs: (c) => c.modbusTimeoutMs,
  httpPort: (c) => c.http?.port,
  authFailuresPerClient: (c) => c.authThrottle.perClient,
  authFailuresPerAddress: (c) => c.authThrottle.perAddress,
  authThrottleWindowS: (c) => c.authThrottle.windowS,
  authBlockS: (c) => c.authThrottle.blockS,
  connectTimeoutMs: (c) => c.connectTimeoutMs,
  cryptoWorkers: (c) => c.cryptoWorkers ?? undefined,
  sessionQueueMessages: (c) => c.sessionQueue.messages,
  sessionQueueBytes: (c) => c.sessionQueue.bytes,
  maxPacketBytes: (c) => c.maxPacketBytes,
  outboxMax: (c) => c.outboxMax,
  residualAlertIntervalS: (c) => c.residualAlertIntervalS,
  credentialLifetimeS: (c) => c.credentialLifetimeS,
  renewGraceS: (c) => c.renewGraceS,
  renewOverlapS: (c) => c.renewOverlapS,
  clockSkewS: (c) => c.clockSkewS,
}

test('valid values round-trip: whole numbers and ports, by file, environment or flag, in that precedence', (t) => {
  const dir = tempDir(t)
  const ints = settable.filter((o) => INT_AT[o.key] !== undefined)
  assert.equal(ints.length, 25)
  fc.assert(
    fc.property(fc.constantFrom(...ints).chain((o) => fc.tuple(fc.constant(o), ...[0, 1, 2].map(() => fc.integer({ min: o.min ?? 0, max: Math.max(65535, (o.min ?? 0) + 65535) })))), ([o, a, b, c]) => {
      const path = join(dir, 'c.json')
      writeFileSync(path, JSON.stringify({ [o.key]: a }))
      const fromFile = load({ flags: { config: path }, env: {}, cwd: dir })
      const fromEnv = load({ flags: { config: path }, env: { [envName(o)]: String(b) }, cwd: dir })
      const fromFlag = load({ flags: { config: path, [o.key]: String(c) }, env: { [envName(o)]: String(b) }, cwd: dir })
      for (const [r, want] of [[fromFile, a], [fromEnv, b], [fromFlag, c]] as const) {
        assert.ok(!(r instanceof ConfigError), String(r))
        assert.equal(INT_AT[o.key]!(r), want, o.key)
      }
    }),
    { numRuns: 300 },
  )
})

test('the CLI turns random bad options into one clear error and exit code 2', async (t) => {
  const dir = tempDir(t)
  const samples = fc.sample(
    fc.tuple(fc.constantFrom('mqtt-port', 'auth-failures-per-client', 'connect-timeout', 'log-level', 'quarantine', 'site', 'renew-at'), fc.string({ unit: fc.constantFrom(...'xyz!@ -1'.split('')), maxLength: 12 }).map((v) => `!${v}`)), // '!' fits no option: never a valid value
    { numRuns: 3, seed: 42 },
  )
  for (const [flag, value] of samples) {
    const r = await runCli(['start', '--data-dir', dir, `--${flag}`, value, '--mqtt-port', '0'].slice(0, flag === 'mqtt-port' ? 5 : 7))
    assert.equal(r.code, 2, `--${flag} ${JSON.stringify(value)}: ${r.stderr}`)
    assert.match(r.stderr, /^edgewarden: invalid configuration:/)
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace')
  }
})
