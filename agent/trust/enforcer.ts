// Cuts live access when a device leaves `active`: every session on every
// protocol adapter is closed at once (before the change is even on disk),
// and the network level its new state calls for is applied.
import type { Protocol, ProtocolAdapter } from '../adapter.ts'
import type { DeviceRecord } from '../devices/device.ts'
import type { DeviceChange, Gateway } from '../gateway.ts'
import type { Logger } from '../observe/logger.ts'
import { NoneQuarantine, type QuarantineBackend, type QuarantineResult } from '../quarantine/quarantine.ts'
import { inService, networkLevel } from './rights.ts'

export interface Enforcement {
  sessionsClosed: Record<Protocol, number>
  /** `enforced: false` and `detail` only where an enforcing backend could not put the rule on the wire */
  network: { backend: string; rule: string; enforced?: false; detail?: string }
  /** performance.now() when sessions were closed and the network rule was in force */
  doneAt: number
}

/** No session closed on any protocol. */
export function noSessions(): Record<Protocol, number> {
  return { mqtt: 0, opcua: 0, modbus: 0 }
}

/** Milliseconds (to the microsecond) from a request's arrival (performance.now()) until its enforcement was in force. */
export function accessRemovedMs(e: Enforcement, receivedAt: number): number {
  return Math.round(Math.max(0, e.doneAt - receivedAt) * 1000) / 1000
}

export class AccessEnforcer {
  readonly #adapters: ProtocolAdapter[]
  readonly #quarantine: QuarantineBackend
  readonly #log: Logger | undefined
  readonly #last = new Map<string, Promise<Enforcement>>()
  readonly #gw: Gateway

  constructor(gw: Gateway, adapters: ProtocolAdapter[], opts: { quarantine?: QuarantineBackend; log?: Logger } = {}) {
    this.#gw = gw
    this.#adapters = adapters
    this.#quarantine = opts.quarantine ?? new NoneQuarantine()
    this.#log = opts.log
    gw.onDeviceChange((c) => this.#onChange(c))
    gw.onRecordChange((before, after) => {
      // A change of state is #onChange's; one within a state (key, acl,
      // renewed credential) closes what the new record would not admit.
      if (before && before.state === after.state) this.#review(before, after)
    })
  }

  #review(before: DeviceRecord, after: DeviceRecord): void {
    const closed = noSessions()
    let any = 0
    for (const a of this.#adapters) {
      const n = a.reviewSessions?.(before, after) ?? 0
      closed[a.protocol] += n
      any += n
    }
    if (any) this.#log?.info({ deviceId: after.spec.id, sessionsClosed: closed }, 'sessions closed: the changed record no longer admits them')
  }

  get backend(): string {
    return this.#quarantine.name
  }

  #onChange(c: DeviceChange): void {
    const id = c.record.spec.id
    const sessionsClosed = inService(c.to) ? noSessions() : this.closeSessions(id)
    const level = networkLevel(c.to)
    const network = this.#quarantine.apply(id, level).catch((err: unknown): QuarantineResult => {
      this.#log?.error({ err, deviceId: id, level }, 'network quarantine failed')
      return { backend: this.#quarantine.name, rule: level, enforced: false, detail: `rule not applied: ${(err as Error).message}; re-tried on the next check` }
    })
    this.#last.set(
      id,
      network.then((n) => ({
        sessionsClosed,
        // PROTOCOL §6 `network`: which backend applied which level, and
        // plainly when the rule is not on the wire although it should be.
        network: { backend: n.backend, rule: n.rule, ...(!n.enforced && n.detail !== undefined ? { enforced: false as const, detail: n.detail } : {}) },
        doneAt: performance.now(),
      })),
    )
  }

  /** What the protocols learned of a device on the wire (e.g. Modbus device identification), by protocol; undefined when nothing. */
  inventoryOf(deviceId: string): Record<string, Record<string, unknown>> | undefined {
    let out: Record<string, Record<string, unknown>> | undefined
    for (const a of this.#adapters) {
      const info = a.inventory?.(deviceId)
      if (info) (out ??= {})[a.protocol] = info
    }
    return out
  }

  /** Close every session of a device on every protocol; returns the counts. */
  closeSessions(deviceId: string): Record<Protocol, number> {
    const counts = noSessions()
    for (const a of this.#adapters) counts[a.protocol] += a.closeSessions(deviceId)
    return counts
  }

  /** What the last state change of a device did, once all of it is in force. */
  async settled(deviceId: string): Promise<Enforcement> {
    return (
      (await this.#last.get(deviceId)) ?? {
        sessionsClosed: noSessions(),
        // No change since start: the level its state calls for, put in force by the reconcile at start.
        network: { backend: this.#quarantine.name, rule: networkLevel(this.#gw.getDevice(deviceId)?.state ?? 'active') },
        doneAt: performance.now(),
      }
    )
  }
}
