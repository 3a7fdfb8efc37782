// The store's schema version (`meta!schema`) and the migrations between
// versions. The agent opening a store (Gateway.open) migrates an older one
// up to SCHEMA_VERSION, each step in one atomic batch together with the new
// version, so a crash leaves the store at one version or the next, never in
// between; it refuses a store a newer agent wrote (STORE_SCHEMA) and changes
// nothing in it. Readers that do not write (audit verify, device history of
// a stopped agent) only refuse a newer store. A store with data but no
// record is version 1: every store written before the record existed.
import { EdgewardenError } from '../runtime/errors.ts'
import type { Store, WriteOp } from './store.ts'

export const SCHEMA_KEY = 'meta!schema'
export const SCHEMA_VERSION = 2

interface SchemaRecord {
  version: number
  /** the agent version that wrote it (what a refusal names) */
  writtenBy: string
}

export interface Migration {
  from: number
  to: number
  what: string
  /** the ops of the step (read from the store as it is), written in one batch with the new version */
  ops(store: Store): Promise<WriteOp[]>
}

/** What each step does, oldest first. Add one here (and bump SCHEMA_VERSION) when what the store holds changes shape. */
export const MIGRATIONS: readonly Migration[] = [
  {
    from: 1,
    to: 2,
    what: 'open retirements keep only the jti of each command waiting for them (the command itself, kept by versions before 0.2, is never read)',
    async ops(store) {
      const ops: WriteOp[] = []
      for await (const [key, value] of store.scan('retire!')) {
        const o = JSON.parse(value) as { origins?: { jti: string; command?: unknown }[] }
        if (!o.origins?.some((x) => x.command !== undefined)) continue
        o.origins = o.origins.map((x) => ({ jti: x.jti }))
        ops.push({ type: 'put', key, value: JSON.stringify(o) })
      }
      return ops
    },
  },
]

async function readSchema(store: Store): Promise<SchemaRecord | null> {
  const text = await store.get(SCHEMA_KEY)
  if (text === undefined) return null
  try {
    const r = JSON.parse(text) as SchemaRecord
    if (Number.isSafeInteger(r.version) && r.version >= 1) return r
  } catch {}
  throw new EdgewardenError('STORE_SCHEMA', `the store's schema record (${SCHEMA_KEY}) is unreadable: ${JSON.stringify(text.slice(0, 80))}; restore the data dir from a backup`)
}

/** Whether the store holds anything at all (a new data dir does not). */
async function isEmpty(store: Store): Promise<boolean> {
  for await (const _ of store.db.keys({ limit: 1 })) return false
  return true
}

function refuseNewer(found: SchemaRecord, where: string, agentVersion: string): never {
  throw new EdgewardenError(
    'STORE_SCHEMA',
    `the store in ${where} has schema ${found.version}, written by edgewarden ${found.writtenBy}; this edgewarden ${agentVersion} knows schema ${SCHEMA_VERSION} at most: ` +
      'run the newer version, or to roll back restore the backup of the data dir taken before the upgrade (docs/operations.md, "Roll back")',
  )
}

/** For readers: refuse a store a newer agent wrote; never writes. */
export async function checkSchema(store: Store, where: string, agentVersion: string): Promise<number> {
  const found = await readSchema(store)
  if (found && found.version > SCHEMA_VERSION) refuseNewer(found, where, agentVersion)
  return found?.version ?? 1
}

/**
 * For the agent, before anything else reads the store: a new store gets the
 * current version; an older one is migrated step by step; a newer one is
 * refused. Returns the steps taken (for the audit log), empty when none.
 */
export async function migrateStore(store: Store, where: string, agentVersion: string): Promise<{ from: number; to: number; what: string }[]> {
  const found = await readSchema(store)
  const record = (version: number): WriteOp => ({ type: 'put', key: SCHEMA_KEY, value: JSON.stringify({ version, writtenBy: agentVersion } satisfies SchemaRecord) })
  if (found === null && (await isEmpty(store))) {
    await store.write([record(SCHEMA_VERSION)], { sync: true })
    return []
  }
  if (found && found.version > SCHEMA_VERSION) refuseNewer(found, where, agentVersion)
  const done: { from: number; to: number; what: string }[] = []
  for (let v = found?.version ?? 1; v < SCHEMA_VERSION; ) {
    const step = MIGRATIONS.find((m) => m.from === v)
    if (!step) throw new TypeError(`no migration from schema ${v}`)
    await store.write([...(await step.ops(store)), record(step.to)], { sync: true })
    done.push({ from: step.from, to: step.to, what: step.what })
    v = step.to
  }
  if (found === null && done.length === 0) await store.write([record(SCHEMA_VERSION)], { sync: true })
  return done
}
