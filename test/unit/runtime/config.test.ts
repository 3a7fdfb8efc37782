// loadConfig: defaults, precedence (file < env < flags), YAML and JSON files,
// and every problem reported at once.
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { loadConfig } from '../../../agent/runtime/config.ts'
import { ConfigError, isEdgewardenError } from '../../../agent/runtime/errors.ts'
import { generateKeyPair } from '../../../agent/store/keys.ts'
import { runCli, tempDir } from '../../helpers/agent.ts'

function configError(fn: () => unknown): ConfigError {
  try {
    fn()
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`)
    assert.ok(isEdgewardenError(err, 'CONFIG_INVALID'))
    return err
  }
  assert.fail('expected loadConfig to throw')
}

test('defaults with no sources', (t) => {
  const cwd = tempDir(t)
  const c = loadConfig({ flags: {}, env: {}, cwd })
  assert.equal(c.dataDir, join(cwd, 'edgewarden-data'))
  assert.equal(c.keyFile, join(cwd, 'edgewarden-data', 'gateway.key'))
  assert.equal(c.site, 'default')
  assert.match(c.gateway, /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/)
  assert.deepEqual(c.mqtt, { host: '0.0.0.0', port: 1883, tls: null })
  assert.equal(c.uplink, null)
  assert.deepEqual(c.cpKeys, {})
  assert.equal(c.outboxMax, 100000)
  assert.equal(c.residualAlertIntervalS, 60)
  assert.equal(c.credentialLifetimeS, 365 * 24 * 3600)
  assert.equal(c.renewGraceS, 30 * 24 * 3600)
  assert.equal(c.clockSkewS, 300) // PROTOCOL §1
  assert.equal(c.logLevel, 'info')
})

test('precedence: defaults < file < EDGEWARDEN_* env < flags', (t) => {
  const cwd = tempDir(t)
  writeFileSync(join(cwd, 'edgewarden.yaml'), 'mqttPort: 1111\nsite: filesite\ngateway: filegw\nclockSkewS: 10\nlogLevel: warn\n')
  const env = { EDGEWARDEN_MQTT_PORT: '2222', EDGEWARDEN_SITE: 'envsite', EDGEWARDEN_CLOCK_SKEW: '20' }
  const flags = { config: 'edgewarden.yaml', mqttPort: '3333' }

  const fileOnly = loadConfig({ flags: { config: 'edgewarden.yaml' }, env: {}, cwd })
  assert.deepEqual([fileOnly.mqtt.port, fileOnly.site, fileOnly.gateway, fileOnly.clockSkewS, fileOnly.logLevel], [1111, 'filesite', 'filegw', 10, 'warn'])

  const fileEnv = loadConfig({ flags: { config: 'edgewarden.yaml' }, env, cwd })
  assert.deepEqual([fileEnv.mqtt.port, fileEnv.site, fileEnv.gateway, fileEnv.clockSkewS], [2222, 'envsite', 'filegw', 20])

  const all = loadConfig({ flags, env, cwd })
  assert.deepEqual([all.mqtt.port, all.site, all.gateway, all.clockSkewS, all.logLevel], [3333, 'envsite', 'filegw', 20, 'warn'])

  // the config file itself may be named by the environment
  const viaEnv = loadConfig({ flags: {}, env: { EDGEWARDEN_CONFIG: 'edgewarden.yaml' }, cwd })
  assert.equal(viaEnv.site, 'filesite')
  // an empty variable is not a value
  assert.equal(loadConfig({ flags: {}, env: { EDGEWARDEN_SITE: '' }, cwd }).site, 'default')
})

test('YAML and JSON config files give the same config; relative paths resolve against cwd', (t) => {
  const cwd = tempDir(t)
  const cp = generateKeyPair().publicKeyB64
  writeFileSync(
    join(cwd, 'c.yml'),
    ['dataDir: data', 'key: keys/gw.pem', 'mqttHost: 127.0.0.1', 'mqttPort: 1884', 'site: s1', 'gateway: gw-7', `cpKey:\n  - cp-2026=${cp}`, 'uplink: mqtts://cp.example:8883', 'outboxMax: 5'].join('\n'),
  )
  writeFileSync(
    join(cwd, 'c.json'),
    JSON.stringify({ dataDir: 'data', key: 'keys/gw.pem', mqttHost: '127.0.0.1', mqttPort: 1884, site: 's1', gateway: 'gw-7', cpKey: [`cp-2026=${cp}`], uplink: 'mqtts://cp.example:8883', outboxMax: 5 }),
  )
  const y = loadConfig({ flags: { config: 'c.yml' }, env: {}, cwd })
  const j = loadConfig({ flags: { config: 'c.json' }, env: {}, cwd })
  assert.deepEqual(y, j)
  assert.equal(y.dataDir, join(cwd, 'data'))
  assert.equal(y.keyFile, join(cwd, 'keys', 'gw.pem'))
  assert.deepEqual(y.mqtt, { host: '127.0.0.1', port: 1884, tls: null })
  assert.deepEqual(y.cpKeys, { 'cp-2026': cp })
  assert.deepEqual(y.uplink, { url: 'mqtts://cp.example:8883' })
  assert.equal(y.outboxMax, 5)
})

test('several control-plane keys may be pinned at once (comma-separated in env)', (t) => {
  const cwd = tempDir(t)
  const [a, b] = [generateKeyPair().publicKeyB64, generateKeyPair().publicKeyB64]
  const c = loadConfig({ flags: {}, env: { EDGEWARDEN_CP_KEY: `cp-1=${a},cp-2=${b}` }, cwd })
  assert.deepEqual(c.cpKeys, { 'cp-1': a, 'cp-2': b })
})

test('every problem is reported at once in one ConfigError', (t) => {
  const cwd = tempDir(t)
  writeFileSync(join(cwd, 'c.yaml'), 'site: ok-site\nmqttPorrt: 1883\n')
  const err = configError(() =>
    loadConfig({
      flags: { config: 'c.yaml', mqttPort: '70000', site: 'bad id', cpKey: ['cp1=not-a-key'], logLevel: 'loud' },
      env: { EDGEWARDEN_OUTBOX_MAX: '-3' },
      cwd,
    }),
  )
  const p = err.problems
  assert.equal(p.length, 6, p.join('\n'))
  const find = (re: RegExp): string => {
    const hit = p.find((x) => re.test(x))
    assert.ok(hit, `a problem matching ${re} in:\n${p.join('\n')}`)
    return hit
  }
  assert.match(find(/^mqttPort/), /--mqtt-port/)
  assert.match(find(/unknown option "mqttPorrt"/), /c\.yaml/)
  assert.match(find(/^site/), /--site/)
  assert.match(find(/^cpKey/), /not base64url of 32 bytes/)
  assert.match(find(/^logLevel/), /fatal, error, warn/)
  assert.match(find(/^outboxMax/), /EDGEWARDEN_OUTBOX_MAX/)
  // one message, one line per problem
  for (const x of p) assert.ok(err.message.includes(x))
})

test('bounds: a connect timeout or packet bound too small to admit anyone is refused', () => {
  const err = configError(() => loadConfig({ flags: { connectTimeoutMs: '0', maxPacketBytes: '10', authFailuresPerClient: '0' }, env: {} }))
  assert.equal(err.problems.length, 3, err.problems.join('\n'))
  assert.match(err.problems.find((x) => x.startsWith('connectTimeoutMs'))!, /below 100/)
  assert.match(err.problems.find((x) => x.startsWith('maxPacketBytes'))!, /below 1024/)
  assert.match(err.problems.find((x) => x.startsWith('authFailuresPerClient'))!, /below 1/)
})

test('malformed --cp-key entries and inconsistent option groups', (t) => {
  const cwd = tempDir(t)
  const key = generateKeyPair().publicKeyB64
  const err = configError(() =>
    loadConfig({
      flags: { cpKey: ['no-equals-sign', `bad id=${key}`, `cp=${key}`, `cp=${generateKeyPair().publicKeyB64}`], tlsCert: 'server.pem', uplink: 'http://x', uplinkCert: 'c.pem' },
      env: {},
      cwd,
    }),
  )
  const all = err.problems.join('\n')
  assert.match(all, /"no-equals-sign" is not KID=PUBKEY/)
  assert.match(all, /"bad id=.*" is not KID=PUBKEY/)
  assert.match(all, /cpKey cp: pinned twice/)
  // an mqtts port alone is fine now (the site CA issues its certificate); a certificate without its key is not
  assert.match(all, /tlsCert and tlsKey go together/)
  assert.match(all, /not an mqtt:\/\/ or mqtts:\/\/ URL/)
  assert.match(all, /uplinkCert and uplinkKey go together/)
  assert.equal(err.problems.length, 6, all)
})

test('a config file that is missing, unparsable or not a mapping is a problem, not a crash', (t) => {
  const cwd = tempDir(t)
  writeFileSync(join(cwd, 'broken.json'), '{"site": ')
  writeFileSync(join(cwd, 'list.yaml'), '- a\n- b\n')
  assert.match(configError(() => loadConfig({ flags: { config: 'nope.yaml' }, env: {}, cwd })).problems.join(), /not found/)
  assert.match(configError(() => loadConfig({ flags: { config: 'broken.json' }, env: {}, cwd })).problems.join(), /not valid JSON/)
  assert.match(configError(() => loadConfig({ flags: { config: 'list.yaml' }, env: {}, cwd })).problems.join(), /must be a mapping/)
})

test('edgewarden start with a bad port and a bad site: exit 2, one message naming both, no stack trace', async (t) => {
  const cwd = tempDir(t)
  const r = await runCli(['start', '--mqtt-port', 'notaport', '--site', 'bad id', '--data-dir', join(cwd, 'data')], { cwd, env: { EDGEWARDEN_LOG_LEVEL: 'silent' } })
  assert.equal(r.code, 2, r.stderr)
  assert.match(r.stderr, /^edgewarden: invalid configuration:/)
  assert.equal(r.stderr.match(/invalid configuration/g)?.length, 1, 'one message')
  assert.match(r.stderr, /mqttPort \(from --mqtt-port\): "notaport"/)
  assert.match(r.stderr, /site \(from --site\): "bad id"/)
  assert.doesNotMatch(r.stderr, /\n\s+at \S/, 'no stack trace')
  assert.doesNotMatch(r.stdout, /ready/)
})

test('config problems never echo a secret: a non-string uplinkPassword, credentials in an uplink URL', async (t) => {
  const cwd = tempDir(t)
  const NUMERIC_PASSWORD = '98765432123'
  const URL_PASSWORD = 'Sup3rS3cret-url-pw'
  const BARE_PASSWORD = 'Bare-S3cret-pw-x9'
  writeFileSync(join(cwd, 'c.yaml'), `uplinkPassword: ${NUMERIC_PASSWORD}\nuplink: http://gw-user:${URL_PASSWORD}@central:1883\n`)
  const fromFile = await runCli(['start', '--config', 'c.yaml', '--data-dir', join(cwd, 'data')], { cwd, env: { EDGEWARDEN_LOG_LEVEL: 'silent' } })
  assert.equal(fromFile.code, 2, fromFile.stderr)
  assert.match(fromFile.stderr, /uplinkPassword \(from .*c\.yaml: uplinkPassword\): \(secret, not shown\) is not a non-empty string \(quote it/)
  assert.match(fromFile.stderr, /uplink: "http:\/\/\[redacted\]@central:1883" is not an mqtt:\/\/ or mqtts:\/\/ URL/)
  // a URL with no scheme: what looks like user:password is redacted all the same
  const bare = await runCli(['start', '--uplink', `gw-user:${BARE_PASSWORD}@central:1883`, '--uplink-password', '', '--data-dir', join(cwd, 'data')], { cwd, env: { EDGEWARDEN_LOG_LEVEL: 'silent' } })
  assert.equal(bare.code, 2, bare.stderr)
  assert.match(bare.stderr, /uplink: "\[redacted\]@central:1883" is not an mqtt/)
  for (const [r, secrets] of [[fromFile, [NUMERIC_PASSWORD, URL_PASSWORD, 'gw-user']], [bare, [BARE_PASSWORD, 'gw-user']]] as const) {
    for (const s of secrets) {
      assert.ok(!r.stderr.includes(s), `${s} in stderr:\n${r.stderr}`)
      assert.ok(!r.stdout.includes(s), `${s} in stdout`)
    }
  }
  // the same in the ConfigError itself, for a caller that prints its problems
  const err = configError(() => loadConfig({ flags: { uplinkPassword: '', uplink: `mqtt//u:${URL_PASSWORD}@h` }, env: {}, cwd }))
  assert.ok(!err.message.includes(URL_PASSWORD), err.message)
  assert.match(err.message, /uplinkPassword \(from --uplink-password\): \(secret, not shown\)/)
})
