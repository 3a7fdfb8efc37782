// Actions over the site broker (PROTOCOL §5): a device is ready once it has
// subscribed to `dev/<id>/cmd`; actions go there QoS 1; acks come back on
// `dev/<id>/ack` (the topic rules already let only <id> publish there, and
// the ack's signature is checked by the core all the same).
import type { Client, Subscription } from 'aedes'
import type { ActionChannel } from '../../agent/actions/action-dispatcher.ts'
import type { QueuedAction } from '../../agent/actions/action-queue.ts'
import type { Logger } from '../../agent/observe/logger.ts'
import type { SiteBroker } from './site-broker.ts'
import { SessionsById } from './sessions-by-id.ts'

export interface MqttActionHooks {
  ready(deviceId: string): void
  ack(deviceId: string, payload: Buffer): void
}

const ACK_FILTER = 'dev/+/ack'

export class MqttActionChannel implements ActionChannel {
  readonly protocol = 'mqtt' as const
  readonly #broker: SiteBroker
  readonly #log: Logger
  /** clients listening on their command topic, by device id */
  readonly #listening = new SessionsById<Client>()

  constructor(broker: SiteBroker, log: Logger) {
    this.#broker = broker
    this.#log = log
  }

  /** Attach to a started broker. */
  async attach(hooks: MqttActionHooks): Promise<void> {
    const aedes = this.#broker.aedes
    aedes.on('subscribe', (subs: Subscription[], client: Client) => {
      const own = `dev/${client.id}/cmd`
      if (!subs.some((s) => s.topic === own)) return
      this.#listening.add(client.id, client)
      hooks.ready(client.id)
    })
    const gone = (client: Client): void => void this.#listening.delete(client.id, client)
    aedes.on('clientDisconnect', gone)
    aedes.on('clientError', gone)
    await new Promise<void>((resolve) =>
      aedes.subscribe(
        ACK_FILTER,
        (packet, cb) => {
          const id = packet.topic.slice(4, -4)
          hooks.ack(id, Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload))
          cb()
        },
        () => resolve(),
      ),
    )
  }

  ready(deviceId: string): boolean {
    return this.#listening.some(deviceId, (c) => !c.closed)
  }

  send(action: QueuedAction): Promise<void> {
    // aedes would take the publish with nobody subscribed: say it was not delivered
    if (!this.ready(action.deviceId)) return Promise.reject(new Error(`${action.deviceId} is not listening on dev/${action.deviceId}/cmd`))
    return new Promise((resolve, reject) => {
      this.#broker.aedes.publish(
        { cmd: 'publish', topic: `dev/${action.deviceId}/cmd`, payload: Buffer.from(action.jws), qos: 1, retain: false, dup: false },
        (err) => {
          if (err) {
            this.#log.debug({ err, actionId: action.id }, 'publishing an action failed')
            reject(err)
          } else resolve()
        },
      )
    })
  }
}
