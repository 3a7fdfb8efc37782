// The action channel conformance suite (action-channel-suite.ts), run by
// each channel the composition root wires in, inside a real agent:
//   - MqttActionChannel: the device is firmware-hooks' MqttActionDevice on
//     the agent's site broker, with a token. RunningAgent does not expose the
//     agent's own MQTT channel, so the channel under test is a second
//     MqttActionChannel attached to the agent's broker (the same class on the
//     same broker); acks still reach the core through the agent's own
//     channel, as in production.
//   - OpcuaRelay: the agent's relay, the device a node-opcua server
//     (simulators/opcua-device.ts) with the EdgeWarden hook.
//   - ModbusHookRelay: the agent's relay, the device a modbus-serial server
//     with the §7 hook registers (simulators/modbus-device.ts); "up" is the
//     device answering a SCADA read through the proxy.
// The act each queues is one an active device receives on that channel and
// survives: renew for MQTT and OPC UA; wipe for Modbus, the only act the
// relay writes into a Modbus-only device's registers (it answers reenroll
// and renew `unsupported` itself, hook-relay.ts).
import { after, test } from 'node:test'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import type { QueuedAction } from '../../agent/actions/action-queue.ts'
import { createLogger } from '../../agent/observe/logger.ts'
import { ActionRuntime, MemoryDeviceStorage } from '../../firmware-hooks/action-runtime.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { MqttActionDevice } from '../../firmware-hooks/mqtt-action-device.ts'
import { MqttActionChannel } from '../../protocols/mqtt/action-channel.ts'
import { createHookedModbusDevice } from '../../simulators/modbus-device.ts'
import { SimulatedOpcuaDevice } from '../../simulators/opcua-device.ts'
import { freePort, tempDir } from '../helpers/agent.ts'
import { RawModbusClient, readHoldingPdu } from '../helpers/modbus.ts'
import { connectDevice, eventWhere } from '../helpers/mqtt-devices.ts'
import { startTestAgentOwnDir } from '../helpers/own-dir-agent.ts'
import { within } from '../helpers/wait.ts'
import { actionChannelConformance, type ChannelImplementation } from './action-channel-suite.ts'

const WHO = { actor: 'local:conformance' }

const mqtt: ChannelImplementation = {
  name: 'MqttActionChannel',
  protocol: 'mqtt',
  act: 'renew',
  async make(t) {
    const agent = await startTestAgentOwnDir(t)
    const channel = new MqttActionChannel(agent.broker, createLogger('silent'))
    // Readiness and acks are the agent's own channel's business: nothing more to do here.
    await channel.attach({ ready: () => {}, ack: () => {} })
    return {
      agent,
      channel,
      async enroll(id, hooks) {
        const key = await keygen()
        await agent.gateway.enroll({ id, publicKey: publicKeyToB64(key.publicKey) }, WHO)
        const runtime = await ActionRuntime.open({ deviceId: id, gatewayId: agent.gateway.id, gatewayPublicKey: agent.gateway.key.publicKeyB64, secretKey: key.secretKey, storage: new MemoryDeviceStorage(), hooks })
        const acks = new Map<string, number>()
        let dev: MqttActionDevice | null = null
        t.after(() => dev?.close())
        return {
          id,
          runtime,
          async up() {
            dev = await MqttActionDevice.connect({ url: `mqtt://127.0.0.1:${agent.mqttPort}`, runtime, nowS: () => agent.gateway.nowS() })
            dev.onAck((a) => void acks.set(a.actionId, (acks.get(a.actionId) ?? 0) + 1))
          },
          async down() {
            await dev?.close()
            dev = null
          },
          acksSent: (a: QueuedAction) => acks.get(a.id) ?? 0,
          async connectWithoutListening() {
            const client = await connectDevice(agent.gateway, agent.mqttPort, { id, secretKey: key.secretKey, publicKey: '' })
            t.after(() => void client.end(true))
            return { listen: async () => void (await client.subscribeAsync(`dev/${id}/cmd`, { qos: 1 })) }
          },
        }
      },
    }
  },
}

/** Two device certificates (one PKI folder each), made on first use and kept for the whole file. */
const pkiRoot = tempDir()
after(() => rmSync(pkiRoot, { recursive: true, force: true }))

const opcua: ChannelImplementation = {
  name: 'OpcuaRelay',
  protocol: 'opcua',
  act: 'renew',
  async make(t) {
    const agent = await startTestAgentOwnDir(t)
    // short probe backoff (defaults: 1 s doubling to 60 s)
    agent.opcua.retry.initialMs = 100
    agent.opcua.retry.maxMs = 400
    let k = 0
    return {
      agent,
      channel: agent.opcua,
      async enroll(id, hooks) {
        const pki = ['a', 'b'][k++ % 2]!
        const dev = await SimulatedOpcuaDevice.create({
          deviceId: id,
          gatewayId: agent.gateway.id,
          gatewayPublicKey: agent.gateway.key.publicKeyB64,
          pkiDir: join(pkiRoot, pki),
          applicationUri: `urn:edgewarden:conformance:${pki}`,
          port: await freePort(),
          hooks,
        })
        t.after(() => dev.stop())
        // Its certificate is pinned when first seen: the device need not have run before it is enrolled.
        await agent.gateway.enroll({ id, publicKey: dev.runtime.publicKeyB64!, opcua: { endpoint: dev.endpoint, trustOnFirstUse: true } }, WHO)
        return {
          id,
          runtime: dev.runtime,
          async up() {
            const connected = eventWhere<[string]>(agent.opcua.events, 'connected', (d) => d === id, 30_000)
            await dev.start()
            await connected
          },
          async down() {
            await within(`OPC UA device ${id} shutting down`, dev.stop(), 10_000)
          },
          acksSent: (a: QueuedAction) => dev.calls.filter((c) => c.result?.kind === 'ack' && c.result.actionId === a.id).length,
        }
      },
    }
  },
}

const modbus: ChannelImplementation = {
  name: 'ModbusHookRelay',
  protocol: 'modbus',
  act: 'wipe',
  sessionless: 'hook registers: no session to be up or down; the relay tries, and marks the device down when it does not answer',
  async make(t) {
    const agent = await startTestAgentOwnDir(t, { modbusPort: '0', modbusHost: '127.0.0.1', modbusTimeoutMs: '2000' })
    let unit = 0
    return {
      agent,
      channel: agent.modbus.relay,
      async enroll(id, hooks) {
        const port = await freePort()
        const d = await createHookedModbusDevice({ deviceId: id, gatewayId: agent.gateway.id, gatewayPublicKey: agent.gateway.key.publicKeyB64, port, hooks })
        t.after(() => d.device.stop())
        const unitId = ++unit
        await agent.gateway.enroll({ id, publicKey: d.publicKey, modbus: { host: '127.0.0.1', port, unitId } }, WHO)
        const seqs: number[] = []
        d.device.hook!.onOutcome((o) => void seqs.push(o.actionSeq))
        return {
          id,
          runtime: d.runtime,
          async up() {
            await d.device.start()
            // A SCADA read through the proxy: the device answers the gateway's link.
            const scada = await RawModbusClient.open(agent.modbus.proxy.port!)
            const answer = await scada.request(1, unitId, readHoldingPdu(0, 1))
            scada.end()
            if (answer.pdu[0] !== 3) throw new Error(`the proxy answered ${answer.pdu.toString('hex')}, not the device`)
          },
          async down() {
            await d.device.stop()
          },
          acksSent: (a: QueuedAction) => seqs.filter((s) => s === a.seq).length,
        }
      },
    }
  },
}

test('action channel conformance: MqttActionChannel', { timeout: 120_000 }, async (t) => {
  await Promise.all(actionChannelConformance(t, mqtt))
})

test('action channel conformance: OpcuaRelay', { timeout: 300_000 }, async (t) => {
  await Promise.all(actionChannelConformance(t, opcua))
})

test('action channel conformance: ModbusHookRelay', { timeout: 120_000 }, async (t) => {
  await Promise.all(actionChannelConformance(t, modbus))
})
