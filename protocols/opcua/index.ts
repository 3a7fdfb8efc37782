// OPC UA's one factory (PROTOCOL §8): the relay holds the gateway's own
// sessions to device servers; it is the adapter (sessions closed, trust
// moved with the device's state) and the action channel (Execute) at once.
// node-opcua loads only once an OPC UA device exists.
import type { ProtocolCore, ProtocolParts } from '../../agent/adapter.ts'
import { OpcuaRelay } from './relay.ts'

export function createOpcua(core: ProtocolCore): ProtocolParts<OpcuaRelay, OpcuaRelay> {
  const relay = new OpcuaRelay(core.gateway, { residual: core.residual, log: core.log.child({ component: 'opcua' }) })
  relay.attach({ ready: (id) => core.sink.ready(id), ack: (id, ack) => core.sink.ack(id, ack, 'opcua') })
  return { adapter: relay, channel: relay, start: () => relay.start(), stop: () => relay.stop() }
}
