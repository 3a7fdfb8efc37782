// What enrolling a spec over an existing record changes, one line each, as a
// person reads it: `device add ID --replace` prints it, the audit entry of the
// enrollment keeps it, and without --replace the refusal says it. Secrets
// are never shown: a password hash or a bootstrap secret is only "replaced".
import { nextState } from '../trust/state-machine.ts'
import { credentialKind, protocolsOf, type DeviceRecord, type DeviceSpec } from './device.ts'

const short = (k: string): string => (k.length > 12 ? `${k.slice(0, 10)}…` : k)
const same = (a: unknown, b: unknown): boolean => JSON.stringify(a ?? null) === JSON.stringify(b ?? null)
const list = (a: string[] | undefined): string => (a?.length ? a.join(' ') : '(none)')

function credentialChange(before: DeviceSpec, after: DeviceSpec): string | null {
  const kb = credentialKind(before)
  const ka = credentialKind(after)
  const label = { publicKey: 'token key', x509: 'certificate', password: 'password' } as const
  if (kb !== ka) return `credential ${label[kb]} -> ${label[ka]}: the old one ends now and its live sessions are closed`
  if (ka === 'publicKey' && before.publicKey !== after.publicKey) return `token key ${short(before.publicKey!)} -> ${short(after.publicKey!)}: the old key ends now and its live sessions are closed`
  if (ka === 'password' && before.password !== after.password) return 'password hash replaced: the old password stops working now and its live sessions are closed'
  if (ka === 'x509' && !same(before.x509, after.x509)) {
    const x = after.x509!
    if ('csr' in x) return 'certificate: a new one is issued from the request; the current one is superseded (on the CRL)'
    if ('certificateSha256' in x) return `certificate pin -> ${short(x.certificateSha256)}; the current certificate is refused from now on`
    return 'bootstrap secret replaced: the old one no longer enrolls'
  }
  return null
}

/** The changes, in the order a person checks them; empty when the record would stay as it is. */
export function recordChanges(before: DeviceRecord, after: DeviceSpec, reason?: string): string[] {
  const b = before.spec
  const out: string[] = []
  const to = nextState(before.state, 'enroll')
  if (to === null) out.push(`state ${before.state}: it cannot be enrolled again`)
  else if (to !== before.state) out.push(`state ${before.state} -> ${to} (re-admitted)`)
  const cred = credentialChange(b, after)
  if (cred) out.push(cred)
  else if (before.state === 'revoked') out.push('credential kept, but re-admission starts it afresh')
  if ((b.criticality ?? 'medium') !== (after.criticality ?? 'medium')) out.push(`criticality ${b.criticality ?? 'medium'} -> ${after.criticality ?? 'medium'}`)
  if ((b.owner ?? '') !== (after.owner ?? '')) out.push(`owner ${b.owner ?? '(none)'} -> ${after.owner ?? '(none)'}`)
  if (!same(protocolsOf(b), protocolsOf(after))) out.push(`protocols ${protocolsOf(b).join(',')} -> ${protocolsOf(after).join(',')}`)
  if (b.modbus && after.modbus && !same(b.modbus, after.modbus)) out.push(`modbus ${b.modbus.host}:${b.modbus.port}/${b.modbus.unitId} -> ${after.modbus.host}:${after.modbus.port}/${after.modbus.unitId}${after.modbus.hookBase === null ? ' (no hook registers)' : ''}`)
  if (b.opcua && after.opcua && !same(b.opcua, after.opcua)) out.push(`opcua ${b.opcua.endpoint} -> ${after.opcua.endpoint}${b.opcua.endpoint !== after.opcua.endpoint && before.opcuaPin ? ' (the certificate learnt on first use is forgotten)' : ''}`)
  if (!same(b.network, after.network)) out.push(`network ${b.network?.ip ?? '-'} ${b.network?.mac ?? '-'} -> ${after.network?.ip ?? '-'} ${after.network?.mac ?? '-'}`)
  if (!same(b.acl?.publish, after.acl?.publish)) out.push(`acl publish ${list(b.acl?.publish)} -> ${list(after.acl?.publish)}`)
  if (!same(b.acl?.subscribe, after.acl?.subscribe)) out.push(`acl subscribe ${list(b.acl?.subscribe)} -> ${list(after.acl?.subscribe)}`)
  if (b.credentialExpiresAt !== after.credentialExpiresAt && after.credentialExpiresAt !== undefined) out.push(`credential expiry -> ${new Date(after.credentialExpiresAt * 1000).toISOString()}`)
  if (before.stateReason !== undefined && reason !== undefined && reason !== before.stateReason) out.push(`state reason "${before.stateReason}" -> "${reason}"`)
  return out
}
