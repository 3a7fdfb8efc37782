// The OPC UA relay's pure parts: which endpoint it picks, the pinned
// certificate of a chain, and the probing backoff. No node-opcua here.
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { test } from 'node:test'
import { BACKOFF, backoffDelay } from '../../../agent/runtime/timers.ts'

const DEFAULT_RETRY = BACKOFF.opcuaProbe
import { certificateSha256, leafCertificate, pickEndpoint, type EndpointInfo } from '../../../protocols/opcua/security.ts'

const P = 'http://opcfoundation.org/UA/SecurityPolicy#'
const cert = Buffer.from([0x30, 0x03, 1, 2, 3])
const ep = (securityMode: EndpointInfo['securityMode'], policy: string, securityLevel = 0): EndpointInfo => ({
  endpointUrl: 'opc.tcp://d:4840',
  securityMode,
  securityPolicyUri: P + policy,
  securityLevel,
  serverCertificate: cert,
})

test('pickEndpoint: SignAndEncrypt before Sign, then the strongest accepted policy', () => {
  const offered = [ep('None', 'None', 255), ep('Sign', 'Aes256_Sha256_RsaPss', 9), ep('SignAndEncrypt', 'Basic256Sha256', 3), ep('SignAndEncrypt', 'Aes128_Sha256_RsaOaep', 1)]
  assert.equal(pickEndpoint(offered)?.securityPolicyUri, `${P}Aes128_Sha256_RsaOaep`)
  assert.equal(pickEndpoint([...offered, ep('SignAndEncrypt', 'Aes256_Sha256_RsaPss')])?.securityPolicyUri, `${P}Aes256_Sha256_RsaPss`)
  assert.equal(pickEndpoint([ep('Sign', 'Basic256Sha256')])?.securityMode, 'Sign')
})

test('pickEndpoint: None and deprecated policies (Basic128Rsa15: RSA PKCS#1 v1.5) are never chosen', () => {
  assert.equal(pickEndpoint([ep('None', 'None'), ep('SignAndEncrypt', 'Basic128Rsa15', 200), ep('SignAndEncrypt', 'Basic256', 200)]), null)
  assert.equal(pickEndpoint([{ ...ep('SignAndEncrypt', 'Basic256Sha256'), serverCertificate: Buffer.alloc(0) }]), null)
})

test('leafCertificate: the first DER of a chain, short and long length forms; garbage refused', () => {
  const long = Buffer.concat([Buffer.from([0x30, 0x82, 0x01, 0x00]), Buffer.alloc(256, 7)])
  assert.deepEqual(leafCertificate(Buffer.concat([long, cert])), long)
  assert.deepEqual(leafCertificate(Buffer.concat([cert, long])), cert)
  assert.throws(() => leafCertificate(Buffer.from([0x04, 0x01, 0])), TypeError)
  assert.throws(() => leafCertificate(Buffer.from([0x30, 0x82, 0x01])), TypeError)
  assert.throws(() => leafCertificate(Buffer.from([0x30, 0x05, 1])), TypeError)
  assert.equal(certificateSha256(cert), createHash('sha256').update(cert).digest('hex'))
})

test('backoffDelay: doubles up to the cap, jitter takes off at most its fraction', () => {
  const p = { ...DEFAULT_RETRY, initialMs: 100, maxMs: 1000, jitter: 0.5 }
  assert.deepEqual([0, 1, 2, 3, 4, 50, 5000].map((a) => backoffDelay(a, p, () => 0)), [100, 200, 400, 800, 1000, 1000, 1000])
  assert.equal(backoffDelay(2, p, () => 0.999999), 200)
  assert.equal(backoffDelay(2, { ...p, jitter: 0 }, () => 0.7), 400)
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(3, p, Math.random)
    assert.ok(d >= 400 && d <= 800, String(d))
  }
})

test('the relay module loads node-opcua only dynamically (the agent starts fast without OPC UA devices)', async () => {
  const { readFileSync } = await import('node:fs')
  for (const f of ['relay.ts', 'security.ts']) {
    const src = readFileSync(new URL(`../../../protocols/opcua/${f}`, import.meta.url), 'utf8')
    const staticImports = [...src.matchAll(/^import\s+(?!type\b)[^;]*?from\s+'([^']+)'/gm)].map((m) => m[1])
    assert.ok(!staticImports.some((s) => s === 'node-opcua' || s?.startsWith('node-opcua-') || s === './driver.ts'), `${f}: ${staticImports.join(', ')}`)
  }
})
