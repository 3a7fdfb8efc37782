// MQTT's one factory: the site broker (aedes) with the core's admission
// policy (PROTOCOL §4, §5) as its adapter, and the action channel over
// `dev/<id>/cmd` and `dev/<id>/ack`, started. The uplink to the central
// broker (uplink-transport.ts) is the core's link to its control plane, not
// a device protocol, and is built beside it.
import type { ProtocolCore, ProtocolParts } from '../../agent/adapter.ts'
import { serverTlsMaterial } from '../../agent/pki/est.ts'
import { MqttActionChannel } from './action-channel.ts'
import { MqttAdmissionPolicy } from './admission-policy.ts'
import { SiteBroker } from './site-broker.ts'

export interface MqttParts extends ProtocolParts<SiteBroker, MqttActionChannel> {
  policy: MqttAdmissionPolicy
}

export async function createMqtt(core: ProtocolCore): Promise<MqttParts> {
  const { gateway: gw, config, log } = core
  const policy = new MqttAdmissionPolicy(gw, core.admission, core.residual, log.child({ component: 'mqtt-admission' }), core.pki)
  const t = config.mqtt.tls
  // every TLS listener has the same certificate (the EST server's too): tlsCert/tlsKey, else one the site CA issues for tlsSan
  const tls = t === null ? null : { port: t.port, ...(await serverTlsMaterial(core.pki, config.pki)), ca: core.pki.trustPem }
  const broker = new SiteBroker({
    host: config.mqtt.host,
    port: config.mqtt.port,
    tls,
    log: log.child({ component: 'site-broker' }),
    policy: policy.handlers(),
    sessions: policy,
    connectTimeoutMs: config.connectTimeoutMs,
    listenBacklog: config.listenBacklog,
    maxPacketBytes: config.maxPacketBytes,
    sessionQueue: config.sessionQueue,
  })
  await broker.start()
  policy.retainedPublisher = (topic) => broker.retainedPublisher(topic)
  // Last seen (written lazily by maintenance and at stop): admitted and disconnected devices.
  broker.aedes.on('client', (c) => gw.seen(c.id))
  broker.aedes.on('clientDisconnect', (c) => gw.seen(c.id))
  const channel = new MqttActionChannel(broker, log.child({ component: 'mqtt-actions' }))
  try {
    await channel.attach({
      ready: (id) => core.sink.ready(id),
      ack: (id, payload) => void core.sink.ack(id, payload, 'mqtt').catch((err: unknown) => log.error({ err, deviceId: id }, 'settling an ack failed')),
    })
  } catch (err) {
    await broker.stop()
    throw err
  }
  return { adapter: broker, channel, policy, start: async () => {}, stop: () => broker.stop() }
}
