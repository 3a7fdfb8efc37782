// Credential lifecycle: each device credential has an expiry; the
// agent renews on its own when a device crosses its renewal threshold (by
// criticality), and reports `credential.expiring` and `credential.expired`
// once each per credential. Driven by the injected clock through tick().
import type { DeviceActions } from '../actions/device-actions.ts'
import { credentialKind, speaksMqtt, type DeviceRecord } from './device.ts'
import type { Gateway } from '../gateway.ts'
import type { Logger } from '../observe/logger.ts'
import { inService } from '../trust/rights.ts'

/**
 * A Modbus-only device holds no credential the gateway checks (Modbus has
 * no authentication, PROTOCOL §7) and cannot carry a new key through its
 * hook registers, and a fixed password cannot be renewed on the device
 * (§3): renewing them would only fail, so they are not tracked.
 */
const renewable = (r: DeviceRecord): boolean => credentialKind(r.spec) !== 'password' && (speaksMqtt(r.spec) || Boolean(r.spec.opcua))

export class CredentialLifecycle {
  readonly #gw: Gateway
  readonly #actions: DeviceActions
  readonly #log: Logger

  constructor(gw: Gateway, actions: DeviceActions, log: Logger) {
    this.#gw = gw
    this.#actions = actions
    this.#log = log
  }

  /** The notice a record calls for at `nowS`, or null while its credential is comfortably valid. */
  noticeFor(r: DeviceRecord, nowS: number): NonNullable<DeviceRecord['credentialNotice']> | null {
    const expires = r.credentialExpiresAt
    if (nowS >= expires + this.#gw.config.renewGraceS) return 'expired'
    if (nowS >= expires) return 'expired-grace'
    const issued = r.credentialIssuedAt ?? r.createdAt
    const fraction = this.#gw.config.renewAt[r.spec.criticality ?? 'medium']
    return expires - nowS <= fraction * Math.max(0, expires - issued) ? 'expiring' : null
  }

  async tick(nowS: number): Promise<void> {
    // those due a notice, found first without allocating: every device is looked at on every pass, few are due
    const due: string[] = []
    this.#gw.registry.forEach((r) => {
      if (this.#dueNotice(r, nowS) !== null) due.push(r.spec.id)
    })
    for (const id of due) {
      // the record as it is now: an earlier report may have changed it
      const r = this.#gw.registry.get(id)
      const notice = r && this.#dueNotice(r, nowS)
      if (notice) await this.#report(r, notice, nowS)
    }
  }

  /** The notice a record is due at `nowS` and has not had yet, or null (also for a device not in service or not renewable). */
  #dueNotice(r: DeviceRecord, nowS: number): NonNullable<DeviceRecord['credentialNotice']> | null {
    if (!inService(r.state) || !renewable(r)) return null
    const notice = this.noticeFor(r, nowS)
    return notice !== r.credentialNotice ? notice : null
  }

  /** A device just connected: a credential that lapsed while it was away is renewed now, not at the next pass. */
  async deviceReady(deviceId: string): Promise<void> {
    const r = this.#gw.registry.get(deviceId)
    const nowS = this.#gw.nowS()
    const notice = r && this.#dueNotice(r, nowS)
    if (notice) await this.#report(r, notice, nowS)
  }

  async #report(r: DeviceRecord, notice: NonNullable<DeviceRecord['credentialNotice']>, nowS: number): Promise<void> {
    const id = r.spec.id
    const event =
      notice === 'expiring'
        ? { type: 'credential.expiring', data: { deviceId: id, expiresAt: r.credentialExpiresAt } }
        : { type: 'credential.expired', data: { deviceId: id, expiresAt: r.credentialExpiresAt, withinGrace: notice === 'expired-grace' } }
    await this.#gw.updateDevice(id, (d) => ({ ...d, credentialNotice: notice }), {
      audit: [{ actor: 'gateway', action: event.type, subject: id, data: event.data }],
      events: [event],
    })
    this.#log.info({ deviceId: id, notice, expiresAt: r.credentialExpiresAt, nowS }, 'credential notice')
    // Renew while it can still be done: before expiry, or renew-only within the grace.
    if (notice !== 'expired' && !this.#gw.actions.pending(id).some((a) => a.act === 'renew' || a.act === 'reenroll' || a.act === 'wipe')) {
      await this.#actions.queue(id, 'renew', { actor: 'gateway', reason: notice })
    }
  }
}
