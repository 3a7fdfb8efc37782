// The constants of the wire contract (docs/PROTOCOL.md), in one place for
// both sides: the gateway (agent/, protocols/), the device side
// (firmware-hooks/), the simulators and the control plane. Imports nothing.

/** §3: the topic root of one gateway on the central broker. */
export const topicRoot = (site: string, gateway: string): string => `edgewarden/v1/${site}/${gateway}/`

/** §3: `exp - iat` of a command at most 30 days. */
export const MAX_COMMAND_LIFETIME_S = 30 * 24 * 3600

/** §3: the events that end a command's wait (cmd.duplicate with its state). */
export const TERMINAL_EVENTS: ReadonlySet<string> = new Set(['cmd.completed', 'cmd.failed', 'cmd.rejected', 'cmd.duplicate'])

/** §3: why a gateway refuses a command (`cmd.rejected` reason), in the order it checks. */
export const REJECT_REASONS = [
  'malformed',
  'bad-alg',
  'unknown-key',
  'bad-signature',
  'wrong-audience',
  'expired',
  'not-yet-valid',
  'lifetime-too-long',
  'unknown-op',
  'invalid-args',
  'unknown-device',
  'superseded',
] as const
export type RejectReason = (typeof REJECT_REASONS)[number]

/** §3/§4: why a verified command did not run (`cmd.failed` reason). */
export const FAIL_REASONS = ['illegal-transition', 'unknown-device', 'invalid-csr', 'duplicate-credential', 'not-supported', 'internal-error'] as const
export type FailReason = (typeof FAIL_REASONS)[number]

/** §4: the states of a device. */
export const DEVICE_STATES = ['active', 'quarantined', 'revoked', 'retiring', 'retired'] as const
export type DeviceState = (typeof DEVICE_STATES)[number]

/** §5: `exp - iat` of a device token at most 3600 s. */
export const MAX_TOKEN_LIFETIME_S = 3600

/** §5: what an action asks of a device. */
export const ACTS = ['wipe', 'reenroll', 'renew', 'install-cert', 'revoke-notice'] as const
export type Act = (typeof ACTS)[number]
export const isAct = (v: unknown): v is Act => typeof v === 'string' && (ACTS as readonly string[]).includes(v)

/** §5: how a device answers an action. */
export const ACK_STATUSES = ['done', 'failed', 'unsupported'] as const
export type AckStatus = (typeof ACK_STATUSES)[number]

/** §7: the hook registers start here by default (0xF000). */
export const DEFAULT_HOOK_BASE = 61440
/** §7: an envelope (the action's JWS) is at most this many bytes, as any JWS (§1). */
export const HOOK_ENVELOPE_MAX_BYTES = 16 * 1024
/** §7: registers from hookBase: cmd, actionSeq (2), status, envLen, then the envelope two bytes a register. */
export const HOOK_REGISTERS = 5 + Math.ceil(HOOK_ENVELOPE_MAX_BYTES / 2)
/** §7 register offsets from hookBase. */
export const HOOK_OFFSET = { cmd: 0, actionSeq: 1, status: 3, envLen: 4, envelope: 5 } as const
/** §7 `cmd`: the acts hook registers can carry (install-cert, §9, is not one of them). */
export const HOOK_CMD = { wipe: 1, reenroll: 2, renew: 3, 'revoke-notice': 4 } as const satisfies Partial<Record<Act, number>>
export type HookAct = keyof typeof HOOK_CMD
/** The §7 `cmd` of an act, or undefined where registers cannot carry it. */
export const hookCmd = (act: Act): number | undefined => (HOOK_CMD as Partial<Record<Act, number>>)[act]
/** §7 `status`. */
export const HOOK_STATUS = { idle: 0, working: 1, done: 2, failed: 3, unsupported: 4 } as const

/**
 * §7: the function codes the gateway's Modbus TCP proxy forwards to a
 * device; anything else it answers 0x01. 17 (Report Server ID) and 43 (only
 * MEI type 14, Read Device Identification) are read-only: what SCADA and
 * asset-inventory tools ask.
 */
export const MODBUS_FORWARDED_FUNCTIONS: ReadonlySet<number> = new Set([1, 2, 3, 4, 5, 6, 15, 16, 17, 22, 23, 43])

/** §8: the namespace of the `EdgeWarden` object and its `Execute` method. */
export const OPCUA_HOOK_NAMESPACE = 'urn:edgewarden:hooks'
