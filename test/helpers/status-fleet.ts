// A site-sized fleet for the status page (its Chromium test and
// scripts/screenshots.ts): N devices enrolled through the in-process
// gateway, many at a time (concurrent enrollments share the store's
// batches, so 10,000 take seconds, not the minutes 10,000 CLI calls would),
// in a mix a plant has: mostly MQTT token devices, Modbus PLCs, password and
// certificate devices, every criticality, some quarantined and revoked. The
// plan is a pure function of the index, so a test computes what each filter
// must match from the plan, not from the code under test.
import { randomBytes } from 'node:crypto'
import type { Gateway } from '../../agent/gateway.ts'
import type { DeviceSpec } from '../../agent/devices/device.ts'
import { hashPassword } from '../../agent/trust/password.ts'

export interface PlannedDevice {
  id: string
  criticality: 'low' | 'medium' | 'high' | 'safety'
  protocol: 'mqtt' | 'modbus'
  credential: 'publicKey' | 'x509' | 'password'
  owner: string
  /** the state it is put in after enrollment (active unless said) */
  state: 'active' | 'quarantined' | 'revoked'
  reason?: string
}

/** What device `i` (1-based) of a fleet is. */
export function plannedDevice(i: number): PlannedDevice {
  const criticality = i % 20 === 0 ? 'safety' : i % 5 === 0 ? 'high' : i % 2 === 0 ? 'medium' : 'low'
  const protocol = i % 10 === 3 ? 'modbus' : 'mqtt'
  // Modbus devices carry a token key (the hook signs with it); the others are spread over the kinds
  const credential = protocol === 'modbus' ? 'publicKey' : i % 50 === 7 ? 'password' : i % 50 === 9 ? 'x509' : 'publicKey'
  const d: PlannedDevice = { id: `sim-${i}`, criticality, protocol, credential, owner: `line-${(i % 12) + 1}`, state: 'active' }
  if (i % 250 === 17) d.state = 'revoked'
  else if (i % 100 === 41 || i % 100 === 73) {
    d.state = 'quarantined'
    d.reason = `odd traffic from cell ${i % 7}`
  }
  return d
}

export function plannedFleet(n: number): PlannedDevice[] {
  return Array.from({ length: n }, (_, k) => plannedDevice(k + 1))
}

async function specOf(d: PlannedDevice, i: number): Promise<DeviceSpec> {
  const base = { id: d.id, criticality: d.criticality, owner: d.owner }
  // Nothing listens on these Modbus targets: the gateway asks a device only when a client does (or its presence round, a minute on).
  // Unit ids 1-240 (shared, as no real proxy would have them): 241-247 (the last a Modbus server may have) are left for real devices beside the fleet.
  const proto = d.protocol === 'modbus' ? { modbus: { host: '127.0.0.1', port: 1, unitId: (i % 240) + 1, hookBase: null } } : {}
  // Each credential its own (one credential, one identity: a copy is refused). Keys are any 32 bytes: these devices never connect.
  if (d.credential === 'password') return { ...base, ...proto, password: await hashPassword(`pw-${d.id}`, { ln: 4, r: 1, p: 1 }) }
  if (d.credential === 'x509') return { ...base, ...proto, x509: { certificateSha256: randomBytes(32).toString('hex') } }
  return { ...base, ...proto, publicKey: randomBytes(32).toString('base64url') }
}

const WHO = { actor: 'local:fleet' }

/** Enroll `plan` through `gw`, `concurrency` at a time, then quarantine and revoke those planned so. Returns the ms it took. */
export async function enrollFleet(gw: Gateway, plan: readonly PlannedDevice[], concurrency = 500): Promise<number> {
  const t0 = performance.now()
  for (let i = 0; i < plan.length; i += concurrency) {
    const chunk = plan.slice(i, i + concurrency)
    await Promise.all(chunk.map(async (d, k) => gw.enroll(await specOf(d, i + k + 1), WHO)))
  }
  const moved = plan.filter((d) => d.state !== 'active')
  for (let i = 0; i < moved.length; i += concurrency) {
    await Promise.all(
      moved.slice(i, i + concurrency).map((d) => gw.transition(d.id, d.state === 'revoked' ? 'revoke' : 'quarantine', { ...WHO, ...(d.reason !== undefined ? { reason: d.reason } : { reason: 'reported lost' }) })),
    )
  }
  return performance.now() - t0
}
