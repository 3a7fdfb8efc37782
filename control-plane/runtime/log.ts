// pino: one root logger, a child per component. Secrets never reach a log
// line: bearer tokens, webhook secrets, broker and database passwords are
// redacted wherever they appear, and URLs are logged with their password
// masked (maskUrl).
import { pino, type DestinationStream, type Logger } from 'pino'

export const REDACT_PATHS = [
  'password',
  '*.password',
  'token',
  '*.token',
  'secret',
  '*.secret',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'req.headers.authorization',
  'privateKey',
  '*.privateKey',
]

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { name: 'edgewarden-cp' },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ dest: 1, sync: true }),
  )
}

/** A URL as it may be logged or printed: user info's password masked. */
export function maskUrl(url: string): string {
  try {
    const u = new URL(url)
    if (u.password) u.password = '***'
    return u.toString()
  } catch {
    return url.replace(/\/\/([^:/@]*):[^@/]*@/, '//$1:***@')
  }
}

export type { Logger }
