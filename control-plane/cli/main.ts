// `edgewarden control-plane`: the verb. It parses flags into one typed
// config and hands it to the service (service.ts); its sub-verbs manage
// tokens straight in the database and re-verify an export offline. Every
// error is one clear line and an exit code (0 ok, 1 failed, 2 usage or
// configuration); a stack trace only for what is a bug.
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { SCOPES, Tokens } from '../api/auth.ts'
import { verifyExport } from '../evidence/verify-export.ts'
import { systemClock } from '../runtime/clock.ts'
import { loadConfig, OPTIONS } from '../runtime/config.ts'
import { CpError, isCpError } from '../runtime/errors.ts'
import { openDatabase, startControlPlane } from '../service.ts'
import { lockDataDir } from '../storage/data-dir-lock.ts'
import { migrate } from '../storage/migrations.ts'
import { bindValues, out } from './args.ts'

export class CpUsageError extends Error {}

export const CP_USAGE = `edgewarden control-plane: the central service (HTTP API, evidence in PostgreSQL or PGlite, re-sends)

Usage:
  edgewarden control-plane --broker URL --key FILE --kid ID [options]
                                   run the service until SIGTERM or ctrl-c
  edgewarden control-plane token add NAME --scope S[,S…] [--data-dir D | --database URL]
                                   make a bearer token (printed once; scopes ${SCOPES.join(', ')})
  edgewarden control-plane token ls|revoke ID [--data-dir D | --database URL]
  edgewarden control-plane verify-export FILE [--gateway-key SITE/GW=KEY]... [--json]
                                   re-verify an events export (JSON lines) offline; exit 1 naming each bad line

Options (each also an EDGEWARDEN_CP_* variable, e.g. EDGEWARDEN_CP_BROKER_PASSWORD; flags win):
${OPTIONS.map((o) => `  --${o.flag.padEnd(18)} ${o.doc}${o.default !== undefined ? ` (default ${o.default})` : ''}`).join('\n')}
`

function flagsOf(args: string[], extra: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = {}) {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = { ...extra }
  for (const o of OPTIONS) options[o.flag] = { type: 'string' }
  try {
    return parseArgs({ args: bindValues(args, options), options, strict: true, allowPositionals: true })
  } catch (err) {
    throw new CpUsageError((err as Error).message)
  }
}

function configFlags(values: Record<string, unknown>): Record<string, string | undefined> {
  const f: Record<string, string | undefined> = {}
  for (const o of OPTIONS) if (typeof values[o.flag] === 'string') f[o.flag] = values[o.flag] as string
  return f
}

export async function runControlPlaneCli(args: string[]): Promise<number> {
  try {
    const [sub] = args
    if (sub === 'help') {
      out(CP_USAGE)
      return 0
    }
    if (sub === 'token') return await tokenVerb(args.slice(1))
    if (sub === 'verify-export') return verifyExportVerb(args.slice(1))
    return await serve(sub === 'serve' ? args.slice(1) : args)
  } catch (err) {
    if (err instanceof CpUsageError) {
      process.stderr.write(`edgewarden: ${err.message}\n(see edgewarden control-plane help)\n`)
      return 2
    }
    if (isCpError(err)) {
      process.stderr.write(`edgewarden: ${err.message}\n`)
      return err.code === 'CP_CONFIG' || err.code === 'CP_DATA_DIR_LOCKED' ? 2 : 1
    }
    process.stderr.write(`edgewarden: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`)
    return 1
  }
}

async function serve(args: string[]): Promise<number> {
  const { values, positionals } = flagsOf(args)
  if (positionals.length) throw new CpUsageError(`control-plane takes no arguments (got ${positionals.join(' ')}); sub-verbs: token, verify-export`)
  const config = loadConfig({ flags: configFlags(values) })
  const cp = await startControlPlane(config)
  await new Promise<void>((resolve) => {
    let signals = 0
    const on = (): void => {
      if (++signals > 1) process.exit(130)
      resolve()
    }
    process.on('SIGINT', on)
    process.on('SIGTERM', on)
  })
  await cp.stop()
  return 0
}

/** The database of a config made of just the storage flags (token sub-verbs need no broker or key). */
async function storageOnly(values: Record<string, unknown>) {
  const config = loadConfig({ flags: { ...configFlags(values), broker: 'mqtt://unused', key: '/unused', kid: 'unused' } })
  const unlock = config.database.kind === 'pglite' ? lockDataDir(config.dataDir) : () => {}
  try {
    const db = await openDatabase(config)
    await migrate(db, Date.now())
    return { db, close: async () => (await db.close(), unlock()) }
  } catch (err) {
    unlock()
    throw err
  }
}

async function tokenVerb(args: string[]): Promise<number> {
  const { values, positionals } = flagsOf(args, { scope: { type: 'string', multiple: true }, json: { type: 'boolean' } })
  const [action, arg, ...rest] = positionals
  if (rest.length) throw new CpUsageError(`token ${action} takes one argument`)
  if (action !== 'add' && action !== 'ls' && action !== 'revoke') throw new CpUsageError('token needs add NAME, ls or revoke ID')
  if ((action === 'add' || action === 'revoke') && !arg) throw new CpUsageError(`token ${action} needs ${action === 'add' ? 'a NAME' : 'an ID'}`)
  const scopes = ((values.scope as string[] | undefined) ?? []).flatMap((s) => s.split(',')).filter(Boolean)
  if (action === 'add' && !scopes.length) throw new CpUsageError(`token add needs --scope (${SCOPES.join(', ')})`)
  const { db, close } = await storageOnly(values)
  try {
    const tokens = new Tokens(db, systemClock)
    if (action === 'add') {
      const t = await tokens.create({ name: arg, scopes })
      out(values.json ? JSON.stringify(t) : t.token)
      if (!values.json) process.stderr.write(`token ${t.id} (${t.name}: ${t.scopes.join(', ')}) made; it is shown only now\n`)
    } else if (action === 'ls') {
      const list = await tokens.list()
      if (values.json) out(JSON.stringify(list))
      else for (const t of list) out(`${String(t.id).padEnd(14)} ${String(t.name).padEnd(20)} ${(t.scopes as string[]).join(',').padEnd(28)} ${t.revokedAt ? `revoked ${t.revokedAt}` : `created ${t.createdAt}`}`)
    } else {
      await tokens.revoke(arg!)
      out(`revoked ${arg}`)
    }
    return 0
  } finally {
    await close()
  }
}

function verifyExportVerb(args: string[]): number {
  const { values, positionals } = flagsOf(args, { 'gateway-key': { type: 'string', multiple: true }, json: { type: 'boolean' } })
  const [file, ...rest] = positionals
  if (!file || rest.length) throw new CpUsageError('verify-export takes one FILE (JSON lines from GET /v1/export/events.jsonl)')
  const pinned = new Map<string, string>()
  for (const p of (values['gateway-key'] as string[] | undefined) ?? []) {
    const m = /^([^=]+\/[^=]+)=(.+)$/.exec(p)
    if (!m) throw new CpUsageError(`--gateway-key ${p} is not SITE/GATEWAY=KEY`)
    pinned.set(m[1]!, m[2]!)
  }
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new CpError('CP_BAD_REQUEST', `${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  const v = verifyExport(text, pinned)
  if (values.json) out(JSON.stringify(v))
  else {
    for (const f of v.failures) out(`line ${f.line}: ${f.reason}`)
    out(`${v.verified} of ${v.lines} events verify${v.selfAsserted ? ` (${v.selfAsserted} against the key written in the file itself: pin it with --gateway-key SITE/GW=KEY)` : ''}`)
  }
  return v.failures.length === 0 && v.lines > 0 ? 0 : 1
}
