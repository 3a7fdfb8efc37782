// Benchmark fixtures: device keys, and a data dir with a registry already
// written (see prepareDataDir), so a run does not spend its time enrolling.
import { randomBytes } from 'node:crypto'
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ed25519FromSeed, publicKeyToB64, writePrivateKeyFile } from '../agent/store/keys.ts'
import { SiteCa } from '../agent/pki/ca.ts'
import { certificateRequest, generateCertKey, privateKeyPem } from '../firmware-hooks/x509-keys.ts'
import { b64urlEncode } from '../wire/base64url.ts'
import { Gateway } from '../agent/gateway.ts'
import { loadConfig } from '../agent/runtime/config.ts'
import { createLogger } from '../agent/observe/logger.ts'
import type { CertificateRecord, DeviceRecord } from '../agent/devices/device.ts'
import type { WriteOp } from '../agent/store/store.ts'

export interface BenchDevice {
  id: string
  /** base64url raw public key */
  publicKey: string
  /** base64url Ed25519 seed (for the load generator) */
  d: string
}

export const deviceId = (prefix: string, i: number): string => `${prefix}-${String(i).padStart(6, '0')}`

/** `count` devices, each with its own Ed25519 key (node:crypto: ~20 µs a key). */
export function makeDevices(prefix: string, count: number): BenchDevice[] {
  const out: BenchDevice[] = []
  for (let i = 0; i < count; i++) {
    // From a seed, not generateKeyPairSync (see ed25519FromSeed: a Node 20 deadlock).
    const seed = randomBytes(32)
    out.push({ id: deviceId(prefix, i), publicKey: publicKeyToB64(ed25519FromSeed(seed).publicKey), d: seed.toString('base64url') })
  }
  return out
}

/**
 * Open `dataDir` as gateway `gateway` of `site` and enroll every device
 * (MQTT), then close it. The first device is enrolled through the Gateway
 * API (record, audit entry, event: the real path); the others get a copy of
 * its record with their own id and key, written straight to the registry in
 * large batches. So the registry is what enrollments leave behind, without
 * an audit entry and an outbox event per device: a gateway whose control
 * plane has long since taken its events, and a run that does not spend
 * minutes signing 100,000 enrollments. Returns the gateway's public key.
 */
export async function prepareDataDir(
  dataDir: string,
  o: { site: string; gateway: string; devices: Iterable<{ id: string; publicKey: string }>; batch?: number },
): Promise<{ gatewayPublicKey: string; enrolled: number; ms: number }> {
  const started = performance.now()
  const config = loadConfig({ flags: { dataDir, site: o.site, gateway: o.gateway, mqttHost: '127.0.0.1', mqttPort: '0', logLevel: 'silent' }, env: {} })
  const gw = await Gateway.open(config, { log: createLogger('silent') })
  let enrolled = 0
  try {
    let template: DeviceRecord | null = null
    let ops: WriteOp[] = []
    for (const d of o.devices) {
      enrolled++
      if (!template) {
        template = await gw.enroll({ id: d.id, publicKey: d.publicKey, mqtt: {} }, { actor: 'local:bench' })
        continue
      }
      const t: DeviceRecord = template
      ops.push(gw.registry.set({ ...t, spec: { ...t.spec, id: d.id, publicKey: d.publicKey }, keys: [{ ...t.keys[0]!, publicKey: d.publicKey }] }))
      if (ops.length >= (o.batch ?? 5000)) {
        await gw.store.write(ops, { sync: false })
        ops = []
      }
    }
    if (ops.length) await gw.store.write(ops, { sync: false })
    return { gatewayPublicKey: gw.key.publicKeyB64, enrolled, ms: performance.now() - started }
  } finally {
    await gw.close()
  }
}

export interface BenchCertDevice {
  id: string
  /** PKCS#8 PEM of the device's P-256 key */
  key: string
  /** PEM: the device certificate the site CA issued (the leaf only) */
  cert: string
}

export interface CertFixtures {
  /** the site CA's chain (PEM): what a device trusts the server with, and what the anchor's listener trusts clients with */
  caPem: string
  devices: BenchCertDevice[]
  /** a TLS server certificate (chain, PEM) and key of the site CA for localhost and 127.0.0.1, as the agent issues for itself by default */
  serverCertFile: string
  serverKeyFile: string
  ms: number
}

/**
 * `count` certificate devices enrolled in `dataDir` (PROTOCOL §3 `x509` with
 * a `csr`, §9), each admitted by its client certificate on the TLS listener.
 * The site CA is created in `<dataDir>/pki/` (as the agent does on first
 * start; the agent then loads it). Each device makes a P-256 key and a
 * PKCS#10 request on the device side (firmware-hooks/x509-keys.ts); the CA
 * checks the request and issues its certificate (the op table's path). The
 * first device is enrolled through the Gateway API with its certificate; the
 * others get a copy of its record with their own id, request and
 * certificate, written in batches (as prepareDataDir does). Also a server
 * certificate of the same CA, for the agent and the bare-aedes anchor to
 * present the same chain and key.
 */
export async function prepareCertDevices(
  dataDir: string,
  o: { site: string; gateway: string; prefix: string; count: number; serverDir: string; batch?: number },
): Promise<CertFixtures> {
  const started = performance.now()
  const config = loadConfig({ flags: { dataDir, site: o.site, gateway: o.gateway, mqttHost: '127.0.0.1', mqttPort: '0', logLevel: 'silent' }, env: {} })
  const gw = await Gateway.open(config, { log: createLogger('silent') })
  try {
    const ca = await SiteCa.open({ dataDir, site: o.site, gateway: o.gateway, nowS: gw.nowS() })
    const lifetimeS = config.pki.certLifetimeS.medium
    const issueOne = async (i: number): Promise<{ dev: BenchCertDevice; csr: string; rec: CertificateRecord }> => {
      const id = deviceId(o.prefix, i)
      const key = await generateCertKey('P-256')
      const der = await certificateRequest(key, id)
      const issued = await ca.issueDevice({ deviceId: id, csr: await ca.parseCsr(der), lifetimeS, nowS: gw.nowS() })
      const rec: CertificateRecord = { serial: issued.serial, sha256: issued.sha256, notBefore: issued.notBefore, notAfter: issued.notAfter, issuer: 'site', role: 'current', via: 'enroll', pem: issued.pem }
      return { dev: { id, key: privateKeyPem(key), cert: issued.pem }, csr: b64urlEncode(der), rec }
    }
    const devices: BenchCertDevice[] = []
    let template: DeviceRecord | null = null
    let ops: WriteOp[] = []
    const step = 50
    for (let i = 0; i < o.count; i += step) {
      const made = await Promise.all(Array.from({ length: Math.min(step, o.count - i) }, (_, k) => issueOne(i + k)))
      for (const m of made) {
        devices.push(m.dev)
        if (!template) {
          template = await gw.enroll({ id: m.dev.id, x509: { csr: m.csr }, mqtt: {} }, { actor: 'local:bench' }, {}, { certificate: m.rec })
          continue
        }
        const t: DeviceRecord = template
        ops.push(gw.registry.set({ ...t, spec: { ...t.spec, id: m.dev.id, x509: { csr: m.csr } }, certificates: [m.rec], credentialExpiresAt: m.rec.notAfter }))
      }
      if (ops.length >= (o.batch ?? 5000)) {
        await gw.store.write(ops, { sync: false })
        ops = []
      }
    }
    if (ops.length) await gw.store.write(ops, { sync: false })
    const server = await ca.issueServer({ sans: ['localhost', '127.0.0.1'], lifetimeS: 86400, nowS: gw.nowS(), commonName: `${o.site}/${o.gateway}` })
    mkdirSync(o.serverDir, { recursive: true })
    const serverCertFile = join(o.serverDir, 'server.pem')
    const serverKeyFile = join(o.serverDir, 'server.key')
    writeFileSync(serverCertFile, [server.certPem, ...ca.chainPem].join(''))
    rmSync(serverKeyFile, { force: true })
    writePrivateKeyFile(serverKeyFile, server.keyPem)
    return { caPem: ca.chainPem.join(''), devices, serverCertFile, serverKeyFile, ms: performance.now() - started }
  } finally {
    await gw.close()
  }
}
