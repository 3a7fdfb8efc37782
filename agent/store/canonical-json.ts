// Deterministic JSON (keys sorted at every level) so a hash computed when an
// entry is written is recomputed byte for byte when it is verified, whatever
// order JSON.parse gives the keys back in.
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'number' && !Number.isFinite(value)) throw new TypeError('non-finite number in canonical JSON')
    return JSON.stringify(value) ?? 'null'
  }
  // Built in one string, without the arrays of map/filter/join: it runs for every audit entry written and verified.
  if (Array.isArray(value)) {
    let s = '['
    for (let i = 0; i < value.length; i++) {
      if (i > 0) s += ','
      const v: unknown = value[i]
      s += canonicalJson(v === undefined ? null : v)
    }
    return s + ']'
  }
  const o = value as Record<string, unknown>
  const keys = sortedKeys(o)
  let s = '{'
  for (const k of keys) {
    const v = o[k]
    if (v === undefined) continue
    if (s.length > 1) s += ','
    s += JSON.stringify(k) + ':' + canonicalJson(v)
  }
  return s + '}'
}

/**
 * Object.keys sorted as Array.prototype.sort sorts strings (by UTF-16 code
 * unit): an insertion sort for the few keys an entry's objects have, which
 * allocates nothing, where sort() allocates its work arrays on every call.
 */
function sortedKeys(o: Record<string, unknown>): string[] {
  const keys = Object.keys(o)
  if (keys.length > 24) return keys.sort()
  for (let i = 1; i < keys.length; i++) {
    const k = keys[i]!
    let j = i - 1
    while (j >= 0 && keys[j]! > k) {
      keys[j + 1] = keys[j]!
      j--
    }
    keys[j + 1] = k
  }
  return keys
}
