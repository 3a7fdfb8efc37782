// The action runtime on MQTT (PROTOCOL §5): each message on `dev/<id>/cmd`
// goes to ActionRuntime.handle; its ack is published on `dev/<id>/ack` at
// QoS 1, and only once the broker has acknowledged it (PUBACK) does the
// device switch keys or erase them. Reconnects mint their token with the
// runtime's current key, so after a re-key the new key is used; a
// certificate device (mqtt-cert-device.ts) passes clientCertificate instead.
import type { ActionRuntime, AckStatus, IgnoreReason } from './action-runtime.ts'
import { MqttDevice, type MqttDeviceOptions } from './mqtt-device.ts'

export interface ActionStats {
  /** actions acted on (first time an id was seen) */
  actionsHandled: number
  /** repeated action ids answered with the stored ack */
  repeats: number
  /** acks the broker acknowledged */
  acksSent: number
  /** envelopes neither acted on nor acked (forged, misaddressed, malformed...) */
  ignored: number
  wipesDone: number
  keyChanges: number
}

export const newActionStats = (): ActionStats => ({ actionsHandled: 0, repeats: 0, acksSent: 0, ignored: 0, wipesDone: 0, keyChanges: 0 })

export interface SentAck {
  actionId: string
  act: string
  status: AckStatus
  ack: string
  repeat: boolean
}

export interface MqttActionDeviceOptions extends Omit<MqttDeviceOptions, 'deviceId' | 'gatewayId' | 'secretKey'> {
  runtime: ActionRuntime
  /** counters to add to; shared across connections of one device (a simulator reconnecting) */
  stats?: ActionStats
}

export interface IgnoredEnvelope {
  reason: IgnoreReason
  detail: string
}

/**
 * Errors of the action path (an ack not acknowledged because the connection
 * dropped) are kept in `lastError`, not thrown: the gateway re-sends the
 * action after the next reconnect, and the device answers it again.
 */
export class MqttActionDevice {
  readonly runtime: ActionRuntime
  readonly device: MqttDevice
  readonly stats: ActionStats
  /** acks out, by action id */
  readonly acked = new Map<string, SentAck>()
  lastError: Error | null = null
  #queue: Promise<void> = Promise.resolve()
  #closed = false
  readonly #ackListeners = new Set<(a: SentAck) => void>()
  readonly #ignoredListeners = new Set<(i: IgnoredEnvelope) => void>()
  #offKeyChange: () => void = () => {}

  private constructor(runtime: ActionRuntime, device: MqttDevice, stats: ActionStats) {
    this.runtime = runtime
    this.device = device
    this.stats = stats
    device.onCommand((payload) => {
      // one action at a time, in arrival order: an ack goes out and its key switch is done before the next is handled
      this.#queue = this.#queue.then(() => this.#onCommand(payload))
    })
  }

  /**
   * Connect with the runtime's current key. A device that restarted between
   * sending a reenroll/renew ack and switching keys may be refused under its
   * old key: it then tries the pending key, and keeps it if admitted.
   */
  static async connect(opts: MqttActionDeviceOptions): Promise<MqttActionDevice> {
    const { runtime, stats, ...rest } = opts
    const key = (): Uint8Array => {
      const k = runtime.secretKey
      if (!k) throw new Error(`device ${runtime.deviceId} was wiped: it has no key`)
      return k
    }
    const base: MqttDeviceOptions = { ...rest, deviceId: runtime.deviceId, gatewayId: runtime.gatewayId, ...(rest.clientCertificate ? {} : { secretKey: key }) }
    let device: MqttDevice
    try {
      device = await MqttDevice.connect(base)
    } catch (err) {
      const pending = runtime.pendingKey
      if (!pending || rest.clientCertificate) throw err
      device = await MqttDevice.connect({ ...base, secretKey: pending })
      await runtime.recoverPendingKey()
      await device.close()
      device = await MqttDevice.connect(base) // reconnects must read the (now current) key from the runtime
    }
    const self = new MqttActionDevice(runtime, device, stats ?? newActionStats())
    self.#offKeyChange = runtime.onKeyChange(() => void self.stats.keyChanges++)
    return self
  }

  get connected(): boolean {
    return this.device.client.connected
  }

  /** Called with each ack once it is out (PUBACK) and its follow-up is done. Returns an unsubscribe function. */
  onAck(listener: (a: SentAck) => void): () => void {
    this.#ackListeners.add(listener)
    return () => this.#ackListeners.delete(listener)
  }

  /** Called with each envelope that was neither acted on nor acked. */
  onIgnored(listener: (i: IgnoredEnvelope) => void): () => void {
    this.#ignoredListeners.add(listener)
    return () => this.#ignoredListeners.delete(listener)
  }

  async #onCommand(payload: Uint8Array): Promise<void> {
    if (this.#closed) return
    const res = await this.runtime.handle(payload)
    if (res.kind === 'ignored') {
      this.stats.ignored++
      const i: IgnoredEnvelope = { reason: res.reason, detail: res.detail }
      for (const l of [...this.#ignoredListeners]) l(i)
      return
    }
    if (res.repeat) this.stats.repeats++
    else this.stats.actionsHandled++
    try {
      // PROTOCOL §5: acks on dev/<id>/ack at QoS 1; resolves on the PUBACK.
      await this.device.publish('ack', res.ack, { qos: 1 })
      this.stats.acksSent++
      await res.after?.()
    } catch (err) {
      // not acknowledged: keys stay as they are; the repeat after reconnect finishes the job
      this.lastError = err as Error
      return
    }
    const sent: SentAck = { actionId: res.actionId, act: res.act, status: res.status, ack: res.ack, repeat: res.repeat }
    this.acked.set(res.actionId, sent)
    if (res.act === 'wipe' && res.status === 'done' && !res.repeat) this.stats.wipesDone++
    for (const l of [...this.#ackListeners]) l(sent)
    if (this.runtime.wiped && !this.runtime.hasKey) await this.close() // no key left to sign a token with (or to present)
  }

  /** Resolves once the ack of `actionId` is out (PUBACK) and its follow-up (key switch, wipe) is done. */
  waitForAck(actionId: string, timeoutMs = 10_000): Promise<SentAck> {
    return waitForAck(this, actionId, timeoutMs)
  }

  /** Publish under `dev/<id>/` (telemetry...). */
  publish(subtopic: string, payload: string | Buffer, opts: { qos?: 0 | 1; retain?: boolean } = {}): Promise<void> {
    return this.device.publish(subtopic, payload, opts)
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#offKeyChange()
    await this.device.close()
  }
}

/**
 * Resolves once `source` has acked `actionId` (already, or within timeoutMs);
 * `who` prefixes the timeout error (e.g. a device id). Shared by this device
 * and the simulator's, which keeps its acks across connections.
 */
export function waitForAck(
  source: { readonly acked: ReadonlyMap<string, SentAck>; onAck(listener: (a: SentAck) => void): () => void },
  actionId: string,
  timeoutMs: number,
  who?: string,
): Promise<SentAck> {
  const got = source.acked.get(actionId)
  if (got) return Promise.resolve(got)
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off()
      reject(new Error(`${who === undefined ? '' : `${who}: `}no ack for action ${actionId} within ${timeoutMs} ms`))
    }, timeoutMs)
    const off = source.onAck((a) => {
      if (a.actionId !== actionId) return
      clearTimeout(timer)
      off()
      resolve(a)
    })
  })
}
