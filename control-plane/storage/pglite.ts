// PGlite (PostgreSQL compiled to WebAssembly) in the data dir: the default,
// so a first start needs nothing else. One process only: the data dir is
// locked (data-dir-lock.ts). Advisory locks are real but trivially held:
// there is no other session to contend with.
import { mkdirSync } from 'node:fs'
import { PGlite, type Transaction } from '@electric-sql/pglite'
import { CpError } from '../runtime/errors.ts'
import type { Database, LockSession, Row, Sql } from './database.ts'

function wrap(err: unknown): CpError {
  const e = err as { message?: string; code?: string }
  const c = new CpError('CP_DATABASE', `database: ${e?.message ?? String(err)}`, { cause: err })
  if (typeof e?.code === 'string') Object.assign(c, { pgCode: e.code })
  return c
}

function sqlOf(target: PGlite | Transaction): Sql {
  return {
    async query<R = Row>(text: string, params: readonly unknown[] = []): Promise<R[]> {
      try {
        return (await target.query<R>(text, params as unknown[])).rows
      } catch (err) {
        throw wrap(err)
      }
    },
    async exec(text: string): Promise<void> {
      try {
        await target.exec(text)
      } catch (err) {
        throw wrap(err)
      }
    },
  }
}

export async function openPglite(dir: string): Promise<Database> {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  let db: PGlite
  try {
    db = await PGlite.create(dir)
  } catch (err) {
    throw wrap(err)
  }
  const base = sqlOf(db)
  let closed = false
  const lostListeners: ((err: Error) => void)[] = []
  return {
    kind: 'pglite',
    ...base,
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
        throw wrap(err)
      }
    },
    async lockSession(): Promise<LockSession> {
      const held = new Set<number>()
      return {
        async tryLock(key) {
          if (closed) return false
          held.add(key)
          return true
        },
        async unlock(key) {
          held.delete(key)
        },
        async ping() {
          if (closed) throw new CpError('CP_DATABASE', 'database closed')
        },
        onLost(fn) {
          lostListeners.push(fn)
        },
        async close() {
          held.clear()
        },
      }
    },
    async close() {
      if (closed) return
      closed = true
      await db.close()
    },
  }
}
