// The shapes the admin API and listings show: a device with what an operator
// needs at a glance.
import type { DeviceRecord } from '../devices/device.ts'
import { credentialKind, protocolsOf, type CredentialKind } from '../devices/device.ts'
import type { Gateway } from '../gateway.ts'

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
  pendingActions: { id: string; act: string; queuedAt: number }[]
  stateReason?: string
  stateChangedAt: number
  lastSeenAt: number | null
  spec: DeviceRecord['spec']
}

export function describeDevice(gw: Gateway, d: DeviceRecord): DeviceView {
  const v: DeviceView = {
    id: d.spec.id,
    state: d.state,
    criticality: d.spec.criticality ?? 'medium',
    protocols: protocolsOf(d.spec),
    ...(d.spec.publicKey !== undefined ? { publicKey: d.spec.publicKey } : {}),
    credentialKind: credentialKind(d.spec),
    credentialExpiresAt: d.credentialExpiresAt ?? null,
    pendingActions: gw.actions.pending(d.spec.id).map((a) => ({ id: a.id, act: a.act, queuedAt: a.queuedAt })),
    stateChangedAt: d.stateChangedAt,
    lastSeenAt: d.lastSeenAt ?? null,
    spec: d.spec,
  }
  const cur = d.certificates?.find((c) => c.role === 'current')
  if (cur) {
    const pending = gw.actions.pending(d.spec.id).find((a) => a.act === 'renew' || a.act === 'reenroll' || a.act === 'install-cert')
    v.certificate = {
      serial: cur.serial,
      notAfter: cur.notAfter,
      daysLeft: cur.notAfter ? Math.floor((cur.notAfter - gw.nowS()) / 86400) : 0,
      issuer: cur.issuer,
      overlap: d.certificates!.some((c) => c.role === 'previous' && !c.revoked),
      renewal: pending ? `${pending.act} queued` : null,
    }
  }
  if (d.spec.owner !== undefined) v.owner = d.spec.owner
  if (d.stateReason !== undefined) v.stateReason = d.stateReason
  return v
}
