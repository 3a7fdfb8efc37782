// The device side of the Modbus hook (PROTOCOL §7): the holding registers
// from hookBase through which the gateway hands a device its actions, for a
// modbus-serial ServerTCP (hookVector wraps the device's own vector).
//
//   offset 0     cmd        written by the gateway, last
//   offset 1-2   actionSeq  uint32 big-endian
//   offset 3     status     written by the device: 0 idle, 1 working, 2 done, 3 failed, 4 unsupported
//   offset 4     envLen     bytes of the envelope
//   offset 5...  envelope   the action's JWS, two bytes a register, big-endian
//
// A `cmd` write takes a snapshot of the envelope and sets status to
// working before the write is answered, so a status the gateway reads after
// its cmd write belongs to this actionSeq (§7 leaves this open; see the
// report). The envelope is verified by the ActionRuntime (gateway key,
// audience) before the device's hook runs; an actionSeq already handled
// sets status again without acting twice (and the runtime itself answers a
// repeated action id without re-running it).
//
// reenroll and renew answer `unsupported` here without acting: a register
// cannot carry the new public key and its proof back to the gateway, so a
// key changed over Modbus would be a key the gateway never learns.
import type { ActionRuntime, Act, AckStatus } from './action-runtime.ts'
import { parseJws } from '../wire/jws.ts'
import { DEFAULT_HOOK_BASE, HOOK_CMD, HOOK_ENVELOPE_MAX_BYTES, type HookAct } from '../wire/protocol.ts'

export { DEFAULT_HOOK_BASE, HOOK_ENVELOPE_MAX_BYTES }
const ENVELOPE_OFFSET = 5

export const HookStatus = { idle: 0, working: 1, done: 2, failed: 3, unsupported: 4 } as const
/** PROTOCOL §7 `cmd` codes: 1 wipe, 2 reenroll, 3 renew, 4 revoke-notice. */
export { HOOK_CMD }
const ACT_OF_CMD = new Map<number, Act>((Object.keys(HOOK_CMD) as HookAct[]).map((a) => [HOOK_CMD[a], a]))

const STATUS_OF: Record<AckStatus, number> = { done: HookStatus.done, failed: HookStatus.failed, unsupported: HookStatus.unsupported }

/** A Modbus exception a vector function throws for modbus-serial to answer. */
export class ModbusRegisterError extends Error {
  readonly modbusErrorCode: number
  constructor(code: number, message: string) {
    super(message)
    this.name = 'ModbusRegisterError'
    this.modbusErrorCode = code
  }
}

export interface HookOutcome {
  actionSeq: number
  cmd: number
  status: number
  /** the action id, when the envelope could be read */
  actionId?: string
  /** why an action was not acted on (runtime's ignore reason, act mismatch...) */
  detail?: string
  /** true when the actionSeq was handled before and only status was set again */
  repeat: boolean
}

export interface ModbusHookOptions {
  runtime: ActionRuntime
  hookBase?: number
  /** actionSeqs remembered for repeats (oldest forgotten first) */
  seqMemory?: number
}

export class ModbusHookRegisters {
  readonly hookBase: number
  readonly size: number
  readonly #runtime: ActionRuntime
  readonly #regs: Uint16Array
  readonly #handledSeqs = new Map<number, number>()
  readonly #seqMemory: number
  readonly #listeners = new Set<(o: HookOutcome) => void>()
  /** the actionSeq being worked on */
  #working: number | null = null
  #chain: Promise<void> = Promise.resolve()

  constructor(opts: ModbusHookOptions) {
    const base = opts.hookBase ?? DEFAULT_HOOK_BASE
    if (!Number.isInteger(base) || base < 0 || base > 0xffff - ENVELOPE_OFFSET) throw new TypeError('hookBase must be an integer register address leaving room for the map')
    this.hookBase = base
    // The envelope area ends at 16 KiB or at register 65535, whichever comes first.
    this.size = Math.min(ENVELOPE_OFFSET + HOOK_ENVELOPE_MAX_BYTES / 2, 0x10000 - base)
    this.#runtime = opts.runtime
    this.#regs = new Uint16Array(this.size)
    this.#seqMemory = opts.seqMemory ?? 256
  }

  covers(address: number): boolean {
    return address >= this.hookBase && address < this.hookBase + this.size
  }

  get status(): number {
    return this.#regs[3]!
  }

  onOutcome(listener: (o: HookOutcome) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  /** Resolves once every action taken so far has finished. */
  idle(): Promise<void> {
    return this.#chain
  }

  read(address: number): number {
    if (!this.covers(address)) throw new ModbusRegisterError(0x02, `register ${address} is not in the hook map`)
    return this.#regs[address - this.hookBase]!
  }

  write(address: number, value: number): void {
    if (!this.covers(address)) throw new ModbusRegisterError(0x02, `register ${address} is not in the hook map`)
    const offset = address - this.hookBase
    // `status` is the device's to write.
    if (offset === 3) throw new ModbusRegisterError(0x02, 'status is read-only')
    this.#regs[offset] = value & 0xffff
    if (offset === 0 && value !== 0) this.#command(value & 0xffff)
  }

  #command(cmd: number): void {
    const r = this.#regs
    const seq = ((r[1]! << 16) | r[2]!) >>> 0
    const prior = this.#handledSeqs.get(seq)
    if (prior !== undefined) {
      r[3] = prior
      this.#emit({ actionSeq: seq, cmd, status: prior, repeat: true })
      return
    }
    if (this.#working === seq) return // still at it: status stays working
    const envLen = r[4]!
    const envelope = new Uint8Array(Math.min(envLen, (this.size - ENVELOPE_OFFSET) * 2))
    for (let i = 0; i < envelope.length; i++) {
      const word = r[ENVELOPE_OFFSET + (i >> 1)]!
      envelope[i] = i % 2 === 0 ? word >> 8 : word & 0xff
    }
    r[3] = HookStatus.working
    this.#chain = this.#chain.then(() => this.#run(seq, cmd, envLen, envelope))
  }

  async #run(seq: number, cmd: number, envLen: number, envelope: Uint8Array): Promise<void> {
    this.#working = seq
    let outcome: HookOutcome
    let after: (() => Promise<void>) | undefined
    try {
      const decided = await this.#decide(seq, cmd, envLen, envelope)
      outcome = decided.outcome
      after = decided.after
    } catch (err) {
      outcome = { actionSeq: seq, cmd, status: HookStatus.failed, detail: err instanceof Error ? err.message : String(err), repeat: false }
    }
    this.#regs[3] = outcome.status
    this.#handledSeqs.set(seq, outcome.status)
    if (this.#handledSeqs.size > this.#seqMemory) this.#handledSeqs.delete(this.#handledSeqs.keys().next().value as number)
    this.#working = null
    // The status is the ack on this wire: what follows an ack (key erasure after a wipe) follows it now.
    if (after) await after().catch(() => {})
    this.#emit(outcome)
  }

  async #decide(seq: number, cmd: number, envLen: number, envelope: Uint8Array): Promise<{ outcome: HookOutcome; after?: () => Promise<void> }> {
    const base = { actionSeq: seq, cmd, repeat: false }
    const failed = (detail: string, actionId?: string): { outcome: HookOutcome } => ({
      outcome: { ...base, status: HookStatus.failed, detail, ...(actionId !== undefined ? { actionId } : {}) },
    })
    const act = ACT_OF_CMD.get(cmd)
    if (!act) return { outcome: { ...base, status: HookStatus.unsupported, detail: `unknown cmd ${cmd}` } }
    if (envLen === 0 || envLen > envelope.length) return failed(`envLen ${envLen} does not fit the envelope registers`)
    let claims: Record<string, unknown>
    try {
      claims = parseJws(envelope).payload
    } catch (err) {
      return failed(`envelope: ${err instanceof Error ? err.message : String(err)}`)
    }
    const actionId = typeof claims.jti === 'string' ? claims.jti : undefined
    // cmd and the signed act must agree: a cmd is not signed, the envelope is.
    if (claims.act !== act) return failed(`cmd ${cmd} (${act}) does not match the envelope's act ${JSON.stringify(claims.act ?? null)}`, actionId)
    if (act === 'reenroll' || act === 'renew') {
      return { outcome: { ...base, status: HookStatus.unsupported, detail: `${act} cannot be acknowledged through registers`, ...(actionId !== undefined ? { actionId } : {}) } }
    }
    const result = await this.#runtime.handle(envelope)
    if (result.kind === 'ignored') return failed(`${result.reason}: ${result.detail}`, actionId)
    return {
      outcome: { ...base, status: STATUS_OF[result.status], actionId: result.actionId, repeat: result.repeat },
      ...(result.after ? { after: result.after } : {}),
    }
  }

  #emit(o: HookOutcome): void {
    for (const l of this.#listeners) {
      try {
        l(o)
      } catch {
        // an observer's failure is not the device's
      }
    }
  }
}

/** The parts of a modbus-serial ServerTCP vector the hook takes part in. */
export interface HoldingRegisterVector {
  getHoldingRegister?: (addr: number, unitID: number) => number
  getMultipleHoldingRegisters?: (addr: number, length: number, unitID: number) => number[]
  setRegister?: (addr: number, value: number, unitID: number) => void
  setRegisterArray?: (addr: number, values: number[], unitID: number) => void
}

/**
 * The device's own vector with the hook map laid over its holding
 * registers: hook addresses go to the hook, every other one to `own`
 * (synchronous functions only, as modbus-serial tells them apart by arity).
 */
export function hookVector<V extends HoldingRegisterVector & object>(hook: ModbusHookRegisters, own: V): V & Required<HoldingRegisterVector> {
  const get = (addr: number, unit: number): number => {
    if (hook.covers(addr)) return hook.read(addr)
    if (!own.getHoldingRegister) throw new ModbusRegisterError(0x02, `no holding register ${addr}`)
    return own.getHoldingRegister(addr, unit)
  }
  const set = (addr: number, value: number, unit: number): void => {
    if (hook.covers(addr)) return hook.write(addr, value)
    if (!own.setRegister) throw new ModbusRegisterError(0x02, `no holding register ${addr}`)
    own.setRegister(addr, value, unit)
  }
  return {
    ...own,
    getHoldingRegister: (addr: number, unit: number) => get(addr, unit),
    getMultipleHoldingRegisters: (addr: number, length: number, unit: number) => Array.from({ length }, (_, i) => get(addr + i, unit)),
    setRegister: (addr: number, value: number, unit: number) => set(addr, value, unit),
    setRegisterArray: (addr: number, values: number[], unit: number) => {
      // Every address is checked before any is written: an FC16 lands whole or not at all.
      for (let i = 0; i < values.length; i++) {
        const a = addr + i
        if (!hook.covers(a) && !own.setRegister) throw new ModbusRegisterError(0x02, `no holding register ${a}`)
        if (hook.covers(a) && a - hook.hookBase === 3) throw new ModbusRegisterError(0x02, 'status is read-only')
      }
      // `cmd` goes last even inside one write (§7: the gateway writes it last).
      const order = values.map((_, i) => i).sort((a, b) => Number(addr + a === hook.hookBase) - Number(addr + b === hook.hookBase))
      for (const i of order) set(addr + i, values[i]!, unit)
    },
  }
}
