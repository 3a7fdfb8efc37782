// `edgewarden audit verify|export`: straight from the store when the agent
// is stopped, through the admin socket when it holds the store.
import { join } from 'node:path'
import { AUDIT_HEAD_KEY, AUDIT_PREFIX, exportAuditLog, verifyAuditLog, type AuditVerdict } from '../audit.ts'
import { isEdgewardenError } from '../errors.ts'
import { readKeyFile } from '../keys.ts'
import { Store } from '../store.ts'
import { adminRequest, expectOk } from './admin-client.ts'
import { palette } from './colour.ts'
import { dataDirOf, out } from './common.ts'
import { parseVerbArgs } from './main.ts'
import { ProgressBar } from './progress.ts'
import { UsageError } from './usage.ts'

async function withStore<T>(dataDir: string, fn: (s: Store) => Promise<T>): Promise<T | null> {
  let store: Store
  try {
    store = await Store.open(dataDir)
  } catch (err) {
    if (isEdgewardenError(err, 'STORE_LOCKED')) return null
    throw err
  }
  try {
    return await fn(store)
  } finally {
    await store.close()
  }
}

/**
 * The store, with a progress bar ticking per audit entry read (on a terminal
 * only; the signed head's seq is the total). `show: false` for no bar, e.g.
 * when the entries themselves go to the same terminal.
 */
async function withProgress(store: Store, label: string, show: boolean): Promise<{ store: Store; bar: ProgressBar | null }> {
  if (!show || process.stderr.isTTY !== true) return { store, bar: null }
  const head = await store.getJson<{ seq?: number }>(AUDIT_HEAD_KEY)
  const bar = new ProgressBar(typeof head?.seq === 'number' ? head.seq : null, label)
  async function* scan(prefix: string): AsyncGenerator<[string, string]> {
    for await (const kv of store.scan(prefix)) {
      if (prefix === AUDIT_PREFIX) bar.tick()
      yield kv
    }
  }
  const counted = new Proxy(store, {
    get(target, prop) {
      if (prop === 'scan') return scan
      const v = Reflect.get(target, prop, target) as unknown
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v
    },
  })
  return { store: counted, bar }
}

export async function runAudit(args: string[]): Promise<number> {
  const [sub, ...rest] = args
  const { values, positionals } = parseVerbArgs(rest, { key: { type: 'string' }, 'trust-key': { type: 'string', multiple: true }, json: { type: 'boolean' } })
  if (positionals.length) throw new UsageError(`audit ${sub} takes no arguments`)
  const dataDir = dataDirOf(values['data-dir'])
  const trust = (values['trust-key'] as string[] | undefined) ?? []
  if (sub === 'verify') {
    let verdict = await withStore(dataDir, async (s) => {
      const key = readKeyFile(typeof values.key === 'string' ? values.key : join(dataDir, 'gateway.key'))
      const { store, bar } = await withProgress(s, 'verifying', true)
      try {
        return await verifyAuditLog(store, [key.publicKeyB64, ...trust])
      } finally {
        bar?.finish()
      }
    })
    if (verdict === null) {
      const q = trust.map((k) => `trust=${encodeURIComponent(k)}`).join('&')
      verdict = expectOk(await adminRequest(dataDir, 'GET', `/v1/audit/verify${q ? `?${q}` : ''}`)) as unknown as AuditVerdict
    }
    const p = palette()
    if (values.json) out(JSON.stringify(verdict))
    else if (verdict.ok) out(`${p.green('audit log verifies')}: ${verdict.entries} entries, head ${verdict.head}`)
    else out(`${p.red(`audit log BROKEN at entry ${verdict.seq}`)}: ${verdict.problem} (${verdict.entries} entries verified before it)`)
    return verdict.ok ? 0 : 1
  }
  if (sub === 'export') {
    const done = await withStore(dataDir, async (s) => {
      const { store, bar } = await withProgress(s, 'exporting', process.stdout.isTTY !== true)
      for await (const e of exportAuditLog(store)) process.stdout.write(`${JSON.stringify(e)}\n`)
      bar?.finish()
      return true
    })
    if (done === null) {
      const r = await adminRequest(dataDir, 'GET', '/v1/audit/export')
      if (r.status !== 200) expectOk(r)
      process.stdout.write(r.text)
    }
    return 0
  }
  throw new UsageError(sub ? `unknown audit verb "${sub}"` : 'audit needs a verb: verify or export')
}
