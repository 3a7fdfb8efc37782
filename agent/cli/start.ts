// `edgewarden start`: flags, environment and config file into one config,
// then the agent as agent/compose.ts builds it, until SIGTERM or SIGINT.
import type { ParseArgsConfig } from 'node:util'
import { parseStrict } from './main.ts'
import { describeStartFailure, snapshotDataDir } from './start-failure.ts'
import { loadConfig, OPTIONS, unknownEnv } from '../runtime/config.ts'
import { closest } from './suggest.ts'
import { Gateway, VERSION } from '../gateway.ts'
import { createLogger } from '../observe/logger.ts'
import type { RunningAgent } from '../compose.ts'

export function startFlagOptions(): NonNullable<ParseArgsConfig['options']> {
  const options: NonNullable<ParseArgsConfig['options']> = {}
  for (const o of OPTIONS) options[o.flag] = { type: 'string', ...(o.type === 'list' ? { multiple: true } : {}) }
  return options
}

/** Flags by config key (parseArgs gives them by flag name). */
export function flagsToKeys(values: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const o of OPTIONS) if (values[o.flag] !== undefined) out[o.key] = values[o.flag]
  return out
}

/** The uplink URL as the ready line shows it: a password may contain `@`, which a pattern on the text gets wrong. */
function withoutCredentials(url: string): string {
  const u = new URL(url)
  u.username = ''
  u.password = ''
  return u.href
}

export async function runStart(args: string[]): Promise<number> {
  const options = startFlagOptions()
  const { values } = parseStrict(args, options as Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>, false, 'start')
  const config = loadConfig({ flags: flagsToKeys(values), env: process.env })
  const log = createLogger(config.logLevel)
  // A mistyped variable would leave its option at the default without a word.
  for (const u of unknownEnv(process.env, closest)) {
    log.warn({ variable: u.name, ...(u.meant ? { didYouMean: u.meant } : {}) }, `unknown environment variable ${u.name}${u.meant ? ` (did you mean ${u.meant}?)` : ''}: nothing reads it`)
  }
  const before = snapshotDataDir(config.dataDir)
  let agent: RunningAgent
  try {
    // The store is read (LevelDB works on a thread of its own) while the rest
    // of the agent's modules load: at 100,000 devices the two take about as long.
    const opening = Gateway.open(config, { log: log.child({ component: 'gateway' }) })
    opening.catch(() => {}) // awaited by startAgent; a failure meanwhile is not unhandled
    let startAgent: typeof import('../compose.ts').startAgent
    try {
      ;({ startAgent } = await import('../compose.ts'))
    } catch (err) {
      await opening.then((g) => g.close(), () => {})
      throw err
    }
    agent = await startAgent(config, { log, gateway: opening })
  } catch (err) {
    // startAgent has stopped every part it started: the store is closed
    before.undo(err)
    throw describeStartFailure(err, config)
  }
  const gw = agent.gateway
  // Handlers go in before `ready` is announced: a supervisor may signal the
  // moment it reads that line, and an unhandled SIGTERM kills without a clean stop.
  const stopRequested = new Promise<void>((resolve) => {
    const done = (signal: string): void => {
      log.info({ signal }, 'stopping')
      resolve()
    }
    process.once('SIGTERM', done)
    process.once('SIGINT', done)
  })
  log.info(
    {
      event: 'ready',
      version: VERSION,
      site: gw.site,
      gateway: gw.id,
      publicKey: gw.key.publicKeyB64,
      mqtt: { host: config.mqtt.host, ...agent.broker.describe() },
      admin: agent.adminPath,
      http: agent.http ? { host: agent.http.host, port: agent.http.port } : null,
      est: agent.est ? { host: agent.est.host, port: agent.est.port } : null,
      modbus: agent.modbus.proxy.port,
      quarantine: agent.quarantine.name,
      uplink: config.uplink ? withoutCredentials(config.uplink.url) : null,
      cpKeys: Object.keys(config.cpKeys),
      devices: gw.registry.size,
    },
    'ready',
  )
  await stopRequested
  // Stop within 5 s whatever happens; the store's writes are already durable.
  const timer = setTimeout(() => {
    log.error('clean stop took over 5 s; exiting')
    process.exit(1)
  }, 5000)
  timer.unref()
  await agent.stop()
  log.info('stopped')
  return 0
}
