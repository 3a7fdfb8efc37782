// The scenario of `edgewarden demo`: the whole story on one machine with
// nothing to set up. A central broker (aedes, in this process, on a free
// loopback port), a gateway (started by the caller: the real agent, its store
// in a temporary folder), a control plane sending signed commands over the
// central broker, and a small simulated fleet on MQTT, Modbus and OPC UA
// (demo-fleet.ts). It enrolls the fleet, then retires (a) a connected MQTT
// device, (b) an offline one whose wipe waits until it returns, (c) a legacy
// Modbus device that can only be cut off and is closed by an operator's
// `"wipe": false`, (d) a device with a certificate of the site CA, whose
// serial goes on the CRL the gateway serves; each step is reported as it happens with its evidence,
// from the gateway's signed events. Imports nothing from agent/: what it
// reads of the gateway comes in as a DemoGateway (agent/cli/demo.ts adapts
// the running agent), what it says goes out through a DemoReport.
import { join } from 'node:path'
import ModbusSerial from 'modbus-serial'
import mqtt from 'mqtt'
import { MqttDevice } from '../firmware-hooks/mqtt-device.ts'
import { ControlPlane, newPrivateKey, publicKeyB64, TERMINAL, type GatewayEvent } from './control-plane.ts'
import { startCentralBroker } from './demo-broker.ts'
import { freePort } from './ports.ts'
import { x509 } from './x509-lib.ts'

const SITE = 'demo-site'
const GATEWAY = 'gw-demo'
const KID = 'demo-cp'
/** Any one step. */
const STEP_MS = 20_000

type Json = Record<string, unknown>

/** What the scenario asks of the gateway it is given: the demo's site, ids and the central broker to report to. */
export interface DemoGatewayOptions {
  site: string
  gateway: string
  /** the gateway's store (and key, and OPC UA PKI) go there */
  dataDir: string
  /** the central broker, e.g. mqtt://127.0.0.1:1883 */
  uplink: string
  /** the control plane key the gateway pins: its kid and its public key (base64url raw) */
  controlPlane: { kid: string; publicKey: string }
  /**
   * The OPC UA relay's reconnect backoff. Its default starts at 1 s and grows
   * to a minute: a failed session attempt would be retried past a step's limit.
   */
  opcuaRetry: { initialMs: number; maxMs: number }
}

/** An audit verdict: the scenario checks `ok`, counts `entries` and reports the rest as it is. */
export interface DemoAuditVerdict {
  ok: boolean
  entries: number
}

/**
 * The gateway as the scenario sees it: a running agent, listening on
 * loopback. Values are read at the call; none of the methods throws for an
 * unknown device (it has no sessions, no actions, no state, no retirement).
 */
export interface DemoGateway {
  readonly id: string
  readonly site: string
  /** the gateway key (base64url raw), which signs its events and its audit log */
  readonly publicKey: string
  /** where its store is, as the gateway resolved it */
  readonly dataDir: string
  /** the site MQTT broker's plain port on 127.0.0.1 */
  readonly siteBrokerPort: number
  /** its TLS port on 127.0.0.1 (tokens and client certificates of the site CA) */
  readonly siteBrokerTlsPort: number
  /** the site CA's chain (PEM blocks), which the TLS listener's certificate and device certificates chain to */
  readonly siteCa: readonly string[]
  /** the CRL the gateway serves now (PEM), null before the first one is signed */
  crlPem(): string | null
  /** the Modbus proxy's port on 127.0.0.1 */
  readonly modbusProxyPort: number
  /** the network quarantine backend in use ('none' without root) */
  readonly quarantineBackend: string
  /** live sessions of a device: on the site broker (mqtt), or the gateway's own to its server (opcua) */
  sessionCount(protocol: 'mqtt' | 'opcua', deviceId: string): number
  /** the actions queued for a device and not yet acked, oldest first */
  pendingActions(deviceId: string): readonly { id: string; act: string }[]
  /** the device's state in the registry (PROTOCOL §2), undefined when it is not enrolled */
  deviceState(deviceId: string): string | undefined
  /** whether a retirement of the device is open (not yet closed with its evidence) */
  retirementOpen(deviceId: string): boolean
  /** calls `listener` each time the gateway holds a new OPC UA session to a device; returns the unsubscribe */
  onOpcuaConnected(listener: (deviceId: string) => void): () => void
  /** verifies the audit log against the gateway key; resolves with the verdict, rejects only if the store cannot be read */
  verifyAudit(): Promise<DemoAuditVerdict>
  /** the seq of the last event the gateway has stored (PROTOCOL §3) */
  lastEventSeq(): number
  /** stops the gateway; never rejects */
  stop(): Promise<void>
}

/** Starts the gateway the scenario runs against; rejects (as the agent's start does) when it cannot. */
export type StartDemoGateway = (o: DemoGatewayOptions) => Promise<DemoGateway>

/** Where the scenario says what happens: a step, a section title, a gateway event. */
export interface DemoReport {
  /** gateway events reported so far */
  readonly events: number
  section(title: string): void
  step(step: string, text: string, data?: Json, tone?: 'ok' | 'warn' | 'plain'): void
  event(e: GatewayEvent): void
}

/** A step that did not give the evidence expected: reported as one line, exit 1. */
export class DemoError extends Error {}
export class Interrupted extends DemoError {}

/** PROTOCOL §6 evidence in one line. */
export function describeEvidence(ev: Json): string {
  const wipe = ev.wipe as { status: string; ackJti?: string; reason?: string }
  const net = ev.network as { backend: string; rule: string }
  const live = Object.entries(ev.sessionsClosed as Record<string, number>).filter(([, n]) => n > 0)
  const sessions = live.length ? live.map(([p, n]) => `${p} ${n}`).join(', ') : 'none was live'
  const wipeOnly = Object.entries((ev.wipeOnlySessionsClosed ?? {}) as Record<string, number>).filter(([, n]) => n > 0)
  return [
    `access removed in ${ev.accessRemovedMs} ms (sessions closed: ${sessions})`,
    ...(wipeOnly.length ? [`wipe-only session closed at the end: ${wipeOnly.map(([p, n]) => `${p} ${n}`).join(', ')}`] : []),
    `network ${net.backend}/${net.rule}`,
    `wipe ${wipe.status}${wipe.ackJti ? ` (device-signed ack ${wipe.ackJti})` : ''}${wipe.reason ? ` (${wipe.reason})` : ''}`,
    `${ev.credentialsRevoked} credential(s) revoked${Array.isArray(ev.certificatesRevoked) ? ` (certificate ${(ev.certificatesRevoked as string[]).join(', ')} on the CRL)` : ''}`,
    `residual use ${ev.residualUse}`,
  ].join('; ')
}

/** One SCADA read of a holding register through the gateway's Modbus proxy: the value, or the exception code. */
async function scadaRead(port: number, unit: number): Promise<{ value: number } | { exception: number }> {
  const client = new ModbusSerial.default()
  await client.connectTCP('127.0.0.1', { port })
  client.setID(unit)
  client.setTimeout(3000)
  try {
    const r = await client.readHoldingRegisters(0, 1)
    return { value: r.data[0]! }
  } catch (err) {
    const code = (err as { modbusCode?: number }).modbusCode
    if (typeof code !== 'number') throw err
    return { exception: code }
  } finally {
    await new Promise<void>((resolve) => client.close(() => resolve()))
  }
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new DemoError(`demo: ${what}`)
}

/** The serials a CRL (PEM) lists, with their reasons, and its CRL Number; @peculiar/x509 loaded on first use. */
async function readCrl(pem: string): Promise<{ number: string | null; entries: Map<string, string> }> {
  const x = await x509()
  const crl = new x.X509Crl(pem)
  const entries = new Map(crl.entries.map((e) => [e.serialNumber.toLowerCase().replace(/^0+/, ''), x.X509CrlReason[e.reason ?? 0] ?? String(e.reason)]))
  const ext = crl.extensions.find((e) => e.type === '2.5.29.20')
  // the extension's value is a DER INTEGER: tag, length, big-endian bytes
  const v = ext ? Buffer.from(ext.value) : null
  return { number: v && v[0] === 0x02 ? BigInt(`0x${v.subarray(2, 2 + v[1]!).toString('hex')}`).toString() : null, entries }
}

/** Connects a bare MQTT client with a certificate and key over TLS: null when admitted (then closed), else why it was refused. */
async function certificateRefused(url: string, clientId: string, tls: { cert: string; key: string }, ca: readonly string[]): Promise<string | null> {
  try {
    const c = await mqtt.connectAsync(url, { clientId, ...tls, ca: [...ca], reconnectPeriod: 0, connectTimeout: 5000 })
    await c.endAsync()
    return null
  } catch (err) {
    return (err as Error).message
  }
}

const wipeOf = (e: GatewayEvent): string => ((e.data.evidence as Json | undefined)?.wipe as { status?: string } | undefined)?.status ?? '?'

/**
 * What the demo started, stopped in reverse order at the end. A part that
 * comes up after the end (the demo was interrupted while it started) is
 * stopped at once, and the scenario stops there.
 */
export class Parts {
  #closed = false
  readonly #stops: (() => Promise<void>)[] = []
  readonly #last: () => void

  /** `last` runs after everything is stopped (again after a late part): removing the folder. */
  constructor(last: () => void) {
    this.#last = last
  }

  async add<T>(part: T, stop: (p: T) => Promise<void>): Promise<T> {
    if (this.#closed) {
      await stop(part).catch(() => {})
      this.#last()
      throw new DemoError('demo interrupted')
    }
    this.#stops.push(() => stop(part))
    return part
  }

  /** Nothing more is started once the demo is over (interrupted). */
  ensureOpen(): void {
    if (this.#closed) throw new DemoError('demo interrupted')
  }

  async close(): Promise<void> {
    this.#closed = true
    for (const stop of this.#stops.splice(0).reverse()) await stop().catch(() => {})
    this.#last()
  }
}

/**
 * The first gateway event matching `pred`. Its timer does not hold the
 * process: once everything is stopped a wait left pending (the demo failed
 * or was interrupted) lets it exit.
 */
function nextEvent(cp: ControlPlane, pred: (e: GatewayEvent) => boolean, ms: number, what: string): Promise<GatewayEvent> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (off(), reject(new DemoError(`demo: ${what} within ${ms} ms`))), ms)
    timer.unref()
    const off = cp.onEvent((e) => {
      if (!pred(e)) return
      clearTimeout(timer)
      off()
      resolve(e)
    })
  })
}

/** Send a signed command; resolves with its outcome (completed, failed, rejected or duplicate). */
async function run(cp: ControlPlane, op: string, args: Json, ms = STEP_MS): Promise<GatewayEvent> {
  const { jti, jws } = cp.sign(op, args)
  const outcome = nextEvent(cp, (e) => TERMINAL.has(e.type) && e.data.jti === jti, ms, `no outcome for ${op} ${JSON.stringify(args).slice(0, 60)}`)
  await cp.publishRaw(jws)
  return outcome
}

/**
 * Runs the demo against the gateway `startGateway` starts, its scratch files
 * in `work`; everything it starts is added to `parts`, which the caller
 * closes. Resolves with the outcome; rejects with a DemoError when a step
 * does not show what it should, or with what a part's start threw.
 */
export async function runScenario(r: DemoReport, work: string, parts: Parts, startGateway: StartDemoGateway): Promise<Json> {
  r.section('edgewarden demo: a central broker, a gateway, a control plane and a small fleet, all on this machine')
  // Loaded here, not with this module, and while the brokers and the gateway
  // start: node-opcua is slow to load (it generates an RSA key as it does).
  const simulators = Promise.all([import('./demo-fleet.ts'), import('node-opcua')]).then(([fleetModule, opcua]) => {
    // node-opcua prints its own notices on standard output; the demo's output is its report only.
    for (const set of [opcua.setDebugLogger, opcua.setErrorLogger, opcua.setWarningLogger]) set(() => {})
    return fleetModule
  })
  simulators.catch(() => {})
  const central = await parts.add(await startCentralBroker(), (c) => c.close())
  r.step('central', `central broker (aedes, in this process) on ${central.url}`, { url: central.url })

  const cpKey = newPrivateKey()
  const gw = await parts.add(
    await startGateway({ site: SITE, gateway: GATEWAY, dataDir: join(work, 'gateway'), uplink: central.url, controlPlane: { kid: KID, publicKey: publicKeyB64(cpKey) }, opcuaRetry: { initialMs: 100, maxMs: 1000 } }),
    (g) => g.stop(),
  )
  const siteBroker = `mqtt://127.0.0.1:${gw.siteBrokerPort}`
  const proxyPort = gw.modbusProxyPort
  r.step('gateway', `gateway ${gw.id} of site ${gw.site}: site MQTT broker ${siteBroker} (TLS ${gw.siteBrokerTlsPort}), Modbus proxy 127.0.0.1:${proxyPort}, network quarantine ${gw.quarantineBackend} (nftables needs root), store in ${gw.dataDir}`, {
    gateway: gw.id,
    site: gw.site,
    publicKey: gw.publicKey,
    siteBroker,
    siteBrokerTls: gw.siteBrokerTlsPort,
    modbusProxy: proxyPort,
    dataDir: gw.dataDir,
  })

  const cp = await parts.add(new ControlPlane({ broker: central.url, site: SITE, gateway: GATEWAY, key: cpKey, kid: KID, gatewayKey: gw.publicKey }), (x) => x.close())
  const stopPrinting = cp.onEvent((e) => r.event(e))
  await cp.connect()
  await cp.waitOnline(STEP_MS)
  r.step('control', `control plane (key ${KID}, pinned on the gateway) connected; the gateway says it is online; every event below is checked against the gateway key`, { kid: KID })

  const { DEMO_IDS, DEMO_UNITS, DemoFleet } = await simulators
  parts.ensureOpen()
  const fleetStarted = performance.now()
  const fleetKept = DemoFleet.start({ gatewayId: gw.id, gatewayPublicKey: gw.publicKey, siteBrokerUrl: siteBroker, siteBrokerTlsUrl: `mqtts://127.0.0.1:${gw.siteBrokerTlsPort}`, siteCa: gw.siteCa, workDir: work, opcuaPort: await freePort() }).then((f) => parts.add(f, (x) => x.stop()))
  const fleet = await fleetKept
  r.step('fleet', `simulated devices up (the OPC UA one made its certificate) in ${((performance.now() - fleetStarted) / 1000).toFixed(1)} s: ${[...fleet.mqtt.keys()].join(', ')} (MQTT), ${DEMO_IDS.plc} (Modbus, hook), ${DEMO_IDS.legacy} (Modbus, legacy), ${DEMO_IDS.hmi} (OPC UA), ${DEMO_IDS.camera} (MQTT over mutual TLS, a P-256 key and a certificate request)`)

  r.section('Enrolling the fleet: one signed device.enroll per device')
  const opcuaUp = new Promise<void>((resolve) => {
    const on = (id: string): void => {
      if (id !== DEMO_IDS.hmi) return
      off()
      resolve()
    }
    const off = gw.onOpcuaConnected(on)
  })
  for (const e of fleet.enrollments()) {
    const done = await run(cp, 'device.enroll', { device: e.device })
    check(done.type === 'cmd.completed', `enrolling ${e.id} answered ${done.type} ${JSON.stringify(done.data)}`)
    if (e.credential !== 'x509') {
      r.step('enrolled', `${e.id} (${e.protocol}) enrolled: cmd.completed #${done.seq}`, { deviceId: e.id, protocol: e.protocol, seq: done.seq }, 'ok')
      continue
    }
    // PROTOCOL §3 x509.csr: the site CA issued the certificate; it comes back in the evidence, and the device installs it.
    const chain = (done.data.evidence as Json | undefined)?.certificate
    check(typeof chain === 'string', `enrolling ${e.id} returned no certificate: ${JSON.stringify(done.data)}`)
    await fleet.camera.install(chain as string)
    const cert = fleet.camera.device.certificate!
    r.step('enrolled', `${e.id} (${e.protocol}, certificate) enrolled: the site CA issued serial ${cert.serial}, valid until ${new Date(cert.notAfter * 1000).toISOString().slice(0, 10)}; cmd.completed #${done.seq}`, { deviceId: e.id, protocol: e.protocol, seq: done.seq, serial: cert.serial, notAfter: cert.notAfter }, 'ok')
  }
  for (const d of fleet.mqtt.values()) {
    check(await d.goOnline(), `${d.id} could not connect: ${d.lastError?.message}`)
    r.step('connected', `${d.id} connected to the site broker with a token signed by its own key (${gw.sessionCount('mqtt', d.id)} session)`, { deviceId: d.id, protocol: 'mqtt', sessions: gw.sessionCount('mqtt', d.id) })
  }
  check(await fleet.camera.goOnline(), `${DEMO_IDS.camera} could not connect over mutual TLS: ${fleet.camera.lastError?.message}`)
  r.step('connected', `${DEMO_IDS.camera} connected to the site broker's TLS listener with its client certificate, checked against the site CA, its pinned fingerprint and the CRL (${gw.sessionCount('mqtt', DEMO_IDS.camera)} session)`, { deviceId: DEMO_IDS.camera, protocol: 'mqtt', credential: 'x509', sessions: gw.sessionCount('mqtt', DEMO_IDS.camera) })
  for (const [id, unit] of [[DEMO_IDS.plc, DEMO_UNITS.plc], [DEMO_IDS.legacy, DEMO_UNITS.legacy]] as const) {
    const read = await scadaRead(proxyPort, unit)
    check('value' in read, `SCADA read of ${id} through the proxy failed: ${JSON.stringify(read)}`)
    r.step('connected', `${id}: a SCADA read through the gateway's Modbus proxy (unit ${unit}) answers ${JSON.stringify(read)}`, { deviceId: id, protocol: 'modbus', read })
  }
  await withTimeout(opcuaUp, STEP_MS, `${DEMO_IDS.hmi}: no OPC UA session`)
  r.step('connected', `${DEMO_IDS.hmi}: the gateway holds an OPC UA session to it (certificate pinned by SHA-256)`, { deviceId: DEMO_IDS.hmi, protocol: 'opcua', sessions: gw.sessionCount('opcua', DEMO_IDS.hmi) })

  const retired: Json[] = []

  // (a) connected: access removed, wipe delivered at once, acked, retired.
  const a = DEMO_IDS.connected
  r.section(`(a) Retiring ${a}, connected right now`)
  r.step('command', `control plane -> device.retire {"deviceId":"${a}"}`, { deviceId: a, op: 'device.retire' })
  const aDone = await run(cp, 'device.retire', { deviceId: a, reason: 'line 2 refit' })
  check(aDone.type === 'cmd.completed' && wipeOf(aDone) === 'done', `retiring ${a} answered ${aDone.type} ${JSON.stringify(aDone.data)}`)
  const aDev = fleet.mqttDevice(a)
  check(aDev.runtime.wiped, `${a} says it was not wiped`)
  const aEvidence = aDone.data.evidence as Json
  r.step('retired', `${a} retired: ${describeEvidence(aEvidence)}; the device erased its key and data`, { deviceId: a, case: 'connected', evidence: aEvidence, deviceWiped: true }, 'ok')
  retired.push({ deviceId: a, case: 'connected', wipe: wipeOf(aDone) })
  // The key a thief copied off the device before it was wiped: refused, and the control plane hears of it.
  const alerted = nextEvent(cp, (e) => e.type === 'alert.residual-use' && e.data.deviceId === a, STEP_MS, `no alert.residual-use for ${a}`)
  const refused = await MqttDevice.connect({ url: siteBroker, deviceId: a, gatewayId: gw.id, secretKey: fleet.copiedKeys.get(a)!, connectTimeoutMs: 5000 }).then(
    async (d) => (await d.close(), null),
    (err: Error) => err.message,
  )
  check(refused !== null, `a copy of ${a}'s retired key was let in`)
  const alert = await alerted
  r.step('residual', `a copy of ${a}'s old key tries the site broker: refused (${refused}); the control plane gets alert.residual-use #${alert.seq}`, { deviceId: a, refused, alert: alert.data }, 'ok')

  // (b) offline: the wipe waits in the durable queue; delivered when it returns.
  const b = DEMO_IDS.roaming
  const bDev = fleet.mqttDevice(b)
  r.section(`(b) Retiring ${b}, offline: its wipe waits until it comes back`)
  await bDev.goOffline()
  r.step('offline', `${b} loses its link (${gw.sessionCount('mqtt', b)} sessions on the site broker)`, { deviceId: b })
  const bCmd = cp.sign('device.retire', { deviceId: b, reason: 'replaced by sensor-2b' })
  const bQueued = nextEvent(cp, (e) => e.type === 'action.queued' && e.data.deviceId === b && e.data.act === 'wipe', STEP_MS, `no wipe queued for ${b}`)
  const bDoneP = nextEvent(cp, (e) => TERMINAL.has(e.type) && e.data.jti === bCmd.jti, 2 * STEP_MS, `no outcome for the retirement of ${b}`)
  bDoneP.catch(() => {})
  r.step('command', `control plane -> device.retire {"deviceId":"${b}"}`, { deviceId: b, op: 'device.retire', jti: bCmd.jti })
  await cp.publishRaw(bCmd.jws)
  const queued = await bQueued
  const pending = gw.pendingActions(b).map((x) => ({ id: x.id, act: x.act }))
  check(pending.some((x) => x.id === queued.data.actionId), `the wipe of ${b} is not in the queue`)
  r.step('queued', `${b} is ${gw.deviceState(b)}, cut off but for the wipe-only path; wipe ${queued.data.actionId} is in the gateway's durable queue, undelivered: the command stays open`, { deviceId: b, state: gw.deviceState(b), pending }, 'warn')
  check(await bDev.goOnline(), `${b} could not come back: ${bDev.lastError?.message}`)
  r.step('returns', `${b} reconnects (wipe-only rights: it may read its commands and send acks, nothing else)`, { deviceId: b })
  const bDone = await bDoneP
  check(bDone.type === 'cmd.completed' && wipeOf(bDone) === 'done' && bDev.runtime.wiped, `retiring ${b} answered ${bDone.type} ${JSON.stringify(bDone.data)}`)
  const bEvidence = bDone.data.evidence as Json
  r.step('retired', `${b} retired: ${describeEvidence(bEvidence)}`, { deviceId: b, case: 'offline', evidence: bEvidence, deviceWiped: true }, 'ok')
  retired.push({ deviceId: b, case: 'offline', wipe: wipeOf(bDone) })

  // (c) legacy Modbus: cut off at the proxy, no wipe possible, closed by the operator.
  const c = DEMO_IDS.legacy
  r.section(`(c) Retiring ${c}, a legacy Modbus device without the hook registers`)
  const cCmd = cp.sign('device.retire', { deviceId: c, reason: 'decommissioned with line 1' })
  const cRetiring = nextEvent(cp, (e) => e.type === 'device.state' && e.data.deviceId === c && e.data.to === 'retiring', STEP_MS, `${c} not retiring`)
  const cFirstDone = nextEvent(cp, (e) => TERMINAL.has(e.type) && e.data.jti === cCmd.jti, 3 * STEP_MS, `no outcome for the first retirement of ${c}`)
  cFirstDone.catch(() => {})
  r.step('command', `control plane -> device.retire {"deviceId":"${c}"}`, { deviceId: c, op: 'device.retire', jti: cCmd.jti })
  await cp.publishRaw(cCmd.jws)
  await cRetiring
  const cut = await scadaRead(proxyPort, DEMO_UNITS.legacy)
  check('exception' in cut && cut.exception === 0x0a, `SCADA read of retiring ${c} answered ${JSON.stringify(cut)}`)
  r.step('cut-off', `a SCADA read of ${c} through the proxy now answers exception 0x0A (gateway path unavailable)`, { deviceId: c, modbusException: 0x0a })
  check(gw.retirementOpen(c) && gw.pendingActions(c).length === 0, `${c}: expected an open retirement with no wipe queued`)
  r.step('wipe', `wipe unsupported: ${c} has no hook registers (hookBase null), so nothing is queued; the retirement stays open until an operator closes it (or its deadline passes)`, { deviceId: c, wipe: 'unsupported', retirementOpen: true }, 'warn')
  const reason = 'destroyed on site, certificate of destruction D-1042'
  r.step('operator', `operator -> device.retire {"deviceId":"${c}","wipe":false,"reason":"${reason}"}`, { deviceId: c, op: 'device.retire', wipe: false, reason })
  const cDone = await run(cp, 'device.retire', { deviceId: c, wipe: false, reason })
  const first = await cFirstDone
  check(cDone.type === 'cmd.completed' && first.type === 'cmd.completed' && wipeOf(cDone) === 'not-performed', `closing ${c} answered ${cDone.type} ${JSON.stringify(cDone.data)}`)
  const cEvidence = cDone.data.evidence as Json
  r.step('retired', `${c} retired (both commands answered): ${describeEvidence(cEvidence)}`, { deviceId: c, case: 'legacy', evidence: cEvidence }, 'ok')
  retired.push({ deviceId: c, case: 'legacy', wipe: wipeOf(cDone) })

  // (d) a certificate device: retired like the others, and its certificate revoked on the CRL at once.
  const d = DEMO_IDS.camera
  const camera = fleet.camera
  r.section(`(d) Retiring ${d}, a device with a certificate of the site CA`)
  const copied = camera.device.tlsCredentials()!
  const serial = camera.device.certificate!.serial
  const crlBefore = await readCrl(gw.crlPem()!)
  r.step('command', `control plane -> device.retire {"deviceId":"${d}"}`, { deviceId: d, op: 'device.retire' })
  const dDone = await run(cp, 'device.retire', { deviceId: d, reason: 'camera replaced' })
  check(dDone.type === 'cmd.completed' && wipeOf(dDone) === 'done' && camera.runtime.wiped, `retiring ${d} answered ${dDone.type} ${JSON.stringify(dDone.data)}`)
  const dEvidence = dDone.data.evidence as Json
  r.step('retired', `${d} retired: ${describeEvidence(dEvidence)}; the device erased its key`, { deviceId: d, case: 'certificate', evidence: dEvidence, deviceWiped: true }, 'ok')
  const crlAfter = await readCrl(gw.crlPem()!)
  const listed = crlAfter.entries.get(serial.toLowerCase().replace(/^0+/, ''))
  check(listed !== undefined && crlBefore.entries.size < crlAfter.entries.size, `serial ${serial} is not on the CRL the gateway serves`)
  r.step('crl', `the CRL the gateway serves (CRL Number ${crlBefore.number} -> ${crlAfter.number}) lists serial ${serial}, reason ${listed}`, { deviceId: d, serial, reason: listed, crlNumber: crlAfter.number }, 'ok')
  const refusedCert = await certificateRefused(`mqtts://127.0.0.1:${gw.siteBrokerTlsPort}`, d, copied, gw.siteCa)
  check(refusedCert !== null, `a copy of ${d}'s revoked certificate and key was let in`)
  r.step('residual', `a copy of ${d}'s certificate and key tries the TLS listener: refused (${refusedCert})`, { deviceId: d, refused: refusedCert }, 'ok')
  retired.push({ deviceId: d, case: 'certificate', wipe: wipeOf(dDone), serial })

  r.section('Afterwards')
  const inventory = nextEvent(cp, (e) => e.type === 'inventory', STEP_MS, 'no inventory')
  await cp.send('inventory.report')
  const devices = (await inventory).data.devices as { id: string; state: string }[]
  r.step('inventory', devices.map((d) => `${d.id} ${d.state}`).join(', '), { devices })
  const verdict = await gw.verifyAudit()
  check(verdict.ok, `the audit log does not verify: ${JSON.stringify(verdict)}`)
  r.step('audit', `audit log verifies: ${verdict.entries} entries, hash-chained and signed by the gateway key`, { verdict }, 'ok')
  // Everything the gateway has signed so far has arrived (the inventory's own
  // cmd.completed comes after the inventory); later events are not shown, so
  // the summary is the last line.
  const lastSeq = gw.lastEventSeq()
  if (r.events < lastSeq) await nextEvent(cp, (e) => e.seq >= lastSeq, STEP_MS, `event ${lastSeq}`)
  stopPrinting()
  check(cp.gaps.length === 0 && cp.invalid.length === 0, `events: gaps ${JSON.stringify(cp.gaps)}, invalid ${cp.invalid.length}`)
  r.step('events', `${r.events} signed events received, every signature verified, no gap in seq`, { events: r.events, gaps: 0 }, 'ok')
  return { retired, auditEntries: verdict.entries, events: r.events }
}

/** `p`, or a DemoError once `ms` have passed. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DemoError(`demo: ${what} within ${ms} ms`)), ms)
      timer.unref() // while the demo runs its servers hold the process; once they are stopped nothing should
    }),
  ]).finally(() => clearTimeout(timer))
}
