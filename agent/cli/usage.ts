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
                        [--modbus HOST:PORT/UNIT [--modbus-legacy]] [--opcua URL [--opcua-cert-sha256 HEX | --opcua-tofu]]
                        [--ip ADDR] [--mac MAC] [--acl-publish FILTER]... [--acl-subscribe FILTER]... [--reason TEXT] [--json]
                                         enroll a device; --modbus-legacy: it has no hook registers (nothing can be
                                         relayed to it); --acl-*: MQTT topic filters granted beyond its own dev/ID/;
                                         --csr: a PKCS#10 request (DER or PEM) the site CA signs now, the certificate
                                         chain printed; --bootstrap-secret: a fresh one-time secret for EST
                                         simpleenroll (curl -u ID:SECRET), printed once, never stored;
                                         --password-stdin: a legacy device's fixed MQTT password, read from standard
                                         input and hashed here (scrypt): only the hash reaches the agent
  edgewarden device ls [--json]          list devices
  edgewarden device show ID [--json]     one device in full
  edgewarden device quarantine|release|revoke|retire|wipe|reenroll|renew ID [--reason TEXT]
  edgewarden audit verify [--data-dir D] [--trust-key KEY]... [--json]
                                         check the audit chain; exit 1 naming the first bad entry
  edgewarden audit export [--data-dir D] print the audit log as JSON lines
  edgewarden ca show [--data-dir D] [--ca-cert FILE] [--json]
                                         the site CA: chain (PEM), SHA-256 fingerprint, subject, not-after, origin
                                         (created, loaded, enterprise), CRL number and next update; from the data dir
                                         when the agent is stopped (--ca-cert: the enterprise intermediate it uses)
  edgewarden quarantine show [--data-dir D] [--json]
                                         the network rules in force (read from the kernel) per device, and why

  edgewarden demo [--json] [--keep]      a gateway, a central broker, a control plane and a simulated fleet on this
                                         machine: enroll, then retire three devices with their evidence (no setup)
  edgewarden simulate [--devices N] [--mix mqtt=80,modbus=15,opcua=5] [--online-fraction F] [--mean-offline S]
                      [--duration S] [--storm-every S] [--report-every S] [--prefix P] [--seed N] [--json]
                      [--mqtt-url URL] [--central URL [--site S] [--gateway G]]
                                         a fleet of simulated intermittent devices against the running agent
                                         (enrolled through its admin socket); a reconnect storm on SIGUSR1

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

Device and audit verbs talk to the running agent through <data-dir>/admin.sock
(audit verbs and ca show read the data dir directly when the agent is not running).
Every verb takes --data-dir (default ./edgewarden-data) and --help; every verb that prints a result takes
--json (one JSON document, or JSON lines for streams). Colour only on a terminal (NO_COLOR, FORCE_COLOR
respected); progress of long operations goes to standard error, on a terminal only.

Options of start (each also a config-file key and an EDGEWARDEN_* variable; flags win):
${startFlags}
`
