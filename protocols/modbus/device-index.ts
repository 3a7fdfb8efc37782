// Which enrolled device a Modbus unit id names, and the gateway's one link to
// each Modbus device. Kept coherent with the registry through device changes
// (enrollment, re-enrollment with a new target, state changes); the state
// itself is always read live from the registry, never cached here.
//
// It also keeps what each device says it is (Read Device Identification,
// Modbus App Proto §6.21), for the inventory: read through the device's own
// link, after the link's first answer, once per device and target. A device
// that refuses the function, answers it badly or not at all is not asked
// again until its target changes (asking again would hold up the link, and
// a timeout would drop its connection, every time); one whose link went
// down before it answered is asked again after the next answer.
import type { DeviceRecord } from '../../agent/devices/device.ts'
import type { Gateway } from '../../agent/gateway.ts'
import type { Logger } from '../../agent/observe/logger.ts'
import { DeviceLink, ModbusLinkError, type ModbusTarget } from './device-link.ts'
import { DeviceIdRefused, readBasicIdentification, type BasicIdentification } from './identification.ts'
import { DEFAULT_HOOK_BASE, HOOK_REGISTERS } from '../../wire/protocol.ts'
import { inService } from '../../agent/trust/rights.ts'

/** PROTOCOL §7: holding registers from hookBase; absent means the default. */
export { DEFAULT_HOOK_BASE, HOOK_REGISTERS }
/** PROTOCOL §7 map: cmd, actionSeq (2), status, envLen, then the envelope of at most 16 KiB (§1) at two bytes a register. */


/** How often a device nothing else talked to is asked whether it is there, and how many at once. */
export const PRESENCE_EVERY_MS = 60_000
const PRESENCE_BATCH = 100
/** FC 17 Report Server ID (Modbus App Proto §6.13): read-only, one byte */
const REPORT_SERVER_ID = Buffer.from([0x11])

/** The device's hook base, or null for a legacy device (`hookBase: null`) or a device without Modbus. */
export function hookBaseOf(r: DeviceRecord): number | null {
  const m = r.spec.modbus
  if (!m || m.hookBase === null) return null
  return m.hookBase ?? DEFAULT_HOOK_BASE
}

/** Does [start, start + quantity) touch the hook registers [hookBase, hookBase + HOOK_REGISTERS)? */
export function touchesHook(hookBase: number, start: number, quantity: number): boolean {
  return start < hookBase + HOOK_REGISTERS && hookBase < start + quantity
}

export type Route = { kind: 'device'; record: DeviceRecord; link: DeviceLink } | { kind: 'unmapped' } | { kind: 'ambiguous'; deviceIds: string[] }

export interface ModbusDeviceIndexOptions {
  timeoutMs: number
  log: Logger
  maxQueue?: number
}

type ReachabilityListener = (deviceId: string, up: boolean) => void

/** A device's target as a link sees it (strictUnitId defaults to true). */
const targetOf = (m: NonNullable<DeviceRecord['spec']['modbus']>): Required<ModbusTarget> => ({ host: m.host, port: m.port, unitId: m.unitId, strictUnitId: m.strictUnitId ?? true })
const sameTarget = (a: ModbusTarget, b: ModbusTarget): boolean => a.host === b.host && a.port === b.port && a.unitId === b.unitId && (a.strictUnitId ?? true) === (b.strictUnitId ?? true)

/** What the gateway knows of a device's identification: being read, read (seconds since the epoch), or not to be asked again. */
type Identity = { status: 'reading' } | { status: 'known'; info: BasicIdentification; atS: number } | { status: 'unsupported' }

export class ModbusDeviceIndex {
  readonly #gw: Gateway
  readonly #opts: ModbusDeviceIndexOptions
  /** unit id -> ids of devices that claim it */
  #byUnit = new Map<number, string[]>()
  /** ids in #byUnit: whose changes can change the index */
  #indexed = new Set<string>()
  readonly #links = new Map<string, DeviceLink>()
  readonly #reachability = new Set<ReachabilityListener>()
  readonly #warnedAmbiguous = new Set<number>()
  readonly #identity = new Map<string, Identity>()
  /** when each device last answered anything (performance.now()) */
  readonly #answeredAt = new Map<string, number>()
  #presence: NodeJS.Timeout | null = null
  #unsubscribe: (() => void) | null = null
  #stopped = false

  constructor(gw: Gateway, opts: ModbusDeviceIndexOptions) {
    this.#gw = gw
    this.#opts = opts
    this.#rebuild()
    this.#unsubscribe = gw.onDeviceChange(({ record }) => {
      const id = record.spec.id
      const link = this.#links.get(id)
      const m = record.spec.modbus
      // A new target (or no Modbus any more) replaces the link; cut-off is the adapter's closeSessions.
      if (link && (!m || !sameTarget(link.target, targetOf(m)))) {
        link.destroy()
        this.#links.delete(id)
        // another target may well be another device
        this.#identity.delete(id)
      }
      // Only a change of a Modbus device (or of one that was) can change the
      // index: rebuilding on every change would cost O(registry) per change.
      if (m || this.#indexed.has(id)) this.#rebuild()
    })
  }

  #rebuild(): void {
    const byUnit = new Map<number, string[]>()
    for (const r of this.#gw.registry.mayHoldProtocolOrCertificate()) {
      const m = r.spec.modbus
      if (!m) continue
      const ids = byUnit.get(m.unitId) ?? []
      ids.push(r.spec.id)
      byUnit.set(m.unitId, ids)
    }
    this.#byUnit = byUnit
    this.#indexed = new Set([...byUnit.values()].flat())
  }

  onReachability(listener: ReachabilityListener): () => void {
    this.#reachability.add(listener)
    return () => this.#reachability.delete(listener)
  }

  /**
   * The device a proxy request for `unitId` goes to. A retired device gives
   * up its unit id to a later enrollment; two live claims on one unit id are
   * ambiguous, and answered as unavailable rather than guessed.
   */
  route(unitId: number): Route {
    const ids = this.#byUnit.get(unitId) ?? []
    const records = ids.map((id) => this.#gw.registry.get(id)).filter((r): r is DeviceRecord => r !== undefined)
    const live = records.filter((r) => r.state !== 'retired')
    const pick = live.length > 0 ? live : records
    if (pick.length === 0) return { kind: 'unmapped' }
    if (live.length > 1) {
      if (!this.#warnedAmbiguous.has(unitId)) {
        this.#warnedAmbiguous.add(unitId)
        this.#opts.log.warn({ unitId, deviceIds: live.map((r) => r.spec.id) }, 'several enrolled devices claim one Modbus unit id: requests for it are refused')
      }
      return { kind: 'ambiguous', deviceIds: live.map((r) => r.spec.id) }
    }
    const record = pick[pick.length - 1]!
    const link = this.link(record.spec.id)
    return link ? { kind: 'device', record, link } : { kind: 'unmapped' }
  }

  /** The link to a device with a Modbus target (made on first use); null otherwise. */
  link(deviceId: string): DeviceLink | null {
    const existing = this.#links.get(deviceId)
    if (existing) return existing
    if (this.#stopped) return null
    const m = this.#gw.registry.get(deviceId)?.spec.modbus
    if (!m) return null
    const link: DeviceLink = new DeviceLink(targetOf(m), {
      timeoutMs: this.#opts.timeoutMs,
      log: this.#opts.log,
      ...(this.#opts.maxQueue !== undefined ? { maxQueue: this.#opts.maxQueue } : {}),
      onReachability: (up) => {
        if (up) this.#answeredAt.set(deviceId, performance.now())
        for (const l of this.#reachability) l(deviceId, up)
        // after the listeners: an action the relay delivers now goes before the inventory's read
        if (up) this.#identify(deviceId, link)
      },
    })
    this.#links.set(deviceId, link)
    return link
  }

  /** Close the gateway's connection to a device and fail what waits for it; returns the connections closed. */
  closeSessions(deviceId: string): number {
    return this.#links.get(deviceId)?.close('device cut off') ?? 0
  }

  sessionCount(deviceId: string): number {
    return this.#links.get(deviceId)?.connections ?? 0
  }

  /** Close every device link now (they stay usable: a later request opens a new connection). Returns how many were open. */
  closeAll(reason = 'gateway stopping'): number {
    let n = 0
    for (const l of this.#links.values()) n += l.close(reason)
    return n
  }

  /** The device's basic identification as it answered it, and when (seconds since the epoch); undefined until known. */
  identification(deviceId: string): { info: BasicIdentification; atS: number } | undefined {
    const id = this.#identity.get(deviceId)
    return id?.status === 'known' ? { info: id.info, atS: id.atS } : undefined
  }

  /** Read the identification of an active device through its link, unless known, being read, or refused. */
  #identify(deviceId: string, link: DeviceLink): void {
    if (this.#stopped || this.#identity.has(deviceId) || this.#links.get(deviceId) !== link) return
    // Only a device in use: a cut-off device's link is for its wipe alone.
    const r = this.#gw.registry.get(deviceId)
    if (!r || !inService(r.state)) return
    this.#identity.set(deviceId, { status: 'reading' })
    const current = (): boolean => this.#links.get(deviceId) === link && this.#identity.get(deviceId)?.status === 'reading'
    void readBasicIdentification((pdu) => link.request(pdu, 'gateway')).then(
      (info) => {
        if (!current()) return
        this.#identity.set(deviceId, { status: 'known', info, atS: this.#gw.nowS() })
        this.#opts.log.info({ deviceId, ...info }, 'modbus device identified')
      },
      (err: unknown) => {
        if (!current()) return
        // The device answered, or had its chance to: do not ask again. The link went: ask after the next answer.
        const answered = err instanceof DeviceIdRefused || (err instanceof ModbusLinkError && (err.kind === 'timeout' || err.kind === 'bad-response' || err.kind === 'wrong-unit'))
        if (answered) this.#identity.set(deviceId, { status: 'unsupported' })
        else this.#identity.delete(deviceId)
        this.#opts.log.debug({ deviceId, err, again: !answered }, 'modbus device identification not read')
      },
    )
  }

  /**
   * A Modbus device is a server: the gateway knows it is there only when it
   * asks. Every `everyMs`, each device in service that answered nothing in
   * that time (no SCADA request through the proxy, no hook action) is asked
   * once for its server id (FC 17, read-only; an exception answer counts as
   * an answer), at most `batch` at a time: its link is then open (a session)
   * and its last-seen time current, as for any answer (the hook relay marks
   * it seen).
   */
  startPresence(everyMs = PRESENCE_EVERY_MS, batch = PRESENCE_BATCH): void {
    if (this.#presence || this.#stopped) return
    const tick = async (): Promise<void> => {
      const due: DeviceLink[] = []
      const now = performance.now()
      for (const r of this.#gw.registry.mayHoldProtocolOrCertificate()) {
        if (!r.spec.modbus || !inService(r.state)) continue
        const at = this.#answeredAt.get(r.spec.id)
        if (at !== undefined && now - at < everyMs) continue
        const link = this.link(r.spec.id)
        if (link && link.backlog === 0) due.push(link)
      }
      for (let i = 0; i < due.length && !this.#stopped; i += batch) {
        await Promise.all(due.slice(i, i + batch).map((l) => l.request(REPORT_SERVER_ID, 'gateway').catch(() => {})))
      }
    }
    let running = false
    const run = (): void => {
      if (running) return
      running = true
      void tick().finally(() => (running = false))
    }
    // the first round a period after start: what answers at once (proxy, relay) needs no asking
    this.#presence = setInterval(run, everyMs)
    this.#presence.unref()
  }

  stop(): void {
    this.#stopped = true
    if (this.#presence) clearInterval(this.#presence)
    this.#presence = null
    this.#unsubscribe?.()
    this.#unsubscribe = null
    for (const l of this.#links.values()) l.destroy()
    this.#links.clear()
  }
}
