// One registry of the control plane's error codes. A code is stable (API
// clients and scripts match on it); its message may change. Every API error
// answers {"error":{"code","message"}} with the HTTP status listed here.

export const CP_ERRORS = {
  CP_CONFIG: { status: 500, doc: 'the configuration is invalid (flags, environment, key file)' },
  CP_DATA_DIR_LOCKED: { status: 500, doc: 'another control-plane process uses this data dir (PGlite is one process)' },
  CP_DATABASE: { status: 503, doc: 'the database cannot be reached or refused a statement' },
  CP_BAD_REQUEST: { status: 400, doc: 'the request body or a parameter is malformed or invalid; nothing was changed' },
  CP_UNAUTHORIZED: { status: 401, doc: 'no bearer token, or a token that is unknown or revoked' },
  CP_FORBIDDEN: { status: 403, doc: 'the token lacks the scope this request needs' },
  CP_NOT_FOUND: { status: 404, doc: 'no such resource' },
  CP_UNKNOWN_DEVICE: { status: 404, doc: 'a device id the control plane has never seen on any gateway (give site and gateway to enroll it)' },
  CP_UNKNOWN_GATEWAY: { status: 404, doc: 'a site/gateway that is not registered' },
  CP_CONFLICT: { status: 409, doc: 'the resource exists with other values (a gateway pinned with another key)' },
  CP_IDEMPOTENCY_MISMATCH: { status: 422, doc: 'an Idempotency-Key reused with another request' },
  CP_METHOD: { status: 405, doc: 'method not allowed on this path' },
  CP_TOO_LARGE: { status: 413, doc: 'the request body is over 1 MiB' },
  CP_HOST: { status: 403, doc: 'on a loopback listener, a Host header that is not loopback (DNS rebinding)' },
  CP_NOT_LEADER: { status: 503, doc: 'internal: this instance does not hold the re-send loop' },
} as const

export type CpErrorCode = keyof typeof CP_ERRORS

export class CpError extends Error {
  readonly code: CpErrorCode
  readonly status: number
  /** extra machine-readable detail for the API answer (e.g. the unknown ids) */
  readonly detail: Record<string, unknown> | undefined
  constructor(code: CpErrorCode, message: string, opts: { cause?: unknown; detail?: Record<string, unknown> } = {}) {
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined)
    this.name = 'CpError'
    this.code = code
    this.status = CP_ERRORS[code].status
    this.detail = opts.detail
  }
}

export const isCpError = (err: unknown, code?: CpErrorCode): err is CpError => err instanceof CpError && (code === undefined || err.code === code)

/** A bad request: nothing changed. */
export const badRequest = (message: string, detail?: Record<string, unknown>): CpError => new CpError('CP_BAD_REQUEST', message, detail ? { detail } : {})
