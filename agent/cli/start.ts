// `edgewarden start`, and the composition root: the one place that wires
// protocol adapters into the core.
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { SiteBroker } from '../../protocols/mqtt/site-broker.ts'
import type { ProtocolAdapter } from '../adapter.ts'
import { startAdminServer, type AdminHooks } from '../admin-server.ts'
import type { Clock } from '../clock.ts'
import { loadConfig, OPTIONS, type AgentConfig } from '../config.ts'
import { AccessEnforcer } from '../enforcer.ts'
import { Gateway, VERSION } from '../gateway.ts'
import { createLogger, type Logger } from '../logger.ts'

export interface RunningAgent {
  gateway: Gateway
  broker: SiteBroker
  enforcer: AccessEnforcer
  adminPath: string
  stop(): Promise<void>
}

const adminHooks: AdminHooks = {
  async deviceVerb(gw, id, verb, who) {
    switch (verb) {
      case 'quarantine':
      case 'release':
      case 'revoke':
        return gw.transition(id, verb, who).then((r) => ({ from: r.from, to: r.record.state, changed: r.changed }))
      case 'retire': {
        const r = await gw.transition(id, 'retire', who)
        const wipe = gw.actions.pending(id).find((a) => a.act === 'wipe') ?? (await gw.queueAction(id, 'wipe', who))
        return { from: r.from, to: r.record.state, wipeActionId: wipe.id }
      }
      default: {
        const a = await gw.queueAction(id, verb, who)
        return { actionId: a.id, act: a.act }
      }
    }
  },
}

/** Start every part of the agent; used by `edgewarden start` and by in-process tests. */
export async function startAgent(config: AgentConfig, opts: { log: Logger; clock?: Clock }): Promise<RunningAgent> {
  const { log } = opts
  const gateway = await Gateway.open(config, { log: log.child({ component: 'gateway' }), ...(opts.clock ? { clock: opts.clock } : {}) })
  const stack: (() => Promise<void>)[] = [() => gateway.close()]
  const stopAll = async (): Promise<void> => {
    for (const s of stack.splice(0).reverse()) await s().catch((err: unknown) => log.error({ err }, 'error while stopping'))
  }
  try {
    const broker = new SiteBroker({
      host: config.mqtt.host,
      port: config.mqtt.port,
      tls: config.mqtt.tls,
      log: log.child({ component: 'site-broker' }),
      policy: {
        // Closed by default: no device is admitted without a verified token.
        authenticate: (_client, _user, _pass, cb) => cb(Object.assign(new Error('not authorized'), { returnCode: 5 }), false),
      },
    })
    await broker.start()
    stack.push(() => broker.stop())
    const adapters: ProtocolAdapter[] = [broker]
    const enforcer = new AccessEnforcer(gateway, adapters)
    const admin = await startAdminServer(gateway, adminHooks, log.child({ component: 'admin' }))
    stack.push(() => admin.close())
    return { gateway, broker, enforcer, adminPath: admin.path, stop: stopAll }
  } catch (err) {
    await stopAll()
    throw err
  }
}

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

export async function runStart(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: startFlagOptions(), strict: true, allowPositionals: false })
  const config = loadConfig({ flags: flagsToKeys(values), env: process.env })
  const log = createLogger(config.logLevel)
  const agent = await startAgent(config, { log })
  const gw = agent.gateway
  log.info(
    {
      event: 'ready',
      version: VERSION,
      site: gw.site,
      gateway: gw.id,
      publicKey: gw.key.publicKeyB64,
      mqtt: { host: config.mqtt.host, ...agent.broker.describe() },
      admin: agent.adminPath,
      devices: gw.registry.size,
    },
    'ready',
  )
  await new Promise<void>((resolve) => {
    const done = (signal: string): void => {
      log.info({ signal }, 'stopping')
      resolve()
    }
    process.once('SIGTERM', done)
    process.once('SIGINT', done)
  })
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
