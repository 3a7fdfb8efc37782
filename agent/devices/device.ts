// The Device record of PROTOCOL §3, validated once at the edge (command args,
// admin API) into a typed DeviceSpec, and the stored DeviceRecord around it.
import { isIP } from 'node:net'
import { z } from 'zod'
import { ID_PATTERN } from '../../wire/ids.ts'
import { rawPublicKey } from '../store/keys.ts'
import { DEVICE_STATES, type DeviceState } from '../../wire/protocol.ts'

export { DEVICE_STATES, type DeviceState }
export const CRITICALITIES = ['low', 'medium', 'high', 'safety'] as const
export type Criticality = (typeof CRITICALITIES)[number]

const publicKey = z.string().refine((s) => rawPublicKey(s) !== null, 'must be base64url of a raw 32-byte Ed25519 public key')
// MQTT topic filter: no NUL, '#' only last, wildcards fill whole levels [MQTT-4.7.1-2], [MQTT-4.7.1-3]
const topicFilter = z
  .string()
  .min(1)
  .max(1024)
  .refine((f) => {
    if (f.includes('\u0000')) return false
    const levels = f.split('/')
    return levels.every((l, i) => (l.includes('#') ? l === '#' && i === levels.length - 1 : !l.includes('+') || l === '+'))
  }, 'is not a valid MQTT topic filter')
const port = z.number().int().min(1).max(65535)
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i

export const deviceSpecSchema = z
  .object({
    id: z.string().regex(ID_PATTERN, 'must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    publicKey,
    criticality: z.enum(CRITICALITIES).optional(),
    owner: z.string().max(256).optional(),
    credentialExpiresAt: z.number().int().positive().optional(),
    mqtt: z.object({}).strict().optional(),
    modbus: z
      .object({
        host: z.string().min(1).max(255),
        port: port.default(502),
        unitId: z.number().int().min(0).max(255),
        hookBase: z.number().int().min(0).max(65535).nullable().optional(),
        // absent means true: an answer from another unit id fails that request (0x0B); false accepts it (devices that answer with a fixed unit id)
        strictUnitId: z.boolean().optional(),
      })
      .strict()
      .optional(),
    opcua: z
      .object({
        endpoint: z.string().regex(/^opc\.tcp:\/\/[^\s]+$/, 'must be an opc.tcp:// URL'),
        certificateSha256: z.string().regex(/^[0-9a-fA-F]{64}$/, 'must be 64 hex digits').optional(),
        trustOnFirstUse: z.boolean().optional(),
      })
      .strict()
      .optional(),
    network: z
      .object({
        ip: z.string().refine((s) => isIP(s) !== 0, 'must be an IPv4 or IPv6 address').optional(),
        mac: z.string().regex(MAC, 'must be a MAC address like 02:00:00:00:00:01').optional(),
      })
      .strict()
      .optional(),
    acl: z
      .object({ publish: z.array(topicFilter).max(64).optional(), subscribe: z.array(topicFilter).max(64).optional() })
      .strict()
      .optional(),
  })
  .strict()

export type DeviceSpec = z.infer<typeof deviceSpecSchema>

/** A key the device may sign with, and when (seconds since the epoch). */
export interface DeviceKey {
  publicKey: string
  notBefore: number
  /** null: valid until replaced */
  notAfter: number | null
}

export interface DeviceRecord {
  spec: DeviceSpec
  state: DeviceState
  keys: DeviceKey[]
  /** seconds since the epoch: the spec's, or enrollment time plus the configured credential lifetime */
  credentialExpiresAt: number
  /** when the current credential was issued (enrollment, re-enrollment or renewal) */
  credentialIssuedAt?: number
  /** the last credential notice reported, so each is reported once per credential */
  credentialNotice?: 'expiring' | 'expired-grace' | 'expired'
  stateReason?: string
  /**
   * OPC UA: the server certificate pinned when first seen, for a device whose
   * spec says `trustOnFirstUse` and names no `certificateSha256` (PROTOCOL §3).
   * Recorded (and audited) by the gateway, never by the control plane.
   */
  opcuaPin?: { sha256: string; at: number }
  /** seconds since the epoch */
  createdAt: number
  updatedAt: number
  stateChangedAt: number
  lastSeenAt?: number
}

/** Validate untrusted input; returns the spec or the list of problems, one line each. */
export function parseDeviceSpec(input: unknown): { ok: true; spec: DeviceSpec } | { ok: false; problems: string[] } {
  const r = deviceSpecSchema.safeParse(input)
  if (r.success) return { ok: true, spec: r.data }
  return { ok: false, problems: r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : 'device'}: ${i.message}`) }
}

export function protocolsOf(spec: DeviceSpec): string[] {
  const p: string[] = []
  if (spec.mqtt !== undefined || (spec.modbus === undefined && spec.opcua === undefined)) p.push('mqtt')
  if (spec.modbus) p.push('modbus')
  if (spec.opcua) p.push('opcua')
  return p
}
