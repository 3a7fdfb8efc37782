// control-plane/ is the central side: it speaks wire/ and nothing else of
// ours (STYLE.md "Our layout"). It never imports agent/, protocols/,
// firmware-hooks/ or simulators/; the agent side may start it (the demo), not
// the other way round.
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { test } from 'node:test'
import { ROOT } from '../helpers/agent.ts'

const FORBIDDEN = ['agent', 'protocols', 'firmware-hooks', 'simulators', 'test', 'bench', 'scripts']

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : /\.[cm]?ts$/.test(e.name) ? [join(dir, e.name)] : []))
}

/** Relative module specifiers of a file: static imports, re-exports, import(). */
function relativeSpecifiers(source: string): string[] {
  const code = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`\\])\/\/.*$/gm, '$1')
  const found: string[] = []
  for (const re of [/\b(?:import|export)\s+(?:type\s+)?(?:[\w*{}\s,$]+?\s+from\s+)?['"](\.[^'"]*)['"]/g, /\bimport\s*\(\s*['"](\.[^'"]*)['"]\s*\)/g]) for (const m of code.matchAll(re)) found.push(m[1]!)
  return found
}

test('control-plane/ imports wire/ and itself only', () => {
  const files = sources(join(ROOT, 'control-plane'))
  assert.ok(files.length >= 30, `found the control-plane sources (${files.length})`)
  const bad: string[] = []
  for (const f of files) {
    for (const spec of relativeSpecifiers(readFileSync(f, 'utf8'))) {
      const top = relative(ROOT, resolve(dirname(f), spec)).split('/')[0]!
      if (FORBIDDEN.includes(top)) bad.push(`${relative(ROOT, f)} imports ${spec}`)
    }
  }
  assert.deepEqual(bad, [])
  // the check sees a violation when there is one
  assert.deepEqual(relativeSpecifiers("import { x } from '../../agent/gateway.ts'\nconst y = await import('../simulators/z.ts')"), ['../../agent/gateway.ts', '../simulators/z.ts'])
})
