// What the core asks of every protocol adapter (MQTT, OPC UA, Modbus). The
// core defines the contract; protocols/ implements it; the composition root
// (agent/cli/start.ts) wires them together. One conformance suite in
// test/conformance runs against each implementation.
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
  /** Live sessions of a device right now. */
  sessionCount(deviceId: string): number
  /** What the `ready` log line reports (ports, endpoints). */
  describe(): Record<string, unknown>
}
