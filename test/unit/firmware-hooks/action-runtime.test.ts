// The device side of PROTOCOL §5 actions: verification before anything is
// done, hooks run once, acks signed with the key the gateway knows, proofs
// of possession, wipe after the ack, durable memory of handled ids. The
// gateway is played with node:crypto (agent/jws.ts, agent/keys.ts), so both
// Ed25519 implementations meet.
import assert from 'node:assert/strict'
import { createPublicKey, verify as nodeVerify, type KeyObject } from 'node:crypto'
import { chmodSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { ActionRuntime, MemoryDeviceStorage, type ActionRuntimeOptions, type DeviceState, type DeviceStorage, type HandleResult } from '../../../firmware-hooks/action-runtime.ts'
import { keygen, publicKeyToB64 } from '../../../firmware-hooks/crypto.ts'
import { FileDeviceStorage } from '../../../firmware-hooks/file-storage.ts'
import { b64urlDecode, utf8 } from '../../../wire/base64url.ts'
import { parseJws, type Claims } from '../../../wire/jws.ts'
import { signJws } from '../../../agent/store/jws.ts'
import { generateKeyPair } from '../../../agent/store/keys.ts'
import { tempDir } from '../../helpers/agent.ts'

const GW = 'gw1'
const DEV = 'dev-1'
const NOW = 1_790_000_000
const gateway = generateKeyPair()

function nodeKey(b64: string): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64 }, format: 'jwk' })
}

/** Verify a JWS with node:crypto, as the gateway does. */
function verifiedBy(jws: string, publicKeyB64: string): Claims {
  const p = parseJws(jws)
  assert.ok(nodeVerify(null, p.signingInput, nodeKey(publicKeyB64), p.signature), 'signature verifies with node:crypto')
  return p.payload
}

let seq = 0
function action(act: string, over: Claims = {}, key: KeyObject = gateway.privateKey, kid = GW): string {
  return signJws(key, kid, { iss: GW, aud: DEV, iat: NOW - 86_400 * 40, jti: `act-${++seq}`, act, args: {}, ...over })
}

async function open(over: Partial<ActionRuntimeOptions> = {}) {
  const kp = await keygen()
  const storage = over.storage ?? new MemoryDeviceStorage()
  const rt = await ActionRuntime.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, secretKey: kp.secretKey, storage, nowS: () => NOW, ...over })
  return { rt, storage, oldPub: publicKeyToB64(kp.publicKey) }
}

function ackOf(r: HandleResult): Extract<HandleResult, { kind: 'ack' }> {
  assert.equal(r.kind, 'ack', JSON.stringify(r))
  return r as Extract<HandleResult, { kind: 'ack' }>
}

describe('verification before anything is done', () => {
  test('a well-formed action 40 days old is acted on and acked, signed by the device key', async () => {
    const { rt, oldPub } = await open()
    const env = action('revoke-notice', { args: { reason: 'stolen' } })
    const r = ackOf(await rt.handle(env))
    const c = verifiedBy(r.ack, oldPub)
    assert.equal(parseJws(r.ack).header.kid, DEV)
    assert.deepEqual({ iss: c.iss, aud: c.aud, iat: c.iat, ref: c.ref, status: c.status }, { iss: DEV, aud: GW, iat: NOW, ref: r.actionId, status: 'done' })
    assert.match(String(c.jti), /^[A-Za-z0-9._:-]{1,64}$/)
    assert.notEqual(c.jti, r.actionId)
    assert.equal(r.after, undefined)
    assert.deepEqual(rt.notices.map((n) => n.args), [{ reason: 'stolen' }])
  })

  const cases: [string, () => string | Uint8Array, string][] = [
    ['signed by another key', () => action('wipe', {}, generateKeyPair().privateKey), 'bad-signature'],
    ['addressed to another device', () => action('wipe', { aud: 'dev-2' }), 'wrong-audience'],
    ['without aud', () => action('wipe', { aud: undefined }), 'wrong-audience'],
    ['with iss not the gateway', () => action('wipe', { iss: 'gw2' }), 'wrong-issuer'],
    ['with kid not the gateway', () => action('wipe', {}, gateway.privateKey, 'gw2'), 'unknown-key'],
    ['with a bad jti', () => action('wipe', { jti: 'has space' }), 'malformed'],
    ['without iat', () => action('wipe', { iat: undefined }), 'malformed'],
    ['not a JWS', () => 'hello', 'malformed'],
    ['not UTF-8', () => new Uint8Array([0xff, 0xfe, 0x2e, 0x2e]), 'malformed'],
    ['alg none', () => {
      const [, p, s] = action('wipe').split('.')
      return `${Buffer.from('{"alg":"none","kid":"gw1"}').toString('base64url')}.${p}.${s}`
    }, 'bad-alg'],
    ['with a tampered payload', () => {
      const [h, , s] = action('wipe').split('.')
      return `${h}.${Buffer.from(JSON.stringify({ iss: GW, aud: DEV, iat: NOW, jti: 'x', act: 'wipe' })).toString('base64url')}.${s}`
    }, 'bad-signature'],
  ]
  for (const [name, make, reason] of cases) {
    test(`an envelope ${name} is ignored (${reason}): never acted on, never acked`, async () => {
      let ran = 0
      const { rt, storage } = await open({ hooks: { wipe: async () => (ran++, { status: 'done' }) } })
      await rt.setData('config', 'x')
      const r = await rt.handle(make())
      assert.equal(r.kind, 'ignored')
      assert.equal((r as { reason: string }).reason, reason)
      assert.equal(ran, 0)
      assert.equal(rt.wiped, false)
      assert.ok(rt.secretKey)
      assert.equal(rt.getData('config'), 'x')
      assert.deepEqual((storage as MemoryDeviceStorage).peek()!.handled, [])
    })
  }

  test('an unknown act is acked unsupported; a missing act too', async () => {
    const { rt, oldPub } = await open()
    for (const env of [action('reboot'), action('wipe', { act: undefined })]) {
      const r = ackOf(await rt.handle(env))
      const c = verifiedBy(r.ack, oldPub)
      assert.equal(c.status, 'unsupported')
      assert.match(String(c.detail), /unknown act/)
    }
    assert.equal(rt.wiped, false)
  })
})

describe('repeated action ids', () => {
  test('a repeated id gets the same ack again and the hook runs once, also after a restart', async () => {
    let ran = 0
    const storage = new MemoryDeviceStorage()
    const hooks = { 'revoke-notice': async () => (ran++, { status: 'done' as const }) }
    const { rt } = await open({ storage, hooks })
    const env = action('revoke-notice')
    const first = ackOf(await rt.handle(env))
    const [second, third] = await Promise.all([rt.handle(env), rt.handle(env)])
    assert.equal(ackOf(second!).ack, first.ack)
    assert.equal(ackOf(third!).repeat, true)
    assert.equal(first.repeat, false)
    const again = await ActionRuntime.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage, hooks })
    assert.equal(ackOf(await again.handle(env)).ack, first.ack)
    assert.equal(ran, 1)
  })

  test('concurrent deliveries of one new action run the hook once', async () => {
    let ran = 0
    const { rt } = await open({ hooks: { 'revoke-notice': async () => (ran++, { status: 'done' }) } })
    const env = action('revoke-notice')
    const rs = await Promise.all([rt.handle(env), rt.handle(env), rt.handle(env)])
    assert.equal(ran, 1)
    assert.equal(new Set(rs.map((r) => ackOf(r).ack)).size, 1)
  })

  test('only the newest handled ids are remembered (handledLimit)', async () => {
    const { rt, storage } = await open({ handledLimit: 3 })
    for (let i = 0; i < 5; i++) await rt.handle(action('revoke-notice'))
    assert.equal((storage as MemoryDeviceStorage).peek()!.handled.length, 3)
  })
})

describe('wipe', () => {
  test('data erased before the ack, key material after it; the ack is signed by the key before erasure', async () => {
    const { rt, storage, oldPub } = await open()
    await rt.setData('wifi-psk', 'secret')
    const changes: (string | null)[] = []
    rt.onKeyChange((c) => changes.push(c.publicKeyB64))
    const env = action('wipe')
    const r = ackOf(await rt.handle(env))
    assert.equal(verifiedBy(r.ack, oldPub).status, 'done')
    // until the ack is out, the key stays: the device must still be able to deliver it
    assert.ok(rt.secretKey)
    assert.equal(rt.getData('wifi-psk'), undefined)
    assert.equal(rt.wiped, true)
    assert.ok(r.after)
    await r.after()
    assert.equal(rt.secretKey, null)
    assert.equal(rt.publicKeyB64, null)
    assert.deepEqual(changes, [null])
    const st = (storage as MemoryDeviceStorage).peek()!
    assert.equal(st.secretKey, null)
    assert.equal(st.pendingKey, null)
    assert.deepEqual(st.data, {})
    assert.deepEqual(st.handled.map((h) => h.actionId), [r.actionId])
    assert.doesNotMatch(JSON.stringify(st), new RegExp(oldPub))
    // the same wipe is acked again (nothing re-run); anything else is refused
    const again = ackOf(await rt.handle(env))
    assert.equal(again.ack, r.ack)
    assert.equal(again.after, undefined)
    const other = await rt.handle(action('renew'))
    assert.deepEqual([other.kind, (other as { reason: string }).reason], ['ignored', 'wiped'])
  })

  test('a wipe acked but not yet followed by the erase (ack lost, restart) erases on the repeat', async () => {
    const storage = new MemoryDeviceStorage()
    const { rt } = await open({ storage })
    const env = action('wipe')
    const r = ackOf(await rt.handle(env)) // the ack never got its PUBACK: after() not called
    const restarted = await ActionRuntime.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage })
    assert.ok(restarted.secretKey, 'key still there to reconnect with')
    assert.equal(restarted.wiped, true)
    const other = await restarted.handle(action('renew'))
    assert.equal(other.kind, 'ignored', 'nothing but the wipe itself is answered any more')
    const repeat = ackOf(await restarted.handle(env))
    assert.equal(repeat.ack, r.ack)
    assert.ok(repeat.after, 'the erase is still owed')
    await repeat.after()
    assert.equal(restarted.secretKey, null)
    assert.equal(storage.peek()!.secretKey, null)
  })

  test('a device whose wipe fails acks failed with the detail; one that cannot wipe acks unsupported', async () => {
    const failing = await open({ hooks: { wipe: async () => { throw new Error('flash write-protected') } } })
    const r1 = ackOf(await failing.rt.handle(action('wipe')))
    assert.deepEqual([verifiedBy(r1.ack, failing.oldPub).status, verifiedBy(r1.ack, failing.oldPub).detail], ['failed', 'flash write-protected'])
    assert.equal(r1.after, undefined)
    assert.ok(failing.rt.secretKey)
    assert.equal(failing.rt.wiped, false)
    const cannot = await open({ hooks: { wipe: async () => ({ status: 'unsupported', detail: 'no erasable storage' }) } })
    const r2 = ackOf(await cannot.rt.handle(action('wipe')))
    assert.equal(verifiedBy(r2.ack, cannot.oldPub).status, 'unsupported')
    assert.equal(cannot.rt.wiped, false)
  })
})

describe('reenroll and renew', () => {
  for (const act of ['reenroll', 'renew'] as const) {
    test(`${act}: the proof verifies against newPublicKey, the ack against the OLD key; the key switches after the ack`, async () => {
      const { rt, storage, oldPub } = await open()
      const changes: { pub: string | null; cause: string }[] = []
      rt.onKeyChange((c) => changes.push({ pub: c.publicKeyB64, cause: c.cause }))
      const r = ackOf(await rt.handle(action(act)))
      const c = verifiedBy(r.ack, oldPub)
      assert.equal(c.status, 'done')
      assert.equal(typeof c.newPublicKey, 'string')
      assert.equal(b64urlDecode(c.newPublicKey as string)?.length, 32)
      // PROTOCOL §5: the new key's signature over the UTF-8 bytes of the action id
      assert.ok(nodeVerify(null, utf8(r.actionId), nodeKey(c.newPublicKey as string), b64urlDecode(c.newKeyProof as string)!))
      assert.ok(!nodeVerify(null, utf8('other'), nodeKey(c.newPublicKey as string), b64urlDecode(c.newKeyProof as string)!))
      assert.equal(rt.publicKeyB64, oldPub, 'old key until the ack is out')
      assert.ok(rt.pendingKey)
      await r.after!()
      assert.equal(rt.publicKeyB64, c.newPublicKey)
      assert.equal(rt.pendingKey, null)
      assert.deepEqual(changes, [{ pub: c.newPublicKey, cause: act }])
      assert.equal((storage as MemoryDeviceStorage).peek()!.secretKey, Buffer.from(rt.secretKey!).toString('base64url'))
      // the next ack is signed with the new key
      const next = ackOf(await rt.handle(action('revoke-notice')))
      verifiedBy(next.ack, c.newPublicKey as string)
    })
  }

  test('a renew whose ack got no PUBACK: the repeat replays the same ack (same new key) and still owes the switch', async () => {
    const { rt, oldPub } = await open()
    const env = action('renew')
    const first = ackOf(await rt.handle(env))
    const repeat = ackOf(await rt.handle(env))
    assert.equal(repeat.ack, first.ack)
    assert.ok(repeat.after)
    await repeat.after()
    assert.equal(rt.publicKeyB64, verifiedBy(first.ack, oldPub).newPublicKey)
    await first.after!() // a late second call changes nothing
    assert.equal(ackOf(await rt.handle(env)).after, undefined)
  })

  test('recoverPendingKey makes a pending key current (restart between ack and switch)', async () => {
    const storage = new MemoryDeviceStorage()
    const { rt, oldPub } = await open({ storage })
    const r = ackOf(await rt.handle(action('reenroll')))
    const restarted = await ActionRuntime.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage })
    assert.equal(restarted.publicKeyB64, oldPub)
    assert.equal(await restarted.recoverPendingKey(), true)
    assert.equal(restarted.publicKeyB64, verifiedBy(r.ack, oldPub).newPublicKey)
    assert.equal(await restarted.recoverPendingKey(), false)
  })

  test('a hook may supply the new key; a failing one acks failed and keeps the key', async () => {
    const kp = await keygen()
    const own = await open({ hooks: { renew: async () => ({ status: 'done', newSecretKey: kp.secretKey }) } })
    const r = ackOf(await own.rt.handle(action('renew')))
    assert.equal(verifiedBy(r.ack, own.oldPub).newPublicKey, publicKeyToB64(kp.publicKey))
    const failing = await open({ hooks: { reenroll: async () => ({ status: 'failed', detail: 'secure element busy' }) } })
    const f = ackOf(await failing.rt.handle(action('reenroll')))
    const c = verifiedBy(f.ack, failing.oldPub)
    assert.deepEqual([c.status, c.detail, c.newPublicKey], ['failed', 'secure element busy', undefined])
    assert.equal(failing.rt.pendingKey, null)
  })
})

// One suite every DeviceStorage runs (STYLE: a conformance suite per interface).
function storageSuite(name: string, make: (t: { after(fn: () => void): void }) => DeviceStorage) {
  describe(`DeviceStorage conformance: ${name}`, () => {
    test('load is null before any save; save then load round-trips', async (t) => {
      const s = make(t)
      assert.equal(await s.load(), null)
      const state: DeviceState = { v: 1, secretKey: Buffer.alloc(32, 7).toString('base64url'), pendingKey: null, handled: [], data: { a: 'b' }, wiped: null, notices: [] }
      await s.save(state)
      assert.deepEqual(await s.load(), state)
      state.data.a = 'mutated'
      assert.equal((await s.load())!.data.a, 'b', 'stores a copy')
    })
    test('a runtime reopened on it keeps its key, its handled ids and its data', async (t) => {
      const storage = make(t)
      const { rt } = await open({ storage })
      await rt.setData('x', 'y')
      const env = action('renew')
      const r = ackOf(await rt.handle(env))
      await r.after!()
      const again = await ActionRuntime.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage })
      assert.equal(again.publicKeyB64, rt.publicKeyB64)
      assert.equal(again.getData('x'), 'y')
      assert.equal(ackOf(await again.handle(env)).ack, r.ack)
    })
  })
}
storageSuite('MemoryDeviceStorage', () => new MemoryDeviceStorage())
storageSuite('FileDeviceStorage', (t) => new FileDeviceStorage(join(tempDir(t), 'device.json')))

describe('FileDeviceStorage', () => {
  test('the file is mode 0600 and a file open to group or others is refused', async (t) => {
    const path = join(tempDir(t), 'device.json')
    const { rt } = await open({ storage: new FileDeviceStorage(path) })
    await rt.setData('k', 'v')
    assert.equal(statSync(path).mode & 0o777, 0o600)
    chmodSync(path, 0o644)
    await assert.rejects(new FileDeviceStorage(path).load(), /readable by group or others/)
  })
  test('corrupt state is refused at open', async (t) => {
    const path = join(tempDir(t), 'device.json')
    writeFileSync(path, '{"v":1,"secretKey":"short"}', { mode: 0o600 })
    await assert.rejects(ActionRuntime.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage: new FileDeviceStorage(path) }), /device state/)
    writeFileSync(path, 'nope', { mode: 0o600 })
    await assert.rejects(new FileDeviceStorage(path).load(), /not JSON/)
  })
})

test('open checks its options', async () => {
  const storage = new MemoryDeviceStorage()
  await assert.rejects(ActionRuntime.open({ deviceId: 'bad id', gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage }), TypeError)
  await assert.rejects(ActionRuntime.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: 'xx', storage }), TypeError)
  await assert.rejects(ActionRuntime.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage }), /secretKey/)
})
