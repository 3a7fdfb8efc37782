import { resolve } from 'node:path'
import { palette } from './colour.ts'
import { isEdgewardenError } from '../runtime/errors.ts'
import { Store } from '../store/store.ts'
import { checkSchema } from '../store/schema.ts'
import { VERSION } from '../gateway.ts'

/** --data-dir, else EDGEWARDEN_DATA_DIR, else ./edgewarden-data: the same rule as `start`. */
export function dataDirOf(flag: unknown): string {
  return resolve(typeof flag === 'string' ? flag : (process.env.EDGEWARDEN_DATA_DIR || './edgewarden-data'))
}

export const out = (s: string): void => {
  process.stdout.write(s.endsWith('\n') ? s : `${s}\n`)
}

/** Columns padded to the widest cell (the last left ragged); the header row bold on a terminal. */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)))
  const bold = palette().bold
  return rows.map((r, n) => (n === 0 ? bold : String)(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  '))).join('\n')
}

/** Seconds since the epoch as UTC ISO 8601 to the second (`2026-03-01T12:00:00Z`); null as `-`. */
export const fmtTime = (s: number | null): string => (s === null ? '-' : new Date(s * 1000).toISOString().replace('.000Z', 'Z'))

/** Runs `fn` on the store of a stopped agent; null when a running agent holds it (ask the agent instead). */
export async function withStore<T>(dataDir: string, fn: (s: Store) => Promise<T>): Promise<T | null> {
  let store: Store
  try {
    store = await Store.open(dataDir)
  } catch (err) {
    if (isEdgewardenError(err, 'STORE_LOCKED')) return null
    throw err
  }
  try {
    // a store a newer agent wrote is refused, not misread
    await checkSchema(store, dataDir, VERSION)
    return await fn(store)
  } finally {
    await store.close()
  }
}
