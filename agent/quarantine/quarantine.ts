// Network quarantine behind one interface (PROTOCOL §6 evidence `network`).
// The `none` backend is the default where the agent lacks root or nft: it
// applies nothing and says so in every piece of evidence.
import type { NetworkLevel } from '../trust/rights.ts'

export type QuarantineLevel = NetworkLevel

export interface QuarantineResult {
  backend: string
  rule: QuarantineLevel
  /** false where the backend applies nothing (`none`), or where it could not for this device */
  enforced: boolean
  /** why the rule is not in force on the wire, where an enforcing backend could not apply it */
  detail?: string
}

/** A device as a backend sees it: the addresses it is known by and its state. */
export interface QuarantineDevice {
  id: string
  state: string
  network?: { ip?: string | undefined; mac?: string | undefined } | undefined
}

/** Every device the backend keeps in step with (the registry, in the agent). */
export type QuarantineSource = () => Iterable<QuarantineDevice>

/** One address under a level, as read back from where it is enforced. */
export interface QuarantineEntry {
  address: string
  kind: 'ipv4' | 'ipv6' | 'mac'
  level: Exclude<QuarantineLevel, 'open'>
  /** the devices the backend recorded for this address */
  devices: string[]
}

/** What is in force now, read back from the kernel (or wherever the backend enforces). */
export interface QuarantineState {
  backend: string
  /** whether this backend puts anything on the wire at all */
  enforces: boolean
  /** where its rules live, e.g. `nftables table inet edgewarden` */
  where: string | null
  /** false when the rules are missing (deleted by hand, never applied) */
  present: boolean
  entries: QuarantineEntry[]
  /** packets dropped by each level since the rules were last (re)declared */
  dropped: { blocked: number; wipeOnly: number } | null
}

/**
 * A network quarantine backend. Error contract: `apply` never rejects for a
 * device it cannot enforce (no address known): it resolves with
 * `enforced: false` and a `detail`; it rejects (code QUARANTINE_FAILED) only
 * when the rules could not be put in place at all. `reconcile` rejects
 * (QUARANTINE_UNAVAILABLE or QUARANTINE_FAILED) the same way. `stop` never
 * removes a rule: a stopped or killed agent fails closed.
 */
export interface QuarantineBackend {
  readonly name: string
  /** false for `none`: nothing reaches the wire */
  readonly enforces: boolean
  /** Put a device's addresses under a level; resolves once the rule is in force. */
  apply(deviceId: string, level: QuarantineLevel): Promise<QuarantineResult>
  /** Make what is in force match every device of the source (each at `levelFor(state)`); idempotent. */
  reconcile(): Promise<void>
  /** What is in force now, read back. */
  show(): Promise<QuarantineState>
  /** Re-check periodically and heal what was changed behind our back. */
  start(): void
  /** Stop re-checking; the rules stay in force. */
  stop(): Promise<void>
}

export class NoneQuarantine implements QuarantineBackend {
  readonly name = 'none'
  readonly enforces = false
  async apply(_deviceId: string, level: QuarantineLevel): Promise<QuarantineResult> {
    return { backend: 'none', rule: level, enforced: false }
  }
  async reconcile(): Promise<void> {}
  async show(): Promise<QuarantineState> {
    return { backend: 'none', enforces: false, where: null, present: false, entries: [], dropped: null }
  }
  start(): void {}
  async stop(): Promise<void> {}
}


