// Network quarantine with nftables (PROTOCOL §6 evidence `network`): one
// table of our own, sets of device addresses per level, chains on the input,
// forward and output hooks. Every change re-declares the whole table in one
// `nft -f -` transaction, which the kernel applies atomically: there is no
// moment with half the rules. Nothing here ever deletes the table for good:
// a stopped or killed agent leaves the last rules in force (fail closed).
import { spawn } from 'node:child_process'
import { isIP } from 'node:net'
import { EdgewardenError } from '../runtime/errors.ts'
import type { Logger } from '../observe/logger.ts'
import {
  type QuarantineBackend,
  type QuarantineDevice,
  type QuarantineEntry,
  type QuarantineLevel,
  type QuarantineResult,
  type QuarantineSource,
  type QuarantineState,
} from './quarantine.ts'
import { networkLevel } from '../trust/rights.ts'

export const DEFAULT_TABLE = 'edgewarden'
const DEFAULT_CHECK_MS = 2000
const NFT_TIMEOUT_MS = 10_000
/** nft keeps at most 128 bytes of an element comment */
const COMMENT_MAX = 120

type Kind = QuarantineEntry['kind']
type Level = QuarantineEntry['level']

const SETS: readonly { name: string; kind: Kind; level: Level; type: string }[] = [
  { name: 'blocked_v4', kind: 'ipv4', level: 'blocked', type: 'ipv4_addr' },
  { name: 'blocked_v6', kind: 'ipv6', level: 'blocked', type: 'ipv6_addr' },
  { name: 'blocked_mac', kind: 'mac', level: 'blocked', type: 'ether_addr' },
  { name: 'wipe_v4', kind: 'ipv4', level: 'wipe-only', type: 'ipv4_addr' },
  { name: 'wipe_v6', kind: 'ipv6', level: 'wipe-only', type: 'ipv6_addr' },
  { name: 'wipe_mac', kind: 'mac', level: 'wipe-only', type: 'ether_addr' },
]
const RANK: Record<QuarantineLevel, number> = { open: 0, 'wipe-only': 1, blocked: 2 }

export interface DeviceAddress {
  address: string
  kind: Kind
}

/**
 * The addresses a device is known by, in the form nft lists them: IPv6
 * compressed (RFC 5952) without a zone, an IPv4-mapped IPv6 address as the
 * IPv4 address it stands for, a MAC in lower case.
 */
export function addressesOf(network: QuarantineDevice['network']): DeviceAddress[] {
  const out: DeviceAddress[] = []
  const ip = network?.ip?.replace(/%.*$/, '')
  if (ip && isIP(ip) === 4) out.push({ address: ip, kind: 'ipv4' })
  else if (ip && isIP(ip) === 6) {
    const canonical = new URL(`http://[${ip}]/`).hostname.slice(1, -1)
    const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(canonical)
    if (mapped) {
      const hi = parseInt(mapped[1]!, 16)
      const lo = parseInt(mapped[2]!, 16)
      out.push({ address: `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`, kind: 'ipv4' })
    } else out.push({ address: canonical, kind: 'ipv6' })
  }
  if (network?.mac && /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(network.mac)) out.push({ address: network.mac.toLowerCase(), kind: 'mac' })
  return out
}

export interface NftablesOptions {
  /** every device to keep in step with (the registry) */
  devices: QuarantineSource
  /** the gateway's MQTT and MQTTS ports: all a wipe-only device may reach */
  wipePorts: readonly number[]
  /** table name in family inet (default `edgewarden`) */
  table?: string
  /** how nft is run; a prefix such as ['ip', 'netns', 'exec', 'ns1', 'nft'] puts the rules in a namespace */
  nft?: readonly string[]
  /** how often the kernel is re-checked against what we applied (default 2000 ms) */
  checkIntervalMs?: number
  log?: Logger
}

interface Run {
  stdout: string
  stderr: string
}

export class NftablesQuarantine implements QuarantineBackend {
  readonly name = 'nftables'
  readonly enforces = true
  readonly table: string
  readonly #devices: QuarantineSource
  readonly #ports: number[]
  readonly #nft: readonly string[]
  readonly #intervalMs: number
  readonly #log: Logger | undefined
  /** levels set by apply() since the last reconcile(); the source's state decides the rest */
  readonly #levels = new Map<string, QuarantineLevel>()
  /** transactions and checks run one at a time, in order */
  #chain: Promise<unknown> = Promise.resolve()
  /** a transaction queued and not started yet: later changes ride along with it */
  #pending: Promise<void> | null = null
  #lastScript: string | null = null
  #fingerprint: string | null = null
  #timer: NodeJS.Timeout | null = null
  #checking = false
  /** transactions run, re-applications after drift: for logs and tests */
  readonly stats = { transactions: 0, heals: 0, lastTransactionMs: 0 }

  constructor(opts: NftablesOptions) {
    const table = opts.table ?? DEFAULT_TABLE
    if (!/^[A-Za-z][A-Za-z0-9_]{0,31}$/.test(table)) throw new TypeError(`invalid nftables table name ${JSON.stringify(table)}`)
    const ports = [...new Set(opts.wipePorts)].sort((a, b) => a - b)
    if (!ports.length || ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) throw new TypeError(`wipe-only ports must be 1..65535, got ${JSON.stringify(opts.wipePorts)}`)
    this.table = table
    this.#devices = opts.devices
    this.#ports = ports
    this.#nft = opts.nft ?? ['nft']
    this.#intervalMs = opts.checkIntervalMs ?? DEFAULT_CHECK_MS
    this.#log = opts.log
  }

  get where(): string {
    return `nftables table inet ${this.table}`
  }

  async apply(deviceId: string, level: QuarantineLevel): Promise<QuarantineResult> {
    this.#levels.set(deviceId, level)
    await this.#sync()
    let device: QuarantineDevice | undefined
    for (const d of this.#devices()) if (d.id === deviceId) device = d
    if (!device) return { backend: this.name, rule: level, enforced: false, detail: 'unknown device: no address to enforce on' }
    if (!addressesOf(device.network).length) {
      return { backend: this.name, rule: level, enforced: false, detail: 'no network address known for this device (network.ip, network.mac): nothing enforced on the wire' }
    }
    return { backend: this.name, rule: level, enforced: true }
  }

  async reconcile(): Promise<void> {
    this.#levels.clear()
    await this.#sync()
  }

  start(): void {
    if (this.#timer) return
    this.#timer = setInterval(() => {
      if (this.#checking) return
      this.#checking = true
      this.check()
        .catch((err: unknown) => this.#log?.error({ err }, 'network quarantine re-check failed; retrying'))
        .finally(() => (this.#checking = false))
    }, this.#intervalMs)
    this.#timer.unref()
  }

  /** Never removes the table: the rules stay in force while the agent is stopped. */
  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer)
    this.#timer = null
    await this.#chain.catch(() => {})
  }

  /**
   * Compare the kernel with what we applied last, and what the devices call
   * for with what we applied; re-apply on any difference (the table deleted
   * or flushed, a set edited by hand, an earlier transaction that failed).
   * Resolves to whether it re-applied.
   */
  async check(): Promise<boolean> {
    const drift = this.#chain.then(async () => {
      if (this.#render() !== this.#lastScript) return 'rules differ from what the devices call for'
      const listing = await this.#list()
      if (listing === null) return 'table missing from the kernel'
      if (fingerprint(listing) !== this.#fingerprint) return 'table changed outside edgewarden'
      return null
    })
    this.#chain = drift.catch(() => {})
    const why = await drift
    if (why === null) return false
    this.stats.heals++
    this.#log?.warn({ table: this.table, why }, 'network quarantine drifted; re-applying')
    await this.#sync()
    return true
  }

  async show(): Promise<QuarantineState> {
    const listing = await this.#list()
    const state: QuarantineState = { backend: this.name, enforces: true, where: this.where, present: listing !== null, entries: [], dropped: null }
    if (listing === null) return state
    const dropped = { blocked: 0, wipeOnly: 0 }
    for (const item of listing) {
      const set = item.set as { name?: string; elem?: unknown[] } | undefined
      const spec = set && SETS.find((s) => s.name === set.name)
      if (set && spec) {
        for (const e of set.elem ?? []) {
          const { val, comment } = elemOf(e)
          state.entries.push({ address: String(val), kind: spec.kind, level: spec.level, devices: comment ? comment.split(' ').filter(Boolean) : [] })
        }
      }
      const rule = item.rule as { chain?: string; expr?: unknown[] } | undefined
      if (rule) {
        const text = JSON.stringify(rule.expr ?? [])
        const packets = (rule.expr ?? []).reduce<number>((n, x) => n + (((x as { counter?: { packets?: number } }).counter?.packets) ?? 0), 0)
        if (rule.chain === 'wipe_only' || text.includes('"@wipe_')) dropped.wipeOnly += packets
        else if (text.includes('"@blocked_')) dropped.blocked += packets
      }
    }
    state.dropped = dropped
    state.entries.sort((a, b) => a.level.localeCompare(b.level) || a.kind.localeCompare(b.kind) || a.address.localeCompare(b.address))
    return state
  }

  /** Resolves once a transaction started after this call is in the kernel. */
  #sync(): Promise<void> {
    if (this.#pending) return this.#pending
    const run = this.#chain.then(() => {
      this.#pending = null
      return this.#transact()
    })
    this.#pending = run
    // The read-back for drift detection follows, but nobody waits on it.
    this.#chain = run.then(
      () => this.#capture(),
      () => {},
    ).catch((err: unknown) => this.#log?.warn({ err }, 'reading back the nftables table failed'))
    return run
  }

  async #transact(): Promise<void> {
    const t0 = performance.now()
    const script = this.#render()
    await this.#run(['-f', '-'], script)
    this.stats.lastTransactionMs = performance.now() - t0
    this.stats.transactions++
    this.#lastScript = script
    this.#fingerprint = null
  }

  async #capture(): Promise<void> {
    const listing = await this.#list()
    this.#fingerprint = listing === null ? null : fingerprint(listing)
  }

  /** The whole table as one nft script: create-if-missing, delete, declare; atomic as one batch. */
  #render(): string {
    const byAddress = new Map<string, { kind: Kind; level: Level; devices: string[] }>()
    for (const d of this.#devices()) {
      const level = this.#levels.get(d.id) ?? networkLevel(d.state)
      if (level === 'open') continue
      for (const a of addressesOf(d.network)) {
        const key = `${a.kind} ${a.address}`
        const e = byAddress.get(key)
        // One address, several devices: the strictest level wins.
        if (!e) byAddress.set(key, { kind: a.kind, level, devices: [d.id] })
        else {
          e.devices.push(d.id)
          if (RANK[level] > RANK[e.level]) e.level = level
        }
      }
    }
    const elements = new Map<string, string[]>()
    for (const [key, e] of [...byAddress].sort(([a], [b]) => a.localeCompare(b))) {
      const set = SETS.find((s) => s.kind === e.kind && s.level === e.level)!.name
      // Device ids are PROTOCOL §1 identifiers: no quote can reach the comment.
      const comment = e.devices.sort().join(' ').slice(0, COMMENT_MAX)
      const list = elements.get(set) ?? []
      list.push(`${key.slice(key.indexOf(' ') + 1)} comment "${comment}"`)
      elements.set(set, list)
    }
    const T = `inet ${this.table}`
    const lines = [`table ${T}`, `delete table ${T}`, `table ${T} {`]
    for (const s of SETS) {
      const el = elements.get(s.name)
      lines.push(`\tset ${s.name} { type ${s.type};${el ? ` elements = { ${el.join(', ')} }` : ''} }`)
    }
    const hook = (name: string): string => `\t\ttype filter hook ${name} priority filter - 10; policy accept;`
    lines.push(
      // Wipe-only (PROTOCOL §6 step 2): the gateway's MQTT and MQTTS ports,
      // replies on connections the gateway opened (the Modbus and OPC UA
      // relays), and IPv6 neighbour discovery without which neither works.
      '\tchain wipe_only {',
      `\t\ttcp dport { ${this.#ports.join(', ')} } accept`,
      '\t\tct state established,related ct direction reply accept',
      '\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept',
      '\t\tcounter drop',
      '\t}',
      // Blocked: nothing from them, not even replies on connections the
      // gateway opened; wipe-only devices reach only the gateway itself.
      '\tchain input {',
      hook('input'),
      '\t\tip saddr @blocked_v4 counter drop',
      '\t\tip6 saddr @blocked_v6 counter drop',
      '\t\tether saddr @blocked_mac counter drop',
      '\t\tip saddr @wipe_v4 jump wipe_only',
      '\t\tip6 saddr @wipe_v6 jump wipe_only',
      '\t\tether saddr @wipe_mac jump wipe_only',
      '\t}',
      '\tchain forward {',
      hook('forward'),
      '\t\tip saddr @blocked_v4 counter drop',
      '\t\tip daddr @blocked_v4 counter drop',
      '\t\tip6 saddr @blocked_v6 counter drop',
      '\t\tip6 daddr @blocked_v6 counter drop',
      '\t\tether saddr @blocked_mac counter drop',
      '\t\tip saddr @wipe_v4 counter drop',
      '\t\tip daddr @wipe_v4 counter drop',
      '\t\tip6 saddr @wipe_v6 counter drop',
      '\t\tip6 daddr @wipe_v6 counter drop',
      '\t\tether saddr @wipe_mac counter drop',
      '\t}',
      // The gateway sends nothing to a blocked device either.
      '\tchain output {',
      hook('output'),
      '\t\tip daddr @blocked_v4 counter drop',
      '\t\tip6 daddr @blocked_v6 counter drop',
      '\t}',
      '}',
      '',
    )
    return lines.join('\n')
  }

  /** Our table as nft lists it (JSON), or null when it is not in the kernel. */
  async #list(): Promise<Record<string, unknown>[] | null> {
    let r: Run
    try {
      r = await this.#run(['-j', 'list', 'table', 'inet', this.table])
    } catch (err) {
      if (/No such file or directory/i.test((err as Error).message)) return null
      throw err
    }
    const parsed = JSON.parse(r.stdout) as { nftables?: Record<string, unknown>[] }
    return (parsed.nftables ?? []).filter((i) => !('metainfo' in i))
  }

  #run(args: string[], input?: string): Promise<Run> {
    const [cmd, ...pre] = this.#nft
    return new Promise((resolve, reject) => {
      const child = spawn(cmd!, [...pre, ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
      let stdout = ''
      let stderr = ''
      const timer = setTimeout(() => child.kill('SIGKILL'), NFT_TIMEOUT_MS)
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString()))
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
      child.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer)
        const why = err.code === 'ENOENT' ? `${cmd} not found (install nftables)` : err.message
        reject(new EdgewardenError('QUARANTINE_UNAVAILABLE', `cannot run ${cmd}: ${why}`, { cause: err }))
      })
      child.on('close', (code, signal) => {
        clearTimeout(timer)
        if (code === 0) return resolve({ stdout, stderr })
        const msg = `${this.#nft.join(' ')} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim().split('\n').slice(0, 3).join(' / ')}`
        const unavailable = /Operation not permitted|Permission denied|not supported/i.test(stderr)
        reject(new EdgewardenError(unavailable ? 'QUARANTINE_UNAVAILABLE' : 'QUARANTINE_FAILED', unavailable ? `${msg} (root and nftables are needed)` : msg))
      })
      child.stdin.on('error', () => {})
      child.stdin.end(input ?? '')
    })
  }
}

function elemOf(e: unknown): { val: unknown; comment?: string } {
  if (e && typeof e === 'object' && 'elem' in e) {
    const inner = (e as { elem: { val: unknown; comment?: string } }).elem
    return inner.comment !== undefined ? { val: inner.val, comment: inner.comment } : { val: inner.val }
  }
  return { val: e }
}

/** The listing without what changes on its own (handles, counters) and in a stable order. */
function fingerprint(listing: Record<string, unknown>[]): string {
  const strip = (v: unknown, key?: string): unknown => {
    if (Array.isArray(v)) {
      const items = v.map((x) => strip(x))
      return key === 'elem' ? items.map((x) => JSON.stringify(x)).sort() : items
    }
    if (v && typeof v === 'object') {
      const o: Record<string, unknown> = {}
      for (const [k, x] of Object.entries(v)) {
        if (k === 'handle') continue
        o[k] = k === 'counter' ? {} : strip(x, k)
      }
      return o
    }
    return v
  }
  return JSON.stringify(strip(listing))
}
