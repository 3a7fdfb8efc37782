// Actions over the site broker (PROTOCOL §5): a device is ready once it has
// subscribed to `dev/<id>/cmd`; actions go there QoS 1; acks come back on
// `dev/<id>/ack` (the topic rules already let only <id> publish there, and
// the ack's signature is checked by the core all the same).
import type { Client, Subscription } from 'aedes'
import type { ActionChannel } from '../../agent/actions/action-dispatcher.ts'
import type { QueuedAction } from '../../agent/actions/action-queue.ts'
import type { Logger } from '../../agent/observe/logger.ts'
import type { SiteBroker } from './site-broker.ts'

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
  readonly #listening = new Map<string, Set<Client>>()

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
      let set = this.#listening.get(client.id)
      if (!set) this.#listening.set(client.id, (set = new Set()))
      set.add(client)
      hooks.ready(client.id)
    })
    const gone = (client: Client): void => {
      const set = this.#listening.get(client.id)
      if (!set) return
      set.delete(client)
      if (set.size === 0) this.#listening.delete(client.id)
    }
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
    const set = this.#listening.get(deviceId)
    if (!set) return false
    for (const c of set) if (!c.closed) return true
    return false
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
