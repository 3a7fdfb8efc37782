// Choosing and opening the network quarantine backend at start, and what
// `edgewarden quarantine show` reports: the kernel's rules joined with the
// registry (which device, which addresses, which level, and why).
import type { Gateway } from '../gateway.ts'
import { EdgewardenError, isEdgewardenError } from '../runtime/errors.ts'
import type { Logger } from '../observe/logger.ts'
import { addressesOf, DEFAULT_TABLE, NftablesQuarantine } from './nftables.ts'
import {
  NoneQuarantine,
  type QuarantineBackend,
  type QuarantineDevice,
  type QuarantineEntry,
  type QuarantineLevel,
  type QuarantineSource,
  type QuarantineState,
} from './quarantine.ts'
import { networkLevel } from '../trust/rights.ts'

/** The registry as the quarantine backend reads it. */
export function registrySource(gw: Gateway): QuarantineSource {
  return () => Array.from(gw.registry.values(), (d): QuarantineDevice => ({ id: d.spec.id, state: d.state, network: d.spec.network }))
}

/**
 * The backend `--quarantine` names, reconciled with the registry and
 * re-checking. `nftables` that cannot be used (no root, no nft) is an error,
 * not a silent fallback: the operator asked for enforcement on the wire.
 */
export async function openQuarantine(
  gw: Gateway,
  opts: { wipePorts: number[]; log: Logger; checkIntervalMs?: number },
): Promise<QuarantineBackend> {
  const { log } = opts
  if (gw.config.quarantine === 'none') {
    log.warn({ quarantine: 'none' }, 'network quarantine: none: nothing is enforced on the wire, and every evidence says network.backend "none" (--quarantine nftables needs root and nft)')
    // A table left by an earlier nftables run keeps blocking, no longer in step with the registry.
    const leftover = await new NftablesQuarantine({ devices: () => [], wipePorts: opts.wipePorts }).show().catch(() => null)
    if (leftover?.present) {
      log.warn({ table: `inet ${DEFAULT_TABLE}`, addresses: leftover.entries.length }, 'an nftables table from an earlier --quarantine nftables run is still in force and is no longer kept in step; remove it with `nft delete table inet edgewarden` or start with --quarantine nftables')
    }
    return new NoneQuarantine()
  }
  const backend = new NftablesQuarantine({
    devices: registrySource(gw),
    wipePorts: opts.wipePorts,
    log,
    ...(opts.checkIntervalMs !== undefined ? { checkIntervalMs: opts.checkIntervalMs } : {}),
  })
  const t0 = performance.now()
  try {
    await backend.reconcile()
  } catch (err) {
    const code = isEdgewardenError(err) ? err.code : 'QUARANTINE_UNAVAILABLE'
    throw new EdgewardenError(code, `--quarantine nftables cannot be applied: ${(err as Error).message}`, { cause: err })
  }
  log.info({ quarantine: 'nftables', table: backend.where, devices: gw.registry.size, ms: Math.round(performance.now() - t0) }, 'network quarantine: nftables rules reconciled with the registry')
  backend.start()
  return backend
}

export interface QuarantineDeviceView {
  id: string
  state: string
  /** the level the state calls for */
  level: QuarantineLevel
  addresses: string[]
  /** the level the kernel has for its addresses ('mixed' where they differ; null without addresses) */
  applied: QuarantineLevel | 'mixed' | null
  inForce: boolean
  why: string
}

export interface QuarantineReport extends Omit<QuarantineState, 'entries'> {
  devices: QuarantineDeviceView[]
  /** entries in the kernel that belong to no enrolled device's address */
  strays: QuarantineEntry[]
}

export async function quarantineReport(source: QuarantineSource, backend: QuarantineBackend): Promise<QuarantineReport> {
  const state = await backend.show()
  const inKernel = new Map(state.entries.map((e) => [`${e.kind} ${e.address}`, e]))
  const known = new Set<string>()
  const devices: QuarantineDeviceView[] = []
  for (const d of [...source()].sort((a, b) => a.id.localeCompare(b.id))) {
    const level = networkLevel(d.state)
    const addrs = addressesOf(d.network)
    for (const a of addrs) known.add(`${a.kind} ${a.address}`)
    const levels = new Set(addrs.map((a): QuarantineLevel => inKernel.get(`${a.kind} ${a.address}`)?.level ?? 'open'))
    const applied = !addrs.length ? null : levels.size === 1 ? [...levels][0]! : 'mixed'
    let why = `state ${d.state} calls for ${level}`
    let inForce = false
    if (!state.enforces) why += `; backend ${state.backend} applies nothing`
    else if (!addrs.length) why += '; no network address known (network.ip, network.mac): nothing enforced on the wire'
    else if (!state.present) why += `; the rules are missing from the kernel (${state.where ?? ''}): the agent re-applies them within seconds`
    else if (applied !== level) why += `; the kernel has ${applied}`
    else inForce = true
    devices.push({ id: d.id, state: d.state, level, addresses: addrs.map((a) => a.address), applied: state.enforces ? applied : null, inForce, why })
  }
  const { entries, ...rest } = state
  return { ...rest, devices, strays: entries.filter((e) => !known.has(`${e.kind} ${e.address}`)) }
}
