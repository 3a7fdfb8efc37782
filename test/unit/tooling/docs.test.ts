import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { renderReferenceConfig } from '../../../agent/cli/reference-config.ts'
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
