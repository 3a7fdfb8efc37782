// PGlite is one process: a second control plane on the same data dir would
// corrupt it. The lock is a file created exclusively with our pid; one left
// by a process that no longer runs (killed) is taken over.
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { CpError } from '../runtime/errors.ts'

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

export function lockDataDir(dir: string): () => void {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const path = join(dir, 'cp.lock')
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600)
      writeSync(fd, `${process.pid}\n`)
      closeSync(fd)
      return () => rmSync(path, { force: true })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new CpError('CP_CONFIG', `data dir ${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
    let pid = NaN
    try {
      pid = Number(readFileSync(path, 'utf8').trim())
    } catch {}
    if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
      throw new CpError('CP_DATA_DIR_LOCKED', `data dir ${dir} is in use by process ${pid} (PGlite is one process; use --database postgres://… for several instances)`)
    }
    rmSync(path, { force: true })
  }
  throw new CpError('CP_DATA_DIR_LOCKED', `data dir ${dir}: could not take ${path}`)
}
