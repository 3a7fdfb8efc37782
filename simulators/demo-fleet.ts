// The small fleet `edgewarden demo` runs against one gateway: three MQTT
// devices with tokens and one with a certificate of the site CA (§9), a
// Modbus device with the §7 hook and a legacy one without it, and an OPC UA
// device with the §8 hook. Each is the real device runtime
// (firmware-hooks/) on loopback; `enrollments` are the `Device` records of
// PROTOCOL §3 a control plane sends to enroll them. Imports nothing from agent/.
import { join } from 'node:path'
import { createHookedModbusDevice, createLegacyModbusDevice, type SimulatedModbusDevice } from './modbus-device.ts'
import { SimulatedMqttDevice } from './mqtt-device.ts'
import { SimulatedCertDevice } from './cert-device.ts'
import { SimulatedOpcuaDevice } from './opcua-device.ts'
import type { ActionRuntime } from '../firmware-hooks/action-runtime.ts'
import { keygen } from '../firmware-hooks/crypto.ts'

export interface DemoFleetOptions {
  gatewayId: string
  gatewayPublicKey: string
  /** the gateway's site broker, e.g. mqtt://127.0.0.1:1883 */
  siteBrokerUrl: string
  /** its TLS listener, mqtts://127.0.0.1:8883, and the site CA chain its certificate chains to */
  siteBrokerTlsUrl: string
  siteCa: readonly string[]
  /** a scratch folder: the OPC UA device keeps its PKI (certificate) there */
  workDir: string
  /** a free port for the OPC UA device's server */
  opcuaPort: number
}

export const DEMO_IDS = {
  /** MQTT, connected when it is retired: wiped at once */
  connected: 'press-1',
  /** MQTT, offline when it is retired: the wipe waits until it returns */
  roaming: 'sensor-2',
  /** MQTT, stays in service */
  meter: 'meter-3',
  /** Modbus with the hook registers, stays in service */
  plc: 'plc-4',
  /** Modbus without the hook (hookBase null): can be cut off, never wiped */
  legacy: 'plc-5',
  /** OPC UA with the EdgeWarden hook, stays in service */
  hmi: 'hmi-6',
  /** MQTT over mutual TLS with a P-256 certificate of the site CA: retired, its serial goes on the CRL */
  camera: 'camera-7',
} as const

export const DEMO_UNITS = { plc: 1, legacy: 2 } as const

export class DemoFleet {
  readonly mqtt: Map<string, SimulatedMqttDevice>
  readonly plc: { device: SimulatedModbusDevice; runtime: ActionRuntime; publicKey: string }
  readonly legacy: { device: SimulatedModbusDevice; publicKey: string }
  readonly hmi: SimulatedOpcuaDevice
  readonly camera: SimulatedCertDevice
  /** the camera's certificate request (base64url DER), made with its first key */
  readonly cameraCsr: string
  /** each MQTT device's first key, copied as someone who cloned its flash would have it */
  readonly copiedKeys: Map<string, Uint8Array>

  private constructor(parts: Pick<DemoFleet, 'mqtt' | 'plc' | 'legacy' | 'hmi' | 'copiedKeys' | 'camera' | 'cameraCsr'>) {
    this.camera = parts.camera
    this.cameraCsr = parts.cameraCsr
    this.mqtt = parts.mqtt
    this.copiedKeys = parts.copiedKeys
    this.plc = parts.plc
    this.legacy = parts.legacy
    this.hmi = parts.hmi
  }

  /** Make every device and start the Modbus and OPC UA servers (the OPC UA one makes its certificate: the slow part). MQTT devices stay offline. */
  static async start(o: DemoFleetOptions): Promise<DemoFleet> {
    const gw = { gatewayId: o.gatewayId, gatewayPublicKey: o.gatewayPublicKey }
    const mqttIds = [DEMO_IDS.connected, DEMO_IDS.roaming, DEMO_IDS.meter]
    const keys = await Promise.all(mqttIds.map(async (id) => [id, (await keygen()).secretKey] as const))
    const camera = await SimulatedCertDevice.create({ ...gw, deviceId: DEMO_IDS.camera, url: o.siteBrokerTlsUrl, ca: [...o.siteCa], alg: 'P-256', mqtt: { reconnectMs: 50, connectTimeoutMs: 5000 } })
    const cameraCsr = await camera.requestCertificate()
    const [hmi, plc, legacy, ...mqtt] = await Promise.all([
      SimulatedOpcuaDevice.create({ ...gw, deviceId: DEMO_IDS.hmi, pkiDir: join(o.workDir, 'opcua-device-pki'), port: o.opcuaPort }),
      createHookedModbusDevice({ ...gw, deviceId: DEMO_IDS.plc }),
      createLegacyModbusDevice(),
      ...keys.map(([id, secretKey]) => SimulatedMqttDevice.create({ ...gw, url: o.siteBrokerUrl, deviceId: id, secretKey: secretKey.slice(), mqtt: { reconnectMs: 50, connectTimeoutMs: 5000 } })),
    ])
    const fleet = new DemoFleet({ mqtt: new Map(mqtt.map((d) => [d.id, d])), plc, legacy, hmi, copiedKeys: new Map(keys), camera, cameraCsr })
    try {
      await Promise.all([plc.device.start(), legacy.device.start(), hmi.start()])
    } catch (err) {
      await fleet.stop()
      throw err
    }
    return fleet
  }

  mqttDevice(id: string): SimulatedMqttDevice {
    const d = this.mqtt.get(id)
    if (!d) throw new TypeError(`no MQTT device ${id} in the demo fleet`)
    return d
  }

  /** The `Device` records of PROTOCOL §3, one per device, for `device.enroll`. */
  enrollments(): { id: string; protocol: 'mqtt' | 'modbus' | 'opcua'; device: Record<string, unknown>; credential?: 'x509' }[] {
    const modbus = (d: SimulatedModbusDevice, unitId: number) => ({ host: d.host, port: d.port, unitId })
    return [
      ...[...this.mqtt.values()].map((d, i) => ({
        id: d.id,
        protocol: 'mqtt' as const,
        device: { id: d.id, publicKey: d.runtime.publicKeyB64!, criticality: i === 0 ? 'high' : 'medium', owner: 'line-2', mqtt: {} },
      })),
      { id: DEMO_IDS.plc, protocol: 'modbus', device: { id: DEMO_IDS.plc, publicKey: this.plc.publicKey, criticality: 'high', owner: 'line-2', modbus: modbus(this.plc.device, DEMO_UNITS.plc) } },
      {
        id: DEMO_IDS.legacy,
        protocol: 'modbus',
        device: { id: DEMO_IDS.legacy, publicKey: this.legacy.publicKey, criticality: 'medium', owner: 'line-1', modbus: { ...modbus(this.legacy.device, DEMO_UNITS.legacy), hookBase: null } },
      },
      {
        id: DEMO_IDS.hmi,
        protocol: 'opcua',
        device: { id: DEMO_IDS.hmi, publicKey: this.hmi.runtime.publicKeyB64!, criticality: 'low', owner: 'line-2', opcua: { endpoint: this.hmi.endpoint, certificateSha256: this.hmi.certificateSha256 } },
      },
      { id: DEMO_IDS.camera, protocol: 'mqtt', credential: 'x509', device: { id: DEMO_IDS.camera, x509: { csr: this.cameraCsr }, criticality: 'medium', owner: 'line-2', mqtt: {} } },
    ]
  }

  async stop(): Promise<void> {
    await Promise.allSettled([...[...this.mqtt.values()].map((d) => d.close()), this.camera.close(), this.plc.device.stop(), this.legacy.device.stop(), this.hmi.stop()])
  }
}
