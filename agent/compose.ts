// The composition root: the one file of the core that imports protocols/.
// It builds the core (gateway, trust, actions, commands, uplink, observe),
// asks each protocol's factory for its adapter and action channel, and
// wires them in; stopping undoes it in reverse order.
import { MqttAdmissionPolicy } from '../protocols/mqtt/admission-policy.ts'
import { SiteBroker } from '../protocols/mqtt/site-broker.ts'
import { MqttUplinkTransport } from '../protocols/mqtt/uplink-transport.ts'
import { MqttActionChannel } from '../protocols/mqtt/action-channel.ts'
import { OpcuaRelay } from '../protocols/opcua/relay.ts'
import { ModbusDeviceIndex } from '../protocols/modbus/device-index.ts'
import { ModbusHookRelay } from '../protocols/modbus/hook-relay.ts'
import { ModbusProxy } from '../protocols/modbus/proxy.ts'
import { ActionDispatcher } from './actions/action-dispatcher.ts'
import { registerActionCommands } from './commands/action-commands.ts'
import { CommandProcessor } from './commands/processor.ts'
import { CredentialLifecycle } from './devices/credentials.ts'
import { DeviceActions } from './actions/device-actions.ts'
import { Maintenance } from './runtime/maintenance.ts'
import { Retirements } from './actions/retirement.ts'
import { Uplink } from './uplink/uplink.ts'
import type { ProtocolAdapter } from './adapter.ts'
import { startAdminServer, type AdminHooks } from './observe/admin-server.ts'
import type { Clock } from './runtime/clock.ts'
import { loadConfig, OPTIONS, type AgentConfig } from './runtime/config.ts'
import { AccessEnforcer } from './trust/enforcer.ts'
import { Gateway, VERSION } from './gateway.ts'
import { startHttpEndpoint, type HttpEndpoint } from './observe/http-server.ts'
import { createMetrics } from './observe/metrics.ts'
import { createLogger, type Logger } from './observe/logger.ts'
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
  /** the OPC UA relay (PROTOCOL §8); node-opcua loads only once an OPC UA device exists */
  opcua: OpcuaRelay
  /** the Modbus proxy (listening only with --modbus-port) and the hook relay */
  modbus: { proxy: ModbusProxy; relay: ModbusHookRelay; index: ModbusDeviceIndex }
  adminPath: string
  /** the HTTP endpoint (metrics, health, status page) with --http-port, else null */
  http: HttpEndpoint | null
  stop(): Promise<void>
}

function adminHooks(actions: DeviceActions, retirements: Retirements, quarantine: QuarantineBackend): AdminHooks {
  return {
    quarantine: (gw) => quarantineReport(registrySource(gw), quarantine),
    async deviceVerb(gw, id, verb, who) {
      switch (verb) {
        case 'quarantine':
        case 'release':
        case 'revoke':
          return gw.transition(id, verb, who).then((r) => ({ from: r.from, to: r.record.state, changed: r.changed }))
        case 'retire': {
          const from = gw.requireDevice(id).state
          const r = await retirements.start(id, { receivedAt: performance.now(), receivedAtS: gw.nowS(), ...(who.reason !== undefined ? { reason: who.reason } : {}) }, who)
          const to = gw.requireDevice(id).state
          return r.done ? { from, to, evidence: r.evidence } : { from, to, wipeActionId: r.wipeActionId }
        }
        default: {
          const a = await actions.queue(id, verb, who)
          return { actionId: a.id, act: a.act }
        }
      }
    },
  }
}

/** Start every part of the agent; used by `edgewarden start` and by in-process tests. */
export async function startAgent(config: AgentConfig, opts: { log: Logger; clock?: Clock; maintenanceIntervalMs?: number }): Promise<RunningAgent> {
  const { log } = opts
  const gateway = await Gateway.open(config, { log: log.child({ component: 'gateway' }), ...(opts.clock ? { clock: opts.clock } : {}) })
  // Last-seen times are written just before the store closes, after every adapter has stopped.
  const stack: (() => Promise<void>)[] = [() => gateway.close(), () => gateway.flushSeen()]
  const stopAll = async (): Promise<void> => {
    for (const s of stack.splice(0).reverse()) await s().catch((err: unknown) => log.error({ err }, 'error while stopping'))
  }
  try {
    // Device tokens, topic isolation and residual-use alerts (PROTOCOL §4, §5); stopped after the broker.
    const mqttPolicy = await MqttAdmissionPolicy.open(gateway, log.child({ component: 'mqtt-admission' }))
    stack.push(() => mqttPolicy.stop())
    const broker = new SiteBroker({
      host: config.mqtt.host,
      port: config.mqtt.port,
      tls: config.mqtt.tls,
      log: log.child({ component: 'site-broker' }),
      policy: mqttPolicy.handlers(),
      sessions: mqttPolicy,
      connectTimeoutMs: config.connectTimeoutMs,
      maxPacketBytes: config.maxPacketBytes,
    })
    await broker.start()
    stack.push(() => broker.stop())
    // Last seen (written lazily by maintenance and at stop): admitted and disconnected MQTT devices.
    broker.aedes.on('client', (c) => gateway.seen(c.id))
    broker.aedes.on('clientDisconnect', (c) => gateway.seen(c.id))
    const adapters: ProtocolAdapter[] = [broker]
    // [wiring: quarantine backend]
    // Reconciled with the registry before any change can happen; re-checked
    // every 2 s. Stopping leaves the rules in force (fail closed).
    const ports = broker.describe() as { mqtt?: number; mqtts?: number }
    const quarantine = await openQuarantine(gateway, { wipePorts: [ports.mqtt, ports.mqtts].filter((p): p is number => p !== undefined), log: log.child({ component: 'quarantine' }) })
    stack.push(() => quarantine.stop())
    // [wiring: protocol adapters]
    // OPC UA (PROTOCOL §8): the gateway's own sessions to device servers, certificates in <dataDir>/opcua-pki.
    const opcua = new OpcuaRelay(gateway, { residual: mqttPolicy.residual, log: log.child({ component: 'opcua' }) })
    stack.push(() => opcua.stop())
    adapters.push(opcua)
    // Modbus (PROTOCOL §7): one serialized link per device, shared by the SCADA proxy and the hook relay.
    const modbusIndex = new ModbusDeviceIndex(gateway, { timeoutMs: config.modbusTimeoutMs, log: log.child({ component: 'modbus' }) })
    stack.push(async () => modbusIndex.stop())
    const modbusProxy = new ModbusProxy(modbusIndex, { listen: config.modbus, ...config.modbusClients, log: log.child({ component: 'modbus-proxy' }) })
    await modbusProxy.start()
    stack.push(() => modbusProxy.stop())
    adapters.push(modbusProxy)
    const enforcer = new AccessEnforcer(gateway, adapters, { quarantine, log: log.child({ component: 'enforcer' }) })

    // Actions for devices: queue, delivery over every channel, acks, retirement, credentials.
    const dispatcher = new ActionDispatcher(gateway, log.child({ component: 'actions' }))
    const actions = new DeviceActions(gateway, dispatcher, log.child({ component: 'actions' }))
    const retirements = await Retirements.load(gateway, actions, enforcer, log.child({ component: 'retirement' }))
    retirements.countResidualUseWith((id) => mqttPolicy.residual.attempts(id))
    const credentials = new CredentialLifecycle(gateway, actions, log.child({ component: 'credentials' }))
    const mqttActions = new MqttActionChannel(broker, log.child({ component: 'mqtt-actions' }))
    dispatcher.addChannel(mqttActions)
    await mqttActions.attach({
      ready: (id) => {
        // A device that comes back with a lapsed credential gets its renewal queued first.
        void credentials.deviceReady(id).finally(() => dispatcher.deviceReady(id))
      },
      ack: (id, payload) => void actions.ack(id, payload, 'mqtt').catch((err: unknown) => log.error({ err, deviceId: id }, 'settling an ack failed')),
    })
    // [wiring: action channels]
    dispatcher.addChannel(opcua)
    opcua.attach({
      ready: (id) => {
        gateway.seen(id)
        void credentials.deviceReady(id).finally(() => dispatcher.deviceReady(id))
      },
      ack: (id, ack) => actions.ack(id, ack, 'opcua'),
    })
    await opcua.start()
    const modbusRelay = new ModbusHookRelay(gateway, modbusIndex, actions, { log: log.child({ component: 'modbus-relay' }) })
    dispatcher.addChannel(modbusRelay)
    modbusRelay.start()
    stack.push(async () => modbusRelay.stop())
    const maintenance = new Maintenance(gateway, { retirements, actions, credentials }, log.child({ component: 'maintenance' }))
    await maintenance.tick()
    maintenance.start(opts.maintenanceIntervalMs)
    stack.push(() => maintenance.stop())

    const commands = await CommandProcessor.create(gateway, enforcer, log.child({ component: 'commands' }))
    registerActionCommands(commands, { actions, retirements })
    await retirements.resumeClosing()
    stack.push(async () => {
      await commands.idle()
      await commands.flushUnauthenticated()
    })
    let uplink: Uplink | null = null
    if (config.uplink) {
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
    // [wiring: http endpoint]
    // Metrics, /healthz, /readyz and the status page (--http-port); /readyz says ready once everything below started.
    let http: HttpEndpoint | null = null
    if (config.http) {
      const sources = { gateway, adapters, uplink }
      const metrics = createMetrics({ ...sources, residualAttempts: (id) => mqttPolicy.residual.attempts(id) })
      stack.push(async () => metrics.close())
      const h = await startHttpEndpoint(gateway, { ...sources, ...config.http, metrics: metrics.registry, log: log.child({ component: 'http' }) })
      // closed last, just before the store: /readyz says `stopping` for the whole stop
      stack.splice(1, 0, () => h.close())
      http = h
    }
    const admin = await startAdminServer(gateway, adminHooks(actions, retirements, quarantine), log.child({ component: 'admin' }))
    stack.push(() => admin.close())
    if (http) {
      const h = http
      h.setReadiness('ready')
      // pushed last, so it is the first thing a stop does
      stack.push(async () => h.setReadiness('stopping'))
    }
    return { gateway, broker, mqttPolicy, enforcer, quarantine, commands, actions, retirements, credentials, maintenance, uplink, opcua, modbus: { proxy: modbusProxy, relay: modbusRelay, index: modbusIndex }, adminPath: admin.path, http, stop: stopAll }
  } catch (err) {
    await stopAll()
    throw err
  }
}

