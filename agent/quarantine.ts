// Network quarantine behind one interface (PROTOCOL §6 evidence `network`).
// The `none` backend is the default where the agent lacks root or nft: it
// applies nothing and says so in every piece of evidence.
export type QuarantineLevel = 'open' | 'wipe-only' | 'blocked'

export interface QuarantineResult {
  backend: string
  rule: QuarantineLevel
  /** false where the backend applies nothing (`none`) */
  enforced: boolean
}

export interface QuarantineBackend {
  readonly name: string
  /** Put a device's addresses under a level; resolves once the rule is in force. */
  apply(deviceId: string, level: QuarantineLevel): Promise<QuarantineResult>
}

export class NoneQuarantine implements QuarantineBackend {
  readonly name = 'none'
  async apply(_deviceId: string, level: QuarantineLevel): Promise<QuarantineResult> {
    return { backend: 'none', rule: level, enforced: false }
  }
}

/** The network level each device state calls for. */
export function levelFor(state: string): QuarantineLevel {
  if (state === 'active') return 'open'
  if (state === 'retiring') return 'wipe-only'
  return 'blocked'
}
