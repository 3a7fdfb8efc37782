// The Device record of PROTOCOL §3, validated once at the edge (command args,
// admin API) into a typed DeviceSpec, and the stored DeviceRecord around it.
import { isIP } from 'node:net'
import type { z as Zod } from 'zod'
import { zod } from '../runtime/zod.ts'
import { ID_PATTERN } from '../../wire/ids.ts'
import { rawPublicKey } from '../store/keys.ts'
import { DEVICE_STATES, type DeviceState } from '../../wire/protocol.ts'

export { DEVICE_STATES, type DeviceState }
export const CRITICALITIES = ['low', 'medium', 'high', 'safety'] as const
export type Criticality = (typeof CRITICALITIES)[number]

export const CREDENTIAL_KINDS = ['publicKey', 'x509', 'password'] as const
export type CredentialKind = (typeof CREDENTIAL_KINDS)[number]

/** The schema of a device spec (PROTOCOL §3), built on first use (runtime/zod.ts). */
function buildDeviceSpecSchema(z: typeof Zod) {
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

  const sha256Hex = z.string().regex(/^[0-9a-fA-F]{64}$/, 'must be 64 hex digits (a SHA-256)').transform((h) => h.toLowerCase())
  /** PROTOCOL §3 `x509`: a request for the gateway to sign, a one-time EST bootstrap secret, or a certificate of another CA the site trusts, pinned. */
  const x509Credential = z.union([
    z.object({ csr: z.string().min(16).max(16_384).regex(/^[A-Za-z0-9_-]+$/, 'must be base64url of a DER PKCS#10 request') }).strict(),
    z.object({ bootstrapSecretSha256: sha256Hex }).strict(),
    z.object({ certificateSha256: sha256Hex }).strict(),
  ])
  /** PROTOCOL §3 `password`: a PHC-format scrypt hash; the gateway never holds the password itself. */
  const passwordHash = z.string().max(512).regex(/^\$scrypt\$ln=\d{1,2},r=\d{1,2},p=\d{1,2}\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}$/, 'must be a PHC scrypt hash $scrypt$ln=…,r=…,p=…$salt$hash')

  return z
    .object({
      id: z.string().regex(ID_PATTERN, 'must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
      publicKey: publicKey.optional(),
      x509: x509Credential.optional(),
      password: passwordHash.optional(),
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
          // PROTOCOL §8: the device's server does OPC UA Part 12 push management; `renew` rotates its application certificate through the site CA
          pushManagement: z.boolean().optional(),
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
    .refine((d) => CREDENTIAL_KINDS.filter((k) => d[k] !== undefined).length === 1, {
      message: 'a device has exactly one credential: publicKey, x509 or password (PROTOCOL §3)',
    })
}
let deviceSpecSchema: ReturnType<typeof buildDeviceSpecSchema> | undefined

export type DeviceSpec = Zod.infer<ReturnType<typeof buildDeviceSpecSchema>>

/** A key the device may sign with, and when (seconds since the epoch). */
export interface DeviceKey {
  publicKey: string
  notBefore: number
  /** null: valid until replaced */
  notAfter: number | null
}

/** The kind of credential a device authenticates with (PROTOCOL §3). */
export function credentialKind(spec: DeviceSpec): CredentialKind {
  return spec.x509 !== undefined ? 'x509' : spec.password !== undefined ? 'password' : 'publicKey'
}

/** A certificate of a device, as the gateway records it (PROTOCOL §9). */
export interface CertificateRecord {
  /** lowercase hex ('' for a pinned certificate of another CA not yet seen) */
  serial: string
  /** hex SHA-256 of the DER: what identifies it on a TLS connection */
  sha256: string
  /** seconds since the epoch (0: not yet known) */
  notBefore: number
  notAfter: number
  /** `site`: issued by the site CA; `external`: another CA's, pinned by sha256 */
  issuer: 'site' | 'external'
  /** the issuer's name, for an external one (once seen) */
  issuerName?: string
  /** `current`, or `previous` (the one it replaces, valid beside it during the overlap, §9) */
  role: 'current' | 'previous'
  /** how it was issued (`certificate.issued` via) */
  via?: string
  /** the renewal action that installed it (push management): a redelivery of that action finds it done */
  actionId?: string
  /** PEM, for a site-issued certificate: the key an x509 device signs its acks with, and what install-cert carries */
  pem?: string
  /** set once on the CRL (or, for an external one, refused for good) */
  revoked?: { reason: 'keyCompromise' | 'cessationOfOperation' | 'superseded'; at: number }
  /** on the CRL as certificateHold while the device is quarantined */
  held?: boolean
}

export interface DeviceRecord {
  spec: DeviceSpec
  state: DeviceState
  /** token keys (credential kind `publicKey`); empty for other kinds */
  keys: DeviceKey[]
  /** certificates (credential kind `x509`), newest first */
  certificates?: CertificateRecord[]
  /** an EST bootstrap secret (its SHA-256), spent by the first enrollment */
  bootstrap?: { secretSha256: string; spentAt?: number }
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
  const r = (deviceSpecSchema ??= buildDeviceSpecSchema(zod())).safeParse(input)
  if (r.success) return { ok: true, spec: r.data }
  return { ok: false, problems: r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : 'device'}: ${i.message}`) }
}

/** Whether the device speaks MQTT: said so, or nothing else said (a device with no protocol section is an MQTT device). */
export const speaksMqtt = (spec: DeviceSpec): boolean => spec.mqtt !== undefined || (spec.modbus === undefined && spec.opcua === undefined)

export function protocolsOf(spec: DeviceSpec): string[] {
  const p: string[] = []
  if (speaksMqtt(spec)) p.push('mqtt')
  if (spec.modbus) p.push('modbus')
  if (spec.opcua) p.push('opcua')
  return p
}
