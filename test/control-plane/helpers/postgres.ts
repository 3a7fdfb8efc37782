// A throwaway PostgreSQL server for the control-plane tests: initdb in a temp
// dir and `postgres` on a free loopback port (as the `postgres` user when
// run as root: initdb refuses root), fsync off, stopped and removed after
// the file's tests. EDGEWARDEN_TEST_DATABASE_URL (an admin URL of a server
// that is already running) is used instead when set. Each test gets a
// database of its own.
//
// Found: $EDGEWARDEN_PG_BIN, else the newest /usr/lib/postgresql/<ver>/bin
// (Debian's postgresql package, which .ci/run installs), else PATH. Missing:
// a failure in CI or as root (where .ci/run installs it), a skip with the
// reason on a developer machine.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { freePort } from '../../../simulators/ports.ts'
import { stderrReady } from '../../helpers/wait.ts'

function findBin(): string | null {
  const env = process.env.EDGEWARDEN_PG_BIN
  if (env && existsSync(join(env, 'postgres'))) return env
  const root = '/usr/lib/postgresql'
  if (existsSync(root)) {
    const versions = readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'postgres'))).sort((a, b) => Number(b) - Number(a))
    if (versions[0]) return join(root, versions[0], 'bin')
  }
  for (const dir of (process.env.PATH ?? '').split(':')) if (dir && existsSync(join(dir, 'postgres')) && existsSync(join(dir, 'initdb'))) return dir
  return null
}

export const PG_BIN = findBin()
const EXTERNAL = process.env.EDGEWARDEN_TEST_DATABASE_URL || null

/** false when the PostgreSQL tests can run (or must, and fail loudly); else why they are skipped. */
export function pgSkipReason(): string | false {
  if (EXTERNAL || PG_BIN) return false
  if (process.env.CI || process.getuid?.() === 0) return false
  return 'needs PostgreSQL (apt-get install postgresql, or EDGEWARDEN_TEST_DATABASE_URL); skipped because it is missing, not root and CI is unset'
}

const isRoot = process.getuid?.() === 0

function asPostgres(cmd: string, args: string[]): [string, string[]] {
  return isRoot ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args]
}

export class PgServer {
  readonly adminUrl: string
  #proc: ChildProcess | null
  #dir: string | null
  #log = ''
  #n = 0

  private constructor(adminUrl: string, proc: ChildProcess | null, dir: string | null) {
    this.adminUrl = adminUrl
    this.#proc = proc
    this.#dir = dir
  }

  static async start(): Promise<PgServer> {
    if (EXTERNAL) return new PgServer(EXTERNAL, null, null)
    if (!PG_BIN) throw new Error('no PostgreSQL server binaries (postgres, initdb): .ci/run installs Debian\'s postgresql; set EDGEWARDEN_PG_BIN to their folder or EDGEWARDEN_TEST_DATABASE_URL to a running server')
    const dir = mkdtempSync(join(tmpdir(), 'edgewarden-pg-'))
    if (isRoot) {
      const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim())
      const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim())
      chownSync(dir, uid, gid)
    }
    const data = join(dir, 'data')
    const [initCmd, initArgs] = asPostgres(join(PG_BIN, 'initdb'), ['-D', data, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale=C'])
    try {
      execFileSync(initCmd, initArgs, { stdio: 'pipe' })
    } catch (err) {
      rmSync(dir, { recursive: true, force: true })
      throw new Error(`initdb failed: ${(err as { stderr?: Buffer }).stderr?.toString() ?? (err as Error).message}`)
    }
    const port = await freePort()
    const [cmd, args] = asPostgres(join(PG_BIN, 'postgres'), [
      '-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1',
      '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off', '-c', 'max_connections=300', '-c', 'shared_buffers=32MB',
    ])
    const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    const s = new PgServer(`postgres://postgres@127.0.0.1:${port}/postgres`, proc, dir)
    proc.stderr!.on('data', (c: Buffer) => (s.#log += c.toString()))
    await stderrReady(proc, /ready to accept connections/, () => s.#log, 'postgres', 20_000).catch(async (err) => {
      await s.stop()
      throw err
    })
    return s
  }

  /** A fresh, empty database; its URL. */
  async createDatabase(): Promise<string> {
    const name = `cp_test_${process.pid}_${++this.#n}_${Date.now().toString(36)}`
    const c = new pg.Client({ connectionString: this.adminUrl })
    await c.connect()
    try {
      await c.query(`CREATE DATABASE ${name}`)
    } finally {
      await c.end()
    }
    const u = new URL(this.adminUrl)
    u.pathname = `/${name}`
    return u.toString()
  }

  #postmasterPid(): number | null {
    if (!this.#dir) return null
    try {
      const pid = Number(readFileSync(join(this.#dir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0])
      return Number.isSafeInteger(pid) && pid > 0 ? pid : null
    } catch {
      return null
    }
  }

  async stop(): Promise<void> {
    const p = this.#proc
    this.#proc = null
    if (p && p.exitCode === null && p.signalCode === null) {
      const done = new Promise<void>((r) => p.once('exit', () => r()))
      // SIGINT is PostgreSQL's fast shutdown. It goes to the postmaster itself
      // (its pid is the first line of postmaster.pid): runuser does not pass
      // it on, and a runuser killed instead leaves the postmaster running,
      // holding the pipe that keeps this process alive.
      const postmaster = this.#postmasterPid()
      if (postmaster !== null) {
        try {
          process.kill(postmaster, 'SIGINT')
        } catch {
          p.kill('SIGINT')
        }
      } else p.kill('SIGINT')
      const t = setTimeout(() => {
        if (postmaster !== null) {
          try {
            process.kill(postmaster, 'SIGKILL')
          } catch {}
        }
        p.kill('SIGKILL')
      }, 10_000)
      await done
      clearTimeout(t)
    }
    if (this.#dir) rmSync(this.#dir, { recursive: true, force: true })
    this.#dir = null
  }
}
