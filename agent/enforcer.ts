// Cuts live access when a device leaves `active`: every session on every
// protocol adapter is closed at once, before the change is even on disk.
import type { ProtocolAdapter, Protocol } from './adapter.ts'
import type { DeviceChange, Gateway } from './gateway.ts'

export class AccessEnforcer {
  readonly #adapters: ProtocolAdapter[]
  /** sessions closed by the last cut of each device (for evidence) */
  readonly #lastCut = new Map<string, Record<Protocol, number>>()

  constructor(gw: Gateway, adapters: ProtocolAdapter[]) {
    this.#adapters = adapters
    gw.onDeviceChange((c) => this.#onChange(c))
  }

  #onChange(c: DeviceChange): void {
    if (c.to === 'active') return
    this.cut(c.record.spec.id)
  }

  /** Close every session of a device on every protocol; returns the counts. */
  cut(deviceId: string): Record<Protocol, number> {
    const counts: Record<Protocol, number> = { mqtt: 0, opcua: 0, modbus: 0 }
    for (const a of this.#adapters) counts[a.protocol] += a.closeSessions(deviceId)
    this.#lastCut.set(deviceId, counts)
    return counts
  }

  lastCut(deviceId: string): Record<Protocol, number> {
    return this.#lastCut.get(deviceId) ?? { mqtt: 0, opcua: 0, modbus: 0 }
  }
}
