// The certificate device (firmware-hooks/cert-device.ts) without a broker:
// its requests are accepted by the site CA (agent/pki/ca.ts, which checks
// them as the gateway does), its acks verify with node:crypto against the
// certificate's key (as agent/actions/ack.ts does, ES256 as r || s),
// install-cert is taken only for a key it asked for, a wipe erases key and
// chain once the ack is out, and everything survives a restart.
import assert from 'node:assert/strict'
import { createPrivateKey, verify as nodeVerify, X509Certificate } from 'node:crypto'
import { rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import { CertDevice, MemoryCertStorage, validateCertDeviceState, type CertDeviceOptions } from '../../../firmware-hooks/cert-device.ts'
import { ActionRuntime, MemoryDeviceStorage, type HandleResult } from '../../../firmware-hooks/action-runtime.ts'
import { JsonFileStorage } from '../../../firmware-hooks/file-storage.ts'
import { certificateFacts, pemBlocks, type CertKeyAlg } from '../../../firmware-hooks/x509-keys.ts'
import { b64urlDecode } from '../../../wire/base64url.ts'
import { parseJws, type Claims } from '../../../wire/jws.ts'
import { SiteCa } from '../../../agent/pki/ca.ts'
import { signJws } from '../../../agent/store/jws.ts'
import { generateKeyPair } from '../../../agent/store/keys.ts'
import { tempDir } from '../../helpers/agent.ts'

const GW = 'gw1'
const DEV = 'cam-1'
const NOW = Math.floor(Date.now() / 1000)
const gateway = generateKeyPair()
const caDir = tempDir()
after(() => rmSync(caDir, { recursive: true, force: true }))
const caReady = SiteCa.open({ dataDir: caDir, site: 'site1', gateway: GW, nowS: NOW })

/** The site CA issues for a request, as device.enroll and renewals do: the chain, device certificate first. */
async function issue(csrDer: Uint8Array, deviceId = DEV): Promise<string[]> {
  const ca = await caReady
  const csr = await ca.parseCsr(csrDer)
  const cert = await ca.issueDevice({ deviceId, csr, lifetimeS: 86_400, nowS: NOW })
  return [cert.pem, ...ca.chainPem]
}

let seq = 0
function action(act: string, args: Record<string, unknown> = {}, jti = `act-${++seq}`): string {
  return signJws(gateway.privateKey, GW, { iss: GW, aud: DEV, iat: NOW, jti, act, args })
}

function ackOf(r: HandleResult): Extract<HandleResult, { kind: 'ack' }> {
  assert.equal(r.kind, 'ack', JSON.stringify(r))
  return r as Extract<HandleResult, { kind: 'ack' }>
}

/** Verify an ack as the gateway does: the alg the key calls for, with the certificate's public key. */
function verifiedBy(ack: string, certPem: string): Claims {
  const p = parseJws(ack, { algs: ['EdDSA', 'ES256'] })
  const key = new X509Certificate(certPem).publicKey
  const ok =
    key.asymmetricKeyType === 'ec'
      ? p.header.alg === 'ES256' && nodeVerify('sha256', p.signingInput, { key, dsaEncoding: 'ieee-p1363' }, p.signature)
      : p.header.alg === 'EdDSA' && nodeVerify(null, p.signingInput, key, p.signature)
  assert.ok(ok, `ack (${p.header.alg}) verifies with the key of certificate ${new X509Certificate(certPem).serialNumber}`)
  assert.equal(p.header.kid, DEV)
  return p.payload
}

async function enrolled(alg: CertKeyAlg, over: Partial<CertDeviceOptions> = {}) {
  const storage = (over.storage as MemoryCertStorage | undefined) ?? new MemoryCertStorage()
  const runtimeStorage = over.runtimeStorage ?? new MemoryDeviceStorage()
  const device = await CertDevice.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, alg, storage, runtimeStorage, nowS: () => NOW, ...over })
  const chain = await issue(await device.requestCertificate())
  await device.installChain(chain)
  return { device, storage, runtimeStorage, chain }
}

for (const alg of ['P-256', 'Ed25519'] as const) {
  describe(`certificate device, ${alg}`, () => {
    test('its request is accepted by the site CA (proof of possession, SAN); the chain installed; TLS credentials node can load', async () => {
      const device = await CertDevice.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, alg })
      assert.equal(device.enrolled, false)
      assert.equal(device.tlsCredentials(), null)
      const der = await device.requestCertificate()
      const info = await (await caReady).parseCsr(der)
      assert.equal(info.keyAlgorithm, alg)
      assert.equal(info.sanDeviceId, DEV)
      const chain = await issue(der)
      const installed = await device.installChain(chain.join(''))
      assert.equal(installed.deviceId, DEV)
      assert.equal(installed.via, 'enroll')
      assert.equal(device.enrolled, true)
      assert.equal(device.pendingRequests, 0)
      const tls = device.tlsCredentials()!
      const key = createPrivateKey(tls.key)
      assert.equal(key.asymmetricKeyType, alg === 'P-256' ? 'ec' : 'ed25519')
      const leaf = new X509Certificate(pemBlocks(tls.cert)[0]!)
      assert.ok(leaf.checkPrivateKey(key), 'the TLS key is the certificate\'s')
      assert.equal(pemBlocks(tls.cert).length, chain.length)
    })

    test(`renew: done ack signed ${alg === 'P-256' ? 'ES256' : 'EdDSA'} by the current key, carrying a request for a new key; no key switch until install-cert`, async () => {
      const { device, storage, chain } = await enrolled(alg)
      const before = device.tlsCredentials()!
      const r = ackOf(await device.runtime.handle(action('renew')))
      const c = verifiedBy(r.ack, chain[0]!)
      assert.equal(c.status, 'done')
      assert.equal(c.newPublicKey, undefined)
      assert.equal(c.newKeyProof, undefined)
      const csr = await (await caReady).parseCsr(b64urlDecode(String(c.csr))!)
      assert.equal(csr.sanDeviceId, DEV)
      const newChain = await issue(b64urlDecode(String(c.csr))!)
      assert.notEqual(certificateFacts(newChain[0]!).spki.toString(), certificateFacts(chain[0]!).spki.toString(), 'a new key')
      // the pending key is durable before the ack could leave
      assert.equal(storage.peek()!.pending.length, 1)
      assert.equal(storage.peek()!.pending[0]!.ref, r.actionId)
      await r.after?.()
      assert.deepEqual(device.tlsCredentials(), before, 'still the old certificate: the new one has not come')
      // a repeated renew is answered with the same ack (the same request): nothing re-made
      assert.equal(ackOf(await device.runtime.handle(action('renew', {}, r.actionId))).ack, r.ack)
      assert.equal(device.pendingRequests, 1)
    })

    test('install-cert: taken for the pending key, acked by the new key, listeners told after the ack; a repeat is answered again, installed once', async () => {
      const { device, storage, chain } = await enrolled(alg)
      const renew = ackOf(await device.runtime.handle(action('renew')))
      const newChain = await issue(b64urlDecode(String(verifiedBy(renew.ack, chain[0]!).csr))!)
      const told: string[] = []
      device.onInstalled((cert) => void told.push(`${cert.via}:${cert.serial}`))
      const install = action('install-cert', { chain: newChain })
      const r = ackOf(await device.runtime.handle(install))
      const c = verifiedBy(r.ack, newChain[0]!)
      assert.equal(c.status, 'done')
      assert.equal(device.certificate!.serial, certificateFacts(newChain[0]!).serial)
      assert.deepEqual(storage.peek()!.chain, newChain.map((p) => `${p.trim()}\n`))
      assert.equal(storage.peek()!.pending.length, 0)
      assert.deepEqual(told, [], 'told only once the ack is out')
      await r.after!()
      assert.deepEqual(told, [`install-cert:${certificateFacts(newChain[0]!).serial}`])
      const again = ackOf(await device.runtime.handle(install))
      assert.equal(again.ack, r.ack)
      assert.equal(again.repeat, true)
      assert.equal(told.length, 1)
      // a renew from now on is signed by the new key
      verifiedBy(ackOf(await device.runtime.handle(action('renew'))).ack, newChain[0]!)
    })

    test('install-cert for a key it never asked for, for another device, broken or absent: failed, nothing changed', async () => {
      const { device, storage, chain } = await enrolled(alg)
      ackOf(await device.runtime.handle(action('renew')))
      const stranger = await CertDevice.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, alg })
      const strangers = await issue(await stranger.requestCertificate())
      const other = await CertDevice.open({ deviceId: 'cam-2', gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, alg })
      const others = await issue(await other.requestCertificate(), 'cam-2')
      const stateBefore = JSON.stringify(storage.peek())
      const cases: [unknown, RegExp][] = [
        [strangers, /not for a key this device asked/],
        [others, /names device cam-2/],
        [[chain[0]!, strangers[0]!], /not signed by certificate 2/],
        [['-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'], /not a PEM certificate/],
        [undefined, /chain must be/],
        [[], /chain must be/],
      ]
      for (const [bad, why] of cases) {
        const r = ackOf(await device.runtime.handle(action('install-cert', bad === undefined ? {} : { chain: bad })))
        const c = verifiedBy(r.ack, chain[0]!)
        assert.equal(c.status, 'failed')
        assert.match(String(c.detail), why)
      }
      assert.equal(JSON.stringify(storage.peek()), stateBefore)
    })

    test('wipe: acked done by the key, then key, chain and pending keys erased; the device has nothing left to present', async () => {
      const { device, storage, chain } = await enrolled(alg)
      ackOf(await device.runtime.handle(action('renew')))
      await device.runtime.setData('wifi-psk', 'secret')
      const r = ackOf(await device.runtime.handle(action('wipe')))
      assert.equal(verifiedBy(r.ack, chain[0]!).status, 'done')
      assert.equal(device.runtime.getData('wifi-psk'), undefined)
      assert.ok(device.tlsCredentials(), 'the key stays until the ack is out')
      await r.after!()
      assert.equal(device.tlsCredentials(), null)
      assert.equal(device.enrolled, false)
      assert.equal(device.runtime.hasKey, false)
      assert.deepEqual(storage.peek(), { v: 1, alg, key: null, chain: [], pending: [] })
      await assert.rejects(device.requestCertificate(), /wiped/)
    })

    test('a restart keeps key, chain and the pending request: the certificate asked for before it still installs', async (t) => {
      const dir = tempDir(t)
      const storage = new JsonFileStorage(join(dir, 'cert.json'), validateCertDeviceState)
      const runtimeStorage = new MemoryDeviceStorage()
      const { device, chain } = await enrolled(alg, { storage, runtimeStorage })
      assert.equal(statSync(storage.path).mode & 0o777, 0o600)
      const renew = ackOf(await device.runtime.handle(action('renew')))
      const newChain = await issue(b64urlDecode(String(verifiedBy(renew.ack, chain[0]!).csr))!)
      const again = await CertDevice.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage, runtimeStorage, nowS: () => NOW })
      assert.equal(again.alg, alg)
      assert.equal(again.certificate!.serial, certificateFacts(chain[0]!).serial)
      assert.equal(again.pendingRequests, 1)
      const r = ackOf(await again.runtime.handle(action('install-cert', { chain: newChain })))
      assert.equal(verifiedBy(r.ack, newChain[0]!).status, 'done')
    })
  })
}

describe('the runtime with external keys', () => {
  test('a renew hook that returns no csr acks failed; no key of its own is made or stored', async () => {
    const signer = { alg: 'EdDSA' as const, sign: async () => new Uint8Array(64) }
    const storage = new MemoryDeviceStorage()
    const rt = await ActionRuntime.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage, keys: { current: () => signer, erase: async () => {} } })
    const r = ackOf(await rt.handle(action('renew')))
    const c = parseJws(r.ack).payload
    assert.equal(c.status, 'failed')
    assert.match(String(c.detail), /no csr/)
    assert.equal(rt.secretKey, null)
    assert.equal(storage.peek()!.secretKey, null)
    assert.equal(storage.peek()!.pendingKey, null)
  })

  test('without a current key actions are ignored (no-key); secretKey and keys together are refused', async () => {
    const rt = await ActionRuntime.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage: new MemoryDeviceStorage(), keys: { current: () => null, erase: async () => {} } })
    const r = await rt.handle(action('renew'))
    assert.deepEqual([r.kind, (r as { reason: string }).reason], ['ignored', 'no-key'])
    await assert.rejects(
      ActionRuntime.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage: new MemoryDeviceStorage(), secretKey: new Uint8Array(32), keys: { current: () => null, erase: async () => {} } }),
      /exclude each other/,
    )
  })

  test('state that is not a certificate device\'s is refused at open', async () => {
    for (const bad of [{ v: 2 }, { v: 1, alg: 'RSA', key: null, chain: [], pending: [] }, { v: 1, alg: 'P-256', key: null, chain: ['x'], pending: [] }]) {
      const storage = new MemoryCertStorage()
      await storage.save(bad as never)
      await assert.rejects(CertDevice.open({ deviceId: DEV, gatewayId: GW, gatewayPublicKey: gateway.publicKeyB64, storage }), /certificate device state/)
    }
  })
})
