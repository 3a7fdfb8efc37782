// docs/control-plane.md kept honest against the code: every option of the
// service (runtime/config.ts OPTIONS) with its variable and default, every
// error code, every alert kind and webhook event, and the OpenAPI file it
// points to.
import assert from 'node:assert/strict'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { ALERT_KINDS } from '../../control-plane/fleet/alerts.ts'
import { WEBHOOK_EVENTS } from '../../control-plane/outward/webhooks.ts'
import { envName, OPTIONS } from '../../control-plane/runtime/config.ts'
import { CP_ERRORS } from '../../control-plane/runtime/errors.ts'
import { ROOT } from '../helpers/agent.ts'

test('docs/control-plane.md lists every option, error code, alert kind and webhook event', () => {
  const doc = readFileSync(join(ROOT, 'docs', 'control-plane.md'), 'utf8')
  for (const o of OPTIONS) {
    const row = doc.split('\n').find((l) => l.startsWith(`| \`--${o.flag}\` |`))
    assert.ok(row, `--${o.flag} has a row`)
    assert.ok(row.includes(`\`${envName(o.flag)}\``), `--${o.flag}: its variable`)
    if (o.default !== undefined) assert.ok(row.includes(`\`${o.default}\``), `--${o.flag}: its default ${o.default}`)
  }
  for (const code of Object.keys(CP_ERRORS)) assert.ok(doc.includes(`\`${code}\``), code)
  for (const kind of ALERT_KINDS) assert.ok(doc.includes(`\`${kind}\``), `alert ${kind}`)
  for (const e of WEBHOOK_EVENTS) assert.ok(doc.includes(`\`${e}\``), `webhook event ${e}`)
  const api = /\]\(\.\.\/(control-plane\/api\/openapi\.yaml)\)/.exec(doc)?.[1]
  assert.ok(api && existsSync(join(ROOT, api)), 'the API pointer names the OpenAPI file')
  assert.match(readFileSync(join(ROOT, 'README.md'), 'utf8'), /\(docs\/control-plane\.md\)/, 'the README points here')
})
