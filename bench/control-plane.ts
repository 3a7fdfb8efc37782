// The control-plane service against its anchors, in one run:
// - intake: signed events from simulated gateways, published over one real
//   Mosquitto by one load generator, until the service (a real child
//   process, `edgewarden control-plane`) has stored every one: events per
//   second into PostgreSQL and into PGlite; and the same generator with the
//   same events to a bare subscriber of the same shared subscription, which
//   is the broker's own rate;
// - fan-out: one API request per gateway (enrollments, so nothing must exist
//   first) to 100 simulated gateways that answer each command with signed
//   cmd.accepted and cmd.completed events: commands per second delivered to
//   the gateways, and completed (stored with their outcome); against the
//   broker's own fan-out rate, the same number of messages of the same size
//   from one publisher to the same 100 subscribers.
// Every figure is of this machine and this run, with the anchor beside it.
//
// Runs on its own (`node --import tsx bench/control-plane.ts [--events N]
// [--gateways G] [--commands-per-gateway K] [--engines postgres,pglite]`,
// printing JSON), or from another script: runControlPlaneBench(opts).
// PostgreSQL: EDGEWARDEN_BENCH_DATABASE_URL (an admin URL of a running
// server), else a throwaway server (test/control-plane/helpers/postgres.ts).
import { spawn } from 'node:child_process'
import { sign, type KeyObject } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import mqtt, { type MqttClient } from 'mqtt'
import pg from 'pg'
import { generateKeyPair, writeKeyFile } from '../agent/store/keys.ts'
import { b64urlDecode, fromUtf8, utf8 } from '../wire/base64url.ts'
import { newJti } from '../wire/ids.ts'
import { assembleJws, jwsSigningInput } from '../wire/jws.ts'
import { MOSQUITTO, Procs, readyLine, ROOT, startMosquitto } from './anchors.ts'

export interface ControlPlaneBenchOptions {
  /** events in the intake run (spread over `intakeGateways`) */
  events?: number
  intakeGateways?: number
  /** simulated gateways of the fan-out run */
  gateways?: number
  commandsPerGateway?: number
  engines?: ('postgres' | 'pglite')[]
  /** each figure is given up on past this */
  timeoutMs?: number
  log?: (line: string) => void
}

export interface Rate {
  count: number
  seconds: number
  perSecond: number
}

export interface ControlPlaneBenchResult {
  machine: { cpus: number; cpuModel: string; node: string; mosquitto: string | null }
  options: Required<Omit<ControlPlaneBenchOptions, 'log'>>
  intake: { broker: Rate; engines: Record<string, Rate & { vsBroker: number }> }
  fanout: { broker: Rate; engines: Record<string, { delivered: Rate & { vsBroker: number }; completed: Rate }> }
}

const KID = 'bench-cp'
const SITE = 'bench'
const SHARE = 'edgewarden-cp'

const rate = (count: number, ms: number): Rate => ({ count, seconds: Math.round(ms) / 1000, perSecond: Math.round((count / ms) * 1000) })

/** A gateway the generator plays: its key, and events it signs with gapless seqs. */
class SimGateway {
  readonly id: string
  readonly publicKey: string
  readonly #key: KeyObject
  seq = 0
  constructor(id: string) {
    const k = generateKeyPair()
    this.id = id
    this.publicKey = k.publicKeyB64
    this.#key = k.privateKey
  }
  event(type: string, data: Record<string, unknown>): string {
    const input = jwsSigningInput(this.id, { iss: this.id, aud: 'cp', iat: Math.floor(Date.now() / 1000), jti: newJti('evt.'), seq: ++this.seq, type, data })
    return assembleJws(input, new Uint8Array(sign(null, utf8(input), this.#key)))
  }
  get topic(): string {
    return `edgewarden/v1/${SITE}/${this.id}/evt`
  }
}

const connectClient = (url: string, clientId: string, clean = true): Promise<MqttClient> => mqtt.connectAsync(url, { clientId, clean, protocolVersion: 4, reconnectPeriod: 0, keepalive: 60 })

/**
 * The one load generator: every message published QoS 1 on its own
 * connection per source, at most `window` unacknowledged per connection.
 * Resolves when every PUBACK is in.
 */
async function publishAll(url: string, sources: { topic: string; payloads: string[] }[], window = 100): Promise<void> {
  await Promise.all(
    sources.map(async (s, i) => {
      const c = await connectClient(url, `bench-gen-${i}-${newJti().slice(4, 12)}`)
      try {
        let next = 0
        await Promise.all(
          Array.from({ length: Math.min(window, s.payloads.length) }, async () => {
            while (next < s.payloads.length) await c.publishAsync(s.topic, s.payloads[next++]!, { qos: 1 })
          }),
        )
      } finally {
        await c.endAsync()
      }
    }),
  )
}

/** `p`, or an Error saying `message()` (what was missing then) past `timeoutMs`. */
function within<T>(p: Promise<T>, timeoutMs: number, message: () => string): Promise<T> {
  return Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(message())), timeoutMs).unref())])
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number, everyMs = 50): Promise<void> {
  const t0 = performance.now()
  while (!(await check())) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, everyMs))
  }
}

interface RunningCp {
  base: string
  stderr(): string
  exited: Promise<number | null>
  token: string
  api<T = any>(method: string, path: string, body?: unknown): Promise<T>
  stop(): Promise<void>
}

/** `edgewarden control-plane` as its own process (its CPU is its own), until its ready line. */
async function spawnCp(procs: Procs, o: { broker: string; database?: string; work: string; name: string }): Promise<RunningCp> {
  const key = generateKeyPair()
  const keyFile = join(o.work, `${o.name}.key`)
  writeKeyFile(keyFile, key)
  const dataDir = join(o.work, o.name)
  const flags: Record<string, string> = { 'data-dir': dataDir, broker: o.broker, key: keyFile, kid: KID, 'http-port': '0', tick: '50ms', 'resend-after': '30s', 'resend-max': '60s', 'log-level': 'info', ...(o.database ? { database: o.database } : {}) }
  const proc = spawn(process.execPath, [join(ROOT, 'bin', 'edgewarden.js'), 'control-plane', ...Object.entries(flags).flat().map((v, i) => (i % 2 ? v : `--${v}`))], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  const child = procs.add(o.name, proc)
  const ready = await readyLine(
    child,
    30_000,
    () => new Error(`${o.name}: no ready line within 30 s: ${child.stderr()}`),
    (code) => new Error(`${o.name} exited (${code}): ${child.stderr()}`),
  )
  const base = `http://127.0.0.1:${ready.http.port}`
  const token = readFileSync(join(dataDir, 'admin.token'), 'utf8').trim()
  const api = async (method: string, path: string, body?: unknown): Promise<any> => {
    const call = (): Promise<Response> => fetch(`${base}${path}`, { method, headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) })
    // A kept-alive connection the server closed meanwhile: a GET is asked again once.
    const res = await call().catch((err: unknown) => (method === 'GET' ? call() : Promise.reject(err)))
    const text = await res.text()
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`)
    return JSON.parse(text)
  }
  // Its intake sessions up before anything is measured.
  await until(`${o.name} ready`, async () => (await fetch(`${base}/readyz`)).ok, 30_000, 100)
  return { base, token, api, stderr: () => child.stderr(), exited: child.exited, stop: () => child.stop('SIGTERM', 10_000) }
}

/** Events stored so far, per the service: the sum of every gateway's gapless seq. */
async function storedEvents(cp: RunningCp): Promise<number> {
  const gws = (await cp.api('GET', '/v1/gateways')).items as { history: { contiguousSeq: number | null } }[]
  return gws.reduce((n, g) => n + (g.history.contiguousSeq ?? 0), 0)
}

/** The broker's own intake rate: the same generator and events to a bare subscriber of the shared subscription. */
async function brokerIntake(url: string, sources: { topic: string; payloads: string[] }[], timeoutMs: number): Promise<Rate> {
  const total = sources.reduce((n, s) => n + s.payloads.length, 0)
  const subs = await Promise.all(Array.from({ length: 4 }, (_, k) => connectClient(url, `bench-anchor-${k}`)))
  let got = 0
  let done: () => void = () => {}
  const all = new Promise<void>((r) => (done = r))
  for (const s of subs) {
    s.on('message', () => void (++got === total && done()))
    await s.subscribeAsync(`$share/bench-anchor/edgewarden/v1/+/+/evt`, { qos: 1 })
  }
  const t0 = performance.now()
  await publishAll(url, sources)
  await within(all, timeoutMs, () => `broker anchor: ${got} of ${total} within ${timeoutMs} ms`)
  const r = rate(total, performance.now() - t0)
  await Promise.all(subs.map((s) => s.endAsync()))
  return r
}

function makeIntakeLoad(gateways: SimGateway[], events: number): { topic: string; payloads: string[] }[] {
  const per = Math.ceil(events / gateways.length)
  // Signed before the clock starts: the generator's signing is not what is measured.
  return gateways.map((g) => ({
    topic: g.topic,
    payloads: Array.from({ length: per }, (_, i) => g.event('device.state', { deviceId: `${g.id}-d${i % 50}`, from: 'active', to: i % 2 ? 'quarantined' : 'active', cause: 'bench' })),
  }))
}

/** 100 simulated gateways: each takes its commands and answers every one with cmd.accepted and cmd.completed. */
async function startSimGateways(url: string, gateways: SimGateway[], onCommand: () => void, answer: boolean): Promise<{ stop(): Promise<void> }> {
  const clients = await Promise.all(
    gateways.map(async (g) => {
      const c = await connectClient(url, `bench-sim-${g.id}`)
      c.on('message', (_topic, payload) => {
        onCommand()
        if (!answer) return
        const claims = JSON.parse(fromUtf8(b64urlDecode(payload.toString().split('.')[1]!)!)) as { jti: string; op: string; args: { device?: { id: string } } }
        const data = { jti: claims.jti, op: claims.op, ...(claims.args.device ? { deviceId: claims.args.device.id } : {}) }
        void c.publishAsync(g.topic, g.event('cmd.accepted', data), { qos: 1 }).then(() => c.publishAsync(g.topic, g.event('cmd.completed', { ...data, evidence: {} }), { qos: 1 }))
      })
      await c.subscribeAsync(`edgewarden/v1/${SITE}/${g.id}/cmd`, { qos: 1 })
      return c
    }),
  )
  return { stop: async () => void (await Promise.all(clients.map((c) => c.endAsync()))) }
}

export async function runControlPlaneBench(opts: ControlPlaneBenchOptions = {}): Promise<ControlPlaneBenchResult> {
  const o = {
    events: opts.events ?? 5000,
    intakeGateways: opts.intakeGateways ?? 10,
    gateways: opts.gateways ?? 100,
    commandsPerGateway: opts.commandsPerGateway ?? 20,
    engines: opts.engines ?? (['postgres', 'pglite'] as ('postgres' | 'pglite')[]),
    timeoutMs: opts.timeoutMs ?? 180_000,
  }
  const log = opts.log ?? ((line: string) => void process.stderr.write(`${line}\n`))
  if (!MOSQUITTO) throw new Error('bench/control-plane.ts needs mosquitto (apt-get install mosquitto)')
  const procs = new Procs()
  const work = mkdtempSync(join(tmpdir(), 'edgewarden-bench-cp-'))
  let pgServer: { adminUrl: string; createDatabase(): Promise<string>; stop(): Promise<void> } | null = null
  try {
    const broker = await startMosquitto(procs, 'mosquitto', join(work, 'mosquitto'))
    const database = async (): Promise<string> => {
      const external = process.env.EDGEWARDEN_BENCH_DATABASE_URL
      if (external) {
        const name = `cp_bench_${process.pid}_${Date.now().toString(36)}`
        const c = new pg.Client({ connectionString: external })
        await c.connect()
        await c.query(`CREATE DATABASE ${name}`)
        await c.end()
        const u = new URL(external)
        u.pathname = `/${name}`
        return u.toString()
      }
      if (!pgServer) {
        const { PgServer } = await import('../test/control-plane/helpers/postgres.ts')
        pgServer = await PgServer.start()
      }
      return pgServer.createDatabase()
    }

    // Intake: the broker's own rate, then each engine with the same load.
    const intakeGws = Array.from({ length: o.intakeGateways }, (_, i) => new SimGateway(`gw-i${i}`))
    const brokerRate = await brokerIntake(broker.url, makeIntakeLoad(intakeGws.map((g) => new SimGateway(g.id)), o.events), o.timeoutMs)
    log(`intake, Mosquitto alone: ${brokerRate.perSecond} events/s`)
    const intake: ControlPlaneBenchResult['intake'] = { broker: brokerRate, engines: {} }
    const fanout: ControlPlaneBenchResult['fanout'] = { broker: { count: 0, seconds: 0, perSecond: 0 }, engines: {} }

    // Fan-out: the broker's own rate first (the same number and size of messages to the same subscribers).
    const fanGws = Array.from({ length: o.gateways }, (_, i) => new SimGateway(`gw-f${i}`))
    const nCommands = o.gateways * o.commandsPerGateway
    {
      let got = 0
      let done: () => void = () => {}
      const all = new Promise<void>((r) => (done = r))
      const sims = await startSimGateways(broker.url, fanGws, () => void (++got === nCommands && done()), false)
      const sample = fanGws[0]!.event('device.enroll', { device: { id: 'sample-device-000', publicKey: generateKeyPair().publicKeyB64 } })
      const t0 = performance.now()
      // one publisher for every topic, as the service publishes
      const pub = await connectClient(broker.url, 'bench-fan-anchor')
      let inflight: Promise<unknown>[] = []
      for (let k = 0; k < o.commandsPerGateway; k++) {
        for (const g of fanGws) {
          inflight.push(pub.publishAsync(`edgewarden/v1/${SITE}/${g.id}/cmd`, sample, { qos: 1 }))
          if (inflight.length >= 100) {
            await Promise.all(inflight)
            inflight = []
          }
        }
      }
      await Promise.all(inflight)
      await within(all, o.timeoutMs, () => `fan-out anchor: ${got} of ${nCommands}`)
      fanout.broker = rate(nCommands, performance.now() - t0)
      await pub.endAsync()
      await sims.stop()
      log(`fan-out, Mosquitto alone: ${fanout.broker.perSecond} messages/s to ${o.gateways} subscribers`)
    }

    for (const engine of o.engines) {
      const cp = await spawnCp(procs, { broker: broker.url, ...(engine === 'postgres' ? { database: await database() } : {}), work, name: `cp-${engine}` })
      try {
        const gws = intakeGws.map((g) => new SimGateway(g.id))
        for (const g of gws) await cp.api('POST', '/v1/gateways', { site: SITE, id: g.id, publicKey: g.publicKey })
        const load = makeIntakeLoad(gws, o.events)
        const total = load.reduce((n, s) => n + s.payloads.length, 0)
        const t0 = performance.now()
        await publishAll(broker.url, load)
        await until(`${engine}: ${total} events stored`, async () => (await storedEvents(cp)) >= total, o.timeoutMs, 100)
        const r = rate(total, performance.now() - t0)
        intake.engines[engine] = { ...r, vsBroker: Math.round((r.perSecond / brokerRate.perSecond) * 1000) / 1000 }
        log(`intake, ${engine}: ${r.perSecond} events/s stored (${intake.engines[engine]!.vsBroker} of the broker's rate)`)

        // Fan-out to the simulated gateways, which answer.
        const fgs = fanGws.map((g) => new SimGateway(g.id))
        for (const g of fgs) await cp.api('POST', '/v1/gateways', { site: SITE, id: g.id, publicKey: g.publicKey })
        let got = 0
        let allIn: () => void = () => {}
        const delivered = new Promise<void>((r) => (allIn = r))
        let deliveredMs = 0
        const sims = await startSimGateways(broker.url, fgs, () => {
          if (++got === nCommands) {
            deliveredMs = performance.now() - f0
            allIn()
          }
        }, true)
        const key = generateKeyPair().publicKeyB64
        const before = await storedEvents(cp)
        const f0 = performance.now()
        await Promise.all(fgs.map((g, gi) => cp.api('POST', '/v1/commands', { op: 'device.enroll', site: SITE, gateway: g.id, devices: Array.from({ length: o.commandsPerGateway }, (_, k) => ({ id: `dev-${gi}-${k}`, publicKey: key })) })))
        await within(delivered, o.timeoutMs, () => `${engine} fan-out: ${got} of ${nCommands} delivered`)
        await until(`${engine}: every command completed`, async () => (await storedEvents(cp)) - before >= 2 * nCommands && (await cp.api('GET', '/v1/commands?waiting=true&limit=1')).items.length === 0, o.timeoutMs, 100)
        const completedMs = performance.now() - f0
        const d = rate(nCommands, deliveredMs)
        fanout.engines[engine] = { delivered: { ...d, vsBroker: Math.round((d.perSecond / fanout.broker.perSecond) * 1000) / 1000 }, completed: rate(nCommands, completedMs) }
        log(`fan-out, ${engine}: ${d.perSecond} commands/s delivered to ${o.gateways} gateways, ${fanout.engines[engine]!.completed.perSecond} commands/s completed`)
        await sims.stop()
      } catch (err) {
        const gone = await Promise.race([cp.exited.then((code) => `exited (${code})`), new Promise<null>((r) => setTimeout(() => r(null), 100))])
        throw new Error(`${engine}: ${(err as Error).message}${gone ? `; the service ${gone}: ${cp.stderr().slice(-2000)}` : ''}`, { cause: err })
      } finally {
        await cp.stop()
      }
    }
    return {
      machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', node: process.version, mosquitto: MOSQUITTO },
      options: o,
      intake,
      fanout,
    }
  } finally {
    await procs.stopAll()
    await (pgServer as { stop(): Promise<void> } | null)?.stop()
    rmSync(work, { recursive: true, force: true })
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { values } = parseArgs({ options: { events: { type: 'string' }, 'intake-gateways': { type: 'string' }, gateways: { type: 'string' }, 'commands-per-gateway': { type: 'string' }, engines: { type: 'string' } }, strict: true })
  const num = (v: string | undefined): number | undefined => (v === undefined ? undefined : Number(v))
  const result = await runControlPlaneBench({
    ...(values.events ? { events: num(values.events)! } : {}),
    ...(values['intake-gateways'] ? { intakeGateways: num(values['intake-gateways'])! } : {}),
    ...(values.gateways ? { gateways: num(values.gateways)! } : {}),
    ...(values['commands-per-gateway'] ? { commandsPerGateway: num(values['commands-per-gateway'])! } : {}),
    ...(values.engines ? { engines: values.engines.split(',') as ('postgres' | 'pglite')[] } : {}),
  })
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
}
