// The `edgewarden` command: parse the verb, run it, turn any error into one
// clear line and an exit code (0 ok, 1 failed, 2 usage or config).
import { parseArgs } from 'node:util'
import { ConfigError, EdgewardenError, isEdgewardenError } from '../runtime/errors.ts'
import { VERSION } from '../gateway.ts'
import { didYouMean } from './suggest.ts'
import { helpName, UsageError, USAGE, usageOf } from './usage.ts'

type Verb = (args: string[]) => Promise<number>

const viaService = (args: string[]): boolean => args.some((a) => a === '--control-plane' || a.startsWith('--control-plane='))

// Each verb's module is loaded when it runs: `start` does not load what
// `ctl` needs (the MQTT client library and the simulators, ~70 ms of a start).
const VERBS: Record<string, Verb> = {
  start: async (args) => (await import('./start.ts')).runStart(args),
  identity: async (args) => (await import('./identity.ts')).runIdentity(args),
  keygen: async (args) => (await import('./identity.ts')).runKeygen(args),
  device: async (args) => (await import('./device.ts')).runDevice(args),
  audit: async (args) => (await import('./audit.ts')).runAudit(args),
  ca: async (args) => (await import('./ca.ts')).runCa(args),
  token: async (args) => (await import('./token.ts')).runToken(args),
  // --control-plane URL: through the control-plane service (control-plane/cli/ctl.ts)
  ctl: async (args) => (viaService(args) ? (await import('../../control-plane/cli/ctl.ts')).runCtlViaService(args) : (await import('./ctl.ts')).runCtl(args)),
  quarantine: async (args) => (await import('./quarantine.ts')).runQuarantine(args),
  // the central service: control-plane/
  'control-plane': async (args) => (await import('../../control-plane/cli/main.ts')).runControlPlaneCli(args),
  // it pulls in aedes, node-opcua and the simulators
  demo: async (args) => (args.includes('--control-plane') ? (await import('./demo-service.ts')).runServiceDemo(args) : (await import('./demo.ts')).runDemo(args)),
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
    process.stderr.write(`edgewarden: unknown verb "${verb}"${didYouMean(verb, Object.keys(VERBS))}\nverbs: ${Object.keys(VERBS).join(', ')}\n(see edgewarden --help)\n`)
    return 2
  }
  // Help of this verb alone (narrowed to its sub-verb where it has one); options after `--` are not ours.
  const ours = rest.includes('--') ? rest.slice(0, rest.indexOf('--')) : rest
  if (ours.includes('--help') || ours.includes('-h')) {
    const sub = ours[0] !== undefined && !ours[0].startsWith('-') ? ours[0] : undefined
    process.stdout.write(usageOf(verb, sub) ?? USAGE)
    return 0
  }
  try {
    return await run(rest)
  } catch (err) {
    return report(err, helpName(verb, ours[0]))
  }
}

function report(err: unknown, verb: string): number {
  const code = (err as { code?: string }).code
  if (err instanceof UsageError || (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'))) {
    process.stderr.write(`edgewarden: ${(err as Error).message}\n(see edgewarden ${verb} --help)\n`)
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

type OptionsSpec = Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }>

/**
 * parseArgs, strict, with its errors as one line a person can act on:
 * `unknown option --jsn (did you mean --json?)`, `--reason needs a value`,
 * `--json takes no value`, `takes no arguments (got x)`.
 */
export function parseStrict<T extends OptionsSpec, P extends boolean>(args: string[], options: T, allowPositionals: P, verb = 'this verb') {
  try {
    return parseArgs({ args: bindValues(args, options), options, strict: true, allowPositionals })
  } catch (err) {
    throw rewordParseError(err, options, verb)
  }
}

/** A parseArgs error reworded (UsageError); anything else as it is. */
export function rewordParseError(err: unknown, options: OptionsSpec, verb = 'this verb'): unknown {
  const code = (err as { code?: string }).code
  const message = (err as Error).message ?? ''
  const quoted = /'([^']*)'/.exec(message)?.[1]
  const flags = Object.keys(options).map((o) => `--${o}`)
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && quoted !== undefined) {
    const name = quoted.split('=')[0]!
    const near = didYouMean(name, flags)
    return new UsageError(`unknown option ${name}${near || `; options: ${flags.join(' ')}`}`)
  }
  if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && quoted !== undefined) {
    const name = /--[\w-]+/.exec(quoted)?.[0] ?? quoted
    if (/does not take an argument/.test(message)) return new UsageError(`${name} takes no value (it is a switch: give it alone)`)
    return new UsageError(`${name} needs a value`)
  }
  if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL' && quoted !== undefined) return new UsageError(`${verb} takes no arguments (got ${quoted})`)
  return err
}

/** parseArgs for the small verbs: --data-dir everywhere, strict flags. */
export function parseVerbArgs<T extends OptionsSpec>(args: string[], options: T) {
  const all = { 'data-dir': { type: 'string' as const }, ...options }
  return parseStrict(args, all, true)
}

export { EdgewardenError }
