// Actions relayed through a device's hook registers (PROTOCOL §7): the
// gateway writes the envelope, envLen and actionSeq, then `cmd` last, and
// polls `status` with bounded backoff until done, failed or unsupported.
// A register cannot carry the device's signature, so the outcome is
// recorded as an ack the gateway vouches for: settled with evidence
// `{relay: 'modbus', signedBy: 'gateway', actionSeq, ...}` in the
// gateway-signed audit entry and event.
//
// Every request goes through the device's one link, serialized with the
// proxy's SCADA traffic. A device that does not answer keeps its actions
// queued; it is probed (a read of `status`) with exponential backoff and
// jitter until it answers, and then the dispatcher delivers. Probing stops
// when nothing is pending for it.
//
// reenroll and renew are not relayed: a `done` through registers cannot
// carry the new public key and its proof (§5), so for a Modbus-only device
// the gateway answers them `unsupported` itself, without writing anything;
// a device that also speaks MQTT or OPC UA gets them there.
import type { ActionChannel } from '../../agent/actions/action-dispatcher.ts'
import type { Act, QueuedAction } from '../../agent/actions/action-queue.ts'
import type { VerifiedAck } from '../../agent/actions/ack.ts'
import type { ActionSink } from '../../agent/adapter.ts'
import type { DeviceRecord } from '../../agent/devices/device.ts'
import type { Gateway } from '../../agent/gateway.ts'
import type { Logger } from '../../agent/observe/logger.ts'
import { hookBaseOf, HOOK_REGISTERS, type ModbusDeviceIndex } from './device-index.ts'
import { ModbusLinkError, type DeviceLink } from './device-link.ts'
import { HOOK_CMD, HOOK_STATUS, hookCmd } from '../../wire/protocol.ts'
import { registersReachable } from '../../agent/trust/rights.ts'
import { BACKOFF, backoffDelay as delay, monotonic, realTimers, type BackoffPolicy, type Timers } from '../../agent/runtime/timers.ts'
import { EdgewardenError } from '../../agent/runtime/errors.ts'

/** PROTOCOL §7 `cmd` and `status` (wire/protocol.ts). */
export { HOOK_CMD as CMD, HOOK_STATUS as STATUS }
const STATUS = HOOK_STATUS
const OUTCOME: Record<number, 'done' | 'failed' | 'unsupported'> = { 2: 'done', 3: 'failed', 4: 'unsupported' }
const MAX_WRITE_REGISTERS = 123 // FC 16 limit

/** The relay's retry policies (agent/runtime/timers.ts): jitter around the delay. */
export type Backoff = BackoffPolicy
export const PROBE_BACKOFF: Backoff = BACKOFF.modbusProbe
export const POLL_BACKOFF: Backoff = BACKOFF.modbusPoll
export type { Timers }

/** how long the relay polls `status` before giving up on this delivery (the action stays queued) */
export const DEFAULT_POLL_TIMEOUT_MS = 60_000

/** The delay before attempt `n` (0-based) of a Modbus policy: exponential, capped, jittered around it. Pure, for tests. */
export function backoffDelay(n: number, b: Backoff, random: () => number): number {
  return delay(n, { ...b, spread: 'around' }, random)
}

export interface ModbusHookRelayOptions {
  log: Logger
  probe?: Partial<Backoff>
  poll?: Partial<Backoff>
  pollTimeoutMs?: number
  timers?: Timers
  random?: () => number
}

type Reachability = 'unknown' | 'up' | 'down'

/** An action the relay settled; reported once the settlement (and what follows it, a retirement's evidence) is written. */
export interface RelayOutcome {
  deviceId: string
  actionId: string
  act: Act
  actionSeq: number
  status: 'done' | 'failed' | 'unsupported'
}

const u16s = (...values: number[]): Buffer => {
  const b = Buffer.alloc(values.length * 2)
  values.forEach((v, i) => b.writeUInt16BE(v & 0xffff, i * 2))
  return b
}
const writeMultiple = (start: number, data: Buffer): Buffer => {
  const head = Buffer.alloc(6)
  head.writeUInt8(16, 0)
  head.writeUInt16BE(start, 1)
  head.writeUInt16BE(data.length / 2, 3)
  head.writeUInt8(data.length, 5)
  return Buffer.concat([head, data])
}
const writeSingle = (addr: number, value: number): Buffer => Buffer.from([6, addr >> 8, addr & 0xff, (value >> 8) & 0xff, value & 0xff])
const readHolding = (addr: number, qty: number): Buffer => Buffer.from([3, addr >> 8, addr & 0xff, qty >> 8, qty & 0xff])

/** A device answered, but with an exception: the hook is not there (0x01, 0x02) or it cannot take it now. */
class DeviceRefused extends EdgewardenError {
  readonly exception: number
  constructor(exception: number, what: string) {
    super('MODBUS_REFUSED', `device answered exception 0x${exception.toString(16).padStart(2, '0')} to ${what}`)
    this.name = 'DeviceRefused'
    this.exception = exception
  }
}

export class ModbusHookRelay implements ActionChannel {
  readonly protocol = 'modbus' as const
  readonly #gw: Gateway
  readonly #index: ModbusDeviceIndex
  readonly #sink: ActionSink
  readonly #log: Logger
  readonly #probe: Backoff
  readonly #poll: Backoff
  readonly #pollTimeoutMs: number
  readonly #timers: Timers
  readonly #random: () => number
  readonly #reach = new Map<string, Reachability>()
  readonly #probes = new Map<string, { attempt: number; handle: unknown }>()
  /** failed deliveries in a row per device, for the backoff of the next try */
  readonly #retries = new Map<string, number>()
  /** one delivery at a time per device (the dispatcher may start two) */
  readonly #serial = new Map<string, Promise<unknown>>()
  readonly #unsubscribe: () => void
  #stopped = false
  readonly #settledListeners = new Set<(s: RelayOutcome) => void>()
  readonly stats = { delivered: 0, probes: 0, settled: { done: 0, failed: 0, unsupported: 0 } }

  constructor(gw: Gateway, index: ModbusDeviceIndex, sink: ActionSink, opts: ModbusHookRelayOptions) {
    this.#gw = gw
    this.#index = index
    this.#sink = sink
    this.#log = opts.log
    this.#probe = { ...PROBE_BACKOFF, ...opts.probe }
    this.#poll = { ...POLL_BACKOFF, ...opts.poll }
    this.#pollTimeoutMs = opts.pollTimeoutMs ?? DEFAULT_POLL_TIMEOUT_MS
    this.#timers = opts.timers ?? realTimers
    this.#random = opts.random ?? Math.random
    // The proxy's traffic tells about reachability too: a device that answers a SCADA read is up.
    this.#unsubscribe = index.onReachability((id, up) => (up ? this.#markUp(id) : this.#markDown(id)))
  }

  /** Devices with pending actions are tried at start (delivery happens when they answer). */
  start(): void {
    for (const r of this.#gw.registry.mayHoldProtocolOrCertificate()) {
      if (this.#relayable(r) && this.#gw.actions.pending(r.spec.id).length > 0) this.#schedule(r.spec.id, 0)
    }
  }

  stop(): void {
    this.#stopped = true
    this.#unsubscribe()
    for (const p of this.#probes.values()) this.#timers.clearTimeout(p.handle)
    this.#probes.clear()
  }

  onSettled(listener: (s: RelayOutcome) => void): () => void {
    this.#settledListeners.add(listener)
    return () => this.#settledListeners.delete(listener)
  }

  reachability(deviceId: string): Reachability {
    return this.#reach.get(deviceId) ?? 'unknown'
  }

  #relayable(r: DeviceRecord | undefined): r is DeviceRecord {
    return r !== undefined && hookBaseOf(r) !== null && registersReachable(r.state)
  }

  #modbusOnly(r: DeviceRecord): boolean {
    return r.spec.mqtt === undefined && r.spec.opcua === undefined
  }

  ready(deviceId: string): boolean {
    const r = this.#gw.registry.get(deviceId)
    if (this.#stopped || !this.#relayable(r) || this.reachability(deviceId) === 'down') return false
    // A re-key waiting first is for a channel that can carry the new key back.
    const head = this.#gw.actions.pending(deviceId)[0]
    if (head && (head.act === 'reenroll' || head.act === 'renew') && !this.#modbusOnly(r)) return false
    return true
  }

  send(action: QueuedAction): Promise<void> {
    const id = action.deviceId
    const run = (this.#serial.get(id) ?? Promise.resolve()).then(() => this.#send(action))
    const tail = run.catch(() => {})
    this.#serial.set(id, tail)
    void tail.then(() => {
      if (this.#serial.get(id) === tail) this.#serial.delete(id)
    })
    return run
  }

  async #send(action: QueuedAction): Promise<void> {
    const gw = this.#gw
    const id = action.deviceId
    if (!gw.actions.find(id, action.id)) return // settled meanwhile (a second delivery of the same action)
    const record = gw.registry.get(id)
    const hookBase = record ? hookBaseOf(record) : null
    const link = this.#index.link(id)
    if (!record || hookBase === null || !link) throw new TypeError(`device ${id} has no Modbus hook`)
    if (action.act === 'reenroll' || action.act === 'renew') {
      if (!this.#modbusOnly(record)) throw new Error(`${action.act} waits for a channel that can carry the new key`)
      return this.#settle(action, record, hookBase, 'unsupported', `${action.act} cannot be acknowledged through Modbus registers (PROTOCOL §7 has no room for the new key)`, false)
    }
    const envelope = Buffer.from(action.jws, 'utf8')
    const room = (Math.min(hookBase + HOOK_REGISTERS, 0x10000) - (hookBase + 5)) * 2
    if (envelope.length > room) {
      return this.#settle(action, record, hookBase, 'failed', `envelope of ${envelope.length} bytes does not fit the ${room} bytes of hook registers`, false)
    }
    const cmd = hookCmd(action.act)
    if (cmd === undefined) return this.#settle(action, record, hookBase, 'unsupported', `hook registers cannot carry ${action.act} (PROTOCOL §7)`, false)
    try {
      await this.#write(link, hookBase, action.seq, cmd, envelope)
      const status = await this.#pollStatus(link, hookBase, action)
      await this.#settle(action, record, hookBase, OUTCOME[status]!, status === STATUS.done ? undefined : `status register: ${OUTCOME[status]}`, true)
    } catch (err) {
      if (err instanceof DeviceRefused && (err.exception === 0x01 || err.exception === 0x02)) {
        // The device answered, but has no hook where its record says: it cannot take actions this way.
        return this.#settle(action, record, hookBase, 'unsupported', err.message, false)
      }
      // Not delivered: the action stays queued and is tried again when a probe finds the device answering,
      // with backoff growing while the device keeps answering but not taking it (busy, a stuck status).
      if (!(err instanceof ModbusLinkError && err.kind === 'closed')) this.#retryLater(id)
      throw err
    }
  }

  async #call(link: DeviceLink, pdu: Buffer, what: string): Promise<Buffer> {
    const answer = await link.request(pdu, 'relay')
    if (answer[0]! & 0x80) throw new DeviceRefused(answer[1] ?? 0, what)
    return answer
  }

  /** PROTOCOL §7: the envelope, envLen and actionSeq first; `cmd` last. */
  async #write(link: DeviceLink, hookBase: number, seq: number, cmd: number, envelope: Buffer): Promise<void> {
    const padded = envelope.length % 2 === 0 ? envelope : Buffer.concat([envelope, Buffer.alloc(1)])
    for (let off = 0; off < padded.length; off += MAX_WRITE_REGISTERS * 2) {
      const chunk = padded.subarray(off, off + MAX_WRITE_REGISTERS * 2)
      await this.#call(link, writeMultiple(hookBase + 5 + off / 2, chunk), 'the envelope write')
    }
    await this.#call(link, writeMultiple(hookBase + 4, u16s(envelope.length)), 'the envLen write')
    await this.#call(link, writeMultiple(hookBase + 1, u16s(seq >>> 16, seq & 0xffff)), 'the actionSeq write')
    await this.#call(link, writeSingle(hookBase, cmd), 'the cmd write')
  }

  /** Poll `status` with bounded backoff until a final value; a timeout leaves the action queued. */
  async #pollStatus(link: DeviceLink, hookBase: number, action: QueuedAction): Promise<number> {
    const now = monotonic(this.#timers)
    const start = now()
    for (let n = 0; ; n++) {
      const answer = await this.#call(link, readHolding(hookBase + 3, 1), 'the status read')
      const status = answer.length >= 4 ? answer.readUInt16BE(2) : -1
      if (OUTCOME[status]) return status
      if (now() - start >= this.#pollTimeoutMs) {
        throw new ModbusLinkError('timeout', `status of action ${action.id} (seq ${action.seq}) still ${status} after ${this.#pollTimeoutMs} ms`)
      }
      await new Promise<void>((resolve) => this.#timers.setTimeout(resolve, backoffDelay(n, this.#poll, this.#random)))
    }
  }

  async #settle(action: QueuedAction, record: DeviceRecord, hookBase: number, status: 'done' | 'failed' | 'unsupported', detail: string | undefined, fromDevice: boolean): Promise<void> {
    const m = record.spec.modbus!
    const ack: VerifiedAck = { deviceId: action.deviceId, jti: `modbus.${action.seq}`, action, status, ...(detail !== undefined ? { detail } : {}) }
    const evidence = {
      relay: 'modbus',
      signedBy: 'gateway',
      actionSeq: action.seq,
      hookBase,
      unitId: m.unitId,
      target: `${m.host}:${m.port}`,
      // false: the gateway answered without the device (re-key over Modbus, no hook at that address)
      statusFromDevice: fromDevice,
    }
    this.#retries.delete(action.deviceId)
    this.stats.settled[status]++
    if (fromDevice) this.stats.delivered++
    this.#log.info({ deviceId: action.deviceId, actionId: action.id, act: action.act, actionSeq: action.seq, status, detail }, 'modbus hook action settled')
    await this.#sink.vouch(ack, 'modbus', evidence)
    const outcome: RelayOutcome = { deviceId: action.deviceId, actionId: action.id, act: action.act, actionSeq: action.seq, status }
    for (const l of this.#settledListeners) l(outcome)
  }

  /** The device answered (a probe, the relay or a SCADA request): if it was being waited for, deliver. */
  #markUp(id: string): void {
    const was = this.reachability(id)
    this.#reach.set(id, 'up')
    this.#gw.seen(id)
    const p = this.#probes.get(id)
    if (p) {
      this.#timers.clearTimeout(p.handle)
      this.#probes.delete(id)
    }
    if ((was === 'down' || p) && !this.#stopped && this.#gw.actions.pending(id).length > 0) this.#sink.ready(id)
  }

  #retryLater(id: string): void {
    const attempt = this.#retries.get(id) ?? 0
    this.#retries.set(id, attempt + 1)
    if (!this.#relayable(this.#gw.registry.get(id))) return
    this.#reach.set(id, 'down')
    if (!this.#probes.has(id)) this.#schedule(id, attempt)
  }

  /**
   * The device did not answer. With actions waiting it is `down` and probed;
   * with none it is `unknown` again, so that the next action queued is tried
   * at once (nothing else would start a probe for it).
   */
  #markDown(id: string): void {
    if (!this.#relayable(this.#gw.registry.get(id))) return
    if (this.#gw.actions.pending(id).length === 0) {
      this.#reach.set(id, 'unknown')
      return
    }
    this.#reach.set(id, 'down')
    if (!this.#probes.has(id)) this.#schedule(id, 0)
  }

  #schedule(id: string, attempt: number): void {
    if (this.#stopped) return
    const delay = attempt === 0 && this.reachability(id) !== 'down' ? 0 : backoffDelay(attempt, this.#probe, this.#random)
    const handle = this.#timers.setTimeout(() => void this.#probeOnce(id, attempt), delay)
    this.#probes.set(id, { attempt, handle })
  }

  async #probeOnce(id: string, attempt: number): Promise<void> {
    if (this.#stopped) return
    const r = this.#gw.registry.get(id)
    const hookBase = r ? hookBaseOf(r) : null
    const link = this.#index.link(id)
    if (!this.#relayable(r) || hookBase === null || !link || this.#gw.actions.pending(id).length === 0) {
      // Nothing to deliver: stop probing; the next queued action tries directly.
      this.#probes.delete(id)
      this.#reach.set(id, 'unknown')
      return
    }
    this.stats.probes++
    try {
      // An answer, even an exception, is the device being there: the link's reachability report marks it up and delivers.
      await link.request(readHolding(hookBase + 3, 1), 'relay')
      this.#log.debug({ deviceId: id, attempt }, 'modbus device answers again')
    } catch (err) {
      if (this.#stopped) return
      this.#log.debug({ deviceId: id, attempt, err }, 'modbus device still not answering')
      this.#reach.set(id, 'down')
      this.#schedule(id, attempt + 1)
    }
  }
}
