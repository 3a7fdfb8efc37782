// PROTOCOL §4: the one place that says which state changes are allowed.
// `active` ⇄ `quarantined`; `active`|`quarantined` → `revoked`; any state but
// `retired` → `retiring` → `retired` (final). Enrolling a revoked id
// re-admits it (a deliberate act); nothing else leaves `revoked`.
import { IllegalTransitionError } from '../runtime/errors.ts'
import type { DeviceState } from '../devices/device.ts'

export const TRANSITIONS = ['enroll', 'quarantine', 'release', 'revoke', 'retire', 'retire-complete'] as const
export type Transition = (typeof TRANSITIONS)[number]
export type FromState = DeviceState | 'none'

const TABLE: Record<Transition, Partial<Record<FromState, DeviceState>>> = {
  // Re-enrolling a quarantined device updates its record but keeps it
  // quarantined: lifting a quarantine is release's job, never a side effect.
  enroll: { none: 'active', active: 'active', quarantined: 'quarantined', revoked: 'active' },
  quarantine: { active: 'quarantined', quarantined: 'quarantined' },
  release: { quarantined: 'active', active: 'active' },
  revoke: { active: 'revoked', quarantined: 'revoked', revoked: 'revoked' },
  retire: { active: 'retiring', quarantined: 'retiring', revoked: 'retiring', retiring: 'retiring' },
  'retire-complete': { retiring: 'retired' },
}

/** The state a transition leads to, or null where §4 forbids it. */
export function nextState(from: FromState, t: Transition): DeviceState | null {
  return TABLE[t][from] ?? null
}

/** Like nextState, but an illegal transition is a typed error. */
export function applyTransition(deviceId: string, from: FromState, t: Transition): DeviceState {
  const to = nextState(from, t)
  if (to === null) throw new IllegalTransitionError(deviceId, from === 'none' ? null : from, targetOf(t), t)
  return to
}

function targetOf(t: Transition): string {
  const targets = new Set(Object.values(TABLE[t]))
  return [...targets].join('|')
}
