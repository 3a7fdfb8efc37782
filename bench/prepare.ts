// Benchmark fixtures: device keys, and a data dir with a registry already
// written through the Gateway API (the same enroll path as the admin socket
// and commands: registry record, audit entry and event per device), so a
// run does not spend its time enrolling over the socket.
import { generateKeyPairSync } from 'node:crypto'
import { Gateway } from '../agent/gateway.ts'
import { loadConfig } from '../agent/config.ts'
import { createLogger } from '../agent/logger.ts'

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
    const jwk = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' })
    out.push({ id: deviceId(prefix, i), publicKey: jwk.x!, d: jwk.d! })
  }
  return out
}

/**
 * Open `dataDir` as gateway `gateway` of `site`, enroll every device (MQTT),
 * and close it. Enrollments run `parallel` at a time, so the store's group
 * commit writes them in a few hundred fsyncs rather than one each.
 * Returns the gateway's public key.
 */
export async function prepareDataDir(
  dataDir: string,
  o: { site: string; gateway: string; devices: Iterable<{ id: string; publicKey: string }>; parallel?: number },
): Promise<{ gatewayPublicKey: string; enrolled: number; ms: number }> {
  const started = performance.now()
  const config = loadConfig({ flags: { dataDir, site: o.site, gateway: o.gateway, mqttHost: '127.0.0.1', mqttPort: '0', logLevel: 'silent' }, env: {} })
  const gw = await Gateway.open(config, { log: createLogger('silent') })
  let enrolled = 0
  try {
    const who = { actor: 'local:bench' }
    let batch: Promise<unknown>[] = []
    for (const d of o.devices) {
      batch.push(gw.enroll({ id: d.id, publicKey: d.publicKey, mqtt: {} }, who))
      enrolled++
      if (batch.length >= (o.parallel ?? 2000)) {
        await Promise.all(batch)
        batch = []
      }
    }
    await Promise.all(batch)
    return { gatewayPublicKey: gw.key.publicKeyB64, enrolled, ms: performance.now() - started }
  } finally {
    await gw.close()
  }
}
