// Which devices' offboarding cannot be proven end to end, and why: the
// exceptions a person must see (status page, `device ls`, the inventory), so
// an auditor knows which devices rely on containment instead of erasure.
// The wipe path decided here is also what retirement goes by (PROTOCOL §6:
// a device without one ends with `wipe: "unsupported"` at the deadline).
import { credentialKind, type DeviceRecord, type DeviceSpec } from './device.ts'

export type OffboardingExceptionCode = 'no-wipe-path' | 'opcua-no-push' | 'external-certificate'

export interface OffboardingException {
  code: OffboardingExceptionCode
  /** what a person reads: why offboarding of this device cannot be proven end to end */
  reason: string
}

/**
 * Whether a wipe can reach the device and come back as a signed ack: any
 * MQTT or OPC UA device with a key, a Modbus device with the hook registers.
 * A device that only knows a fixed password has no key to sign an ack with,
 * unless it also runs the OPC UA or Modbus hook.
 */
export function hasWipePath(spec: DeviceSpec): boolean {
  const modbusHook = spec.modbus !== undefined && spec.modbus.hookBase !== null
  if (credentialKind(spec) === 'password') return spec.opcua !== undefined || modbusHook
  return !(spec.modbus?.hookBase === null && spec.mqtt === undefined && spec.opcua === undefined)
}

/** The exceptions of one device, none for a device whose offboarding is proven by its own signed ack and the site CA. */
export function offboardingExceptions(record: Pick<DeviceRecord, 'spec' | 'certificates'>): OffboardingException[] {
  const spec = record.spec
  const out: OffboardingException[] = []
  if (!hasWipePath(spec)) {
    out.push({
      code: 'no-wipe-path',
      reason:
        credentialKind(spec) === 'password'
          ? 'fixed password: no device key to sign a wipe ack; offboarding is the hash revoked and network quarantine'
          : 'Modbus without the hook registers: cut off at the proxy and the network, never wiped',
    })
  }
  if (spec.opcua !== undefined && (spec.opcua as { pushManagement?: boolean }).pushManagement !== true) {
    out.push({ code: 'opcua-no-push', reason: 'OPC UA without push management: its application certificate is pinned here; it cannot be rotated or revoked on the device, and other OPC UA clients trust it on their own' })
  }
  if (record.certificates?.some((c) => c.role === 'current' && c.issuer === 'external')) {
    out.push({ code: 'external-certificate', reason: "certificate of an outside CA: refused here at once, but only its issuer can revoke it for every other system" })
  }
  return out
}
