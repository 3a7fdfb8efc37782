// The shapes the admin API and listings show: a device with what an operator
// needs at a glance.
import type { DeviceRecord } from '../devices/device.ts'
import { credentialKind, protocolsOf, type CredentialKind } from '../devices/device.ts'
import type { Gateway } from '../gateway.ts'
import { offboardingExceptions, type OffboardingException } from '../devices/offboarding.ts'
import type { Protocol, ProtocolAdapter } from '../adapter.ts'
import type { DeviceActivity, RefusalFact } from './device-activity.ts'

/** A credential kind as people read it (`device ls`, `device show`, the status page). */
export const CREDENTIAL_LABEL: Readonly<Record<CredentialKind, string>> = { publicKey: 'token key', x509: 'certificate', password: 'password' }

/** What a view adds from the running agent: live sessions, and the last refusal. */
export interface LiveSources {
  adapters: readonly ProtocolAdapter[]
  activity?: DeviceActivity
}

export interface DeviceView {
  id: string
  state: string
  criticality: string
  owner?: string
  protocols: string[]
  /** the token key (credential kind publicKey) */
  publicKey?: string
  credentialKind: CredentialKind
  /** x509: the current certificate (serial, not-after, days left) and the renewal under way */
  certificate?: { serial: string; notAfter: number; daysLeft: number; issuer: string; overlap: boolean; renewal: string | null }
  credentialExpiresAt: number | null
  /** why this device's offboarding cannot be proven end to end (none: wiped with a signed ack, every credential revocable here) */
  exceptions: OffboardingException[]
  pendingActions: { id: string; act: string; queuedAt: number }[]
  stateReason?: string
  stateChangedAt: number
  lastSeenAt: number | null
  /** live sessions per protocol now (with the running agent's adapters) */
  sessions?: Partial<Record<Protocol, number>>
  /** the last refused connect and why (since start, or from the audit log's recent alerts) */
  lastRefusal?: RefusalFact
  /** what the device said of itself, per protocol (Modbus: Read Device Identification, FC 43/14) */
  identification?: Partial<Record<Protocol, Record<string, unknown>>>
  spec: DeviceRecord['spec']
}

export function describeDevice(gw: Gateway, d: DeviceRecord, live?: LiveSources): DeviceView {
  const pending = gw.actions.pending(d.spec.id)
  const v: DeviceView = {
    id: d.spec.id,
    state: d.state,
    criticality: d.spec.criticality ?? 'medium',
    protocols: protocolsOf(d.spec),
    ...(d.spec.publicKey !== undefined ? { publicKey: d.spec.publicKey } : {}),
    credentialKind: credentialKind(d.spec),
    credentialExpiresAt: d.credentialExpiresAt ?? null,
    exceptions: offboardingExceptions(d),
    pendingActions: pending.map((a) => ({ id: a.id, act: a.act, queuedAt: a.queuedAt })),
    stateChangedAt: d.stateChangedAt,
    lastSeenAt: d.lastSeenAt ?? null,
    spec: d.spec,
  }
  const cur = d.certificates?.find((c) => c.role === 'current')
  if (cur) {
    const renewal = pending.find((a) => a.act === 'renew' || a.act === 'reenroll' || a.act === 'install-cert')
    v.certificate = {
      serial: cur.serial,
      notAfter: cur.notAfter,
      daysLeft: cur.notAfter ? Math.floor((cur.notAfter - gw.nowS()) / 86400) : 0,
      issuer: cur.issuer,
      overlap: d.certificates!.some((c) => c.role === 'previous' && !c.revoked),
      renewal: renewal ? `${renewal.act} queued` : null,
    }
  }
  if (d.spec.owner !== undefined) v.owner = d.spec.owner
  if (d.stateReason !== undefined) v.stateReason = d.stateReason
  if (live) {
    v.sessions = Object.fromEntries(live.adapters.map((a) => [a.protocol, a.sessionCount(d.spec.id)]))
    const refusal = live.activity?.lastRefusal(d.spec.id)
    if (refusal) v.lastRefusal = refusal
    const said = live.adapters.flatMap((a) => {
      const inv = a.inventory?.(d.spec.id)
      return inv ? [[a.protocol, inv] as const] : []
    })
    if (said.length) v.identification = Object.fromEntries(said)
  }
  return v
}
