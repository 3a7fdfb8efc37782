// canonicalJson against the implementation every stored audit entry was
// hashed with so far: the chain hashes this text, so it must not change by
// a byte for any value.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { canonicalJson } from '../../../agent/store/canonical-json.ts'

// The reference: the first implementation, with which every stored entry so far was hashed
// (JSON.stringify of a re-sorted object is no reference: integer-like keys come first in any JS object).
const reference = (value: unknown): string => {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null'
  if (Array.isArray(value)) return `[${value.map((v) => reference(v === undefined ? null : v)).join(',')}]`
  const o = value as Record<string, unknown>
  const keys = Object.keys(o).filter((k) => o[k] !== undefined).sort()
  return `{${keys.map((k) => `${JSON.stringify(k)}:${reference(o[k])}`).join(',')}}`
}

// a small deterministic generator (no dependency on Math.random between runs)
function* values(seed: number, n: number): Generator<unknown> {
  let x = seed
  const rnd = (m: number): number => ((x = (x * 1103515245 + 12345) % 2 ** 31), x % m)
  const keys = ['a', 'b', 'Z', 'é', 'data', 'seq', '', 'a b', '"q"', '\u2028', '10', '9']
  const make = (depth: number): unknown => {
    switch (rnd(depth > 3 ? 6 : 9)) {
      case 0: return null
      case 1: return rnd(2) === 0
      case 2: return rnd(1e9) - 5e8 + (rnd(2) ? 0.5 : 0)
      case 3: return keys[rnd(keys.length)]! + '\n\t\\'.slice(0, rnd(4))
      case 4: return undefined
      case 5: return ''
      case 6: return Array.from({ length: rnd(5) }, () => make(depth + 1))
      default: return Object.fromEntries(Array.from({ length: rnd(6) }, () => [keys[rnd(keys.length)]!, make(depth + 1)]))
    }
  }
  for (let i = 0; i < n; i++) yield make(0)
}

test('canonicalJson: byte for byte the sorted JSON of 5,000 generated values (undefined left out of objects, null in arrays)', () => {
  let n = 0
  for (const v of values(7, 5000)) {
    if (v === undefined) continue
    assert.equal(canonicalJson(v), reference(v), JSON.stringify(v))
    n++
  }
  assert.ok(n > 4000)
  assert.equal(canonicalJson({ b: 1, a: [undefined, { d: undefined, c: 'x' }] }), '{"a":[null,{"c":"x"}],"b":1}')
  assert.equal(canonicalJson({ 10: 1, 9: 2, a: 3 }), '{"10":1,"9":2,"a":3}', 'keys by code unit, integer-like ones too')
  assert.throws(() => canonicalJson({ a: Number.NaN }), /non-finite/)
  // objects with many keys (sorted by sort() rather than the small-object path), keys that look like numbers included
  const wide = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`${(i * 7919) % 97}${i % 3 ? 'k' : ''}`, i % 5 ? i : { z: 1, y: [i] }]))
  assert.equal(canonicalJson(wide), reference(wide))
})
