// The control plane's one typed configuration, from flags and EDGEWARDEN_CP_*
// variables (a flag wins). Every option is in OPTIONS with its default and
// what it does; docs/control-plane.md lists them from this table. Problems
// are collected and reported together, as one CP_CONFIG error.
import { hostname } from 'node:os'
import { resolve } from 'node:path'
import { isId } from '../../wire/ids.ts'
import { MAX_COMMAND_LIFETIME_S } from '../../wire/protocol.ts'
import { CpError } from './errors.ts'
import { maskUrl } from './log.ts'

type Kind = 'string' | 'int' | 'duration'

export interface OptionSpec {
  key: string
  flag: string
  type: Kind
  /** durations without a unit are in this unit */
  unit?: 's' | 'ms'
  default?: string | number
  secret?: true
  doc: string
}

export const OPTIONS: readonly OptionSpec[] = [
  { key: 'dataDir', flag: 'data-dir', type: 'string', default: './edgewarden-cp-data', doc: 'where the embedded PGlite database, the lock file and the first admin token live' },
  { key: 'database', flag: 'database', type: 'string', doc: 'postgres://user:pass@host/db for PostgreSQL (several instances may share it); unset: PGlite in <data-dir>/pglite' },
  { key: 'broker', flag: 'broker', type: 'string', doc: 'the central broker, mqtt:// or mqtts:// (required)' },
  { key: 'brokerUsername', flag: 'broker-username', type: 'string', doc: 'user name on the central broker' },
  { key: 'brokerPassword', flag: 'broker-password', type: 'string', secret: true, doc: 'password on the central broker (prefer EDGEWARDEN_CP_BROKER_PASSWORD)' },
  { key: 'brokerCa', flag: 'broker-ca', type: 'string', doc: 'PEM CA bundle that signs the central broker certificate (mqtts)' },
  { key: 'brokerCert', flag: 'broker-cert', type: 'string', doc: 'PEM client certificate for the central broker (mqtts)' },
  { key: 'brokerKey', flag: 'broker-key', type: 'string', doc: 'PEM private key of that client certificate' },
  { key: 'key', flag: 'key', type: 'string', doc: 'the control-plane signing key, PKCS#8 PEM Ed25519, mode 0600 (required; edgewarden ctl keygen makes one)' },
  { key: 'kid', flag: 'kid', type: 'string', doc: 'its key id, as pinned on the gateways (--cp-key KID=PUBKEY) (required)' },
  { key: 'iss', flag: 'iss', type: 'string', default: 'edgewarden-cp', doc: 'the iss claim of every command' },
  { key: 'httpHost', flag: 'http-host', type: 'string', default: '127.0.0.1', doc: 'address of the HTTP API, fleet page and /metrics' },
  { key: 'httpPort', flag: 'http-port', type: 'int', default: 8080, doc: 'its port (0: any free port, logged in the ready line)' },
  { key: 'instanceId', flag: 'instance-id', type: 'string', doc: 'this instance\'s name in logs, metrics and the fleet page (default: host name and process id)' },
  { key: 'window', flag: 'window', type: 'int', default: 200, doc: 'unanswered commands per gateway at most (PROTOCOL §3); keep it below the broker\'s per-client queue (Mosquitto max_queued_messages, 1000)' },
  { key: 'resendAfter', flag: 'resend-after', type: 'duration', unit: 's', default: 10, doc: 'first re-send of an unanswered command after this long (same jti); the delay doubles up to --resend-max' },
  { key: 'resendMax', flag: 'resend-max', type: 'duration', unit: 's', default: 60, doc: 'longest delay between re-sends' },
  { key: 'commandLifetime', flag: 'command-lifetime', type: 'duration', unit: 's', default: '30d', doc: 'exp - iat of each command (at most 30 days, PROTOCOL §3): how long an offline site may take to come back' },
  { key: 'intakeSlots', flag: 'intake-slots', type: 'int', default: 4, doc: 'MQTT sessions that share the event intake ($share/…); the instances divide them, a killed instance\'s are taken over' },
  { key: 'intakeMode', flag: 'intake-mode', type: 'string', default: 'shared', doc: 'shared: the event intake is a $share/<group>/… subscription the instances divide (Mosquitto 2, EMQX, HiveMQ); plain: one intake session with a plain subscription, for a broker without shared subscriptions (aedes), with --intake-slots 1' },
  { key: 'shareGroup', flag: 'share-group', type: 'string', default: 'edgewarden-cp', doc: 'the shared-subscription group and the prefix of the intake client ids' },
  { key: 'rollbackConfirm', flag: 'rollback-confirm', type: 'duration', unit: 's', default: 3, doc: 'a status whose seq or audit head went back is a rollback once no newer status has corrected it for this long' },
  { key: 'gapGrace', flag: 'gap-grace', type: 'duration', unit: 's', default: 30, doc: 'a missing event seq becomes a seq-gap alert after this long (events of one gateway may arrive out of order)' },
  { key: 'tick', flag: 'tick', type: 'duration', unit: 'ms', default: 250, doc: 'how often the re-send loop, webhook deliveries and the slot balance run' },
  { key: 'webhookTimeout', flag: 'webhook-timeout', type: 'duration', unit: 's', default: 10, doc: 'one webhook delivery attempt at most' },
  { key: 'webhookAttempts', flag: 'webhook-attempts', type: 'int', default: 12, doc: 'delivery attempts per webhook event (1 s, doubling, at most 1 h apart) before it is marked failed' },
  { key: 'logLevel', flag: 'log-level', type: 'string', default: 'info', doc: 'fatal, error, warn, info, debug, trace or silent' },
]

export interface CpConfig {
  dataDir: string
  database: { kind: 'pglite'; dir: string } | { kind: 'postgres'; url: string }
  broker: { url: string; username?: string; password?: string; caFile?: string; certFile?: string; keyFile?: string }
  keyFile: string
  kid: string
  iss: string
  http: { host: string; port: number }
  instanceId: string
  window: number
  resendAfterMs: number
  resendMaxMs: number
  commandLifetimeS: number
  intakeSlots: number
  intakeMode: 'shared' | 'plain'
  shareGroup: string
  rollbackConfirmMs: number
  gapGraceMs: number
  tickMs: number
  webhookTimeoutMs: number
  webhookAttempts: number
  logLevel: string
}

const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** "10", "1.5s", "250ms", "30d" to milliseconds (no unit: `unit`); null when it is not one. */
export function parseDuration(v: string | number, unit: 's' | 'ms'): number | null {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(String(v).trim())
  if (!m) return null
  const ms = Number(m[1]) * UNITS_MS[m[2] ?? unit]!
  return Number.isFinite(ms) ? Math.round(ms) : null
}

export const envName = (flag: string): string => `EDGEWARDEN_CP_${flag.toUpperCase().replace(/-/g, '_')}`

const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])

export function loadConfig(o: { flags: Record<string, string | undefined>; env?: NodeJS.ProcessEnv }): CpConfig {
  const env = o.env ?? process.env
  const problems: string[] = []
  const raw: Record<string, string | number | undefined> = {}
  for (const spec of OPTIONS) raw[spec.key] = o.flags[spec.flag] ?? (env[envName(spec.flag)] || undefined) ?? spec.default
  const known = new Set(OPTIONS.map((s) => s.flag))
  for (const f of Object.keys(o.flags)) if (!known.has(f) && o.flags[f] !== undefined) problems.push(`unknown option --${f}`)
  const str = (k: string): string | undefined => (raw[k] === undefined ? undefined : String(raw[k]))
  const int = (k: string, min: number, max: number): number => {
    const v = raw[k]
    const n = typeof v === 'number' ? v : /^\d+$/.test(String(v)) ? Number(v) : NaN
    const spec = OPTIONS.find((s) => s.key === k)!
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      problems.push(`--${spec.flag} must be a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`)
      return min
    }
    return n
  }
  const dur = (k: string, minMs: number, maxMs: number): number => {
    const spec = OPTIONS.find((s) => s.key === k)!
    const ms = parseDuration(raw[k]!, spec.unit ?? 's')
    if (ms === null || ms < minMs || ms > maxMs) {
      problems.push(`--${spec.flag} must be a duration from ${minMs} ms to ${maxMs / 1000} s (e.g. 10, 1.5s, 250ms, 30d), got ${JSON.stringify(raw[k])}`)
      return minMs
    }
    return ms
  }

  const dataDir = resolve(str('dataDir')!)
  let database: CpConfig['database'] = { kind: 'pglite', dir: resolve(dataDir, 'pglite') }
  const dbUrl = str('database')
  if (dbUrl !== undefined) {
    let u: URL | null = null
    try {
      u = new URL(dbUrl)
    } catch {}
    if (!u || !['postgres:', 'postgresql:'].includes(u.protocol)) problems.push(`--database "${maskUrl(dbUrl)}" is not a postgres:// URL`)
    else database = { kind: 'postgres', url: dbUrl }
  }
  const brokerUrl = str('broker')
  if (brokerUrl === undefined) problems.push('--broker is required (the central broker, mqtt://host:1883 or mqtts://…)')
  else {
    let u: URL | null = null
    try {
      u = new URL(brokerUrl)
    } catch {}
    if (!u || !['mqtt:', 'mqtts:'].includes(u.protocol)) problems.push(`--broker "${maskUrl(brokerUrl)}" is not an mqtt:// or mqtts:// URL`)
  }
  if ((str('brokerCert') === undefined) !== (str('brokerKey') === undefined)) problems.push('--broker-cert and --broker-key go together')
  const keyFile = str('key')
  if (keyFile === undefined) problems.push('--key is required (the control-plane signing key; edgewarden ctl keygen --out cp.key makes one)')
  const kid = str('kid')
  if (kid === undefined) problems.push('--kid is required (the key id the gateways pin: --cp-key KID=PUBKEY)')
  else if (!isId(kid)) problems.push(`--kid "${kid}" is not an identifier (PROTOCOL §1: [A-Za-z0-9][A-Za-z0-9._:-]{0,63})`)
  const iss = str('iss')!
  if (!isId(iss)) problems.push(`--iss "${iss}" is not an identifier`)
  const shareGroup = str('shareGroup')!
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(shareGroup)) problems.push(`--share-group "${shareGroup}" must be 1 to 32 of [A-Za-z0-9_-] (it names a topic level and client ids)`)
  const instanceId = str('instanceId') ?? `${hostname()}-${process.pid}`
  if (!/^[A-Za-z0-9._:-]{1,64}$/.test(instanceId)) problems.push(`--instance-id "${instanceId}" must be 1 to 64 of [A-Za-z0-9._:-]`)
  const intakeMode = str('intakeMode')!
  if (intakeMode !== 'shared' && intakeMode !== 'plain') problems.push(`--intake-mode must be shared or plain, got ${JSON.stringify(intakeMode)}`)
  const logLevel = str('logLevel')!
  if (!LEVELS.has(logLevel)) problems.push(`--log-level must be one of ${[...LEVELS].join(', ')}`)

  const window = int('window', 1, 100_000)
  const httpPort = int('httpPort', 0, 65535)
  const intakeSlots = int('intakeSlots', 1, 64)
  // A plain subscription in each of several sessions would take every event once per session.
  if (intakeMode === 'plain' && intakeSlots !== 1 && o.flags['intake-slots'] !== undefined) problems.push('--intake-mode plain takes --intake-slots 1 (one session takes every event)')
  const webhookAttempts = int('webhookAttempts', 1, 100)
  const resendAfterMs = dur('resendAfter', 50, 24 * 3_600_000)
  const resendMaxMs = dur('resendMax', 50, 24 * 3_600_000)
  if (resendMaxMs < resendAfterMs) problems.push('--resend-max must be at least --resend-after')
  const lifetimeMs = dur('commandLifetime', 60_000, MAX_COMMAND_LIFETIME_S * 1000)
  const rollbackConfirmMs = dur('rollbackConfirm', 0, 3_600_000)
  const gapGraceMs = dur('gapGrace', 0, 24 * 3_600_000)
  const tickMs = dur('tick', 10, 60_000)
  const webhookTimeoutMs = dur('webhookTimeout', 100, 300_000)

  if (problems.length) throw new CpError('CP_CONFIG', problems.length === 1 ? problems[0]! : `configuration problems:\n  ${problems.join('\n  ')}`)
  const password = str('brokerPassword')
  return {
    dataDir,
    database,
    broker: {
      url: brokerUrl!,
      ...(str('brokerUsername') !== undefined ? { username: str('brokerUsername')! } : {}),
      ...(password !== undefined ? { password } : {}),
      ...(str('brokerCa') !== undefined ? { caFile: resolve(str('brokerCa')!) } : {}),
      ...(str('brokerCert') !== undefined ? { certFile: resolve(str('brokerCert')!), keyFile: resolve(str('brokerKey')!) } : {}),
    },
    keyFile: resolve(keyFile!),
    kid: kid!,
    iss,
    http: { host: str('httpHost')!, port: httpPort },
    instanceId,
    window,
    resendAfterMs,
    resendMaxMs,
    commandLifetimeS: Math.floor(lifetimeMs / 1000),
    intakeSlots: intakeMode === 'plain' ? 1 : intakeSlots,
    intakeMode: intakeMode as CpConfig['intakeMode'],
    shareGroup,
    rollbackConfirmMs,
    gapGraceMs,
    tickMs,
    webhookTimeoutMs,
    webhookAttempts,
    logLevel,
  }
}

/** The configuration as it may be logged: no secrets. */
export function describeConfig(c: CpConfig): Record<string, unknown> {
  return {
    dataDir: c.dataDir,
    database: c.database.kind === 'postgres' ? maskUrl(c.database.url) : `pglite:${c.database.dir}`,
    broker: maskUrl(c.broker.url),
    kid: c.kid,
    instanceId: c.instanceId,
    window: c.window,
    intakeSlots: c.intakeSlots,
    intakeMode: c.intakeMode,
  }
}
