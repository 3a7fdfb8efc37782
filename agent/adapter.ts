// What the core asks of every protocol (MQTT, OPC UA, Modbus), and what it
// gives them. The core defines the contracts; protocols/ implements them:
// each protocol exports one factory that takes the ProtocolCore and returns
// its adapter (sessions: closed, reviewed, counted) and its action channel
// (actions out, readiness and acks back through the one ActionSink); the
// composition root (agent/compose.ts) calls the factories. Conformance suites
// in test/conformance (adapter-suite.ts, action-channel-suite.ts) run
// against each implementation.
import type { QueuedAction } from './actions/action-queue.ts'
import type { VerifiedAck } from './actions/ack.ts'
import type { DeviceRecord } from './devices/device.ts'
import type { Gateway } from './gateway.ts'
import type { Logger } from './observe/logger.ts'
import type { SitePki } from './pki/site-pki.ts'
import type { AgentConfig } from './runtime/config.ts'
import type { DeviceAdmission } from './trust/admission.ts'
import type { ResidualUseMonitor } from './trust/residual-use.ts'

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

/** Actions out to devices over one protocol (PROTOCOL §5). */
export interface ActionChannel {
  readonly protocol: Protocol
  /** Is the device listening on this channel right now? */
  ready(deviceId: string): boolean
  /** Hand an action to the device; rejects when it could not be sent (the action stays queued). */
  send(action: QueuedAction): Promise<void>
}

/** Where every protocol's channel reports back: the core's side (agent/actions/device-actions.ts). */
export interface ActionSink {
  /** The device is connected and listening on a channel: deliver what is pending. Never throws. */
  ready(deviceId: string): void
  /** A device's signed ack arrived: verify it and settle its action. A bad, stray or repeated ack changes nothing. */
  ack(deviceId: string, payload: string | Uint8Array, protocol: Protocol): Promise<{ ok: boolean; reason?: string }>
  /** An outcome the gateway itself vouches for (Modbus hook registers carry no signature): settle it with its evidence. */
  vouch(ack: VerifiedAck, protocol: Protocol, evidence: Record<string, unknown>): Promise<void>
}

/** What a protocol's factory is given: the core's parts it may use. */
export interface ProtocolCore {
  gateway: Gateway
  config: AgentConfig
  /** token admission (PROTOCOL §5), for protocols where devices connect to the gateway */
  admission: DeviceAdmission
  /** residual-use reports (PROTOCOL §4), from every protocol */
  residual: ResidualUseMonitor
  /** readiness and acks from every channel */
  sink: ActionSink
  /** the site PKI (PROTOCOL §9): client certificates, the TLS server certificate */
  pki: SitePki
  log: Logger
}

/**
 * What a protocol's factory returns: its adapter (listening, where it
 * listens) and its action channel (attached to the sink). start() begins
 * the protocol's own work with devices (probing those with actions
 * pending), once the composition root has registered the channel; stop()
 * undoes all of it and never rejects.
 */
export interface ProtocolParts<A extends ProtocolAdapter = ProtocolAdapter, C extends ActionChannel = ActionChannel> {
  adapter: A
  channel: C
  start(): Promise<void>
  stop(): Promise<void>
}
