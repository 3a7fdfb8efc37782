// The agent's periodic work, in one place, driven by the injected clock:
// retirement deadlines, action deadlines and key overlaps, credential
// notices. Tests call tick() after moving a ManualClock.
import type { CredentialLifecycle } from '../devices/credentials.ts'
import type { DeviceActions } from '../actions/device-actions.ts'
import type { Gateway } from '../gateway.ts'
import { GuardedClock } from './clock.ts'
import type { Logger } from '../observe/logger.ts'
import type { Retirements } from '../actions/retirement.ts'
import type { SitePki } from '../pki/site-pki.ts'

export class Maintenance {
  readonly #gw: Gateway
  readonly #parts: { retirements: Retirements; actions: DeviceActions; credentials: CredentialLifecycle; pki?: SitePki }
  readonly #log: Logger
  #timer: NodeJS.Timeout | null = null
  #running: Promise<void> = Promise.resolve()

  constructor(gw: Gateway, parts: { retirements: Retirements; actions: DeviceActions; credentials: CredentialLifecycle; pki?: SitePki }, log: Logger) {
    this.#gw = gw
    this.#parts = parts
    this.#log = log
  }

  /** One pass; passes never overlap. */
  tick(): Promise<void> {
    this.#running = this.#running.then(async () => {
      // A jump of the wall clock is judged before anything expires by it.
      if (this.#gw.clock instanceof GuardedClock) this.#gw.clock.check()
      const nowS = this.#gw.nowS()
      try {
        // Retirements first: a retirement past its deadline closes as unconfirmed and takes its own wipe action with it.
        await this.#parts.retirements.tick(nowS)
        await this.#parts.actions.sweep(nowS)
        await this.#parts.credentials.tick(nowS)
        // overlaps ended, the CRL signed again before it could lapse
        await this.#parts.pki?.tick(nowS)
        await this.#gw.flushSeen()
      } catch (err) {
        this.#log.error({ err }, 'maintenance pass failed')
      }
    })
    return this.#running
  }

  start(intervalMs = 5000): void {
    this.#timer = setInterval(() => void this.tick(), intervalMs)
    this.#timer.unref()
  }

  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer)
    await this.#running
  }
}
