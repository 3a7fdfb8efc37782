// Benchmark fixtures: device keys, and a data dir with a registry already
// written (see prepareDataDir), so a run does not spend its time enrolling.
import { randomBytes } from 'node:crypto'
import { ed25519FromSeed, publicKeyToB64 } from '../agent/store/keys.ts'
import { Gateway } from '../agent/gateway.ts'
import { loadConfig } from '../agent/runtime/config.ts'
import { createLogger } from '../agent/observe/logger.ts'
import type { DeviceRecord } from '../agent/devices/device.ts'
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
