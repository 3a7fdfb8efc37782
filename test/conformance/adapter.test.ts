// The protocol adapter conformance suite (adapter-suite.ts), run by each
// adapter the composition root wires in, inside a real agent
// (startTestAgent), each with a real session to a real device:
//   - SiteBroker (MQTT): an mqtt.js client of an enrolled device, with its
//     token; its end of the session is the client's connection.
//   - ModbusProxy: a simulated Modbus TCP device (modbus-serial ServerTCP);
//     the session is the gateway's own link to it (device-index sessions),
//     opened by a SCADA read through the proxy.
//   - OpcuaRelay: a node-opcua server (simulators/opcua-device.ts); the
//     session is the relay's secured session to it.
// For Modbus and OPC UA the gateway is the client, and the device gives no
// view of its open connections: a TCP pass-through (helpers/tcp-tap.ts) in
// front of the device shows its end of each connection, opening and closing.
import { after, test } from 'node:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { MqttClient } from 'mqtt'
import { Gateway } from '../../agent/gateway.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { createLogger } from '../../agent/observe/logger.ts'
import { ModbusDeviceIndex } from '../../protocols/modbus/device-index.ts'
import { ModbusProxy } from '../../protocols/modbus/proxy.ts'
import { SiteBroker } from '../../protocols/mqtt/site-broker.ts'
import { OpcuaRelay } from '../../protocols/opcua/relay.ts'
import { createLegacyModbusDevice } from '../../simulators/modbus-device.ts'
import { SimulatedOpcuaDevice } from '../../simulators/opcua-device.ts'
import { freePort, tempDir, testConfig } from '../helpers/agent.ts'
import { RawModbusClient, readHoldingPdu } from '../helpers/modbus.ts'
import { closed, connectDevice, enrollDevice, eventWhere } from '../helpers/mqtt-devices.ts'
import { startTestAgentOwnDir } from '../helpers/own-dir-agent.ts'
import { TcpTap } from '../helpers/tcp-tap.ts'
import { until, within } from '../helpers/wait.ts'
import { adapterConformance, type AdapterImplementation, type LiveSession } from './adapter-suite.ts'

const WHO = { actor: 'local:conformance' }
const log = createLogger('silent')

/** A bare gateway for an adapter that is never wired into an agent (start/stop/describe on their own). */
async function bareGateway(t: { after(fn: () => Promise<void> | void): void }): Promise<Gateway> {
  const dataDir = mkdtempSync(join(tmpdir(), 'edgewarden-test-'))
  const gw = await Gateway.open(testConfig(dataDir), { log })
  t.after(async () => {
    await gw.close()
    rmSync(dataDir, { recursive: true, force: true })
  })
  return gw
}

const mqtt: AdapterImplementation = {
  name: 'SiteBroker (MQTT)',
  protocol: 'mqtt',
  listens: true,
  async make(t) {
    const agent = await startTestAgentOwnDir(t)
    const clients = new Map<string, MqttClient>()
    return {
      adapter: agent.broker,
      async connect(id) {
        const dev = await enrollDevice(agent.gateway, id)
        const admitted = eventWhere<[{ id: string }]>(agent.broker.aedes, 'client', (c) => c.id === id)
        const client = await connectDevice(agent.gateway, agent.mqttPort, dev)
        t.after(() => void client.end(true))
        await admitted
        clients.set(id, client)
        const gone = closed(client)
        return { get open() { return client.connected }, closed: gone } satisfies LiveSession
      },
      async enrollAbsent(id) {
        await enrollDevice(agent.gateway, id)
      },
      async hangUp(id) {
        await clients.get(id)!.endAsync()
      },
      record: (id) => agent.gateway.registry.get(id),
      listeningPort: () => agent.broker.describe().mqtt as number,
    }
  },
  async unstarted(_t, port) {
    return new SiteBroker({ host: '127.0.0.1', port, tls: null, log, policy: {} })
  },
}

const modbus: AdapterImplementation = {
  name: 'ModbusProxy',
  protocol: 'modbus',
  listens: true,
  async make(t) {
    const agent = await startTestAgentOwnDir(t, { modbusPort: '0', modbusHost: '127.0.0.1', modbusTimeoutMs: '2000' })
    const devices = new Map<string, { stop(): Promise<void> }>()
    let unit = 0
    const enroll = async (id: string, port: number, publicKey: string): Promise<number> => {
      const unitId = ++unit
      await agent.gateway.enroll({ id, publicKey, modbus: { host: '127.0.0.1', port, unitId, hookBase: null } }, WHO)
      return unitId
    }
    return {
      adapter: agent.modbus.proxy,
      async connect(id) {
        const d = await createLegacyModbusDevice()
        await d.device.start()
        t.after(() => d.device.stop())
        devices.set(id, d.device)
        const tap = await TcpTap.open(t, { port: d.device.port })
        const unitId = await enroll(id, tap.port, d.publicKey)
        const link = tap.nextConnection()
        // A SCADA read through the proxy: the gateway opens its link to the device to serve it.
        const scada = await RawModbusClient.open(agent.modbus.proxy.port!)
        const answer = await scada.request(1, unitId, readHoldingPdu(0, 2))
        scada.end()
        if (answer.pdu[0] !== 3) throw new Error(`the proxy answered ${answer.pdu.toString('hex')}, not the device's registers`)
        const conn = await link
        return { get open() { return conn.open }, closed: conn.closed }
      },
      async enrollAbsent(id) {
        await enroll(id, await freePort(), (await createLegacyModbusDevice()).publicKey)
      },
      async hangUp(id) {
        await devices.get(id)!.stop()
      },
      record: (id) => agent.gateway.registry.get(id),
      listeningPort: () => agent.modbus.proxy.port,
      // Read Device Identification, read by the gateway after the link's first answer.
      learnt: (id) => until(`inventory of ${id}`, () => agent.modbus.proxy.inventory(id) !== undefined, 10_000).then(() => {}),
    }
  },
  async unstarted(t, port) {
    const gw = await bareGateway(t)
    const index = new ModbusDeviceIndex(gw, { timeoutMs: 1000, log })
    t.after(() => index.stop())
    return new ModbusProxy(index, { listen: { host: '127.0.0.1', port }, log })
  },
}

/** Two device certificates (one PKI folder each), made on first use and kept for the whole file. */
const pkiRoot = tempDir()
after(() => rmSync(pkiRoot, { recursive: true, force: true }))
const PKI = [
  { pkiDir: join(pkiRoot, 'a'), applicationUri: 'urn:edgewarden:conformance:a' },
  { pkiDir: join(pkiRoot, 'b'), applicationUri: 'urn:edgewarden:conformance:b' },
]

const opcua: AdapterImplementation = {
  name: 'OpcuaRelay',
  protocol: 'opcua',
  listens: false,
  async make(t) {
    const agent = await startTestAgentOwnDir(t)
    // short probe backoff (defaults: 1 s doubling to 60 s)
    agent.opcua.retry.initialMs = 100
    agent.opcua.retry.maxMs = 400
    const devices = new Map<string, SimulatedOpcuaDevice>()
    let k = 0
    return {
      adapter: agent.opcua,
      async connect(id) {
        // Two devices at once in one test have a certificate each.
        const dev = await SimulatedOpcuaDevice.create({ deviceId: id, gatewayId: agent.gateway.id, gatewayPublicKey: agent.gateway.key.publicKeyB64, ...PKI[k++ % 2]!, port: await freePort() })
        t.after(() => dev.stop())
        await dev.start()
        devices.set(id, dev)
        const tap = await TcpTap.open(t, { port: dev.opts.port })
        const up = eventWhere<[string]>(agent.opcua.events, 'connected', (d) => d === id, 30_000)
        await agent.gateway.enroll({ id, publicKey: dev.runtime.publicKeyB64!, opcua: { endpoint: `opc.tcp://${tap.url}`, certificateSha256: dev.certificateSha256 } }, WHO)
        await up
        // Discovery ran on a connection of its own, closed before the session's: the session is the last one.
        const conn = tap.connections.at(-1)!
        if (!conn.open || dev.sessionCount !== 1) throw new Error(`no session on the device (${dev.sessionCount})`)
        return { get open() { return conn.open }, closed: conn.closed }
      },
      async enrollAbsent(id) {
        const publicKey = publicKeyToB64((await keygen()).publicKey)
        await agent.gateway.enroll({ id, publicKey, opcua: { endpoint: `opc.tcp://127.0.0.1:${await freePort()}`, certificateSha256: 'ab'.repeat(32) } }, WHO)
      },
      async hangUp(id) {
        await within(`OPC UA device ${id} shutting down`, devices.get(id)!.stop(), 10_000)
      },
      record: (id) => agent.gateway.registry.get(id),
      listeningPort: () => null,
    }
  },
  async unstarted(t) {
    return new OpcuaRelay(await bareGateway(t), { log, residual: { record() {} } })
  },
}

test('protocol adapter conformance: SiteBroker (MQTT)', { timeout: 120_000 }, async (t) => {
  await Promise.all(adapterConformance(t, mqtt))
})

test('protocol adapter conformance: ModbusProxy', { timeout: 120_000 }, async (t) => {
  await Promise.all(adapterConformance(t, modbus))
})

test('protocol adapter conformance: OpcuaRelay', { timeout: 300_000 }, async (t) => {
  await Promise.all(adapterConformance(t, opcua))
})
