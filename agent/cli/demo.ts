// `edgewarden demo`: the verb. It parses the flags, makes the temporary
// folder, prints, handles ctrl-c and the time limit, and starts the real
// agent (startAgent) when the scenario asks for its gateway; the scenario
// itself (central broker, control plane, simulated fleet, the three
// retirements) is simulators/demo-scenario.ts, which sees the agent only
// through the DemoGateway built here. Loaded on use: the scenario brings in
// modbus-serial, node-opcua and the device side.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { GatewayEvent } from '../../simulators/control-plane.ts'
import type { DemoGateway, DemoGatewayOptions } from '../../simulators/demo-scenario.ts'
import { startAgent, type RunningAgent } from '../compose.ts'
import { createLogger } from '../observe/logger.ts'
import { loadConfig } from '../runtime/config.ts'
import { verifyAuditLog } from '../store/audit.ts'
import { palette, type Palette } from './colour.ts'
import { parseStrict } from './main.ts'
import { UsageError } from './usage.ts'

/** The demo gives up (and still cleans up) past this. */
const DEMO_LIMIT_MS = 90_000

type Json = Record<string, unknown>

/** Human lines (colour on a terminal only) or JSON lines, each stamped with the seconds since the start. */
export class Reporter {
  readonly #t0 = performance.now()
  readonly #json: boolean
  readonly #out: { isTTY?: boolean; write(s: string): unknown }
  readonly #p: Palette
  events = 0

  constructor(json: boolean, out: { isTTY?: boolean; write(s: string): unknown } = process.stdout, env: NodeJS.ProcessEnv = process.env) {
    this.#json = json
    this.#out = out
    this.#p = palette(out, env)
  }

  get #t(): number {
    return Math.round(performance.now() - this.#t0) / 1000
  }

  #write(line: string): void {
    this.#out.write(`${line}\n`)
  }

  /** The last line: the outcome in JSON, or one human line. */
  summary(result: Json, text: string): void {
    if (this.#json) this.#write(JSON.stringify({ t: this.#t, kind: 'summary', ok: true, ...result }))
    else this.step('done', text, {}, 'ok')
  }

  section(title: string): void {
    if (this.#json) this.#write(JSON.stringify({ t: this.#t, kind: 'section', title }))
    else this.#write(`\n${this.#p.bold(title)}`)
  }

  step(step: string, text: string, data: Json = {}, tone: 'ok' | 'warn' | 'plain' = 'plain'): void {
    if (this.#json) {
      this.#write(JSON.stringify({ t: this.#t, kind: 'step', step, ...data, text }))
      return
    }
    const paint = tone === 'ok' ? this.#p.green : tone === 'warn' ? this.#p.yellow : (s: string) => s
    this.#write(`${this.#p.dim(this.#t.toFixed(2).padStart(7))}s  ${paint(step.padEnd(12))} ${text}`)
  }

  event(e: GatewayEvent): void {
    this.events++
    if (this.#json) {
      this.#write(JSON.stringify({ t: this.#t, kind: 'event', seq: e.seq, type: e.type, data: e.data, verified: e.verified }))
      return
    }
    const sig = e.verified === true ? this.#p.dim('signed ok') : this.#p.red('SIGNATURE INVALID')
    this.#write(`${this.#p.dim(this.#t.toFixed(2).padStart(7))}s  ${this.#p.cyan(`evt #${String(e.seq).padEnd(4)}`)}   ${e.type.padEnd(16)} ${summarize(e)}  ${sig}`)
  }
}

function summarize(e: GatewayEvent): string {
  const d = e.data
  switch (e.type) {
    case 'cmd.accepted':
      return `${d.op} ${d.jti}`
    case 'cmd.completed':
      return `${d.op}${d.deviceId ? ` ${d.deviceId}` : ''}${d.evidence ? ' (with evidence)' : ''}`
    case 'device.state':
      return `${d.deviceId}: ${d.from} -> ${d.to} (${d.cause})`
    case 'action.queued':
    case 'action.delivered':
    case 'action.acked':
      return `${d.deviceId}: ${d.act} ${d.actionId}${d.protocol ? ` via ${d.protocol}` : ''}${d.status ? ` status ${d.status}` : ''}`
    case 'inventory':
      return `${(d.devices as unknown[]).length} devices`
    case 'alert.residual-use':
      return `${d.deviceId} via ${d.protocol}: ${d.detail}`
    default: {
      const s = JSON.stringify(d)
      return s.length > 100 ? `${s.slice(0, 97)}...` : s
    }
  }
}

/** The real agent, on loopback with a silent log, for the scenario. */
async function startDemoGateway(o: DemoGatewayOptions): Promise<DemoGateway> {
  const config = loadConfig({
    flags: {
      dataDir: o.dataDir,
      site: o.site,
      gateway: o.gateway,
      mqttHost: '127.0.0.1',
      mqttPort: '0',
      mqttsPort: '0',
      modbusHost: '127.0.0.1',
      modbusPort: '0',
      modbusTimeoutMs: '500',
      uplink: o.uplink,
      cpKey: [`${o.controlPlane.kid}=${o.controlPlane.publicKey}`],
      logLevel: 'silent',
    },
    env: {},
  })
  const agent = await startAgent(config, { log: createLogger('silent') })
  agent.opcua.retry.initialMs = o.opcuaRetry.initialMs
  agent.opcua.retry.maxMs = o.opcuaRetry.maxMs
  return demoGateway(agent, config.dataDir)
}

function demoGateway(agent: RunningAgent, dataDir: string): DemoGateway {
  const gw = agent.gateway
  return {
    id: gw.id,
    site: gw.site,
    publicKey: gw.key.publicKeyB64,
    dataDir,
    siteBrokerPort: agent.broker.describe().mqtt as number,
    siteBrokerTlsPort: agent.broker.describe().mqtts as number,
    siteCa: agent.pki.ca.chainPem,
    crlPem: () => agent.pki.crl.pem,
    modbusProxyPort: agent.modbus.proxy.port!,
    quarantineBackend: agent.quarantine.name,
    sessionCount: (protocol, deviceId) => (protocol === 'mqtt' ? agent.broker.sessionCount(deviceId) : agent.opcua.sessionCount(deviceId)),
    pendingActions: (deviceId) => gw.actions.pending(deviceId),
    deviceState: (deviceId) => gw.getDevice(deviceId)?.state,
    retirementOpen: (deviceId) => agent.retirements.isOpen(deviceId),
    onOpcuaConnected(listener) {
      agent.opcua.events.on('connected', listener)
      return () => void agent.opcua.events.off('connected', listener)
    },
    verifyAudit: () => verifyAuditLog(gw.store, [gw.key.publicKeyB64]),
    lastEventSeq: () => gw.outbox.lastSeq,
    stop: () => agent.stop(),
  }
}

export async function runDemo(args: string[]): Promise<number> {
  const { values, positionals } = parseStrict(args, { json: { type: 'boolean' }, keep: { type: 'boolean' } }, true)
  if (positionals.length) throw new UsageError(`demo takes no arguments (got ${positionals.join(' ')})`)
  // Loaded before the report's clock starts: its timestamps measure the demo, not the module load.
  const { DemoError, Interrupted, Parts, runScenario, withTimeout } = await import('../../simulators/demo-scenario.ts')
  const r = new Reporter(values.json === true)
  const t0 = performance.now()
  const work = mkdtempSync(join(tmpdir(), 'edgewarden-demo-'))
  const removeWork = (): void => void (values.keep || rmSync(work, { recursive: true, force: true }))
  const parts = new Parts(removeWork)
  let interrupt: (err: Error) => void = () => {}
  const interrupted = new Promise<never>((_, reject) => (interrupt = reject))
  interrupted.catch(() => {})
  let interruptedBy: string | null = null
  const onSignal = (signal: string): void => {
    interruptedBy = signal
    interrupt(new Interrupted(`demo interrupted (${signal})`))
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    const result = await withTimeout(Promise.race([runScenario(r, work, parts, startDemoGateway), interrupted]), DEMO_LIMIT_MS, 'the demo did not finish')
    r.summary({ ...result, kept: values.keep ? work : null }, `${(result.retired as unknown[]).length} retirements completed with their evidence in ${((performance.now() - t0) / 1000).toFixed(1)} s${values.keep ? `; everything is kept in ${work} (try: edgewarden audit export --data-dir ${join(work, 'gateway')})` : ''}`)
    return 0
  } catch (err) {
    if (!(err instanceof DemoError)) throw err
    process.stderr.write(`edgewarden: ${err.message}\n`)
    return err instanceof Interrupted ? 130 : 1
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    await parts.close()
    // Interrupted: what was still starting (a module loading, a certificate
    // being made) is stopped as it comes up; past a second, ctrl-c means now.
    if (interruptedBy !== null) setTimeout(() => (removeWork(), process.exit(130)), 1000).unref()
  }
}
