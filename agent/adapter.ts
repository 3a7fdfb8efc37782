// What the core asks of every protocol adapter (MQTT, OPC UA, Modbus). The
// core defines the contract; protocols/ implements it; the composition root
// (agent/cli/start.ts) wires them together. One conformance suite in
// test/conformance runs against each implementation.
import type { DeviceRecord } from './devices/device.ts'

export type Protocol = 'mqtt' | 'opcua' | 'modbus'

export interface ProtocolAdapter {
  readonly protocol: Protocol
  /** Start listening / connecting. Rejects when a port cannot be bound. */
  start(): Promise<void>
  /** Stop: close listeners and sessions. Never rejects. */
  stop(): Promise<void>
  /**
   * Close every live session of a device at once, and return how many were
   * closed. Must not throw; a device with no session returns 0.
   */
  closeSessions(deviceId: string): number
  /**
   * PROTOCOL §4: the device's record changed without leaving its state (a
   * new key, an acl, a renewed credential): close the sessions the new
   * record would not admit, or would admit with fewer rights, and return how
   * many. Adapters whose sessions the gateway opens itself may leave it out.
   */
  reviewSessions?(before: DeviceRecord, after: DeviceRecord): number
  /** Live sessions of a device right now. */
  sessionCount(deviceId: string): number
  /**
   * What the adapter learnt of a device by talking to it (not what its
   * record says), for the inventory and `device show`: a flat JSON object,
   * its text made safe to print, or undefined when nothing is known (yet).
   * Kept in memory only. Must not throw, must not wait: it reports what was
   * read before, never asks the device. Adapters that learn nothing may
   * leave it out. (Modbus: Read Device Identification, `vendorName`,
   * `productCode`, `majorMinorRevision`, `identifiedAt` in seconds since
   * the epoch.)
   */
  inventory?(deviceId: string): Record<string, unknown> | undefined
  /** What the `ready` log line reports (ports, endpoints). */
  describe(): Record<string, unknown>
}
