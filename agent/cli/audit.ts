// `edgewarden audit verify|export`: straight from the store when the agent
// is stopped, through the admin socket when it holds the store.
import { join } from 'node:path'
import { existsSync } from 'node:fs'
import { AUDIT_HEAD_KEY, AUDIT_PREFIX, exportAuditLog, IDENTITY_KEY, verifyAuditLog, type AuditVerdict } from '../store/audit.ts'
import { rawPublicKey, readKeyFile } from '../store/keys.ts'
import type { Store } from '../store/store.ts'
import { adminRequest, expectOk } from './admin-client.ts'
import { palette } from './colour.ts'
import { dataDirOf, out, withStore } from './common.ts'
import { parseVerbArgs } from './main.ts'
import { ProgressBar } from './progress.ts'
import { didYouMean } from './suggest.ts'
import { deviceAuditEntries } from '../observe/device-history.ts'
import { UsageError } from './usage.ts'


/**
 * The store, with a progress bar ticking per audit entry read (on a terminal
 * only; the signed head's seq is the total). `show: false` for no bar, e.g.
 * when the entries themselves go to the same terminal.
 */
async function withProgress(store: Store, label: string, show: boolean): Promise<{ store: Store; bar: ProgressBar | null }> {
  if (!show || process.stderr.isTTY !== true) return { store, bar: null }
  const head = await store.getJson<{ seq?: number }>(AUDIT_HEAD_KEY)
  const bar = new ProgressBar(typeof head?.seq === 'number' ? head.seq : null, label)
  async function* scan(prefix: string, opts?: Parameters<Store['scan']>[1]): AsyncGenerator<[string, string]> {
    for await (const kv of store.scan(prefix, opts)) {
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

export interface TrustedKey {
  key: string
  source: string
}

const SAME_PLACE = 'kept with the data it vouches for, so it proves less than a key pinned with --trust-key'

/**
 * The public keys a verify trusts, and where each came from: the pinned
 * --trust-key ones where given; else the public half of --key or of the data
 * dir's gateway key; else the key the store recorded at its first start.
 * Verifying needs no private key.
 */
async function trustedKeys(store: Store, dataDir: string, pinned: string[], keyFile: string | undefined): Promise<TrustedKey[]> {
  if (pinned.length) return pinned.map((key) => ({ key, source: 'pinned with --trust-key' }))
  const file = keyFile ?? join(dataDir, 'gateway.key')
  if (existsSync(file)) return [{ key: readKeyFile(file).publicKeyB64, source: `the public half of ${file}, ${SAME_PLACE}` }]
  const identity = await store.getJson<{ publicKey?: string }>(IDENTITY_KEY)
  if (identity?.publicKey) return [{ key: identity.publicKey, source: `recorded in the store itself at its first start, ${SAME_PLACE}` }]
  throw new UsageError(`no key to verify with: no ${file}; give the gateway's public key with --trust-key (\`edgewarden identity\` prints it)`)
}

export async function runAudit(args: string[]): Promise<number> {
  const [sub, ...rest] = args
  const { values, positionals } = parseVerbArgs(rest, { key: { type: 'string' }, 'trust-key': { type: 'string', multiple: true }, device: { type: 'string' }, json: { type: 'boolean' } })
  const device = typeof values.device === 'string' ? values.device : undefined
  if (device !== undefined && sub !== 'export') throw new UsageError('--device goes with audit export (the entries about one device)')
  if (positionals.length) throw new UsageError(`audit ${sub} takes no arguments`)
  const dataDir = dataDirOf(values['data-dir'])
  const trust = (values['trust-key'] as string[] | undefined) ?? []
  if (sub === 'verify') {
    for (const k of trust) if (!rawPublicKey(k)) throw new UsageError(`--trust-key ${k} is not a public key (base64url of 32 bytes, as \`edgewarden identity\` prints it)`)
    let result = await withStore(dataDir, async (s) => {
      const trusted = await trustedKeys(s, dataDir, trust, typeof values.key === 'string' ? values.key : undefined)
      const { store, bar } = await withProgress(s, 'verifying', true)
      try {
        return { ...(await verifyAuditLog(store, trusted.map((k) => k.key))), trusted }
      } finally {
        bar?.finish()
      }
    })
    if (result === null) {
      const q = trust.map((k) => `trust=${encodeURIComponent(k)}`).join('&')
      result = expectOk(await adminRequest(dataDir, 'GET', `/v1/audit/verify${q ? `?${q}` : ''}`)) as unknown as AuditVerdict & { trusted: TrustedKey[] }
    }
    const p = palette()
    const verdict = result
    if (values.json) out(JSON.stringify(verdict))
    else {
      if (verdict.ok) out(`${p.green('audit log verifies')}: ${verdict.entries} entries, head ${verdict.head}`)
      else out(`${p.red(`audit log BROKEN at entry ${verdict.seq}`)}: ${verdict.problem} (${verdict.entries} entries verified before it)`)
      for (const k of verdict.trusted ?? []) out(`trusted key ${k.key} (${k.source})`)
    }
    return verdict.ok ? 0 : 1
  }
  if (sub === 'export') {
    const done = await withStore(dataDir, async (s) => {
      const { store, bar } = await withProgress(s, 'exporting', process.stdout.isTTY !== true)
      for await (const e of device !== undefined ? deviceAuditEntries(store, device) : exportAuditLog(store)) process.stdout.write(`${JSON.stringify(e)}\n`)
      bar?.finish()
      return true
    })
    if (done === null) {
      const r = await adminRequest(dataDir, 'GET', `/v1/audit/export${device !== undefined ? `?device=${encodeURIComponent(device)}` : ''}`)
      if (r.status !== 200) expectOk(r)
      process.stdout.write(r.text)
    }
    return 0
  }
  throw new UsageError(sub ? `unknown audit verb "${sub}"${didYouMean(sub, ['verify', 'export'])}` : 'audit needs a verb: verify or export')
}
