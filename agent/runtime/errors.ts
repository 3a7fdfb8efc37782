// One registry of stable error codes (fastify's habit): callers branch on
// `code`, never on the message, which may change. Every error the agent and
// its protocols raise on purpose is an EdgewardenError with one of these
// codes (a programmer's mistake is a plain TypeError); docs/errors.md lists
// them and a test keeps the two in step. The device side (firmware-hooks/,
// wire/) has errors of its own: it never imports the agent.
export const ErrorCodes = {
  CONFIG_INVALID: 'config is invalid',
  KEY_FILE: 'key file cannot be used',
  STORE_LOCKED: 'data dir is in use by another agent',
  STORE_OPEN: 'store cannot be opened',
  PORT_IN_USE: 'a port the agent listens on is taken',
  PORT_DENIED: 'a port the agent listens on may not be bound by this user',
  ILLEGAL_TRANSITION: 'state transition not allowed',
  UNKNOWN_DEVICE: 'no such device',
  INVALID_DEVICE: 'device record is invalid',
  UNKNOWN_ACTION: 'no such action is pending for the device',
  DEVICE_EXISTS: 'a device of that id is enrolled already (the admin socket replaces it only when asked to)',
  DUPLICATE_CREDENTIAL: 'a credential (token key, certificate, its key or request, password hash, bootstrap secret) that another device already holds',
  STORE_SCHEMA: 'the store was written by a newer version of the agent (or its schema record is unreadable)',
  ADMIN_UNAVAILABLE: 'the agent admin socket cannot be reached',
  ADMIN_REQUEST: 'admin request refused',
  USAGE: 'command line usage error',
  QUARANTINE_UNAVAILABLE: 'the network quarantine backend cannot be used here (root and nft needed)',
  QUARANTINE_FAILED: 'a network quarantine rule could not be applied',
  PKI: 'the site CA or a certificate file cannot be used',
  CSR_INVALID: 'a certificate request is malformed, not signed by its key, or for a key type not issued for',
  COMMAND_FAILED: 'a verified command could not run (answered cmd.failed with its reason)',
  MODBUS_LINK: 'a Modbus device did not answer a request of the gateway (closed, unreachable, timeout, bad answer, busy)',
  MODBUS_REFUSED: 'a Modbus device answered a request of the gateway with an exception',
} as const

export type ErrorCode = keyof typeof ErrorCodes

export class EdgewardenError extends Error {
  readonly code: ErrorCode
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'EdgewardenError'
    this.code = code
  }
}

export class ConfigError extends EdgewardenError {
  readonly problems: readonly string[]
  constructor(problems: readonly string[]) {
    super('CONFIG_INVALID', `invalid configuration:\n  - ${problems.join('\n  - ')}`)
    this.name = 'ConfigError'
    this.problems = problems
  }
}

export class IllegalTransitionError extends EdgewardenError {
  readonly from: string | null
  readonly to: string
  constructor(deviceId: string, from: string | null, to: string, cause: string) {
    super('ILLEGAL_TRANSITION', `device ${deviceId}: ${cause} cannot move it from ${from ?? '(not enrolled)'} to ${to}`)
    this.name = 'IllegalTransitionError'
    this.from = from
    this.to = to
  }
}

export function isEdgewardenError(err: unknown, code?: ErrorCode): err is EdgewardenError {
  return err instanceof EdgewardenError && (code === undefined || err.code === code)
}
