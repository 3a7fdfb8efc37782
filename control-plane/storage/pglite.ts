// PGlite (PostgreSQL compiled to WebAssembly) in the data dir: the default,
// so a first start needs nothing else. One process only: the data dir is
// locked (data-dir-lock.ts). Advisory locks are real but trivially held:
// there is no other session to contend with.
import { mkdirSync } from 'node:fs'
import { PGlite, type Transaction } from '@electric-sql/pglite'
import { CpError } from '../runtime/errors.ts'
import { databaseError, guarded, type Database, type LockSession, type Row, type Sql } from './database.ts'

function sqlOf(target: PGlite | Transaction): Sql {
  return {
    query: async <R = Row>(text: string, params: readonly unknown[] = []): Promise<R[]> => (await guarded(() => target.query<R>(text, params as unknown[]))).rows,
    exec: async (text: string): Promise<void> => void (await guarded(() => target.exec(text))),
  }
}

export async function openPglite(dir: string): Promise<Database> {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const db = await guarded(() => PGlite.create(dir))
  let closed = false
  return {
    kind: 'pglite',
    ...sqlOf(db),
    async tx<T>(fn: (q: Sql) => Promise<T>): Promise<T> {
      let inner: unknown = null
      try {
        return await db.transaction(async (t) => {
          try {
            return await fn(sqlOf(t))
          } catch (err) {
            inner = err
            throw err
          }
        })
      } catch (err) {
        if (err === inner) throw err
        throw databaseError(err)
      }
    },
    async lockSession(): Promise<LockSession> {
      return {
        async tryLock() {
          return !closed
        },
        async unlock() {},
        async ping() {
          if (closed) throw new CpError('CP_DATABASE', 'database closed')
        },
        onLost() {},
        async close() {},
      }
    },
    async close() {
      if (closed) return
      closed = true
      await db.close()
    },
  }
}
