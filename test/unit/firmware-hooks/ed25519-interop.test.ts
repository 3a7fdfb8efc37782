// @noble/ed25519 (device side) and node:crypto (gateway side) agree: RFC 8032
// §7.1 test vectors with both, tokens minted by noble verify with
// node:crypto, gateway-signed JWS verify with noble, PKCS#8 seeds read in JS.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign as nodeSign, verify as nodeVerify } from 'node:crypto'
import { join } from 'node:path'
import { test } from 'node:test'
import { parseJws } from '../../../wire/jws.ts'
import { b64urlEncode } from '../../../wire/base64url.ts'
import { publicKeyOf, seedFromPkcs8Pem, sign as nobleSign, verify as nobleVerify, keygen, publicKeyToB64 } from '../../../firmware-hooks/crypto.ts'
import { mintToken } from '../../../firmware-hooks/token.ts'
import { signJws, verifyParsed } from '../../../agent/store/jws.ts'
import { ed25519FromSeed, generateKeyPair, publicKeyFromB64, publicKeyToB64 as nodePublicKeyToB64 } from '../../../agent/store/keys.ts'
import { tempDir } from '../../helpers/agent.ts'

const hex = (h: string): Uint8Array => Uint8Array.from(Buffer.from(h, 'hex'))
const toHex = (b: Uint8Array): string => Buffer.from(b).toString('hex')
const PKCS8_ED25519_PREFIX = '302e020100300506032b657004220420'
const nodePrivate = (seed: Uint8Array) => createPrivateKey({ key: Buffer.concat([Buffer.from(PKCS8_ED25519_PREFIX, 'hex'), seed]), format: 'der', type: 'pkcs8' })

// RFC 8032 §7.1, TEST 1 to TEST 3 (secret key, public key, message, signature).
const VECTORS = [
  {
    name: 'TEST 1 (empty message)',
    sk: '9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60',
    pk: 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a',
    msg: '',
    sig: 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b',
  },
  {
    name: 'TEST 2 (one byte)',
    sk: '4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb',
    pk: '3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c',
    msg: '72',
    sig: '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00',
  },
  {
    name: 'TEST 3 (two bytes)',
    sk: 'c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7',
    pk: 'fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025',
    msg: 'af82',
    sig: '6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a',
  },
]

for (const v of VECTORS) {
  test(`RFC 8032 §7.1 ${v.name}: noble and node:crypto give the published key and signature`, async () => {
    const sk = hex(v.sk)
    const msg = hex(v.msg)
    // noble
    assert.equal(toHex(await publicKeyOf(sk)), v.pk)
    assert.equal(toHex(await nobleSign(msg, sk)), v.sig)
    assert.equal(await nobleVerify(hex(v.sig), msg, hex(v.pk)), true)
    // node:crypto
    const priv = nodePrivate(sk)
    assert.equal(nodePublicKeyToB64(createPublicKey(priv)), b64urlEncode(hex(v.pk)))
    assert.equal(toHex(nodeSign(null, msg, priv)), v.sig)
    const pub = publicKeyFromB64(b64urlEncode(hex(v.pk)))!
    assert.equal(nodeVerify(null, msg, pub, hex(v.sig)), true)
    // a flipped bit fails with both
    const bad = hex(v.sig)
    bad[5]! ^= 1
    assert.equal(await nobleVerify(bad, msg, hex(v.pk)), false)
    assert.equal(nodeVerify(null, msg, pub, bad), false)
  })
}

test('a token minted with @noble/ed25519 verifies with node:crypto (the gateway path)', async () => {
  const { secretKey, publicKey } = await keygen()
  const token = await mintToken({ deviceId: 'dev-1', gatewayId: 'gw1', secretKey, nowS: 1_790_000_000, lifetimeS: 600 })
  const parsed = parseJws(token)
  assert.deepEqual(parsed.header, { alg: 'EdDSA', kid: 'dev-1' })
  assert.equal(parsed.payload.iss, 'dev-1')
  assert.equal(parsed.payload.aud, 'gw1')
  assert.equal((parsed.payload.exp as number) - (parsed.payload.iat as number), 600)
  assert.match(parsed.payload.jti as string, /^[A-Za-z0-9_-]{22}$/)
  assert.equal(verifyParsed(parsed, publicKeyFromB64(publicKeyToB64(publicKey))!), true)
  const other = await keygen()
  assert.equal(verifyParsed(parsed, publicKeyFromB64(publicKeyToB64(other.publicKey))!), false)
  // a fresh jti per token
  const again = parseJws(await mintToken({ deviceId: 'dev-1', gatewayId: 'gw1', secretKey, nowS: 1_790_000_000 }))
  assert.notEqual(again.payload.jti, parsed.payload.jti)
})

test('a JWS signed by the gateway (node:crypto) verifies with @noble/ed25519 (the device path)', async () => {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const jws = signJws(privateKey, 'gw1', { iss: 'gw1', aud: 'dev-1', iat: 1, jti: 'a1', act: 'wipe', args: {} })
  const parsed = parseJws(jws)
  const raw = Buffer.from(nodePublicKeyToB64(publicKey), 'base64url')
  assert.equal(await nobleVerify(parsed.signature, parsed.signingInput, raw), true)
  const tampered = parseJws(jws.replace(/\.[^.]+\./, `.${b64urlEncode(Buffer.from(JSON.stringify({ iss: 'gw1', aud: 'dev-2', iat: 1, jti: 'a1', act: 'wipe', args: {} })))}.`))
  assert.equal(await nobleVerify(tampered.signature, tampered.signingInput, raw), false)
})

test('seedFromPkcs8Pem reads the seed of node:crypto and openssl PKCS#8 PEM keys, and refuses others', async (t) => {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const seed = seedFromPkcs8Pem(privateKey.export({ format: 'pem', type: 'pkcs8' }).toString())
  assert.equal(publicKeyToB64(await publicKeyOf(seed)), nodePublicKeyToB64(publicKey))

  let opensslPem: string | null = null
  try {
    const dir = tempDir(t)
    const file = join(dir, 'k.pem')
    execFileSync('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', file], { stdio: 'ignore' })
    opensslPem = execFileSync('openssl', ['pkey', '-in', file], { encoding: 'utf8' })
  } catch {
    t.diagnostic('openssl not available: skipped the openssl key')
  }
  if (opensslPem) {
    const s = seedFromPkcs8Pem(opensslPem)
    assert.equal(publicKeyToB64(await publicKeyOf(s)), nodePublicKeyToB64(createPublicKey(opensslPem)))
  }
  const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ format: 'pem', type: 'pkcs8' }).toString()
  assert.throws(() => seedFromPkcs8Pem(rsa), /not an Ed25519 key|unsupported|PKCS#8/)
  assert.throws(() => seedFromPkcs8Pem('-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----'), TypeError)
  assert.throws(() => seedFromPkcs8Pem('hello'), TypeError)
})

test('keys made from a seed on the gateway match @noble/ed25519 on the same seed (RFC 8032 test 1), and sign alike', async () => {
  const seed = Buffer.from('9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60', 'hex')
  const pair = ed25519FromSeed(seed)
  assert.equal(nodePublicKeyToB64(pair.publicKey), b64urlEncode(Buffer.from('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a', 'hex')))
  const msg = new TextEncoder().encode('edgewarden')
  assert.equal(b64urlEncode(nodeSign(null, msg, pair.privateKey)), b64urlEncode(await nobleSign(msg, seed)))
  // generateKeyPair (used for every new key) goes the same way from random seeds
  const fresh = generateKeyPair()
  assert.equal(nodeVerify(null, msg, fresh.publicKey, nodeSign(null, msg, fresh.privateKey)), true)
  assert.throws(() => ed25519FromSeed(new Uint8Array(31)), /32 bytes/)
})
