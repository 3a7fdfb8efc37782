// What the control plane asks of its database, whichever engine holds it:
// PGlite embedded in the data dir (one process), or PostgreSQL (several
// instances). Both speak the same SQL: one schema (migrations.ts), the same
// queries, the same conformance suite (test/control-plane/).
//
// Error contract: every method rejects with CpError CP_DATABASE when the
// engine fails (connection lost, statement refused); a unique violation keeps
// its SQLSTATE in `pgCode` ('23505') so callers can tell a race from a fault.
import { CpError } from '../runtime/errors.ts'

export type Row = Record<string, unknown>

export interface Sql {
  /** One statement with $1… parameters; the rows it returns. */
  query<R = Row>(text: string, params?: readonly unknown[]): Promise<R[]>
  /** Several statements, no parameters (migrations). */
  exec(text: string): Promise<void>
}

/**
 * A session that holds advisory locks (PostgreSQL: one dedicated connection;
 * its locks go when it does). `lost` fires once when the session is gone:
 * every lock it held is released by then, so the holder must stop at once.
 */
export interface LockSession {
  tryLock(key: number): Promise<boolean>
  unlock(key: number): Promise<void>
  /** rejects when the session is gone */
  ping(): Promise<void>
  onLost(fn: (err: Error) => void): void
  close(): Promise<void>
}

export interface Database extends Sql {
  readonly kind: 'pglite' | 'postgres'
  /** `fn` in one transaction: committed when it resolves, rolled back when it throws (the error passes through). */
  tx<T>(fn: (q: Sql) => Promise<T>): Promise<T>
  /** A new lock session. */
  lockSession(): Promise<LockSession>
  close(): Promise<void>
}

/** The advisory-lock class of every lock the control plane takes ('EW'); the object id says which. */
export const LOCK_CLASS = 0x4557
export const LOCK_MIGRATIONS = 1
export const LOCK_LEADER = 2
/** intake slot k is LOCK_SLOT_BASE + k */
export const LOCK_SLOT_BASE = 100

/** An engine's failure as CP_DATABASE, its SQLSTATE kept in `pgCode`. */
export function databaseError(err: unknown): CpError {
  const e = err as { message?: string; code?: string }
  const c = new CpError('CP_DATABASE', `database: ${e?.message ?? String(err)}`, { cause: err })
  if (typeof e?.code === 'string') Object.assign(c, { pgCode: e.code })
  return c
}

/** `run`, rejecting with databaseError when the engine fails. */
export async function guarded<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run()
  } catch (err) {
    throw databaseError(err)
  }
}
