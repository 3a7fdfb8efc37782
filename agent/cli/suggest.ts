// "Did you mean": the closest of the known words to a mistyped one (a verb,
// a sub-verb, a flag, an EDGEWARDEN_* variable), or nothing when none is
// close enough to be a typo rather than another word.

/** Optimal string alignment distance: insertions, deletions, substitutions and swaps of two neighbours each cost 1. */
export function editDistance(a: string, b: string): number {
  const m = a.length
  const n = b.length
  let prev2: number[] = []
  let prev = Array.from({ length: n + 1 }, (_, j) => j)
  for (let i = 1; i <= m; i++) {
    const cur = [i]
    for (let j = 1; j <= n; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      let d = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, prev2[j - 2]! + 1)
      cur.push(d)
    }
    prev2 = prev
    prev = cur
  }
  return prev[n]!
}

/**
 * The known word closest to `word`, if it is within a typo's reach: about
 * one edit per three characters (at least one), or `word` is the start of
 * exactly one known word (`--deadl` for `--deadline`). Case is ignored.
 */
export function closest(word: string, known: Iterable<string>): string | undefined {
  const w = word.toLowerCase()
  const all = [...new Set(known)]
  const prefixed = w.length >= 3 ? all.filter((k) => k.toLowerCase().startsWith(w)) : []
  if (prefixed.length === 1) return prefixed[0]
  let best: string | undefined
  let bestD = Infinity
  for (const k of all) {
    const d = editDistance(w, k.toLowerCase())
    if (d < bestD) {
      bestD = d
      best = k
    }
  }
  const reach = Math.max(1, Math.floor(w.length / 3))
  return best !== undefined && bestD > 0 && bestD <= reach ? best : undefined
}

/** ` (did you mean X?)`, or '' when nothing is close. */
export function didYouMean(word: string, known: Iterable<string>, show: (k: string) => string = (k) => k): string {
  const c = closest(word, known)
  return c === undefined ? '' : ` (did you mean ${show(c)}?)`
}
