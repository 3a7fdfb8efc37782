// The `edgewarden` command: parse the verb, run it, turn any error into one
// clear line and an exit code (0 ok, 1 failed, 2 usage or config).
import { parseArgs } from 'node:util'
import { ConfigError, EdgewardenError, isEdgewardenError } from '../runtime/errors.ts'
import { VERSION } from '../gateway.ts'
import { runAudit } from './audit.ts'
import { runCa } from './ca.ts'
import { runCtl } from './ctl.ts'
import { runDevice } from './device.ts'
import { runIdentity, runKeygen } from './identity.ts'
import { runQuarantine } from './quarantine.ts'
import { runStart } from './start.ts'
import { runToken } from './token.ts'
import { UsageError, USAGE } from './usage.ts'

type Verb = (args: string[]) => Promise<number>

const VERBS: Record<string, Verb> = {
  start: runStart,
  identity: runIdentity,
  keygen: runKeygen,
  device: runDevice,
  audit: runAudit,
  ca: runCa,
  token: runToken,
  ctl: runCtl,
  quarantine: runQuarantine,
  // loaded on use: it pulls in aedes, node-opcua and the simulators
  demo: async (args) => (await import('./demo.ts')).runDemo(args),
  simulate: async (args) => (await import('./simulate.ts')).runSimulate(args),
}

export async function main(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv
  if (verb === undefined || verb === 'help' || verb === '--help' || verb === '-h') {
    process.stdout.write(USAGE)
    return verb === undefined ? 2 : 0
  }
  if (verb === '--version' || verb === 'version') {
    process.stdout.write(`${VERSION}\n`)
    return 0
  }
  const run = VERBS[verb]
  if (!run) {
    process.stderr.write(`edgewarden: unknown verb "${verb}"\n\n${USAGE}`)
    return 2
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(USAGE)
    return 0
  }
  try {
    return await run(rest)
  } catch (err) {
    return report(err)
  }
}

function report(err: unknown): number {
  const code = (err as { code?: string }).code
  if (err instanceof UsageError || (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'))) {
    process.stderr.write(`edgewarden: ${(err as Error).message}\n(see edgewarden --help)\n`)
    return 2
  }
  if (err instanceof ConfigError) {
    process.stderr.write(`edgewarden: ${err.message}\n`)
    return 2
  }
  if (isEdgewardenError(err)) {
    process.stderr.write(`edgewarden: ${err.message}\n`)
    return 1
  }
  process.stderr.write(`edgewarden: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`)
  return 1
}

/**
 * `--name VALUE` as `--name=VALUE` for every option that takes a value, as
 * getopt does: parseArgs refuses a value that starts with a dash as
 * ambiguous, and one base64url key in 64 does (`--public-key -Xy…`).
 */
export function bindValues(args: string[], options: Record<string, { type: 'string' | 'boolean' }>): string[] {
  const out: string[] = []
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!
    if (a === '--') {
      out.push(...args.slice(i))
      break
    }
    const name = a.startsWith('--') && !a.includes('=') ? a.slice(2) : null
    if (name !== null && options[name]?.type === 'string' && i + 1 < args.length) out.push(`${a}=${args[++i]!}`)
    else out.push(a)
  }
  return out
}

/** parseArgs for the small verbs: --data-dir everywhere, strict flags. */
export function parseVerbArgs<T extends Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }>>(
  args: string[],
  options: T,
) {
  const all = { 'data-dir': { type: 'string' as const }, ...options }
  return parseArgs({ args: bindValues(args, all), options: all, strict: true, allowPositionals: true })
}

export { EdgewardenError }
