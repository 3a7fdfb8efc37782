// PostgreSQL through node-postgres: a pool for queries and transactions, and
// for each lock session one dedicated connection that holds its advisory
// locks (session-level: a killed instance's connection closes and its locks
// go with it, which is what hands the re-send loop and its intake slots to
// another instance). int8 comes back as a JS number, as PGlite returns it.
import pg from 'pg'
import { CpError } from '../runtime/errors.ts'
import { maskUrl } from '../runtime/log.ts'
import { databaseError, guarded, LOCK_CLASS, type Database, type LockSession, type Row, type Sql } from './database.ts'

const INT8 = 20
const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === INT8) return (v: string) => Number(v)
    return pg.types.getTypeParser(oid, format)
  },
} as pg.CustomTypesConfig

function sqlOf(target: pg.Pool | pg.PoolClient | pg.Client): Sql {
  return {
    query: async <R = Row>(text: string, params: readonly unknown[] = []): Promise<R[]> => (await guarded(() => target.query(text, params as unknown[]))).rows as R[],
    exec: async (text: string): Promise<void> => void (await guarded(() => target.query(text))),
  }
}

export async function openPostgres(url: string, opts: { max?: number; applicationName?: string } = {}): Promise<Database> {
  const config = { connectionString: url, types, application_name: opts.applicationName ?? 'edgewarden-cp', connectionTimeoutMillis: 10_000 }
  const pool = new pg.Pool({ ...config, max: opts.max ?? 10 })
  // An idle client that loses its server is dropped by the pool; the error must not crash the process.
  pool.on('error', () => {})
  try {
    const c = await pool.connect()
    c.release()
  } catch (err) {
    await pool.end().catch(() => {})
    throw new CpError('CP_DATABASE', `cannot connect to ${maskUrl(url)}: ${(err as Error).message}`, { cause: err })
  }
  const sessions = new Set<pg.Client>()
  return {
    kind: 'postgres',
    ...sqlOf(pool),
    async tx<T>(fn: (q: Sql) => Promise<T>): Promise<T> {
      const client = await guarded(() => pool.connect())
      let broken = false
      try {
        await client.query('BEGIN')
        const out = await fn(sqlOf(client))
        await client.query('COMMIT')
        return out
      } catch (err) {
        try {
          await client.query('ROLLBACK')
        } catch {
          broken = true
        }
        throw err instanceof CpError ? err : databaseError(err)
      } finally {
        client.release(broken)
      }
    },
    async lockSession(): Promise<LockSession> {
      const client = new pg.Client(config)
      const listeners: ((err: Error) => void)[] = []
      let lost: Error | null = null
      const lose = (err: Error): void => {
        if (lost) return
        lost = err
        for (const l of listeners) l(err)
      }
      client.on('error', (err) => lose(err))
      client.on('end', () => lose(new Error('lock session ended')))
      await guarded(() => client.connect())
      sessions.add(client)
      const q = async (text: string, params: unknown[]): Promise<Row[]> => {
        if (lost) throw new CpError('CP_DATABASE', `lock session lost: ${(lost as Error).message}`)
        try {
          return (await client.query(text, params)).rows as Row[]
        } catch (err) {
          // A query error on a broken connection means the session (and its locks) may be gone.
          if (!(err as { code?: string }).code) lose(err as Error)
          throw databaseError(err)
        }
      }
      return {
        async tryLock(key) {
          const rows = await q('SELECT pg_try_advisory_lock($1::int, $2::int) AS ok', [LOCK_CLASS, key])
          return rows[0]?.ok === true
        },
        async unlock(key) {
          await q('SELECT pg_advisory_unlock($1::int, $2::int)', [LOCK_CLASS, key])
        },
        async ping() {
          await q('SELECT 1', [])
        },
        onLost(fn) {
          listeners.push(fn)
          if (lost) fn(lost)
        },
        async close() {
          sessions.delete(client)
          lost ??= new Error('closed')
          await client.end().catch(() => {})
        },
      }
    },
    async close() {
      for (const c of sessions) await c.end().catch(() => {})
      sessions.clear()
      await pool.end()
    },
  }
}
