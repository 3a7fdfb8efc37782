// Child process of test/integration/crash-registry.test.ts:
//   node --import tsx test/helpers/crash-writer.ts DATADIR
// Opens a Gateway on DATADIR and runs the PLAN of 1,000 registry writes
// (enrolls and transitions), a few at a time so the store's group commit
// merges them, and prints one line `ack <index>` per write once the Gateway
// has acknowledged it (durably written). The parent kills it with SIGKILL.
import { pathToFileURL } from 'node:url'
import type { DeviceState } from '../../agent/devices/device.ts'
import { loadConfig } from '../../agent/runtime/config.ts'
import { Gateway } from '../../agent/gateway.ts'
import { generateKeyPair } from '../../agent/store/keys.ts'
import { createLogger } from '../../agent/observe/logger.ts'
import type { Transition } from '../../agent/trust/state-machine.ts'

export const DEVICES = 100
/** Each device's life; every step changes its state, so every write is a real one. */
export const SCRIPT: readonly { t: Transition; to: DeviceState }[] = [
  { t: 'enroll', to: 'active' },
  { t: 'quarantine', to: 'quarantined' },
  { t: 'release', to: 'active' },
  { t: 'quarantine', to: 'quarantined' },
  { t: 'revoke', to: 'revoked' },
  { t: 'enroll', to: 'active' },
  { t: 'revoke', to: 'revoked' },
  { t: 'enroll', to: 'active' },
  { t: 'retire', to: 'retiring' },
  { t: 'retire-complete', to: 'retired' },
]
export const TOTAL = DEVICES * SCRIPT.length // 1,000
/** Writes in flight at once. */
export const WINDOW = 8

export interface PlannedWrite {
  index: number
  deviceId: string
  t: Transition
  to: DeviceState
}

/** Write `index` (0-based): devices interleaved, each following SCRIPT. */
export function planned(index: number): PlannedWrite {
  const step = SCRIPT[Math.floor(index / DEVICES)]
  if (!step || index < 0) throw new RangeError(`no write ${index}`)
  return { index, deviceId: `dev-${String(index % DEVICES).padStart(3, '0')}`, ...step }
}

/** The jti recorded in a write's audit entry, and the reason on its record. */
export const tag = (index: number): string => `w${index}`

async function main(dataDir: string): Promise<void> {
  const config = loadConfig({ flags: { dataDir, site: 'crash', gateway: 'gw-crash', logLevel: 'silent', mqttPort: '0' }, env: {} })
  const gw = await Gateway.open(config, { log: createLogger('silent') })
  process.stdout.write(`open ${gw.key.publicKeyB64}\n`)
  // Calls are issued in plan order (the in-memory state changes synchronously
  // in each call), so the writes reach the store in plan order too.
  const inFlight = new Set<Promise<void>>()
  for (let i = 0; i < TOTAL; i++) {
    const w = planned(i)
    const who = { actor: 'local:crash-writer', reason: tag(i), jti: tag(i) }
    const p: Promise<unknown> =
      w.t === 'enroll' ? gw.enroll({ id: w.deviceId, publicKey: generateKeyPair().publicKeyB64, owner: 'crash' }, who) : gw.transition(w.deviceId, w.t, who)
    const done = p.then(() => {
      // stdout to a pipe is synchronous on Linux: once this returns the parent can read it.
      process.stdout.write(`ack ${i}\n`)
    })
    const tracked = done.finally(() => inFlight.delete(tracked))
    inFlight.add(tracked)
    if (inFlight.size >= WINDOW) await Promise.race(inFlight)
  }
  await Promise.all(inFlight)
  process.stdout.write('done\n')
  await gw.close()
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const dataDir = process.argv[2]
  if (!dataDir) {
    process.stderr.write('usage: crash-writer.ts DATADIR\n')
    process.exit(2)
  }
  main(dataDir).catch((err: unknown) => {
    process.stderr.write(`crash-writer: ${(err as Error).stack ?? String(err)}\n`)
    process.exit(1)
  })
}
