// Option values that start with a dash (one base64url key in 64 does): taken
// as the option's value, as getopt does, not refused as ambiguous.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { bindValues, parseVerbArgs } from '../../../agent/cli/main.ts'
import { runCli, tempDir } from '../../helpers/agent.ts'

test('a value starting with a dash is the value of the option before it', () => {
  const opts = { 'public-key': { type: 'string' as const }, json: { type: 'boolean' as const } }
  assert.deepEqual(bindValues(['--public-key', '-Abc_d', '--json', 'x'], opts), ['--public-key=-Abc_d', '--json', 'x'])
  assert.deepEqual(bindValues(['--public-key=-A', '--', '--public-key', 'y'], opts), ['--public-key=-A', '--', '--public-key', 'y'])
  const { values, positionals } = parseVerbArgs(['add', '--public-key', '--weird-but-valid', 'more'], opts)
  assert.equal(values['public-key'], '--weird-but-valid')
  assert.deepEqual(positionals, ['add', 'more'])
})

test('the CLI takes such a key: audit verify --trust-key -…', async (t) => {
  const r = await runCli(['audit', 'verify', '--trust-key', '-' + 'A'.repeat(42), '--data-dir', tempDir(t)])
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /trusted key -A+ \(pinned/)
})
