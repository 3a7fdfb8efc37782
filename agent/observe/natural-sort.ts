// Ids as people sort them: sim-2 before sim-10, pump-7 before Pump-8.
// The collator is built on first use: building it costs several milliseconds
// of every start, and only the admin API and the status page sort ids.
let collator: Intl.Collator | undefined

/** Natural order of two ids; ids equal but for case in code-point order, so the order is total. */
export function naturalCompare(a: string, b: string): number {
  collator ??= new Intl.Collator('en', { numeric: true, sensitivity: 'base' })
  return collator.compare(a, b) || (a < b ? -1 : a > b ? 1 : 0)
}
