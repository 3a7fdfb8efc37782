// PROTOCOL §1 key files: PKCS#8 PEM, mode 0600, refused when group or others
// can read them; public keys as base64url of the raw 32 bytes.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createPrivateKey, createPublicKey, sign, verify } from 'node:crypto'
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { isEdgewardenError } from '../../../agent/runtime/errors.ts'
import { generateKeyPair, publicKeyFromB64, readKeyFile, writeKeyFile } from '../../../agent/store/keys.ts'
import { runCli, tempDir } from '../../helpers/agent.ts'

const B64URL_32 = /^[A-Za-z0-9_-]{43}$/

function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

test('edgewarden keygen writes a 0600 PKCS#8 PEM Ed25519 key and prints its public key', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'dev.key')
  const r = await runCli(['keygen', '--out', file, '--json'])
  assert.equal(r.code, 0, r.stderr)
  const { file: written, publicKey } = JSON.parse(r.stdout) as { file: string; publicKey: string }
  assert.equal(written, file)
  assert.equal(statSync(file).mode & 0o777, 0o600)
  const pem = readFileSync(file, 'utf8')
  assert.match(pem, /^-----BEGIN PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+-----END PRIVATE KEY-----\n?$/)
  const priv = createPrivateKey(pem)
  assert.equal(priv.asymmetricKeyType, 'ed25519')
  assert.match(publicKey, B64URL_32)
  assert.equal(createPublicKey(priv).export({ format: 'jwk' }).x, publicKey)
  assert.equal(readKeyFile(file).publicKeyB64, publicKey)
  // never overwrites an existing key
  assert.throws(() => writeKeyFile(file, generateKeyPair()), (err: unknown) => isEdgewardenError(err, 'KEY_FILE') && /cannot create key file/.test(err.message))
  assert.equal(readFileSync(file, 'utf8'), pem)
})

test('writeKeyFile gives 0600 whatever the umask, and the key round-trips', (t) => {
  const dir = tempDir(t)
  const old = process.umask(0)
  t.after(() => void process.umask(old))
  const pair = generateKeyPair()
  const file = join(dir, 'k.pem')
  writeKeyFile(file, pair)
  assert.equal(statSync(file).mode & 0o777, 0o600)
  const back = readKeyFile(file)
  assert.equal(back.publicKeyB64, pair.publicKeyB64)
  const msg = Buffer.from('hello')
  assert.ok(verify(null, msg, pair.publicKey, sign(null, msg, back.privateKey)))
})

test('readKeyFile refuses a key readable by group or others, saying chmod 600', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'gw.key')
  writeKeyFile(file, generateKeyPair())
  for (const mode of [0o640, 0o604, 0o644, 0o660, 0o606]) {
    await t.test(mode.toString(8), () => {
      chmodSync(file, mode)
      assert.throws(
        () => readKeyFile(file),
        (err: unknown) => {
          assert.ok(isEdgewardenError(err, 'KEY_FILE'), String(err))
          assert.match(err.message, /chmod 600/)
          assert.ok(err.message.includes(file))
          assert.ok(err.message.includes(`0${mode.toString(8)}`), err.message)
          return true
        },
      )
    })
  }
  chmodSync(file, 0o400)
  assert.doesNotThrow(() => readKeyFile(file))
  chmodSync(file, 0o600)
  assert.doesNotThrow(() => readKeyFile(file))
})

test('readKeyFile refuses a missing file, a non-PEM file and a non-Ed25519 key with KEY_FILE', async (t) => {
  const dir = tempDir(t)
  const isKeyFile = (re: RegExp) => (err: unknown) => isEdgewardenError(err, 'KEY_FILE') && re.test(err.message)
  assert.throws(() => readKeyFile(join(dir, 'absent.key')), isKeyFile(/cannot open/))
  writeFileSync(join(dir, 'junk.key'), 'not a key', { mode: 0o600 })
  assert.throws(() => readKeyFile(join(dir, 'junk.key')), isKeyFile(/not a PEM private key/))
  const { generateKeyPairSync } = await import('node:crypto')
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'pem', type: 'pkcs8' })
  writeFileSync(join(dir, 'ec.key'), ec, { mode: 0o600 })
  assert.throws(() => readKeyFile(join(dir, 'ec.key')), isKeyFile(/not Ed25519/))
})

test('edgewarden start --key with a 0644 key exits non-zero saying chmod 600', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'gw.key')
  writeKeyFile(file, generateKeyPair())
  chmodSync(file, 0o644)
  const r = await runCli(['start', '--key', file, '--data-dir', join(dir, 'data'), '--mqtt-port', '0', '--mqtt-host', '127.0.0.1', '--log-level', 'silent'])
  assert.notEqual(r.code, 0)
  assert.match(r.stderr, /chmod 600/)
  assert.ok(r.stderr.includes(file))
  assert.doesNotMatch(r.stderr, /\n\s+at \S/, 'no stack trace')
  assert.doesNotMatch(r.stdout, /"ready"/)
})

test('public keys are base64url of the raw 32 bytes, as openssl pkey -pubout gives them', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'k.pem')
  const pair = generateKeyPair()
  writeKeyFile(file, pair)
  const b64 = pair.publicKeyB64
  assert.match(b64, B64URL_32)
  assert.ok(!b64.includes('='))
  const raw = Buffer.from(b64, 'base64url')
  assert.equal(raw.length, 32)
  // The raw bytes are the tail of the SPKI DER (RFC 8410: 12-byte prefix + 32 bytes).
  const spki = pair.publicKey.export({ format: 'der', type: 'spki' })
  assert.equal(spki.length, 44)
  assert.deepEqual(spki.subarray(12), raw)
  assert.ok(publicKeyFromB64(b64))
  assert.equal(publicKeyFromB64(b64.slice(0, 42)), null)
  assert.equal(publicKeyFromB64(`${b64}=`), null)
  if (!hasOpenssl()) {
    t.diagnostic('openssl not found: skipped the openssl cross-check')
    return
  }
  const der = execFileSync('openssl', ['pkey', '-in', file, '-pubout', '-outform', 'DER'])
  assert.equal(der.length, 44)
  assert.equal(der.subarray(12).toString('base64url'), b64)
  // and a key written by openssl itself loads (as `openssl genpkey -algorithm ed25519` writes it)
  const osslKey = join(dir, 'ossl.pem')
  execFileSync('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', osslKey])
  chmodSync(osslKey, 0o600)
  const osslDer = execFileSync('openssl', ['pkey', '-in', osslKey, '-pubout', '-outform', 'DER'])
  assert.equal(readKeyFile(osslKey).publicKeyB64, osslDer.subarray(12).toString('base64url'))
})
