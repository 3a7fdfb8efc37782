import { resolve } from 'node:path'

/** --data-dir, else EDGEWARDEN_DATA_DIR, else ./edgewarden-data: the same rule as `start`. */
export function dataDirOf(flag: unknown): string {
  return resolve(typeof flag === 'string' ? flag : (process.env.EDGEWARDEN_DATA_DIR || './edgewarden-data'))
}

export const out = (s: string): void => {
  process.stdout.write(s.endsWith('\n') ? s : `${s}\n`)
}
