import { resolve } from 'node:path'
import { palette } from './colour.ts'

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
