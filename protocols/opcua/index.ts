// OPC UA's one factory (PROTOCOL §8): the relay holds the gateway's own
// sessions to device servers; it is the adapter (sessions closed, trust
// moved with the device's state) and the action channel (Execute, and Part 12
// push management for `renew` of a device with pushManagement) at once. It
// trusts devices through the site CA and its CRL as well as by pin, and its
// own certificate comes from the site CA. node-opcua loads only once an OPC
// UA device exists.
import type { ProtocolCore, ProtocolParts } from '../../agent/adapter.ts'
import { OpcuaRelay } from './relay.ts'

export function createOpcua(core: ProtocolCore): ProtocolParts<OpcuaRelay, OpcuaRelay> {
  const relay = new OpcuaRelay(core.gateway, { residual: core.residual, log: core.log.child({ component: 'opcua' }), pki: core.pki })
  relay.attach({
    ready: (id) => core.sink.ready(id),
    ack: (id, ack) => core.sink.ack(id, ack, 'opcua'),
    vouch: (ack, evidence) => core.sink.vouch(ack, 'opcua', evidence),
  })
  return { adapter: relay, channel: relay, start: () => relay.start(), stop: () => relay.stop() }
}
