// PROTOCOL §3 `…/status`: the gateway's retained status, as a control plane
// reads it (the agent writes it in agent/uplink/uplink.ts).

/** The gateway's retained `…/status`; seq and audit are absent from the will and from older gateways. */
export interface GatewayStatus {
  online: boolean
  version?: string
  /** the gateway's last event seq */
  seq?: number
  /** the gateway's audit head */
  audit?: { seq: number; hash: string }
}

/** Not JSON of that shape: null. Over-long strings are left out. */
export function parseStatus(payload: string): GatewayStatus | null {
  let v: unknown
  try {
    v = JSON.parse(payload)
  } catch {
    return null
  }
  if (!v || typeof v !== 'object' || typeof (v as { online?: unknown }).online !== 'boolean') return null
  const o = v as Record<string, unknown>
  const count = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0
  const a = o.audit as Record<string, unknown> | undefined
  return {
    online: o.online as boolean,
    ...(typeof o.version === 'string' && o.version.length <= 64 ? { version: o.version } : {}),
    ...(count(o.seq) ? { seq: o.seq } : {}),
    ...(a && typeof a === 'object' && count(a.seq) && typeof a.hash === 'string' && a.hash.length <= 128 ? { audit: { seq: a.seq, hash: a.hash } } : {}),
  }
}
