// The shapes the admin API and listings show: a device with what an operator
// needs at a glance.
import type { DeviceRecord } from '../devices/device.ts'
import { protocolsOf } from '../devices/device.ts'
import type { Gateway } from '../gateway.ts'

export interface DeviceView {
  id: string
  state: string
  criticality: string
  owner?: string
  protocols: string[]
  publicKey: string
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
    publicKey: d.spec.publicKey,
    credentialExpiresAt: d.credentialExpiresAt ?? null,
    pendingActions: gw.actions.pending(d.spec.id).map((a) => ({ id: a.id, act: a.act, queuedAt: a.queuedAt })),
    stateChangedAt: d.stateChangedAt,
    lastSeenAt: d.lastSeenAt ?? null,
    spec: d.spec,
  }
  if (d.spec.owner !== undefined) v.owner = d.spec.owner
  if (d.stateReason !== undefined) v.stateReason = d.stateReason
  return v
}
