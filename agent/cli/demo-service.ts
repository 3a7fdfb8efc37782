// `edgewarden demo --control-plane`: the demo with the control-plane service
// as its control plane. A central broker (aedes, in this process), the
// service (control-plane/, PGlite in a temporary folder, its HTTP API on a
// free loopback port), the real agent as the site gateway, and two
// simulated MQTT devices. Everything the demo asks of the control plane goes
// through the service's HTTP API with a bearer token, as an ITSM would: it
// registers the gateway, enrolls the devices, retires one that is connected,
// then one while its gateway is offline (the API says the command waits,
// and why; it runs when the gateway is back), and ends with the evidence:
// the offboarding verdicts and an export re-verified offline against the
// gateway's key. The agent runs here, on the agent side; the service is
// started through its own entry point and spoken to over HTTP only.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ApiClient } from '../../control-plane/cli/api-client.ts'
import { startAgent, type RunningAgent } from '../compose.ts'
import { createLogger } from '../observe/logger.ts'
import { loadConfig } from '../runtime/config.ts'
import { generateKeyPair, writeKeyFile } from '../store/keys.ts'
import { Reporter } from './demo.ts'
import { parseStrict } from './main.ts'
import { UsageError } from './usage.ts'

const SITE = 'demo-site'
const GATEWAY = 'gw-demo'
const KID = 'demo-cp'
const DEMO_LIMIT_MS = 90_000
const STEP_MS = 20_000
const FINAL = new Set(['completed', 'failed', 'rejected', 'expired', 'superseded', 'reissued'])

type Json = Record<string, any>

class DemoFailed extends Error {}

function check(ok: boolean, what: string): void {
  if (!ok) throw new DemoFailed(`demo: ${what}`)
}

/** Re-checks `fn` until it gives a value, or fails naming `what` after `ms` (the API has no push; it is polled, as a client would). */
async function poll<T>(what: string, fn: () => Promise<T | null | undefined | false>, ms = STEP_MS, everyMs = 100): Promise<T> {
  const t0 = Date.now()
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() - t0 > ms) throw new DemoFailed(`demo: ${what} within ${ms} ms`)
    await new Promise((r) => setTimeout(r, everyMs))
  }
}

/** The exceptions of an offboarding verdict, in a few words (without root, the network quarantine is `none`). */
const verdictWhy = (o: Json): string => ((o.exceptions as { code: string }[] | undefined)?.length ? ` (${(o.exceptions as { code: string }[]).map((e) => e.code).join(', ')})` : '')

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DemoFailed(`demo: ${what} within ${ms} ms`)), ms)
      timer.unref()
    }),
  ]).finally(() => clearTimeout(timer))
}

export async function runServiceDemo(args: string[]): Promise<number> {
  const { values, positionals } = parseStrict(args, { json: { type: 'boolean' }, keep: { type: 'boolean' }, 'control-plane': { type: 'boolean' } }, true)
  if (positionals.length) throw new UsageError(`demo takes no arguments (got ${positionals.join(' ')})`)
  // Loaded before the report's clock starts.
  const [{ startCentralBroker }, { SimulatedMqttDevice }, { freePort }, cpService, cpConfig, cpLog, { verifyExport }] = await Promise.all([
    import('../../simulators/demo-broker.ts'),
    import('../../simulators/mqtt-device.ts'),
    import('../../simulators/ports.ts'),
    import('../../control-plane/service.ts'),
    import('../../control-plane/runtime/config.ts'),
    import('../../control-plane/runtime/log.ts'),
    import('../../control-plane/evidence/verify-export.ts'),
  ])
  const r = new Reporter(values.json === true)
  const t0 = performance.now()
  const work = mkdtempSync(join(tmpdir(), 'edgewarden-demo-cp-'))
  const stops: (() => Promise<void>)[] = []
  let interrupt: (err: Error) => void = () => {}
  const interrupted = new Promise<never>((_, reject) => (interrupt = reject))
  interrupted.catch(() => {})
  const onSignal = (signal: string): void => interrupt(new DemoFailed(`demo interrupted (${signal})`))
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)

  const scenario = async (): Promise<Json> => {
    r.section('edgewarden demo --control-plane: a central broker, the control-plane service, a gateway and two devices, all on this machine')
    const central = await startCentralBroker()
    stops.push(() => central.close())
    r.step('central', `central broker (aedes, in this process) on ${central.url}`, { url: central.url })

    // The service, as `edgewarden control-plane` starts it: its own key, PGlite in its data dir.
    const keyFile = join(work, 'cp.key')
    const cpKey = generateKeyPair()
    writeKeyFile(keyFile, cpKey)
    const config = cpConfig.loadConfig({
      // aedes has no shared subscriptions: one intake session with a plain one
      flags: { 'data-dir': join(work, 'cp'), broker: central.url, key: keyFile, kid: KID, 'http-port': '0', 'intake-mode': 'plain', tick: '100ms', 'resend-after': '2s', 'resend-max': '5s', 'log-level': 'silent' },
      env: {},
    })
    const cp = await cpService.startControlPlane(config, { log: cpLog.createLogger('silent') })
    stops.push(() => cp.stop())
    const base = `http://127.0.0.1:${cp.http.port}`
    const admin = readFileSync(cp.adminTokenFile ?? join(config.dataDir, 'admin.token'), 'utf8').trim()
    const api = new ApiClient(base, admin)
    const reader = (await api.request<{ token: string }>('POST', '/v1/tokens', { name: 'demo-fleet-page', scopes: ['read'] })).token
    r.step('service', `control-plane service on ${base} (PGlite in ${config.database.kind === 'pglite' ? config.database.dir : '?'}, key ${KID}); fleet page ${base}/#token=… (a read token)`, {
      url: base,
      database: config.database.kind,
      fleetPage: `${base}/`,
      dataDir: config.dataDir,
    })

    // The gateway: the real agent, pinning the service's key, reporting to the central broker.
    const mqttPort = await freePort()
    const gatewayConfig = loadConfig({
      flags: { dataDir: join(work, 'gateway'), site: SITE, gateway: GATEWAY, mqttHost: '127.0.0.1', mqttPort: String(mqttPort), mqttsPort: '0', modbusHost: '127.0.0.1', modbusPort: '0', uplink: central.url, cpKey: [`${KID}=${cpKey.publicKeyB64}`], logLevel: 'silent' },
      env: {},
    })
    let agent: RunningAgent | null = await startAgent(gatewayConfig, { log: createLogger('silent') })
    const stopAgent = async (): Promise<void> => {
      const a = agent
      agent = null
      await a?.stop()
    }
    stops.push(stopAgent)
    const gwKey = agent.gateway.key.publicKeyB64
    r.step('gateway', `gateway ${GATEWAY} of site ${SITE}: site MQTT broker mqtt://127.0.0.1:${mqttPort}, store in ${gatewayConfig.dataDir}`, { gateway: GATEWAY, site: SITE, publicKey: gwKey, siteBroker: `mqtt://127.0.0.1:${mqttPort}`, dataDir: gatewayConfig.dataDir })
    await api.request('POST', '/v1/gateways', { site: SITE, id: GATEWAY, publicKey: gwKey })
    const gatewayOnline = (want: boolean) => poll(`the service sees ${GATEWAY} ${want ? 'online' : 'offline'}`, async () => (await api.request<Json>('GET', `/v1/gateways/${SITE}/${GATEWAY}`)).online === want)
    await gatewayOnline(true)
    r.step('registered', `POST /v1/gateways: ${SITE}/${GATEWAY} registered with its public key pinned; its retained status says online`, { publicKey: gwKey })

    // Each reconnects on its own, with a fresh token, when its connection drops (a retirement cuts it to wipe-only rights).
    const devices = await Promise.all(
      ['press-1', 'sensor-2'].map((id) => SimulatedMqttDevice.create({ url: `mqtt://127.0.0.1:${mqttPort}`, deviceId: id, gatewayId: GATEWAY, gatewayPublicKey: gwKey, mqtt: { reconnectMs: 200 } })),
    )
    stops.push(async () => void (await Promise.all(devices.map((d) => d.close()))))
    const [press, sensor] = devices as [(typeof devices)[0], (typeof devices)[0]]
    const settled = async (jti: string, ms = STEP_MS): Promise<Json> => {
      let last: Json = {}
      return poll(`an outcome for ${jti}`, async () => {
        last = await api.request<Json>('GET', `/v1/commands/${encodeURIComponent(jti)}`)
        return FINAL.has(last.state) ? last : null
      }, ms).catch((err: Error) => {
        throw new DemoFailed(`${err.message} (it is ${last.state}: ${last.waiting ?? last.reason ?? ''})`)
      })
    }

    r.section('Enrolling: one API call for both devices; the service signs one command each and sends them')
    const enroll = await api.createCommands({ op: 'device.enroll', site: SITE, gateway: GATEWAY, devices: devices.map((d) => ({ id: d.id, publicKey: d.runtime.publicKeyB64, criticality: 'high' })) })
    for (const c of enroll.commands) {
      const done = await settled(String(c.jti))
      check(done.state === 'completed', `enrolling ${c.deviceId}: ${done.state} ${done.reason ?? ''}`)
      r.step('enrolled', `${c.deviceId} enrolled: command ${c.jti} ${done.state} (sent ${done.sends}x)`, { deviceId: c.deviceId, jti: c.jti, state: done.state }, 'ok')
    }
    for (const d of devices) {
      check(await d.goOnline(), `${d.id} could not connect: ${d.lastError?.message}`)
      r.step('connected', `${d.id} connected to the site broker with a token signed by its own key`, { deviceId: d.id })
    }

    const retired: Json[] = []
    // (a) connected: retired through the API, with an idempotency key as an ITSM sends it.
    r.section(`(a) Retiring ${press.id} through the API: POST /v1/devices/${press.id}/retire`)
    const a = await api.request<Json>('POST', `/v1/devices/${press.id}/retire`, { reason: 'line 2 refit' }, { 'idempotency-key': 'CHG-1001' })
    const again = await api.request<Json>('POST', `/v1/devices/${press.id}/retire`, { reason: 'line 2 refit' }, { 'idempotency-key': 'CHG-1001' })
    const aJti = String(a.commands[0].jti)
    check(again.commands[0].jti === aJti, 'the retried call made a second command')
    r.step('command', `stored and signed as ${aJti} (the ITSM's retried call, same Idempotency-Key: the same command, nothing new)`, { deviceId: press.id, jti: aJti })
    const aDone = await settled(aJti)
    check(aDone.state === 'completed' && aDone.evidence?.wipe?.status === 'done' && press.runtime.wiped, `retiring ${press.id}: ${JSON.stringify(aDone).slice(0, 300)}`)
    const aOff = await api.request<Json>('GET', `/v1/devices/${press.id}/offboarding`)
    r.step('retired', `${press.id} retired: access removed in ${aDone.evidence.accessRemovedMs} ms, wipe ${aDone.evidence.wipe.status} (device-signed ack); offboarding verdict ${aOff.verdict}${verdictWhy(aOff)}`, { deviceId: press.id, case: 'connected', evidence: aDone.evidence, verdict: aOff.verdict }, 'ok')
    retired.push({ deviceId: press.id, case: 'connected', wipe: aDone.evidence.wipe.status, verdict: aOff.verdict })

    // (b) the site is away: the command waits at the service (and the broker), and runs when it returns.
    r.section(`(b) Retiring ${sensor.id} while its gateway is offline`)
    await stopAgent()
    await gatewayOnline(false)
    r.step('offline', `gateway ${GATEWAY} stopped; the service sees it offline`, {})
    const b = await api.request<Json>('POST', `/v1/devices/${sensor.id}/retire`, { reason: 'replaced' }, { 'idempotency-key': 'CHG-1002' })
    const bJti = String(b.commands[0].jti)
    const waiting = await poll('the command sent and waiting', async () => {
      const c = await api.request<Json>('GET', `/v1/commands/${bJti}`)
      return c.state === 'sent' ? c : null
    })
    const gwView = await api.request<Json>('GET', `/v1/gateways/${SITE}/${GATEWAY}`)
    check(gwView.waiting.some((c: Json) => c.jti === bJti), 'the gateway view does not list the waiting command')
    r.step('waiting', `GET /v1/commands/${bJti}: ${waiting.waiting}`, { deviceId: sensor.id, jti: bJti, state: waiting.state, waiting: waiting.waiting }, 'warn')
    agent = await startAgent(gatewayConfig, { log: createLogger('silent') })
    r.step('returns', `gateway ${GATEWAY} back on its data dir; its persistent session delivers the command`, {})
    await poll(`${sensor.id} back online`, () => sensor.goOnline(), STEP_MS, 200)
    const bDone = await settled(bJti, 2 * STEP_MS)
    check(bDone.state === 'completed' && bDone.evidence?.wipe?.status === 'done' && sensor.runtime.wiped, `retiring ${sensor.id}: ${JSON.stringify(bDone).slice(0, 300)}`)
    const bOff = await api.request<Json>('GET', `/v1/devices/${sensor.id}/offboarding`)
    r.step('retired', `${sensor.id} retired once its gateway was back: wipe ${bDone.evidence.wipe.status}; offboarding verdict ${bOff.verdict}${verdictWhy(bOff)}`, { deviceId: sensor.id, case: 'gateway-offline', evidence: bDone.evidence, verdict: bOff.verdict }, 'ok')
    retired.push({ deviceId: sensor.id, case: 'gateway-offline', wipe: bDone.evidence.wipe.status, verdict: bOff.verdict })

    r.section('The evidence')
    // Every event the gateway has signed so far, stored by the service.
    const lastSeq = agent.gateway.outbox.lastSeq
    await poll('every event stored', async () => (await api.request<Json>('GET', `/v1/gateways/${SITE}/${GATEWAY}`)).history.contiguousSeq >= lastSeq)
    const exportText = await (await fetch(`${base}/v1/export/events.jsonl`, { headers: { authorization: `Bearer ${admin}` } })).text()
    const v = verifyExport(exportText, new Map([[`${SITE}/${GATEWAY}`, gwKey]]))
    check(v.failures.length === 0 && v.verified === v.lines && v.lines >= lastSeq, `the export does not verify: ${JSON.stringify(v.failures.slice(0, 3))}`)
    r.step('export', `GET /v1/export/events.jsonl: ${v.verified} events, each the JWS the gateway signed, verified offline against its pinned key`, { events: v.verified, failures: 0 }, 'ok')
    const fleet = await new ApiClient(base, reader).request<Json>('GET', '/v1/fleet')
    const byState = (fleet.devicesByState as { state: string; total: number }[]).map((s) => `${s.state} ${s.total}`).join(', ')
    r.step('fleet', `GET /v1/fleet (a read-only token): devices ${byState}; open retirements ${fleet.openRetirements.length}`, { devicesByState: fleet.devicesByState, openRetirements: fleet.openRetirements.length })
    return { retired, events: v.verified, controlPlane: base }
  }

  try {
    const result = await withTimeout(Promise.race([scenario(), interrupted]), DEMO_LIMIT_MS, 'the demo did not finish')
    r.summary({ ...result, kept: values.keep ? work : null }, `${(result.retired as unknown[]).length} retirements through the control-plane service completed with their evidence in ${((performance.now() - t0) / 1000).toFixed(1)} s${values.keep ? `; everything is kept in ${work}` : ''}`)
    return 0
  } catch (err) {
    if (!(err instanceof DemoFailed)) throw err
    process.stderr.write(`edgewarden: ${err.message}\n`)
    return /interrupted/.test(err.message) ? 130 : 1
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    for (const stop of stops.splice(0).reverse()) await stop().catch(() => {})
    if (!values.keep) rmSync(work, { recursive: true, force: true })
  }
}
