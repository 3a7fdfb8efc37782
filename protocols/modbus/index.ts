// Modbus's one factory (PROTOCOL §7): one serialized link per device (the
// device index), shared by the SCADA proxy (the adapter: a unit id reaches
// its device only while the trust decision allows) and the hook relay (the
// action channel: envelopes written to the device's hook registers).
import type { ProtocolCore, ProtocolParts } from '../../agent/adapter.ts'
import { ModbusDeviceIndex } from './device-index.ts'
import { ModbusHookRelay } from './hook-relay.ts'
import { ModbusProxy } from './proxy.ts'

export interface ModbusParts extends ProtocolParts<ModbusProxy, ModbusHookRelay> {
  index: ModbusDeviceIndex
}

export async function createModbus(core: ProtocolCore): Promise<ModbusParts> {
  const { gateway: gw, config, log } = core
  const index = new ModbusDeviceIndex(gw, { timeoutMs: config.modbusTimeoutMs, log: log.child({ component: 'modbus' }) })
  const proxy = new ModbusProxy(index, { listen: config.modbus, ...config.modbusClients, log: log.child({ component: 'modbus-proxy' }) })
  try {
    await proxy.start()
  } catch (err) {
    index.stop()
    throw err
  }
  const relay = new ModbusHookRelay(gw, index, core.sink, { log: log.child({ component: 'modbus-relay' }) })
  return {
    adapter: proxy,
    channel: relay,
    index,
    start: async () => {
      relay.start()
      // devices nothing else talks to are asked now and then whether they are there (sessions, last seen)
      index.startPresence()
    },
    stop: async () => {
      relay.stop()
      await proxy.stop()
      index.stop()
    },
  }
}
