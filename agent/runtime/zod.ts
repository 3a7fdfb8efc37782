// zod (schema validation), loaded on first use: it is ~50 ms of a start on
// this hardware, and a start validates nothing (a device spec or a command's
// arguments are checked when one arrives). Loaded synchronously, as the
// validators are, and once; the agent loads it in the background right after
// it is ready, so the first command does not wait for it.
import { createRequire } from 'node:module'
import type { z as Zod } from 'zod'

let loaded: typeof Zod | undefined

export function zod(): typeof Zod {
  return (loaded ??= (createRequire(import.meta.url)('zod') as { z: typeof Zod }).z)
}
