// Every option is declared once, below: its flag, environment variable,
// config-file key, type, default and meaning. The CLI parser, the env
// reader, the validator and docs/configuration.md all come from this table.
// Precedence: defaults < config file < EDGEWARDEN_* environment < flags.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { hostname } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'
import { ID_PATTERN } from '../../wire/ids.ts'
import { CRITICALITIES, type Criticality } from '../devices/device.ts'
import { ConfigError } from './errors.ts'
import { rawPublicKey } from '../store/keys.ts'

/** The YAML parser, loaded when a YAML config file is read (most starts have none: ~20 ms saved). */
const parseYaml = (text: string): unknown => (createRequire(import.meta.url)('yaml') as typeof import('yaml')).parse(text)

type OptionType = 'string' | 'int' | 'port' | 'port-or-off' | 'enum' | 'list' | 'id'

export interface OptionSpec {
  key: string
  flag: string
  type: OptionType
  values?: readonly string[]
  default?: string | number | (() => string)
  doc: string
  /** never printed in full (passwords) */
  secret?: boolean
  /** smallest value an int accepts */
  min?: number
}

const defaultGateway = (): string => {
  const h = hostname().replace(/[^A-Za-z0-9._:-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 64)
  return ID_PATTERN.test(h) ? h : 'gateway'
}

export const OPTIONS: readonly OptionSpec[] = [
  { key: 'config', flag: 'config', type: 'string', doc: 'YAML or JSON file holding any of these options (by their config-file key)' },
  { key: 'dataDir', flag: 'data-dir', type: 'string', default: './edgewarden-data', doc: 'where the store, the gateway key and the admin socket live' },
  { key: 'site', flag: 'site', type: 'id', default: 'default', doc: 'site id (PROTOCOL §1 identifier)' },
  { key: 'gateway', flag: 'gateway', type: 'id', default: defaultGateway, doc: "gateway id; defaults to the host name" },
  { key: 'key', flag: 'key', type: 'string', doc: 'gateway private key (PKCS#8 PEM, mode 0600); default <data-dir>/gateway.key, created on first start' },
  { key: 'mqttHost', flag: 'mqtt-host', type: 'string', default: '0.0.0.0', doc: 'address the site MQTT broker listens on' },
  { key: 'mqttPort', flag: 'mqtt-port', type: 'port-or-off', default: 1883, doc: 'plain MQTT port of the site broker (0: pick a free port; off: no plain listener, devices use the TLS one)' },
  { key: 'mqttsPort', flag: 'mqtts-port', type: 'port', doc: 'MQTT over TLS port of the site broker: tokens, and client certificates of the site CA (PROTOCOL §5); its server certificate is tlsCert/tlsKey, or one the site CA issues' },
  { key: 'tlsCert', flag: 'tls-cert', type: 'string', doc: 'PEM certificate (chain) for the TLS listeners; without it the site CA issues one (SANs from tlsSan)' },
  { key: 'tlsKey', flag: 'tls-key', type: 'string', doc: 'PEM private key of tlsCert' },
  { key: 'tlsSan', flag: 'tls-san', type: 'list', default: 'localhost,127.0.0.1', doc: 'DNS names and IP addresses of the gateway in the server certificate the site CA issues for the TLS listeners' },
  { key: 'caCert', flag: 'ca-cert', type: 'string', doc: "PEM certificate (chain, the intermediate first) of an enterprise intermediate CA to issue device certificates with, instead of the site CA made in <data-dir>/pki (PROTOCOL §9)" },
  { key: 'caKey', flag: 'ca-key', type: 'string', doc: 'ECDSA P-256 private key of caCert (PEM, mode 0600)' },
  { key: 'deviceCa', flag: 'device-ca', type: 'list', doc: "PEM file of another CA whose device certificates are admitted when pinned on a device record (x509.certificateSha256): a manufacturer's or the enterprise's issuing CA; repeat for several" },
  { key: 'estPort', flag: 'est-port', type: 'port', doc: 'HTTPS port of the EST server (RFC 7030: cacerts, simpleenroll, simplereenroll) and of /pki/crl, /pki/ca; off when unset (0: pick a free port)' },
  { key: 'estHost', flag: 'est-host', type: 'string', default: '0.0.0.0', doc: 'address of the EST server' },
  {
    key: 'certLifetime',
    flag: 'cert-lifetime',
    type: 'list',
    default: 'safety=7776000,high=7776000,medium=15552000,low=31536000',
    doc: 'lifetime of a device certificate the site CA issues, by criticality (CRITICALITY=SECONDS): 90 days for safety and high, 180 for medium, 365 for low',
  },
  { key: 'modbusPort', flag: 'modbus-port', type: 'port', doc: 'port of the Modbus TCP proxy for SCADA and HMI clients; the proxy runs only when this is set (0: pick a free port)' },
  { key: 'modbusHost', flag: 'modbus-host', type: 'string', default: '0.0.0.0', doc: 'address the Modbus TCP proxy listens on' },
  { key: 'modbusTimeoutMs', flag: 'modbus-timeout', type: 'int', default: 1000, doc: 'how long the proxy and the hook relay wait for a Modbus device to answer, milliseconds' },
  { key: 'modbusMaxClients', flag: 'modbus-max-clients', type: 'int', default: 128, min: 1, doc: 'connections the Modbus proxy holds at once; when full, a new one takes the place of the longest-idle connection no device has answered yet, else of the longest-idle one of the address holding the most connections (when it would still hold more than the newcomer\'s), else it is refused' },
  { key: 'modbusMaxClientsPerAddress', flag: 'modbus-max-clients-per-address', type: 'int', default: 32, min: 1, doc: 'connections to the Modbus proxy at once from one source address (an IPv6 source by its /64); more are refused' },
  { key: 'modbusIdleTimeoutMs', flag: 'modbus-idle-timeout', type: 'int', default: 120000, min: 100, doc: 'a Modbus proxy connection that sends nothing, has no answer to read and none awaited for this long is closed, milliseconds' },
  { key: 'quarantine', flag: 'quarantine', type: 'enum', values: ['none', 'nftables'], default: 'none', doc: 'network quarantine backend: none (applies nothing, says so in every evidence) or nftables (needs root and nft)' },
  { key: 'httpPort', flag: 'http-port', type: 'port', doc: 'port of the HTTP endpoint (Prometheus /metrics, /healthz, /readyz, status page); off when unset (0: pick a free port)' },
  { key: 'httpHost', flag: 'http-host', type: 'string', default: '127.0.0.1', doc: 'address of the HTTP endpoint (localhost by default: put a reverse proxy in front to expose it)' },
  { key: 'authFailuresPerClient', flag: 'auth-failures-per-client', type: 'int', default: 10, min: 1, doc: 'failed connects with a token naming one client id per authThrottleWindowS before that id is blocked for authBlockS (blocked: garbage refused unparsed, a valid token still admitted)' },
  { key: 'authFailuresPerAddress', flag: 'auth-failures-per-address', type: 'int', default: 100, min: 1, doc: 'failed connects per source address (IPv6: per /64) per authThrottleWindowS before that address is blocked for authBlockS (blocked: garbage refused unparsed, a valid token still admitted)' },
  { key: 'authThrottleWindowS', flag: 'auth-throttle-window', type: 'int', default: 60, min: 1, doc: 'window over which failed connects are counted, seconds' },
  { key: 'authBlockS', flag: 'auth-block', type: 'int', default: 60, doc: 'how long a client id or address stays blocked, seconds' },
  { key: 'sessionQueueMessages', flag: 'session-queue-messages', type: 'int', default: 1000, min: 1, doc: 'QoS 1/2 messages the site broker holds for one client at most (its stored session while offline, and those not yet acknowledged); more are not kept for it, as Mosquitto\'s max_queued_messages' },
  { key: 'sessionQueueBytes', flag: 'session-queue-bytes', type: 'int', default: 8388608, min: 65536, doc: 'payload bytes the site broker holds for one client at most (with sessionQueueMessages)' },
  { key: 'cryptoWorkers', flag: 'crypto-workers', type: 'int', min: 0, doc: "worker threads that check device signatures (tokens, acks) and sign events off the site broker's event loop; default: one less than the machine's cores, at most 4 (0: everything on the event loop)" },
  { key: 'admissionConcurrency', flag: 'admission-concurrency', type: 'int', default: 512, min: 1, doc: 'device connects whose signature (or password) and token jti are being checked and written at once; the rest wait their turn in arrival order' },
  { key: 'admissionMaxWaitMs', flag: 'admission-max-wait', type: 'int', default: 10000, min: 0, doc: 'once the oldest waiting connect has waited this long, a new one is refused at once (MQTT CONNACK 3, server unavailable) so the device retries instead of timing out; acks and action deliveries that have waited this long for the connects take every other turn, milliseconds' },
  { key: 'listenBacklog', flag: 'listen-backlog', type: 'int', default: 4096, min: 1, doc: "connections each MQTT listener (plain and TLS) holds until the broker takes them; beyond it the kernel drops a connect and the device waits for its own retransmits (on Linux 1, 3, 7 s ... after its first try) or is reset, as when a site's devices all reconnect after a power cut. Linux caps it at net.core.somaxconn (a warning at start says so)" },
  { key: 'connectTimeoutMs', flag: 'connect-timeout', type: 'int', default: 10000, min: 100, doc: 'a connection that has not completed MQTT CONNECT by then is closed (half-open connections), milliseconds; over TLS, also one that has not finished its handshake by then' },
  { key: 'maxPacketBytes', flag: 'max-packet-bytes', type: 'int', default: 65536, min: 1024, doc: 'largest MQTT packet the site broker accepts from a device, bytes' },
  { key: 'uplink', flag: 'uplink', type: 'string', doc: 'central broker URL (mqtt:// or mqtts://); without it the agent runs standalone' },
  { key: 'uplinkUsername', flag: 'uplink-username', type: 'string', doc: 'user name on the central broker' },
  { key: 'uplinkPassword', flag: 'uplink-password', type: 'string', secret: true, doc: 'password on the central broker (prefer the config file or EDGEWARDEN_UPLINK_PASSWORD)' },
  { key: 'uplinkCa', flag: 'uplink-ca', type: 'string', doc: 'PEM CA bundle that signs the central broker certificate (mqtts)' },
  { key: 'uplinkCert', flag: 'uplink-cert', type: 'string', doc: 'PEM client certificate for the central broker (mqtts)' },
  { key: 'uplinkKey', flag: 'uplink-key', type: 'string', doc: 'PEM private key of the client certificate (mqtts)' },
  { key: 'uplinkBackoffMinMs', flag: 'uplink-backoff-min', type: 'int', default: 500, doc: 'first delay before reconnecting to the central broker, milliseconds; it doubles per failed attempt (with jitter) up to uplinkBackoffMaxMs' },
  { key: 'uplinkBackoffMaxMs', flag: 'uplink-backoff-max', type: 'int', default: 30000, doc: 'longest delay between reconnect attempts to the central broker, milliseconds' },
  { key: 'cpKey', flag: 'cp-key', type: 'list', doc: 'pinned control-plane key KID=PUBKEY; repeat (or comma-separate) to pin several for rotation' },
  { key: 'outboxMax', flag: 'outbox-max', type: 'int', default: 100000, doc: 'events kept for the control plane while the uplink is down; see docs/configuration.md for what happens at the bound' },
  { key: 'rejectReportIntervalS', flag: 'reject-report-interval', type: 'int', default: 10, min: 1, doc: 'messages on the command topic without a valid signature: the first 10 of each such interval are answered one by one, the rest in one cmd.rejected with a count at its end, seconds' },
  { key: 'residualAlertIntervalS', flag: 'residual-alert-interval', type: 'int', default: 60, doc: 'at most one alert.residual-use event per device per this many seconds; the rest are counted into the next one' },
  { key: 'credentialLifetimeS', flag: 'credential-lifetime', type: 'int', default: 31536000, doc: 'lifetime given to a device credential at enrollment or renewal when none is named, seconds (365 days)' },
  { key: 'renewGraceS', flag: 'renew-grace', type: 'int', default: 2592000, doc: 'how long after its credential expired a device may still connect renew-only, seconds (30 days)' },
  { key: 'renewOverlapS', flag: 'renew-overlap', type: 'int', default: 604800, doc: 'after a renewal, how long the old device key stays valid beside the new one, seconds (7 days)' },
  {
    key: 'renewAt',
    flag: 'renew-at',
    type: 'list',
    default: 'safety=0.3,high=0.3,medium=0.2,low=0.1',
    doc: 'renew a credential on its own when this fraction of its lifetime is left, by criticality (CRITICALITY=FRACTION)',
  },
  { key: 'clockSkewS', flag: 'clock-skew', type: 'int', default: 300, doc: 'clock skew tolerated on iat/exp, seconds (PROTOCOL §1)' },
  { key: 'logLevel', flag: 'log-level', type: 'enum', values: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info', doc: 'log level' },
]

export interface AgentConfig {
  dataDir: string
  site: string
  gateway: string
  keyFile: string
  /** port null: no plain listener (`off`); tls: the TLS listener, its certificate from files or (null) issued by the site CA */
  mqtt: { host: string; port: number | null; tls: { port: number } | null }
  /** the site PKI (PROTOCOL §9) */
  pki: {
    caCertFile: string | null
    caKeyFile: string | null
    deviceCaFiles: string[]
    tlsSans: string[]
    /** tlsCert/tlsKey, for every TLS listener (mqtts, EST); null: the site CA issues the server certificate */
    tlsFiles: { certFile: string; keyFile: string } | null
    /** the EST server (HTTPS), when configured */
    est: { host: string; port: number } | null
    /** lifetime of an issued device certificate, by criticality, seconds */
    certLifetimeS: Record<Criticality, number>
  }
  /** the Modbus TCP proxy, when configured */
  modbus: { host: string; port: number } | null
  modbusTimeoutMs: number
  /** admission and idle bounds of the Modbus proxy's client connections */
  modbusClients: { maxClients: number; maxClientsPerAddress: number; idleTimeoutMs: number }
  quarantine: 'none' | 'nftables'
  /** the HTTP endpoint (metrics, health, status page), when configured */
  http: { host: string; port: number } | null
  authThrottle: { perClient: number; perAddress: number; windowS: number; blockS: number }
  connectTimeoutMs: number
  /** pending connections each MQTT listener holds (listen(2) backlog) */
  listenBacklog: number
  /** crypto worker threads; null: sized to the machine */
  cryptoWorkers: number | null
  admissionConcurrency: number
  admissionMaxWaitMs: number
  /** what the site broker holds for one client at most */
  sessionQueue: { messages: number; bytes: number }
  maxPacketBytes: number
  uplink: {
    url: string
    username?: string
    password?: string
    caFile?: string
    certFile?: string
    keyFile?: string
  } | null
  /** reconnect delays to the central broker: exponential from minMs, capped at maxMs, jittered */
  uplinkBackoff: { minMs: number; maxMs: number }
  /** pinned control-plane keys: kid -> base64url public key */
  cpKeys: Record<string, string>
  outboxMax: number
  residualAlertIntervalS: number
  rejectReportIntervalS: number
  credentialLifetimeS: number
  renewGraceS: number
  renewOverlapS: number
  /** fraction of the credential lifetime left at which a renewal is queued, by criticality */
  renewAt: Record<Criticality, number>
  clockSkewS: number
  logLevel: string
}

const byKey = new Map(OPTIONS.map((o) => [o.key, o]))
const envName = (o: OptionSpec): string => `EDGEWARDEN_${o.flag.toUpperCase().replace(/-/g, '_')}`

type Raw = Record<string, { value: unknown; from: string }>

/** Read the config file named by --config / EDGEWARDEN_CONFIG; problems are collected, not thrown. */
function readConfigFile(path: string, problems: string[]): Raw {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    problems.push(`config file ${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : (err as Error).message}`)
    return {}
  }
  let doc: unknown
  try {
    doc = /\.json$/i.test(path) ? JSON.parse(text) : parseYaml(text)
  } catch (err) {
    problems.push(`config file ${path}: not valid ${/\.json$/i.test(path) ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`)
    return {}
  }
  if (doc === null || doc === undefined) return {}
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    problems.push(`config file ${path}: must be a mapping of option names to values`)
    return {}
  }
  const raw: Raw = {}
  for (const [k, v] of Object.entries(doc as Record<string, unknown>)) {
    if (!byKey.has(k) || k === 'config') {
      problems.push(`config file ${path}: unknown option "${k}"`)
      continue
    }
    raw[k] = { value: v, from: `${path}: ${k}` }
  }
  return raw
}

/**
 * A URL's user name and password as `[redacted]`: everything between the
 * scheme's `//` (or the start, when there is none) and the last `@`, so a
 * malformed URL is covered too. Over-redacting a path with an `@` in a
 * problem message costs less than printing a password.
 */
export function redactUserinfo(s: string): string {
  const at = s.lastIndexOf('@')
  if (at < 0) return s
  const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.exec(s)?.[0] ?? ''
  const start = scheme.length <= at ? scheme.length : 0
  return `${s.slice(0, start)}[redacted]${s.slice(at)}`
}

/** A value as a problem message may show it: never a secret option's value, never a URL's credentials. */
function shown(o: OptionSpec, value: unknown): string {
  if (o.secret) return '(secret, not shown)'
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'string' ? redactUserinfo(v) : v)) ?? String(value)
}

function coerce(o: OptionSpec, value: unknown, from: string, problems: string[]): unknown {
  const bad = (what: string): undefined => {
    problems.push(`${o.key} (from ${from}): ${shown(o, value)} ${what}`)
    return undefined
  }
  switch (o.type) {
    case 'port-or-off':
    case 'int':
    case 'port': {
      if (o.type === 'port-or-off' && value === 'off') return 'off'
      const n = typeof value === 'string' && /^\d+$/.test(value.trim()) ? Number(value) : value
      if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) return bad('is not a whole number')
      if ((o.type === 'port' || o.type === 'port-or-off') && n > 65535) return bad(`is not a port (0-65535${o.type === 'port-or-off' ? ', or off' : ''})`)
      if (o.min !== undefined && n < o.min) return bad(`is below ${o.min}`)
      return n
    }
    case 'enum':
      if (typeof value !== 'string' || !o.values!.includes(value)) return bad(`is not one of ${o.values!.join(', ')}`)
      return value
    case 'id':
      if (typeof value !== 'string' || !ID_PATTERN.test(value)) return bad('is not an identifier (letters, digits, . _ : -; at most 64)')
      return value
    case 'list': {
      const list = typeof value === 'string' ? value.split(',').map((s) => s.trim()).filter(Boolean) : value
      if (!Array.isArray(list) || !list.every((s) => typeof s === 'string')) return bad('is not a list of strings')
      return list
    }
    case 'string':
      // YAML reads an unquoted 12345 or yes as a number or a boolean
      if (typeof value === 'number' || typeof value === 'boolean') return bad('is not a non-empty string (quote it in the config file)')
      if (typeof value !== 'string' || value.length === 0) return bad('is not a non-empty string')
      return value
  }
}

export interface ConfigSources {
  flags: Record<string, unknown>
  env: Record<string, string | undefined>
  cwd?: string
}

/**
 * Merge the sources, validate everything, and either return one typed
 * AgentConfig or throw a ConfigError listing every problem found.
 */
export function loadConfig({ flags, env, cwd = process.cwd() }: ConfigSources): AgentConfig {
  const problems: string[] = []
  const merged: Raw = {}
  const configPath = (flags.config as string | undefined) ?? env.EDGEWARDEN_CONFIG
  if (configPath) Object.assign(merged, readConfigFile(resolve(cwd, configPath), problems))
  for (const o of OPTIONS) {
    const e = env[envName(o)]
    if (e !== undefined && e !== '' && o.key !== 'config') merged[o.key] = { value: e, from: envName(o) }
  }
  for (const o of OPTIONS) {
    const f = flags[o.key]
    if (f !== undefined && o.key !== 'config') merged[o.key] = { value: f, from: `--${o.flag}` }
  }
  const v: Record<string, unknown> = {}
  for (const o of OPTIONS) {
    const m = merged[o.key]
    if (m) v[o.key] = coerce(o, m.value, m.from, problems)
    else if (o.default !== undefined) {
      const d = typeof o.default === 'function' ? o.default() : o.default
      v[o.key] = o.type === 'list' ? coerce(o, d, 'default', problems) : d
    }
  }
  const dataDir = resolve(cwd, String(v.dataDir ?? '.'))
  if ((v.tlsCert === undefined) !== (v.tlsKey === undefined)) problems.push('tlsCert and tlsKey go together: give both or neither (without them the site CA issues the server certificate)')
  if ((v.caCert === undefined) !== (v.caKey === undefined)) problems.push('caCert and caKey go together')
  if (v.mqttsPort !== undefined && v.mqttsPort !== 0 && v.mqttsPort === v.mqttPort) problems.push('mqttsPort must differ from mqttPort')
  if (v.mqttPort === 'off' && v.mqttsPort === undefined) problems.push('mqttPort is off but no mqttsPort is set: devices would have no listener at all')
  const certLifetimeS: Record<Criticality, number> = { safety: 7776000, high: 7776000, medium: 15552000, low: 31536000 }
  for (const entry of (v.certLifetime as string[] | undefined) ?? []) {
    const m = /^([a-z]+)=(\d+)$/.exec(entry)
    if (!m || !(CRITICALITIES as readonly string[]).includes(m[1]!) || Number(m[2]) < 3600) problems.push(`certLifetime: "${entry}" is not CRITICALITY=SECONDS with CRITICALITY one of ${CRITICALITIES.join(', ')} and SECONDS at least 3600`)
    else certLifetimeS[m[1] as Criticality] = Number(m[2])
  }
  const cpKeys: Record<string, string> = {}
  for (const entry of (v.cpKey as string[] | undefined) ?? []) {
    const m = /^([^=]+)=(.+)$/.exec(entry)
    if (!m || !ID_PATTERN.test(m[1]!)) problems.push(`cpKey: "${entry}" is not KID=PUBKEY with KID an identifier`)
    else if (!rawPublicKey(m[2]!)) problems.push(`cpKey ${m[1]}: the public key is not base64url of 32 bytes`)
    else if (cpKeys[m[1]!] !== undefined && cpKeys[m[1]!] !== m[2]) problems.push(`cpKey ${m[1]}: pinned twice with different keys`)
    else cpKeys[m[1]!] = m[2]!
  }
  if (v.uplink !== undefined) {
    let url: URL | null = null
    try {
      url = new URL(v.uplink as string)
    } catch {}
    if (!url || !['mqtt:', 'mqtts:'].includes(url.protocol)) problems.push(`uplink: "${redactUserinfo(String(v.uplink))}" is not an mqtt:// or mqtts:// URL`)
    if (Object.keys(cpKeys).length === 0) problems.push('uplink is set but no control-plane key is pinned (cpKey KID=PUBKEY): every command would be refused')
  }
  if ((v.uplinkCert === undefined) !== (v.uplinkKey === undefined)) problems.push('uplinkCert and uplinkKey go together')
  if ((v.uplinkBackoffMinMs as number) < 1 || (v.uplinkBackoffMinMs as number) > (v.uplinkBackoffMaxMs as number)) {
    problems.push(`uplinkBackoffMinMs (${String(v.uplinkBackoffMinMs)}) must be at least 1 and at most uplinkBackoffMaxMs (${String(v.uplinkBackoffMaxMs)})`)
  }
  const renewAt: Record<Criticality, number> = { safety: 0.3, high: 0.3, medium: 0.2, low: 0.1 }
  for (const entry of (v.renewAt as string[] | undefined) ?? []) {
    const m = /^([a-z]+)=(0(?:\.\d+)?|1(?:\.0+)?)$/.exec(entry)
    if (!m || !(CRITICALITIES as readonly string[]).includes(m[1]!)) problems.push(`renewAt: "${entry}" is not CRITICALITY=FRACTION with CRITICALITY one of ${CRITICALITIES.join(', ')} and FRACTION from 0 to 1`)
    else renewAt[m[1] as Criticality] = Number(m[2])
  }
  if (problems.length) throw new ConfigError(problems)
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(cwd, p))
  return {
    dataDir,
    site: v.site as string,
    gateway: v.gateway as string,
    keyFile: v.key ? abs(v.key as string) : join(dataDir, 'gateway.key'),
    mqtt: {
      host: v.mqttHost as string,
      port: v.mqttPort === 'off' ? null : (v.mqttPort as number),
      tls: v.mqttsPort === undefined ? null : { port: v.mqttsPort as number },
    },
    pki: {
      caCertFile: v.caCert ? abs(v.caCert as string) : null,
      caKeyFile: v.caKey ? abs(v.caKey as string) : null,
      deviceCaFiles: ((v.deviceCa as string[] | undefined) ?? []).map(abs),
      tlsSans: (v.tlsSan as string[] | undefined) ?? [],
      tlsFiles: v.tlsCert && v.tlsKey ? { certFile: abs(v.tlsCert as string), keyFile: abs(v.tlsKey as string) } : null,
      est: v.estPort === undefined ? null : { host: v.estHost as string, port: v.estPort as number },
      certLifetimeS,
    },
    modbus: v.modbusPort === undefined ? null : { host: v.modbusHost as string, port: v.modbusPort as number },
    modbusTimeoutMs: v.modbusTimeoutMs as number,
    modbusClients: { maxClients: v.modbusMaxClients as number, maxClientsPerAddress: v.modbusMaxClientsPerAddress as number, idleTimeoutMs: v.modbusIdleTimeoutMs as number },
    http: v.httpPort === undefined ? null : { host: v.httpHost as string, port: v.httpPort as number },
    authThrottle: {
      perClient: v.authFailuresPerClient as number,
      perAddress: v.authFailuresPerAddress as number,
      windowS: v.authThrottleWindowS as number,
      blockS: v.authBlockS as number,
    },
    connectTimeoutMs: v.connectTimeoutMs as number,
    listenBacklog: v.listenBacklog as number,
    cryptoWorkers: (v.cryptoWorkers as number | undefined) ?? null,
    admissionConcurrency: v.admissionConcurrency as number,
    admissionMaxWaitMs: v.admissionMaxWaitMs as number,
    sessionQueue: { messages: v.sessionQueueMessages as number, bytes: v.sessionQueueBytes as number },
    maxPacketBytes: v.maxPacketBytes as number,
    quarantine: v.quarantine as 'none' | 'nftables',
    uplink:
      v.uplink === undefined
        ? null
        : {
            url: v.uplink as string,
            ...(v.uplinkUsername !== undefined ? { username: v.uplinkUsername as string } : {}),
            ...(v.uplinkPassword !== undefined ? { password: v.uplinkPassword as string } : {}),
            ...(v.uplinkCa !== undefined ? { caFile: abs(v.uplinkCa as string) } : {}),
            ...(v.uplinkCert !== undefined ? { certFile: abs(v.uplinkCert as string) } : {}),
            ...(v.uplinkKey !== undefined ? { keyFile: abs(v.uplinkKey as string) } : {}),
          },
    uplinkBackoff: { minMs: v.uplinkBackoffMinMs as number, maxMs: v.uplinkBackoffMaxMs as number },
    cpKeys,
    outboxMax: v.outboxMax as number,
    residualAlertIntervalS: v.residualAlertIntervalS as number,
    rejectReportIntervalS: v.rejectReportIntervalS as number,
    credentialLifetimeS: v.credentialLifetimeS as number,
    renewGraceS: v.renewGraceS as number,
    renewOverlapS: v.renewOverlapS as number,
    renewAt,
    clockSkewS: v.clockSkewS as number,
    logLevel: v.logLevel as string,
  }
}

export { envName }

/** EDGEWARDEN_* variables that are no option of start, and who reads them. */
export const OTHER_ENV: Readonly<Record<string, string>> = {
  EDGEWARDEN_CTL_PASSWORD: 'ctl send, watch, bulk: the password on the central broker',
  EDGEWARDEN_FROM_SOURCE: 'bin/edgewarden.js: 1 runs the TypeScript sources through tsx instead of dist/',
  EDGEWARDEN_TEST_COMPILED: 'the test suite: 1 spawns the compiled CLI (npm test sets it)',
  EDGEWARDEN_TEST_SEED: 'the test suite: the seed of its randomised tests',
  EDGEWARDEN_FUZZ_SEED: 'the fuzz tests: their seed',
  EDGEWARDEN_FIGURES: 'npm run reliability: where the tests write their figures',
  EDGEWARDEN_RELIABILITY_SCALE: 'npm run reliability: the scale of the tests',
}

/** The control-plane service's own variables (control-plane/): it checks them itself. */
const CONTROL_PLANE_ENV = /^EDGEWARDEN_CP_/

/**
 * EDGEWARDEN_* variables in `env` that nothing reads (a typo: the option it
 * meant keeps its default), each with the known name closest to it
 * (`closest` compares what follows EDGEWARDEN_). Names only: a value may be
 * a secret.
 */
export function unknownEnv(env: Record<string, string | undefined>, closest: (name: string, known: string[]) => string | undefined): { name: string; meant?: string }[] {
  const known = new Set([...OPTIONS.map(envName), ...Object.keys(OTHER_ENV)])
  const tail = (n: string): string => n.slice('EDGEWARDEN_'.length)
  const out: { name: string; meant?: string }[] = []
  for (const name of Object.keys(env).sort()) {
    if (!name.startsWith('EDGEWARDEN_') || known.has(name) || CONTROL_PLANE_ENV.test(name)) continue
    const meant = closest(tail(name), [...known].map(tail))
    out.push({ name, ...(meant !== undefined ? { meant: `EDGEWARDEN_${meant}` } : {}) })
  }
  return out
}
