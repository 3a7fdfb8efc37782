// The layout's boundaries (STYLE.md "Our layout", README "Layout"):
// - wire/ (the contract both sides speak) imports nothing of ours but itself;
// - agent/ imports wire/, never protocols/, firmware-hooks/ or a protocol
//   library (aedes, mqtt, node-opcua, modbus-serial), with one exception:
//   agent/compose.ts, the composition root, wires the protocols in;
// - protocols/ implement the core's interfaces: they import agent/ and wire/,
//   never firmware-hooks/ or simulators/;
// - firmware-hooks/ and simulators/ (the device and control-plane side) never
//   import agent/ or protocols/.
import assert from 'node:assert/strict'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { test } from 'node:test'
import { ROOT } from '../../helpers/agent.ts'

const FORBIDDEN_IN_CORE = ['aedes', 'mqtt', 'node-opcua', 'modbus-serial']
const SOURCE = /\.(?:[cm]?[jt]s|tsx)$/

function sourceFiles(dir: string): string[] {
  if (!existsSync(dir)) return []
  const out: string[] = []
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name === 'node_modules' || e.name.startsWith('.')) continue
    const p = join(dir, e.name)
    if (e.isDirectory()) out.push(...sourceFiles(p))
    else if (SOURCE.test(e.name) && !e.name.endsWith('.d.ts')) out.push(p)
  }
  return out
}

/** Every module specifier a file names: static imports and re-exports (type-only too), import(), require(). */
export function specifiers(source: string): string[] {
  const code = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`\\])\/\/.*$/gm, '$1')
  const found: string[] = []
  const patterns = [
    /\b(?:import|export)\s+(?:type\s+)?(?:[\w*{}\s,$]+?\s+from\s+)?['"]([^'"]+)['"]/g,
    /\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g,
    /\brequire\s*\(\s*['"]([^'"]+)['"]\s*\)/g,
  ]
  for (const re of patterns) for (const m of code.matchAll(re)) found.push(m[1]!)
  return found
}

/** The package a bare specifier names ('mqtt/lib/x' -> 'mqtt', '@scope/p/x' -> '@scope/p'); null for paths and node: builtins. */
function packageOf(spec: string): string | null {
  if (spec.startsWith('.') || spec.startsWith('/') || spec.startsWith('node:')) return null
  const parts = spec.split('/')
  return spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!
}

const inside = (file: string, dir: string): boolean => {
  const rel = relative(join(ROOT, dir), file)
  return rel === '' || (!rel.startsWith('..') && !rel.startsWith(sep) && rel !== '..')
}

/** Violations of one rule set for one file. */
function violations(file: string, source: string, rule: { dirs: string[]; packages: string[] }): string[] {
  const bad: string[] = []
  for (const spec of specifiers(source)) {
    const pkg = packageOf(spec)
    if (pkg !== null && rule.packages.includes(pkg)) bad.push(`${relative(ROOT, file)} imports ${spec}`)
    if (spec.startsWith('.') || spec.startsWith('/')) {
      const target = resolve(dirname(file), spec)
      for (const d of rule.dirs) if (inside(target, d)) bad.push(`${relative(ROOT, file)} imports ${spec} (in ${d}/)`)
    }
  }
  return bad
}

const CORE_RULE = { dirs: ['protocols', 'firmware-hooks'], packages: FORBIDDEN_IN_CORE }
const DEVICE_SIDE_RULE = { dirs: ['agent', 'protocols'], packages: [] }
const PROTOCOL_RULE = { dirs: ['firmware-hooks', 'simulators'], packages: [] }
const WIRE_RULE = { dirs: ['agent', 'protocols', 'firmware-hooks', 'simulators', 'control-plane', 'test', 'bench', 'scripts'], packages: [] }
const COMPOSE = join(ROOT, 'agent', 'compose.ts')

test('the checker itself catches every form of forbidden import', () => {
  const file = join(ROOT, 'agent', 'x.ts')
  const src = [
    "import { Aedes } from 'aedes'",
    "import type { Client } from 'aedes'",
    "import mqtt from 'mqtt/dist/mqtt.js'",
    "import * as opcua from 'node-opcua'",
    "export { x } from '../protocols/mqtt/site-broker.ts'",
    "const m = await import('modbus-serial')",
    "const r = require('../protocols/modbus/proxy.ts')",
    "import '../protocols/opcua/side-effect.ts'",
    "import {\n  SiteBroker,\n  type Other,\n} from '../protocols/mqtt/site-broker.ts'",
    // not violations:
    "import { z } from 'zod' // see '../protocols/x'",
    "import { mqttLike } from './mqtt-names.ts'",
    "import { x } from 'mqtt-packet-ish'",
    "/* import { y } from '../protocols/z.ts' */",
  ].join('\n')
  assert.equal(violations(file, src, CORE_RULE).length, 9, violations(file, src, CORE_RULE).join('\n'))
  const sim = join(ROOT, 'simulators', 'fleet.ts')
  assert.deepEqual(violations(sim, "import { Gateway } from '../agent/gateway.ts'\nimport { b } from '../firmware-hooks/wire/jws.ts'", DEVICE_SIDE_RULE), [
    "simulators/fleet.ts imports ../agent/gateway.ts (in agent/)",
  ])
})

test('agent/ (but agent/compose.ts) imports neither protocols/ nor firmware-hooks/ nor aedes, mqtt, node-opcua, modbus-serial', () => {
  const files = sourceFiles(join(ROOT, 'agent')).filter((f) => f !== COMPOSE)
  assert.ok(files.length >= 10, `found the core sources (${files.length})`)
  assert.ok(files.some((f) => f.endsWith(join('agent', 'gateway.ts'))))
  assert.ok(files.some((f) => inside(f, join('agent', 'cli'))), 'the CLI is held to the rule too')
  const bad = files.flatMap((f) => violations(f, readFileSync(f, 'utf8'), CORE_RULE))
  assert.deepEqual(bad, [])
  // the composition root is where adapters are wired in: the rule is real, not vacuous
  assert.ok(violations(COMPOSE, readFileSync(COMPOSE, 'utf8'), CORE_RULE).length > 0, 'agent/compose.ts wires protocols/ in')
})

test('simulators/ and firmware-hooks/ never import agent/ or protocols/', () => {
  const files = [...sourceFiles(join(ROOT, 'simulators')), ...sourceFiles(join(ROOT, 'firmware-hooks'))]
  assert.ok(files.some((f) => inside(f, 'firmware-hooks')), 'found the firmware-hooks sources')
  const bad = files.flatMap((f) => violations(f, readFileSync(f, 'utf8'), DEVICE_SIDE_RULE))
  assert.deepEqual(bad, [])
})

test('protocols/ never import firmware-hooks/ or simulators/ (the gateway side and the device side share wire/ only)', () => {
  const files = sourceFiles(join(ROOT, 'protocols'))
  assert.ok(files.length >= 10)
  assert.deepEqual(files.flatMap((f) => violations(f, readFileSync(f, 'utf8'), PROTOCOL_RULE)), [])
})

test('wire/ imports nothing of ours but itself, and no package', () => {
  const files = sourceFiles(join(ROOT, 'wire'))
  assert.ok(files.some((f) => f.endsWith('protocol.ts')) && files.some((f) => f.endsWith('jws.ts')))
  const bad = files.flatMap((f) => [
    ...violations(f, readFileSync(f, 'utf8'), WIRE_RULE),
    ...specifiers(readFileSync(f, 'utf8'))
      .filter((s) => !s.startsWith('.') && !s.startsWith('node:'))
      .map((s) => `${relative(ROOT, f)} imports the package ${s}`),
  ])
  assert.deepEqual(bad, [])
})
