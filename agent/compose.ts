// The composition root: the one file of the core that imports protocols/.
// It builds the core (gateway, trust, actions, commands, uplink, observe),
// asks each protocol's factory for its adapter and action channel, and
// wires them in; stopping undoes it in reverse order.
import { createModbus } from '../protocols/modbus/index.ts'
import type { ModbusDeviceIndex } from '../protocols/modbus/device-index.ts'
import type { ModbusHookRelay } from '../protocols/modbus/hook-relay.ts'
import type { ModbusProxy } from '../protocols/modbus/proxy.ts'
import { createMqtt } from '../protocols/mqtt/index.ts'
import type { MqttAdmissionPolicy } from '../protocols/mqtt/admission-policy.ts'
import type { SiteBroker } from '../protocols/mqtt/site-broker.ts'
import { createOpcua } from '../protocols/opcua/index.ts'
import type { OpcuaRelay } from '../protocols/opcua/relay.ts'
import { ActionDispatcher } from './actions/action-dispatcher.ts'
import { opTable, prepareValidators } from './commands/ops.ts'
import { CommandProcessor } from './commands/processor.ts'
import { CredentialLifecycle } from './devices/credentials.ts'
import { DeviceActions } from './actions/device-actions.ts'
import { Maintenance } from './runtime/maintenance.ts'
import { Retirements } from './actions/retirement.ts'
import { Uplink } from './uplink/uplink.ts'
import type { ProtocolAdapter, ProtocolCore } from './adapter.ts'
import { DeviceAdmission } from './trust/admission.ts'
import { SitePki } from './pki/site-pki.ts'
import { serverTlsMaterial, startEstServer, type EstServer } from './pki/est.ts'
import { isEdgewardenError } from './runtime/errors.ts'
import { GuardedClock } from './runtime/clock.ts'
import { ResidualUseMonitor } from './trust/residual-use.ts'
import { startAdminServer } from './observe/admin-server.ts'
import type { Clock } from './runtime/clock.ts'
import type { AgentConfig } from './runtime/config.ts'
import { AccessEnforcer } from './trust/enforcer.ts'
import { Gateway, VERSION } from './gateway.ts'
import type { HttpEndpoint } from './observe/http-server.ts'
import { DeviceActivity } from './observe/device-activity.ts'
import type { Logger } from './observe/logger.ts'
import { openQuarantine, quarantineReport, registrySource } from './quarantine/setup.ts'
import type { QuarantineBackend } from './quarantine/quarantine.ts'

export interface RunningAgent {
  gateway: Gateway
  broker: SiteBroker
  mqttPolicy: MqttAdmissionPolicy
  enforcer: AccessEnforcer
  quarantine: QuarantineBackend
  commands: CommandProcessor
  actions: DeviceActions
  retirements: Retirements
  credentials: CredentialLifecycle
  maintenance: Maintenance
  uplink: Uplink | null
  /** the site PKI (PROTOCOL §9) */
  pki: SitePki
  /** the OPC UA relay (PROTOCOL §8); node-opcua loads only once an OPC UA device exists */
  opcua: OpcuaRelay
  /** the Modbus proxy (listening only with --modbus-port) and the hook relay */
  modbus: { proxy: ModbusProxy; relay: ModbusHookRelay; index: ModbusDeviceIndex }
  adminPath: string
  /** the HTTP endpoint (metrics, health, status page) with --http-port, else null */
  http: HttpEndpoint | null
  /** the EST server (RFC 7030, PROTOCOL §9) with --est-port, else null */
  est: EstServer | null
  /** each device's last refusal and the latest residual-use alerts (device show, status page) */
  activity: DeviceActivity
  stop(): Promise<void>
}

/** Start every part of the agent; used by `edgewarden start` and by in-process tests. */
export async function startAgent(
  config: AgentConfig,
  opts: { log: Logger; clock?: Clock; maintenanceIntervalMs?: number; gateway?: Promise<Gateway> },
): Promise<RunningAgent> {
  const { log } = opts
  // `gateway`: being opened by the caller already (Gateway.open with this config and log; the CLI reads the store while it loads this module)
  const gateway = await (opts.gateway ?? Gateway.open(config, { log: log.child({ component: 'gateway' }), ...(opts.clock ? { clock: opts.clock } : {}) }))
  // Last-seen times are written just before the store closes, after every adapter has stopped.
  const stack: (() => Promise<void>)[] = [() => gateway.close(), () => gateway.flushSeen()]
  const stopAll = async (): Promise<void> => {
    for (const s of stack.splice(0).reverse()) await s().catch((err: unknown) => log.error({ err }, 'error while stopping'))
  }
  try {
    // The core's own parts that every protocol reports to: residual use
    // (PROTOCOL §4), token admission (§5), and actions (§5: queue, delivery,
    // acks, the renewal of a lapsed credential when its device returns).
    if (gateway.clock instanceof GuardedClock) {
      gateway.clock.onJump((j) => {
        if (j.believed) log.warn({ jumpMs: j.ms }, 'the wall clock went back')
        else log.error({ jumpMs: j.ms }, 'the wall clock jumped forward without the time passing: not believed (nothing expires by it) until a signed command vouches for it')
        void gateway.commit({ audit: [{ actor: 'gateway', action: 'gateway.clock-jump', data: { ms: Math.round(j.ms), believed: j.believed } }] }).catch(() => {})
      })
    }
    const residual = new ResidualUseMonitor(gateway, log.child({ component: 'residual-use' }))
    stack.push(() => residual.stop())
    const admission = await DeviceAdmission.open(gateway, { log: log.child({ component: 'mqtt-admission' }), residual, pool: gateway.crypto })
    // Each device's last refused connect, for device show and the status page: every refusal passes noteRefusal (trust/admission.ts).
    const activity = await DeviceActivity.open(gateway)
    stack.push(async () => activity.stop())
    const noteRefusal = admission.noteRefusal.bind(admission)
    admission.noteRefusal = (req, reason, detail) => {
      activity.noteRefusal(req.clientId, req.protocol, reason, detail, req.remote)
      noteRefusal(req, reason, detail)
    }
    // Acks and action delivery yield to admission: in a connect storm the devices get in first, what they bring follows.
    const turn = () => admission.gate.background()
    const dispatcher = new ActionDispatcher(gateway, log.child({ component: 'actions' }), { turn })
    const actions = new DeviceActions(gateway, dispatcher, log.child({ component: 'actions' }), { turn })
    const credentials = new CredentialLifecycle(gateway, actions, log.child({ component: 'credentials' }))
    actions.beforeDelivery((id) => credentials.deviceReady(id))
    // The site PKI (PROTOCOL §9): its CA (created on first start), the CRL kept in step with the registry.
    const pki = await SitePki.open(gateway, { log: log.child({ component: 'pki' }) })
    stack.push(() => pki.idle())
    await pki.reconcile()
    actions.renewCertificatesWith(async (ack, settlement) => {
      const id = ack.deviceId
      let cert
      try {
        cert = (await pki.issue(id, ack.csr!, gateway.requireDevice(id).spec.criticality)).cert
      } catch (err) {
        if (!isEdgewardenError(err, 'CSR_INVALID')) throw err
        // The device's request is refused: the ack is settled as it came, the refusal on record, and the renewal asked again at the next pass.
        log.warn({ deviceId: id, err: err.message }, 'renewal request refused')
        await gateway.updateDevice(id, (d) => {
          delete d.credentialNotice
          return d
        }, {
          ...settlement,
          audit: [...(settlement.audit ?? []), { actor: 'gateway', action: 'certificate.refused', subject: id, data: { actionId: ack.action.id, detail: err.message } }],
        })
        return
      }
      const installed = await pki.install(id, cert, 'mqtt-renew', settlement)
      await actions.queue(id, 'install-cert', { actor: 'gateway', reason: `renewal: certificate ${installed.serial}` }, { args: { chain: pki.chainFor(installed) } })
    })
    const core: ProtocolCore = { gateway, config, admission, residual, sink: actions, pki, log }

    // The protocols, each from its one factory: adapter and action channel.
    // Each channel joins the dispatcher as soon as it exists: a device that is listening gets what is pending.
    const mqtt = await createMqtt(core)
    stack.push(() => mqtt.stop())
    dispatcher.addChannel(mqtt.channel)
    // Network quarantine, reconciled with the registry before any change can
    // happen; re-checked every 2 s. Stopping leaves the rules in force (fail closed).
    const ports = mqtt.adapter.describe() as { mqtt?: number; mqtts?: number }
    const quarantine = await openQuarantine(gateway, { wipePorts: [ports.mqtt, ports.mqtts].filter((p): p is number => p !== undefined), log: log.child({ component: 'quarantine' }) })
    stack.push(() => quarantine.stop())
    // OPC UA before the enforcer: its trust moves run before the enforcer closes the same change's sessions.
    const opcua = createOpcua(core)
    stack.push(() => opcua.stop())
    dispatcher.addChannel(opcua.channel)
    const modbus = await createModbus(core)
    stack.push(() => modbus.stop())
    dispatcher.addChannel(modbus.channel)
    const protocols = [mqtt, opcua, modbus]
    const adapters: ProtocolAdapter[] = protocols.map((p) => p.adapter)
    const enforcer = new AccessEnforcer(gateway, adapters, { quarantine, log: log.child({ component: 'enforcer' }) })
    const retirements = await Retirements.load(gateway, actions, enforcer, log.child({ component: 'retirement' }))
    retirements.countResidualUseWith((id) => residual.attempts(id))
    retirements.revokeCertificatesWith((id) => pki.revokedAtRetirement(id))
    for (const p of protocols) await p.start()
    // EST (PROTOCOL §9) once the enforcer exists: a certificate it installs replaces one that live sessions may hold.
    let est: EstServer | null = null
    if (config.pki.est) {
      const e = await startEstServer(gateway, pki, { ...config.pki.est, ...(await serverTlsMaterial(pki, config.pki)), log: log.child({ component: 'est' }) })
      stack.push(() => e.close())
      est = e
    }
    const maintenance = new Maintenance(gateway, { retirements, actions, credentials, pki }, log.child({ component: 'maintenance' }))
    // The first pass runs once the registry is parsed in full (in steps:
    // devices/registry.ts), while the agent already serves: the broker has
    // been admitting since its start above, as before, and nothing a pass
    // does is needed to judge a connect (every check of a key, certificate
    // or state reads the time itself).
    let firstPass: Promise<void> = Promise.resolve()
    let stopping = false
    maintenance.start(opts.maintenanceIntervalMs)
    stack.push(async () => {
      stopping = true
      await firstPass
      await maintenance.stop()
    })

    const ops = opTable({ gw: gateway, enforcer, actions, retirements, pki })
    const commands = await CommandProcessor.create(gateway, enforcer, ops, log.child({ component: 'commands' }))
    retirements.onComplete((jti, deviceId, evidence) => commands.completeAccepted(jti, { deviceId, evidence }))
    await retirements.resumeClosing()
    stack.push(async () => {
      commands.close()
      await commands.idle()
      await commands.flushUnauthenticated()
    })
    let uplink: Uplink | null = null
    if (config.uplink) {
      // loaded only for a configured uplink: the MQTT client library is ~45 ms of a start
      const { MqttUplinkTransport } = await import('../protocols/mqtt/uplink-transport.ts')
      const transport = new MqttUplinkTransport({
        ...config.uplink,
        site: config.site,
        gateway: config.gateway,
        version: VERSION,
        backoff: config.uplinkBackoff,
        log: log.child({ component: 'uplink' }),
      })
      uplink = new Uplink(gateway, transport, commands, log.child({ component: 'uplink' }))
      uplink.start()
      const u = uplink
      stack.push(() => u.stop())
    }
    // Commands accepted before a crash run now; the uplink does not wait for them.
    void commands.resume().catch((err: unknown) => log.error({ err }, 'resuming accepted commands failed'))
    // Metrics, /healthz, /readyz and the status page (--http-port); /readyz says ready once everything below started.
    let http: HttpEndpoint | null = null
    if (config.http) {
      // loaded only with --http-port: prom-client and the pages are ~40 ms of a start
      const [{ createMetrics }, { startHttpEndpoint }] = await Promise.all([import('./observe/metrics.ts'), import('./observe/http-server.ts')])
      const sources = { gateway, adapters, uplink, activity, quarantineBackend: quarantine.name }
      const metrics = createMetrics({ ...sources, residualAttempts: (id) => residual.attempts(id), connectRefusals: () => admission.refusals(), admissionWaiting: () => ({ waiting: admission.gate.waiting, oldestWaitMs: admission.gate.oldestWaitMs, backgroundWaiting: admission.gate.backgroundWaiting }), acksRefused: () => ({ bad: actions.strayAcks, repeated: actions.repeatedAcks }), crlNextUpdate: () => pki.crl.current?.nextUpdate ?? null })
      stack.push(async () => metrics.close())
      const h = await startHttpEndpoint(gateway, { ...sources, ...config.http, metrics: metrics.registry, pki, log: log.child({ component: 'http' }) })
      // closed last, just before the store: /readyz says `stopping` for the whole stop
      stack.splice(1, 0, () => h.close())
      http = h
    }
    const listeners = () => {
      const d = mqtt.adapter.describe() as { mqtt?: number; mqtts?: number }
      return { mqtt: { host: config.mqtt.host, port: d.mqtt ?? null, tlsPort: d.mqtts ?? null } }
    }
    const admin = await startAdminServer(
      gateway,
      { ops: commands.localOps(ops), quarantine: (gw) => quarantineReport(registrySource(gw), quarantine), pki, live: { adapters, activity }, actions, retirements, listeners },
      log.child({ component: 'admin' }),
    )
    stack.push(() => admin.close())
    if (http) {
      const h = http
      h.setReadiness('ready')
      // pushed last, so it is the first thing a stop does
      stack.push(async () => h.setReadiness('stopping'))
    }
    // after the caller has said ready: the rest of the registry parsed, in
    // steps; the validators loaded, built and run once (the first command
    // does not wait for them); then the first maintenance pass
    firstPass = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => gateway.registry.parseAll(() => stopping))
      .then(() => {
        for (const u of gateway.registry.takeUnreadable()) log.error({ deviceId: u.id }, u.problem)
      })
      .then(() => (stopping ? undefined : prepareValidators()))
      .then(() => (stopping ? undefined : maintenance.tick()))
      .catch((err: unknown) => log.error({ err }, 'the first maintenance pass failed'))
    return {
      gateway,
      broker: mqtt.adapter,
      mqttPolicy: mqtt.policy,
      enforcer,
      quarantine,
      commands,
      actions,
      retirements,
      credentials,
      maintenance,
      uplink,
      opcua: opcua.adapter,
      pki,
      modbus: { proxy: modbus.adapter, relay: modbus.channel, index: modbus.index },
      adminPath: admin.path,
      http,
      est,
      activity,
      stop: stopAll,
    }
  } catch (err) {
    await stopAll()
    throw err
  }
}

