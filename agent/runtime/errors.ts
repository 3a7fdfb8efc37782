// One registry of stable error codes (fastify's habit): callers branch on
// `code`, never on the message, which may change.
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
  JWS_MALFORMED: 'not a well-formed JWS',
  JWS_BAD_ALG: 'JWS algorithm not accepted',
  JWS_UNKNOWN_KEY: 'JWS key id not known',
  JWS_BAD_SIGNATURE: 'JWS signature does not verify',
  AUDIT_BROKEN: 'audit log does not verify',
  ADMIN_UNAVAILABLE: 'the agent admin socket cannot be reached',
  ADMIN_REQUEST: 'admin request refused',
  USAGE: 'command line usage error',
  QUARANTINE_UNAVAILABLE: 'the network quarantine backend cannot be used here (root and nft needed)',
  QUARANTINE_FAILED: 'a network quarantine rule could not be applied',
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
