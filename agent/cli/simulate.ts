// `edgewarden simulate`: a fleet of simulated devices (simulators/fleet.ts)
// against the running agent: each enrolled through the admin socket, then
// coming and going by the intermittency model; a reconnect storm on
// SIGUSR1 or every --storm-every seconds; optionally the control-plane side
// (--central): the gateway's events followed, signatures checked, gaps
// counted. Prints the fleet's state every --report-every seconds and at the
// end (after --duration seconds, or on Ctrl-C). Devices dial the agent's own
// MQTT port (its admin socket says which); what was enrolled is removed at
// the end unless --keep.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ControlPlane } from '../../simulators/control-plane.ts'
import { DEFAULT_MIX, Fleet, PROTOCOLS, seededRandom, splitMix, type FleetMix, type FleetStats } from '../../simulators/fleet.ts'
import { adminRequest, expectOk } from './admin-client.ts'
import { dataDirOf, out } from './common.ts'
import { parseVerbArgs } from './main.ts'
import { UsageError } from './usage.ts'

const num = (name: string, v: unknown, ok: (n: number) => boolean, what: string): number | undefined => {
  if (v === undefined) return undefined
  const n = Number(v)
  if (typeof v !== 'string' || v.trim() === '' || !Number.isFinite(n) || !ok(n)) throw new UsageError(`--${name} must be ${what}, not ${JSON.stringify(v)}`)
  return n
}

/** mqtt=80,modbus=15,opcua=5 (weights; protocols left out weigh 0). */
export function parseMix(s: string): FleetMix {
  const mix: FleetMix = { mqtt: 0, modbus: 0, opcua: 0 }
  for (const part of s.split(',')) {
    const m = /^\s*(\w+)\s*=\s*(\d+(?:\.\d+)?)\s*$/.exec(part)
    if (!m || !(PROTOCOLS as readonly string[]).includes(m[1]!)) throw new UsageError(`--mix ${s}: expected PROTOCOL=WEIGHT,… with protocols ${PROTOCOLS.join(', ')}, e.g. mqtt=80,modbus=15,opcua=5`)
    mix[m[1] as keyof FleetMix] = Number(m[2])
  }
  if (mix.mqtt + mix.modbus + mix.opcua <= 0) throw new UsageError(`--mix ${s}: at least one weight must be above 0`)
  return mix
}

export async function runSimulate(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, {
    devices: { type: 'string' },
    mix: { type: 'string' },
    'online-fraction': { type: 'string' },
    'mean-offline': { type: 'string' },
    duration: { type: 'string' },
    'storm-every': { type: 'string' },
    'report-every': { type: 'string' },
    prefix: { type: 'string' },
    'mqtt-url': { type: 'string' },
    central: { type: 'string' },
    site: { type: 'string' },
    gateway: { type: 'string' },
    seed: { type: 'string' },
    keep: { type: 'boolean' },
    json: { type: 'boolean' },
  })
  if (positionals.length) throw new UsageError('simulate takes no arguments')
  // Everything is checked before anything is enrolled.
  const size = num('devices', values.devices, (n) => Number.isInteger(n) && n >= 1 && n <= 100_000, 'a whole number from 1 to 100000') ?? 20
  const mix = values.mix === undefined ? DEFAULT_MIX : parseMix(values.mix)
  const counts = splitMix(size, mix)
  const onlineFraction = num('online-fraction', values['online-fraction'], (n) => n >= 0 && n <= 1, 'within 0..1') ?? 0.9
  const meanOfflineS = num('mean-offline', values['mean-offline'], (n) => n > 0, 'seconds above 0') ?? 60
  const durationS = num('duration', values.duration, (n) => n > 0, 'seconds above 0')
  const stormEveryS = num('storm-every', values['storm-every'], (n) => n > 0, 'seconds above 0')
  const reportEveryS = num('report-every', values['report-every'], (n) => n > 0, 'seconds above 0') ?? 5
  const seed = num('seed', values.seed, (n) => Number.isInteger(n), 'a whole number')
  const prefix = values.prefix ?? 'sim'
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,40}$/.test(prefix)) throw new UsageError(`--prefix ${prefix}: letters, digits, . _ - (up to 41, starting with a letter or digit)`)
  if (values['mqtt-url'] !== undefined && !/^mqtts?:\/\//.test(values['mqtt-url'])) throw new UsageError(`--mqtt-url ${values['mqtt-url']}: expected mqtt://HOST:PORT`)
  if (values.central !== undefined && !/^mqtts?:\/\//.test(values.central)) throw new UsageError(`--central ${values.central}: expected mqtt://HOST:PORT`)

  const dataDir = dataDirOf(values['data-dir'])
  const identity = expectOk(await adminRequest(dataDir, 'GET', '/v1/identity')) as {
    site: string
    gateway: string
    publicKey: string
    listeners?: { mqtt: { host: string; port: number | null } }
  }
  // The agent's own listener, whatever port it was started on (a wildcard address is dialled on loopback).
  const listen = identity.listeners?.mqtt
  if (values['mqtt-url'] === undefined && (!listen || listen.port === null)) {
    throw new UsageError('the agent has no plain MQTT listener (--mqtt-port off): give --mqtt-url mqtt://HOST:PORT of one the devices can reach')
  }
  const dial = (h: string): string => (h === '0.0.0.0' || h === '::' ? '127.0.0.1' : h.includes(':') ? `[${h}]` : h)
  const mqttUrl = values['mqtt-url'] ?? `mqtt://${dial(listen!.host)}:${listen!.port}`
  // An id left by an earlier run (--keep) is not taken over: the fleet makes new keys, and replacing a record is a deliberate act.
  const taken = (expectOk(await adminRequest(dataDir, 'GET', '/v1/devices')) as { devices: { id: string }[] }).devices.map((d) => d.id).filter((id) => id.startsWith(`${prefix}-`))
  if (taken.length) {
    throw new UsageError(`${taken.length} device(s) with the prefix ${prefix}- are enrolled already (${taken.slice(0, 3).join(', ')}${taken.length > 3 ? ', …' : ''}; left by a run with --keep?): remove them (edgewarden device remove ID) or give another --prefix`)
  }
  const json = values.json === true
  const say = (obj: Record<string, unknown>, text: string): void => out(json ? JSON.stringify(obj) : text)

  const workDir = mkdtempSync(join(tmpdir(), 'edgewarden-simulate-'))
  const enrolled: string[] = []
  let fleet: Fleet | null = null
  let cp: ControlPlane | null = null
  const cpCounts: Record<string, number> = {}
  let unverified = 0
  const timers: NodeJS.Timeout[] = []
  try {
    if (values.central !== undefined) {
      cp = new ControlPlane({ broker: values.central, site: values.site ?? identity.site, gateway: values.gateway ?? identity.gateway, gatewayKey: identity.publicKey })
      await cp.connect()
      cp.onEvent((e) => {
        cpCounts[e.type] = (cpCounts[e.type] ?? 0) + 1
        if (e.verified !== true) unverified++
      })
    }
    const started = performance.now()
    say({ event: 'enrolling', devices: size, ...counts }, `enrolling ${size} devices: ${counts.mqtt} MQTT, ${counts.modbus} Modbus, ${counts.opcua} OPC UA`)
    fleet = await Fleet.create({
      size,
      mix,
      prefix,
      gatewayId: identity.gateway,
      gatewayPublicKey: identity.publicKey,
      mqttUrl,
      workDir,
      onlineFraction,
      meanOfflineS,
      ...(seed !== undefined ? { random: seededRandom(seed) } : {}),
      enroll: async (device) => {
        expectOk(await adminRequest(dataDir, 'POST', '/v1/devices', { device, reason: 'edgewarden simulate' }))
        enrolled.push(device.id)
      },
    })
    const f = fleet
    const report = (event: string): void => {
      const s: FleetStats = f.stats()
      const cpPart = cp ? { controlPlane: { events: { ...cpCounts }, gaps: cp.gaps.length, invalid: cp.invalid.length, unverified } } : {}
      say(
        { event, t: Math.round((performance.now() - started) / 100) / 10, ...s, ...cpPart },
        `${event}: ${s.online}/${s.size} online (MQTT ${s.byProtocol.mqtt.online}/${s.byProtocol.mqtt.size}, Modbus ${s.byProtocol.modbus.online}/${s.byProtocol.modbus.size}, OPC UA ${s.byProtocol.opcua.online}/${s.byProtocol.opcua.size}); ` +
          `${s.ups} ups, ${s.downs} downs, ${s.failures} refused, ${s.actions} actions, ${s.wiped} wiped` +
          (cp ? `; control plane: ${Object.values(cpCounts).reduce((a, b) => a + b, 0)} events, ${cp.gaps.length} gaps, ${cp.invalid.length + unverified} not verified` : ''),
      )
    }
    let storming: Promise<void> | null = null
    const storm = (): void => {
      if (storming) return
      storming = f
        .storm()
        .then((r) => {
          say({ event: 'storm', ms: Math.round(r.ms), online: r.online, failed: r.failed }, `storm: ${r.online} devices back at once in ${Math.round(r.ms)} ms (${r.failed} refused)`)
          f.start()
        })
        .finally(() => (storming = null))
    }
    fleet.start()
    report('running')
    timers.push(setInterval(() => report('fleet'), reportEveryS * 1000))
    if (stormEveryS !== undefined) timers.push(setInterval(storm, stormEveryS * 1000))
    await new Promise<void>((resolve) => {
      const done = (): void => {
        process.off('SIGINT', done)
        process.off('SIGTERM', done)
        process.off('SIGUSR1', storm)
        resolve()
      }
      process.once('SIGINT', done)
      process.once('SIGTERM', done)
      process.on('SIGUSR1', storm)
      if (durationS !== undefined) timers.push(setTimeout(done, durationS * 1000))
    })
    for (const t of timers) clearInterval(t)
    await (storming ?? Promise.resolve())
    await fleet.pause()
    report('stopped')
    return 0
  } finally {
    for (const t of timers) clearInterval(t)
    await fleet?.close()
    await cp?.close()
    rmSync(workDir, { recursive: true, force: true })
    // What it enrolled goes again (revoked, then removed: audited), unless --keep; a device the run left cut or retiring stays, named.
    if (!values.keep && enrolled.length) await removeEnrolled(dataDir, enrolled, say)
  }
}

async function removeEnrolled(dataDir: string, ids: string[], say: (obj: Record<string, unknown>, text: string) => void): Promise<void> {
  const kept: string[] = []
  let removed = 0
  for (const id of ids) {
    const r = await adminRequest(dataDir, 'DELETE', `/v1/devices/${encodeURIComponent(id)}`, { reason: 'edgewarden simulate ended' }).catch(() => null)
    if (r?.status === 200) removed++
    else kept.push(id)
  }
  say(
    { event: 'removed', devices: removed, ...(kept.length ? { kept } : {}) },
    `removed the ${removed} device(s) it enrolled${kept.length ? `; kept ${kept.length} it could not remove (cut or retiring: see device show): ${kept.join(', ')}` : ''} (--keep keeps them)`,
  )
}
