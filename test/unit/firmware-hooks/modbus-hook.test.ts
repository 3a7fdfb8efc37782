// The device side of the Modbus hook (PROTOCOL §7) without a network: the
// register map fed the way the gateway writes it, the envelope verified by
// the ActionRuntime before the hook runs, status working -> done/failed/
// unsupported, a repeated actionSeq answered again without acting twice.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ActionRuntime, MemoryDeviceStorage, type DeviceHooks } from '../../../firmware-hooks/action-runtime.ts'
import { keygen } from '../../../firmware-hooks/crypto.ts'
import { HOOK_CMD, hookVector, HookStatus, ModbusHookRegisters, type HookOutcome } from '../../../firmware-hooks/modbus-hook.ts'
import { signJws } from '../../../agent/store/jws.ts'
import { generateKeyPair } from '../../../agent/store/keys.ts'

const GW = 'gw1'
const DEV = 'm-1'
const gateway = generateKeyPair()
let n = 0
const envelope = (act: string, over: Record<string, unknown> = {}, key = gateway.privateKey): string =>
  signJws(key, GW, { iss: GW, aud: DEV, iat: 1_790_000_000, jti: `act.${++n}`, act, args: {}, ...over })

async function setup(hooks: Partial<DeviceHooks> = {}, hookBase = 61440) {
  const kp = await keygen()
  const runtime = await ActionRuntime.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, secretKey: kp.secretKey, storage: new MemoryDeviceStorage(), hooks })
  await runtime.setData('recipe', 'x')
  const hook = new ModbusHookRegisters({ runtime, hookBase })
  const outcomes: HookOutcome[] = []
  hook.onOutcome((o) => outcomes.push(o))
  return { runtime, hook, outcomes }
}

/** Write as the gateway does (§7): envelope, envLen, actionSeq, then cmd last. */
function deliver(hook: ModbusHookRegisters, jws: string, seq: number, cmd: number): void {
  const b = Buffer.from(jws)
  const base = hook.hookBase
  for (let i = 0; i < b.length; i += 2) hook.write(base + 5 + i / 2, (b[i]! << 8) | (b[i + 1] ?? 0))
  hook.write(base + 4, b.length)
  hook.write(base + 1, seq >>> 16)
  hook.write(base + 2, seq & 0xffff)
  hook.write(base, cmd)
}

test('a verified wipe: status working at once, then done; the data is erased and the key after it', async () => {
  const { runtime, hook, outcomes } = await setup()
  deliver(hook, envelope('wipe'), 70_000, HOOK_CMD.wipe)
  assert.equal(hook.read(61443), HookStatus.working, 'status is working before the cmd write is even answered')
  await hook.idle()
  assert.equal(hook.status, HookStatus.done)
  assert.equal(runtime.getData('recipe'), undefined)
  assert.equal(runtime.secretKey, null, 'key erased once the status (the ack on this wire) is set')
  assert.equal(outcomes.length, 1)
  assert.equal(outcomes[0]!.actionSeq, 70_000)
})

test('a repeated actionSeq sets status again without acting twice', async () => {
  let runs = 0
  const { hook, outcomes } = await setup({ 'revoke-notice': async () => (runs++, { status: 'done' }) })
  const jws = envelope('revoke-notice')
  deliver(hook, jws, 5, HOOK_CMD['revoke-notice'])
  await hook.idle()
  deliver(hook, jws, 5, HOOK_CMD['revoke-notice'])
  await hook.idle()
  assert.equal(runs, 1)
  assert.equal(hook.status, HookStatus.done)
  assert.deepEqual(outcomes.map((o) => o.repeat), [false, true])
})

test('an envelope not signed by the gateway, or for another device, is not acted on: failed', async () => {
  const { runtime, hook, outcomes } = await setup()
  deliver(hook, envelope('wipe', {}, generateKeyPair().privateKey), 1, HOOK_CMD.wipe)
  await hook.idle()
  assert.equal(hook.status, HookStatus.failed)
  deliver(hook, envelope('wipe', { aud: 'someone-else' }), 2, HOOK_CMD.wipe)
  await hook.idle()
  assert.equal(hook.status, HookStatus.failed)
  assert.equal(runtime.getData('recipe'), 'x', 'nothing erased')
  assert.match(outcomes[0]!.detail ?? '', /bad-signature/)
  assert.match(outcomes[1]!.detail ?? '', /wrong-audience/)
})

test('cmd must match the signed act; reenroll and renew are unsupported on registers; a failing hook is failed', async () => {
  const { runtime, hook } = await setup({ 'revoke-notice': async () => ({ status: 'failed', detail: 'flash locked' }) })
  deliver(hook, envelope('revoke-notice'), 1, HOOK_CMD.wipe)
  await hook.idle()
  assert.equal(hook.status, HookStatus.failed, 'a wipe cmd with a revoke-notice envelope')
  assert.equal(runtime.getData('recipe'), 'x')
  deliver(hook, envelope('reenroll'), 2, HOOK_CMD.reenroll)
  await hook.idle()
  assert.equal(hook.status, HookStatus.unsupported)
  assert.equal(runtime.pendingKey, null, 'no key made that the gateway could never learn')
  deliver(hook, envelope('revoke-notice'), 3, HOOK_CMD['revoke-notice'])
  await hook.idle()
  assert.equal(hook.status, HookStatus.failed)
  deliver(hook, envelope('wipe'), 4, 9)
  await hook.idle()
  assert.equal(hook.status, HookStatus.unsupported, 'an unknown cmd code')
})

test('status is the device\'s: a write to it is exception 0x02; the vector routes hook and own registers, cmd last in one FC16', async () => {
  const { hook } = await setup({}, 50)
  assert.throws(() => hook.write(53, 1), (e: { modbusErrorCode?: number }) => e.modbusErrorCode === 2)
  const own = new Uint16Array(50)
  const v = hookVector(hook, { getHoldingRegister: (a: number) => own[a]!, setRegister: (a: number, x: number) => void (own[a] = x) })
  v.setRegisterArray(48, [7, 8], 1)
  assert.deepEqual([own[48], v.getHoldingRegister(49, 1)], [7, 8])
  assert.throws(() => v.setRegisterArray(52, [1, 2], 1), (e: { modbusErrorCode?: number }) => e.modbusErrorCode === 2, 'an FC16 over status is refused whole')
  // one FC16 over cmd, actionSeq: cmd is applied after the rest
  const b = Buffer.from(envelope('wipe'))
  for (let i = 0; i < b.length; i += 2) hook.write(55 + i / 2, (b[i]! << 8) | (b[i + 1] ?? 0))
  hook.write(54, b.length)
  v.setRegisterArray(50, [HOOK_CMD.wipe, 0, 42], 1)
  await hook.idle()
  assert.equal(hook.status, HookStatus.done)
  assert.deepEqual(v.getMultipleHoldingRegisters(50, 4, 1), [HOOK_CMD.wipe, 0, 42, HookStatus.done])
})
