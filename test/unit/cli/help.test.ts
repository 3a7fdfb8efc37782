// Help and errors: "did you mean", each verb's own usage, parseArgs errors
// reworded, unknown EDGEWARDEN_* variables named (never their values).
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { closest, didYouMean, editDistance } from '../../../agent/cli/suggest.ts'
import { helpName, USAGE, usageOf, usageVerbs } from '../../../agent/cli/usage.ts'
import { parseStrict, parseVerbArgs } from '../../../agent/cli/main.ts'
import { OPTIONS, envName, unknownEnv } from '../../../agent/runtime/config.ts'

test('edit distance counts a swap of neighbours as one edit', () => {
  assert.equal(editDistance('device', 'device'), 0)
  assert.equal(editDistance('devcie', 'device'), 1)
  assert.equal(editDistance('dvice', 'device'), 1)
  assert.equal(editDistance('', 'abc'), 3)
  assert.equal(editDistance('kitten', 'sitting'), 3)
})

test('closest: a typo or a unique prefix, nothing for another word', () => {
  const verbs = ['start', 'identity', 'keygen', 'device', 'audit', 'ca', 'token', 'ctl', 'quarantine', 'demo', 'simulate']
  assert.equal(closest('devcie', verbs), 'device')
  assert.equal(closest('simluate', verbs), 'simulate')
  assert.equal(closest('quar', verbs), 'quarantine', 'a unique prefix')
  assert.equal(closest('frobnicate', verbs), undefined)
  assert.equal(closest('x', verbs), undefined)
  assert.equal(didYouMean('--jsn', ['--json', '--data-dir']), ' (did you mean --json?)')
  assert.equal(didYouMean('--zzz', ['--json']), '')
})

test('every verb has usage of its own, shorter than the whole, and the sub-verb narrows it', () => {
  const verbs = usageVerbs()
  for (const v of ['start', 'identity', 'keygen', 'token', 'device', 'audit', 'ca', 'quarantine', 'demo', 'simulate', 'ctl']) assert.ok(verbs.includes(v), `${v} in USAGE`)
  const seen = new Set<string>()
  for (const v of verbs) {
    const u = usageOf(v)!
    assert.ok(u.startsWith('Usage:\n'), v)
    assert.ok(u.includes(`edgewarden ${v}`), `${v}'s usage names it`)
    assert.ok(u.length < USAGE.length, `${v}'s usage is not the whole text`)
    for (const other of verbs) if (other !== v && !(v === 'ctl' && other === 'keygen')) assert.ok(!new RegExp(`^ {2}edgewarden ${other} `, 'm').test(u), `${v}'s usage has no ${other} entry`)
    assert.ok(!seen.has(u), `${v}'s usage differs from every other verb's`)
    seen.add(u)
  }
  assert.match(usageOf('start')!, /Options of start/)
  assert.match(usageOf('start')!, /--mqtt-port/)
  const add = usageOf('device', 'add')!
  assert.match(add, /--replace/)
  assert.doesNotMatch(add, /device ls/)
  const retire = usageOf('device', 'retire')!
  assert.match(retire, /--no-wipe --reason TEXT/)
  assert.match(retire, /--deadline/)
  assert.match(usageOf('ctl', 'watch')!, /ctl send, watch, bulk also take/, 'the note on several sub-verbs goes with each')
  assert.equal(usageOf('nonesuch'), null)
  assert.equal(helpName('device', 'add'), 'device add')
  assert.equal(helpName('device', '--json'), 'device')
  assert.equal(helpName('token', undefined), 'token')
})

test('parseArgs errors as one line: unknown option with the closest, a value missing, a switch given a value, an argument too many', () => {
  const opts = { reason: { type: 'string' as const }, json: { type: 'boolean' as const } }
  assert.throws(() => parseVerbArgs(['--resaon', 'x'], opts), { code: 'USAGE', message: 'unknown option --resaon (did you mean --reason?)' })
  assert.throws(() => parseVerbArgs(['--frob'], opts), { code: 'USAGE', message: 'unknown option --frob; options: --data-dir --reason --json' })
  assert.throws(() => parseVerbArgs(['--reason'], opts), { code: 'USAGE', message: '--reason needs a value' })
  assert.throws(() => parseVerbArgs(['--json=yes'], opts), { code: 'USAGE', message: '--json takes no value (it is a switch: give it alone)' })
  assert.throws(() => parseStrict(['stray'], opts, false, 'start'), { code: 'USAGE', message: 'start takes no arguments (got stray)' })
})

test('unknown EDGEWARDEN_* variables are named with the one meant; known ones, the control-plane service\'s and other variables are not', () => {
  const env = {
    EDGEWARDEN_MQTT_PROT: '1884',
    EDGEWARDEN_UPLINK_PASWORD: 'secret-value',
    EDGEWARDEN_WHATEVER: 'x',
    EDGEWARDEN_MQTT_PORT: '1',
    EDGEWARDEN_CTL_PASSWORD: 'p',
    EDGEWARDEN_FROM_SOURCE: '1',
    EDGEWARDEN_CP_BROKER_PASSWORD: 'q',
    PATH: '/bin',
  }
  assert.deepEqual(unknownEnv(env, closest), [
    { name: 'EDGEWARDEN_MQTT_PROT', meant: 'EDGEWARDEN_MQTT_PORT' },
    { name: 'EDGEWARDEN_UPLINK_PASWORD', meant: 'EDGEWARDEN_UPLINK_PASSWORD' },
    { name: 'EDGEWARDEN_WHATEVER' },
  ])
  assert.ok(!JSON.stringify(unknownEnv(env, closest)).includes('secret-value'), 'names only, never a value')
  const every = Object.fromEntries(OPTIONS.map((o) => [envName(o), 'x']))
  assert.deepEqual(unknownEnv(every, closest), [], 'every option variable is known')
})
