import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { renderErrorCodes, renderReferenceConfig } from '../../../agent/cli/reference-config.ts'
import { ErrorCodes } from '../../../agent/runtime/errors.ts'
import { execFileSync } from 'node:child_process'
import { ROOT } from '../../helpers/agent.ts'
import { OPTIONS } from '../../../agent/runtime/config.ts'

test('docs/configuration.md is the generated reference of every option (npm run docs)', () => {
  const doc = readFileSync(new URL('../../../docs/configuration.md', import.meta.url), 'utf8')
  assert.equal(doc, renderReferenceConfig(), 'docs/configuration.md is stale: run npm run docs')
  for (const o of OPTIONS) if (o.key !== 'config') assert.match(doc, new RegExp(`--${o.flag}\\b`))
})

test('docs/PROTOCOL.md is the project copy of the shared wire contract', () => {
  const ours = readFileSync(new URL('../../../docs/PROTOCOL.md', import.meta.url), 'utf8')
  assert.match(ours, /^# edgewarden wire contract, version 1/)
  for (const section of ['## 1. Keys and signed messages', '## 3. Control plane', '## 5. Gateway <-> device', '## 8. OPC UA hook']) assert.ok(ours.includes(section))
})

test('docs/errors.md lists every error code (npm run docs), and every code is raised somewhere in the code', () => {
  const doc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8')
  assert.equal(doc, renderErrorCodes(), 'docs/errors.md is stale: run npm run docs')
  const sources = execFileSync('git', ['grep', '--untracked', '-h', '-E', "'[A-Z_]{3,}'", '--', 'agent', 'protocols'], { cwd: ROOT, encoding: 'utf8' })
  for (const code of Object.keys(ErrorCodes)) {
    const uses = sources.split('\n').filter((l) => l.includes(`'${code}'`) && !l.includes(`${code}: '`))
    assert.ok(uses.length > 0, `error code ${code} is in the registry but raised nowhere: raise it where it belongs or delete it`)
  }
})
