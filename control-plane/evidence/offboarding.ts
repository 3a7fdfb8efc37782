// GET /devices/{id}/offboarding: was every access path of the device closed,
// when, and how do we know. The answer is read from the gateway's signed
// evidence of the retirement (PROTOCOL §6) and the events around it, never
// from the control plane's own bookkeeping alone, and it carries those
// events verbatim (JWS) with the gateway's pinned key, so whoever reads it
// can check it without trusting this service.
import type { CommandRow } from '../commands/command-store.ts'
import { commandView, waitingReason } from '../commands/command-store.ts'
import { iso } from '../runtime/clock.ts'
import { CpError } from '../runtime/errors.ts'
import type { Database } from '../storage/database.ts'
import type { EventRow } from './timeline.ts'

type Json = Record<string, unknown>

export type OffboardingVerdict = 'not-offboarded' | 'in-progress' | 'closed' | 'closed-with-exceptions' | 'failed'

const OPEN = new Set(['queued', 'sent', 'accepted'])

export async function offboarding(db: Database, deviceId: string): Promise<Json> {
  const dev = (await db.query<Json & { site: string; gateway: string; state: string | null; retiring_since: number | null; retired_at: number | null }>('SELECT * FROM devices WHERE id = $1', [deviceId]))[0]
  if (!dev) throw new CpError('CP_NOT_FOUND', `device ${deviceId} is not known on any gateway`)
  const gw = (await db.query<{ public_key: string; online: boolean | null }>('SELECT public_key, online FROM gateways WHERE site = $1 AND id = $2', [dev.site, dev.gateway]))[0]
  const retires = (await db.query<CommandRow>("SELECT * FROM commands WHERE device_id = $1 AND op = 'device.retire' ORDER BY seq", [deviceId])).filter((c) => c.state !== 'reissued' && c.state !== 'superseded')
  const completed = retires.filter((c) => c.state === 'completed' && c.evidence)
  const done = completed.at(-1) ?? null
  const last = retires.at(-1) ?? null
  const events = await db.query<EventRow>(
    `SELECT * FROM events WHERE device_id = $1 AND (type IN ('device.state', 'certificate.revoked', 'alert.residual-use') OR type LIKE 'action.%' OR command_jti = ANY($2::text[]))
      ORDER BY id`,
    [deviceId, retires.map((c) => c.jti)],
  )
  const base = {
    deviceId,
    site: dev.site,
    gateway: dev.gateway,
    state: dev.state,
    retiringSince: iso(dev.retiring_since),
    retiredAt: iso(dev.retired_at),
  }
  const proof = {
    gatewayPublicKey: gw?.public_key ?? null,
    alg: 'EdDSA',
    howToVerify:
      'each jws is a compact JWS (RFC 7515) signed with Ed25519 by the gateway key above: verify the signature over the first two parts, ' +
      'then read iss (the gateway id), seq and data from the payload; `edgewarden control-plane verify-export` does this for an export',
    events: events.map((e) => ({ id: e.id, site: e.site, gateway: e.gateway, epoch: e.epoch, seq: e.seq, type: e.type, jti: e.jti, iat: e.iat, jws: e.jws })),
  }
  if (!done) {
    if (!last && dev.state !== 'retiring' && dev.state !== 'retired') return { ...base, verdict: 'not-offboarded' satisfies OffboardingVerdict, closed: false, exceptions: [], proof }
    const open = last && OPEN.has(last.state)
    const verdict: OffboardingVerdict = open || dev.state === 'retiring' ? 'in-progress' : 'failed'
    return {
      ...base,
      verdict,
      closed: false,
      command: last ? commandView(last, gw ? { online: gw.online } : undefined) : null,
      waiting: last ? waitingReason(last, gw ? { online: gw.online } : undefined) : null,
      exceptions: verdict === 'failed' ? [{ code: `retire-${last?.state}`, detail: last?.reason ?? 'the retirement did not complete' }] : [],
      proof,
    }
  }

  const e = done.evidence as Json
  const sessions = (e.sessionsClosed ?? {}) as Record<string, number>
  const network = (e.network ?? {}) as { backend?: string; rule?: string }
  const wipe = (e.wipe ?? {}) as Json
  const receivedAt = typeof e.receivedAt === 'number' ? e.receivedAt : null
  const accessRemovedMs = typeof e.accessRemovedMs === 'number' ? e.accessRemovedMs : null
  const retiredEvent = events.find((x) => x.id === done.outcome_event) ?? null
  const exceptions: Json[] = []
  if (wipe.status !== 'done') {
    exceptions.push({
      code: `wipe-${String(wipe.status ?? 'unknown')}`,
      detail:
        wipe.status === 'not-performed'
          ? `no wipe: the device was destroyed or taken away${typeof wipe.reason === 'string' ? ` (${wipe.reason})` : ''}`
          : wipe.status === 'unsupported'
            ? 'the device has no wipe path (a legacy device): its data was not erased by edgewarden'
            : 'the device never confirmed its wipe before the deadline',
    })
  }
  if (network.backend === 'none' || network.rule !== 'blocked') exceptions.push({ code: 'network-not-enforced', detail: `network quarantine ${network.backend ?? '?'}/${network.rule ?? '?'}: only the protocols refuse it, the network does not` })
  if (typeof e.residualUse === 'number' && e.residualUse > 0) exceptions.push({ code: 'residual-use-during-retirement', detail: `${e.residualUse} refused attempt(s) while it retired` })
  const after = events.filter((x) => x.type === 'alert.residual-use' && retiredEvent !== null && x.id > retiredEvent.id)
  if (after.length) exceptions.push({ code: 'residual-use-after-retirement', detail: `${after.length} alert(s) of a retired identity trying to get in`, events: after.map((x) => x.seq) })
  const certs = Array.isArray(e.certificatesRevoked) ? e.certificatesRevoked : []
  return {
    ...base,
    verdict: (exceptions.length ? 'closed-with-exceptions' : 'closed') satisfies OffboardingVerdict,
    closed: e.state === 'retired',
    // The gateway's clock: when the command arrived, and every path was shut accessRemovedMs later.
    commandReceivedAt: receivedAt !== null ? new Date(receivedAt * 1000).toISOString() : null,
    accessRemovedMs,
    retiredAt: retiredEvent ? new Date(retiredEvent.iat * 1000).toISOString() : base.retiredAt,
    paths: [
      { path: 'mqtt', closed: true, sessionsClosed: sessions.mqtt ?? 0 },
      { path: 'opcua', closed: true, sessionsClosed: sessions.opcua ?? 0 },
      { path: 'modbus', closed: true, sessionsClosed: sessions.modbus ?? 0 },
      { path: 'network', closed: network.rule === 'blocked' && network.backend !== 'none', backend: network.backend ?? null, rule: network.rule ?? null },
      { path: 'credentials', closed: true, revoked: e.credentialsRevoked ?? 0, certificatesRevoked: certs },
    ],
    wipe,
    residualUse: { duringRetirement: e.residualUse ?? 0, alertsAfter: after.length },
    exceptions,
    command: commandView(done),
    evidence: e,
    evidenceEvent: retiredEvent ? { id: retiredEvent.id, seq: retiredEvent.seq, jti: retiredEvent.jti, jws: retiredEvent.jws } : null,
    proof,
  }
}
