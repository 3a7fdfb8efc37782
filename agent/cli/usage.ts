import { MODBUS_FORWARDED_FUNCTIONS as FORWARDED_FUNCTIONS } from '../../wire/protocol.ts'
import { OPTIONS } from '../runtime/config.ts'
import { EdgewardenError } from '../runtime/errors.ts'

export class UsageError extends EdgewardenError {
  constructor(message: string) {
    super('USAGE', message)
    this.name = 'UsageError'
  }
}

// Under --modbus-port: what the proxy forwards, from the list it checks requests against.
const modbusNote = [
  `proxy forwards FC ${[...FORWARDED_FUNCTIONS].map((f) => (f === 43 ? '43/14' : String(f))).join(', ')} to the device of the unit id;`,
  'it answers 0x01 other functions, 0x02 hook writes, 0x03 malformed, 0x0A no active device, 0x0B no answer',
].map((l) => `${' '.repeat(19)}${l}`).join('\n')
const startFlags = OPTIONS.map((o) => `  --${o.flag.padEnd(14)} ${o.doc}${o.default !== undefined ? ` (default ${typeof o.default === 'function' ? 'host name' : o.default})` : ''}${o.key === 'modbusPort' ? `\n${modbusNote}` : ''}`).join('\n')

export const USAGE = `edgewarden: the site gateway agent for device trust, quarantine and offboarding

Usage:
  edgewarden start [options]             run the agent (site MQTT broker, store, admin socket)
  edgewarden identity [--data-dir D] [--key F] [--json]
                                         print the gateway id and public key
  edgewarden keygen --out FILE           write a new Ed25519 key (PKCS#8 PEM, 0600); print its public key
  edgewarden token --key FILE --device ID --gateway GW [--lifetime S] [--json]
                                         print a fresh device token (the MQTT password; default 300 s, at most 3600)
  edgewarden device add ID (--public-key KEY | --csr FILE | --bootstrap-secret | --password-stdin)
                        [--criticality low|medium|high|safety] [--owner O]
                        [--modbus HOST:PORT/UNIT [--modbus-legacy]] [--opcua URL [--opcua-cert-sha256 HEX | --opcua-tofu] [--opcua-push]]
                        [--ip ADDR] [--mac MAC] [--acl-publish FILTER]... [--acl-subscribe FILTER]... [--reason TEXT]
                        [--replace] [--json]
                                         enroll a device; an id already enrolled is refused, saying what would change,
                                         unless --replace (then it prints what changed); a key, certificate or password
                                         hash another device holds is refused; --modbus-legacy: it has no hook
                                         registers (nothing can be relayed to it); --acl-*: MQTT topic filters granted
                                         beyond its own dev/ID/ (site applications: a historian, an HMI);
                                         --csr: a PKCS#10 request (DER or PEM) the site CA signs now, the certificate
                                         chain printed; --bootstrap-secret: a fresh one-time secret for EST
                                         simpleenroll (curl -u ID:SECRET), printed once, never stored;
                                         --password-stdin: a legacy device's fixed MQTT password, read from standard
                                         input and hashed here (scrypt): only the hash reaches the agent
  edgewarden device ls [--json]          list devices
  edgewarden device show ID [--json]     one device in full: live sessions per protocol, credential and expiry,
                                         the last refused connect and why
  edgewarden device history ID [--json]  its story from the audit log, in order: enrollment, state changes, commands,
                                         actions queued, delivered, acked, expired or cancelled, alerts, with reasons
  edgewarden device quarantine|release|revoke|wipe|reenroll|renew ID [--reason TEXT]
  edgewarden device retire ID [--reason TEXT] [--deadline 7d | --no-wipe --reason TEXT]
                                         retire it: wipe, then retired; --deadline: how long to wait for the wipe's ack
                                         (default 30d; s, m, h, d, w); --no-wipe: close it now without a wipe (a device
                                         destroyed or gone), also a retirement already waiting
  edgewarden device action ls ID [--json] | action cancel ID ACTION [--reason TEXT]
                                         the actions queued for a device; take one back (a wipe a retirement waits
                                         for is closed with retire --no-wipe instead)
  edgewarden device remove ID [--reason TEXT]
                                         revoke an active device and take it out of the registry (its history stays)
  edgewarden audit verify [--data-dir D] [--trust-key KEY]... [--json]
                                         check the audit chain; exit 1 naming the first bad entry
  edgewarden audit export [--data-dir D] [--device ID]
                                         print the audit log as JSON lines (--device: the entries about one device)
  edgewarden ca show [--data-dir D] [--ca-cert FILE] [--json]
                                         the site CA: chain (PEM), SHA-256 fingerprint, subject, not-after, origin
                                         (created, loaded, enterprise), CRL number and next update; from the data dir
                                         when the agent is stopped (--ca-cert: the enterprise intermediate it uses)
  edgewarden quarantine show [--data-dir D] [--json]
                                         the network rules in force (read from the kernel) per device, and why

  edgewarden demo [--json] [--keep] [--control-plane]
                                         a gateway, a central broker, a control plane and a simulated fleet on this
                                         machine: enroll, then retire three devices with their evidence (no setup);
                                         --control-plane: the control-plane service (PGlite) as the control plane
  edgewarden simulate [--devices N] [--mix mqtt=80,modbus=15,opcua=5] [--online-fraction F] [--mean-offline S]
                      [--duration S] [--storm-every S] [--report-every S] [--prefix P] [--seed N] [--json]
                      [--mqtt-url URL] [--central URL [--site S] [--gateway G]] [--keep]
                                         a fleet of simulated intermittent devices against the running agent
                                         (enrolled through its admin socket, dialling its own MQTT port unless
                                         --mqtt-url); a reconnect storm on SIGUSR1; at the end what it enrolled is
                                         revoked and removed, unless --keep

  edgewarden ctl keygen --out FILE       a control-plane key (pin its public key with --cp-key KID=KEY)
  edgewarden ctl send --broker URL --site S --gateway G --key FILE --kid ID OP [ARGS-JSON] [--wait]
                      [--gateway-key KEY] [--timeout S] [--resend-after S] [--json]
                                         sign and publish a command, re-sent (same jti) until the gateway answers;
                                         --wait prints its events and outcome
  edgewarden ctl watch --broker URL --site S --gateway G [--gateway-key KEY] [--count N] [--state FILE] [--json]
                                         print the gateway's events, verifying signatures, flagging seq gaps; exit 1
                                         and ROLLBACK when its seq or audit head goes back (restored from an old copy;
                                         remembered in --state, default $XDG_STATE_HOME/edgewarden/watch.json)
  edgewarden ctl bulk --broker URL --site S --gateway G --key FILE --kid ID OP [--file F] [--args JSON] [--json]
                      [--window N] [--resend-after S] [--timeout S]
                                         one command per device id (from --file or stdin; JSON device records, one a
                                         line, for device.enroll), with progress; at most N unanswered (default 200),
                                         re-sent after S s (default 10, doubling); names every device not completed
  ctl send, watch, bulk also take [--username U] [--password P | EDGEWARDEN_CTL_PASSWORD] [--ca FILE]
                      [--cert FILE --cert-key FILE]
                                         broker login, and TLS for mqtts:// (--key stays the signing key)
  edgewarden ctl send|bulk --control-plane URL [--token-file F | EDGEWARDEN_CP_TOKEN] OP [ARGS-JSON] [--wait] [--json]
                                         through the control-plane service instead: it signs, stores, re-sends and
                                         knows where each device lives (no --broker, --key, --site or --gateway)

  edgewarden control-plane --broker URL --key FILE --kid ID [--database postgres://...] [--http-port P] [--data-dir D]
                                         the central service: HTTP API, fleet page, /metrics, every event kept as signed
                                         in PGlite (default, in the data dir) or PostgreSQL; all options: control-plane help
  edgewarden control-plane token add NAME --scope S[,S] | token ls | token revoke ID
                                         bearer tokens of its API (stored hashed; shown once)
  edgewarden control-plane verify-export FILE [--gateway-key SITE/GW=KEY]...
                                         re-verify an events export (JSON lines) offline; exit 1 naming each bad line

Device and audit verbs talk to the running agent through <data-dir>/admin.sock
(audit verbs and ca show read the data dir directly when the agent is not running).
Every verb takes --data-dir (default ./edgewarden-data) and --help; every verb that prints a result takes
--json (one JSON document, or JSON lines for streams). Colour only on a terminal (NO_COLOR, FORCE_COLOR
respected); progress of long operations goes to standard error, on a terminal only.

Options of start (each also a config-file key and an EDGEWARDEN_* variable; flags win):
${startFlags}
`

/** The verbs' entries in USAGE: each `  edgewarden VERB …` line with the lines that continue it, and notes such as `  ctl send, watch, bulk also take …`. */
function usageEntries(): { verb: string; subs: string[]; text: string }[] {
  const lines = USAGE.split('\n')
  const start = lines.indexOf('Usage:') + 1
  const entries: { verb: string; subs: string[]; text: string }[] = []
  for (let i = start; i < lines.length; i++) {
    const line = lines[i]!
    if (line === '') continue
    if (!line.startsWith('  ')) break
    const entry = /^ {2}edgewarden ([a-z][\w-]*)(?: ([a-z][\w|-]*))?/.exec(line)
    // a note on several sub-verbs: `  ctl send, watch, bulk also take …`
    const note = /^ {2}([a-z][\w-]*) ([a-z][a-z, ]*?) also /.exec(line)
    if (entry) entries.push({ verb: entry[1]!, subs: entry[2] ? entry[2].split('|') : [], text: line })
    else if (note) entries.push({ verb: note[1]!, subs: note[2]!.split(/[\s,]+/).filter(Boolean), text: line })
    else if (entries.length && /^ {3,}/.test(line)) {
      entries[entries.length - 1]!.text += `\n${line}`
    }
  }
  return entries
}

/** What every verb takes: the paragraph after the verbs in USAGE. */
function commonNotes(): string {
  const i = USAGE.indexOf('\nDevice and audit verbs')
  const j = USAGE.indexOf('\nOptions of start')
  return i >= 0 ? USAGE.slice(i + 1, j > i ? j : undefined).trimEnd() : ''
}

/** `VERB SUB` where USAGE has an entry for that sub-verb (`device add`), else `VERB`: what to ask --help of. */
export function helpName(verb: string, sub: string | undefined): string {
  return sub !== undefined && usageEntries().some((e) => e.verb === verb && e.subs.includes(sub)) ? `${verb} ${sub}` : verb
}

/** The verbs USAGE describes. */
export function usageVerbs(): string[] {
  return [...new Set(usageEntries().map((e) => e.verb))]
}

/**
 * The usage of one verb (`edgewarden VERB --help`), narrowed to a sub-verb
 * where it has one of its own (`device add --help`); null for a verb USAGE
 * does not describe. `start` gets its options too.
 */
export function usageOf(verb: string, sub?: string): string | null {
  const mine = usageEntries().filter((e) => e.verb === verb)
  if (mine.length === 0) return null
  const narrowed = sub !== undefined ? mine.filter((e) => e.subs.includes(sub)) : []
  const shown = narrowed.length ? narrowed : mine
  const options = verb === 'start' ? `\n\n${USAGE.slice(USAGE.indexOf('Options of start'))}`.trimEnd() : ''
  return `Usage:\n${shown.map((e) => e.text).join('\n')}\n\n${commonNotes()}${options}\n`
}
