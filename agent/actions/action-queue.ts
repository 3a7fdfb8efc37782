// Per-device, ordered, durable queue of actions for devices (PROTOCOL §5).
// An action is signed and stored (sync) before anyone may send it (signed
// on the crypto pool where there is one: its `jws` is empty until then, and
// the dispatcher sends no action without one); it stays
// until an ack, a superseding wipe, or its deadline removes it. The queue is
// mirrored in memory so delivery on (re)connect reads no disk.
import type { KeyObject } from 'node:crypto'
import { newJti } from '../../wire/ids.ts'
import { utf8 } from '../../wire/base64url.ts'
import { assembleJws, jwsSigningInput } from '../../wire/jws.ts'
import type { CryptoPool } from '../runtime/crypto-pool.ts'
import { signJws } from '../store/jws.ts'
import { seqKey, type Store, type WriteOp } from '../store/store.ts'
import type { Act } from '../../wire/protocol.ts'

export { ACTS, type Act } from '../../wire/protocol.ts'
export const ACTION_PREFIX = 'act!'
const ACTION_SEQ_KEY = 'meta!act-seq'

export interface QueuedAction {
  id: string
  deviceId: string
  act: Act
  args: Record<string, unknown>
  /** the signed action, exactly as every (re)delivery sends it ('' for the moment its signature is being made on the crypto pool, before it is stored) */
  jws: string
  /** gateway-wide sequence; also the Modbus `actionSeq` (PROTOCOL §7) */
  seq: number
  queuedAt: number
  deadline: number
}

const keyOf = (a: QueuedAction): string => seqKey(`${ACTION_PREFIX}${a.deviceId}!`, a.seq)

export class ActionQueue {
  readonly #gateway: string
  readonly #key: KeyObject
  readonly #byDevice = new Map<string, QueuedAction[]>()
  #seq: number
  /** where actions are signed off the event loop; null: inline */
  #pool: CryptoPool | null = null

  private constructor(gateway: string, key: KeyObject, seq: number) {
    this.#gateway = gateway
    this.#key = key
    this.#seq = seq
  }

  static async load(store: Store, gateway: string, key: KeyObject): Promise<ActionQueue> {
    const q = new ActionQueue(gateway, key, Number((await store.get(ACTION_SEQ_KEY)) ?? '0'))
    // Keys sort by device, then by seq: each device's list comes out in order.
    for await (const [, v] of store.scan(ACTION_PREFIX)) {
      const a = JSON.parse(v) as QueuedAction
      q.#list(a.deviceId).push(a)
    }
    return q
  }

  #list(deviceId: string): QueuedAction[] {
    let l = this.#byDevice.get(deviceId)
    if (!l) this.#byDevice.set(deviceId, (l = []))
    return l
  }

  /** Sign actions on `pool` from now on (its workers hold the gateway key); null: inline again. */
  signOn(pool: CryptoPool | null): void {
    this.#pool = pool !== null && pool.size > 0 ? pool : null
  }

  pending(deviceId: string): readonly QueuedAction[] {
    return this.#byDevice.get(deviceId) ?? []
  }

  find(deviceId: string, actionId: string): QueuedAction | undefined {
    return this.#byDevice.get(deviceId)?.find((a) => a.id === actionId)
  }

  *all(): IterableIterator<QueuedAction> {
    for (const l of this.#byDevice.values()) yield* l
  }

  countByAct(): Record<Act, number> {
    const c: Record<Act, number> = { wipe: 0, reenroll: 0, renew: 0, 'install-cert': 0, 'revoke-notice': 0 }
    for (const a of this.all()) c[a.act]++
    return c
  }

  /**
   * Sign and queue an action. A wipe supersedes whatever else is pending for
   * the device (re-keying a device about to be erased is pointless): those
   * are removed in the same batch and returned.
   */
  enqueue(
    deviceId: string,
    act: Act,
    args: Record<string, unknown>,
    nowS: number,
    deadline: number,
  ): { action: QueuedAction; superseded: QueuedAction[]; ops: WriteOp[]; ready: Promise<void> | null } {
    const seq = ++this.#seq
    const id = newJti('act.')
    const claims = { iss: this.#gateway, aud: deviceId, iat: nowS, jti: id, act, args }
    const pool = this.#pool
    const action: QueuedAction = { id, deviceId, act, args, jws: pool ? '' : signJws(this.#key, this.#gateway, claims), seq, queuedAt: nowS, deadline }
    const list = this.#list(deviceId)
    const ops: WriteOp[] = []
    let superseded: QueuedAction[] = []
    if (act === 'wipe') {
      superseded = list.filter((a) => a.act !== 'wipe')
      for (const a of superseded) ops.push({ type: 'del', key: keyOf(a) })
      list.splice(0, list.length, ...list.filter((a) => a.act === 'wipe'))
    }
    list.push(action)
    let ready: Promise<void> | null = null
    if (pool) {
      // The stored value is read once the signature is in (Store.write `ready`): the batch waits for it.
      const input = jwsSigningInput(this.#gateway, claims)
      ready = pool.sign(utf8(input)).then((sig) => void (action.jws = assembleJws(input, sig)))
      ops.push({
        type: 'put',
        key: keyOf(action),
        get value(): string {
          return JSON.stringify(action)
        },
      })
    } else ops.push({ type: 'put', key: keyOf(action), value: JSON.stringify(action) })
    ops.push({ type: 'put', key: ACTION_SEQ_KEY, value: String(seq) })
    return { action, superseded, ops, ready }
  }

  /** Remove an action (acked, superseded or past its deadline); returns the op, or null if it was not pending. */
  remove(deviceId: string, actionId: string): WriteOp | null {
    const list = this.#byDevice.get(deviceId)
    const i = list?.findIndex((a) => a.id === actionId) ?? -1
    if (!list || i < 0) return null
    const [a] = list.splice(i, 1)
    if (list.length === 0) this.#byDevice.delete(deviceId)
    return { type: 'del', key: keyOf(a!) }
  }
}
