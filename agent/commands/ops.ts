// The one table of operations on devices (PROTOCOL §3 ops): the schema of
// each op's arguments and what it does, for a signed control-plane command
// and for the local admin socket alike, so the two paths cannot differ (a
// local retire takes `wipe` and `deadlineS` as the control plane's does).
// Each op returns what happened; the command processor turns it into
// `cmd.completed` evidence, the admin socket into its answer.
import type { z as Zod } from 'zod'
import { zod } from '../runtime/zod.ts'
import { ID_PATTERN } from '../../wire/ids.ts'
import type { Act } from '../../wire/protocol.ts'
import type { DeviceActions } from '../actions/device-actions.ts'
import type { Retirements } from '../actions/retirement.ts'
import { offboardingExceptions } from '../devices/offboarding.ts'
import { CredentialIndex, specCredentials, spkiOfPem } from '../devices/credential-index.ts'
import { recordChanges } from '../devices/record-changes.ts'
import { credentialKind, parseDeviceSpec, type CertificateRecord, type DeviceState } from '../devices/device.ts'
import type { SitePki } from '../pki/site-pki.ts'
import { EdgewardenError } from '../runtime/errors.ts'
import { CommandFailure } from './failure.ts'
import { b64urlDecode } from '../../wire/base64url.ts'
import type { Actor, Gateway } from '../gateway.ts'
import { accessRemovedMs, noSessions, type AccessEnforcer } from '../trust/enforcer.ts'
import { inService } from '../trust/rights.ts'
import type { Transition } from '../trust/state-machine.ts'

/** PROTOCOL §3: the ops, each with the schema of its arguments (opArgs). */
export const OPS = ['device.enroll', 'device.revoke', 'device.quarantine', 'device.release', 'device.wipe', 'device.reenroll', 'device.renew', 'device.retire', 'inventory.report'] as const
export type Op = (typeof OPS)[number]

function buildArgs(z: typeof Zod) {
  const deviceId = z.string().regex(ID_PATTERN, 'must be a device id')
  const reason = z.string().max(1024)
  return {
    'device.enroll': z.object({ device: z.unknown() }).strict(),
    'device.revoke': z.object({ deviceId, reason: reason.optional() }).strict(),
    'device.quarantine': z.object({ deviceId, reason: reason.optional() }).strict(),
    'device.release': z.object({ deviceId }).strict(),
    'device.wipe': z.object({ deviceId }).strict(),
    'device.reenroll': z.object({ deviceId }).strict(),
    'device.renew': z.object({ deviceId }).strict(),
    'device.retire': z
      .object({ deviceId, reason: reason.optional(), wipe: z.boolean().optional(), deadlineS: z.number().int().positive().max(10 * 365 * 86400).optional() })
      .strict(),
    'inventory.report': z.object({}).strict(),
  } as const satisfies Record<Op, unknown>
}
let args: ReturnType<typeof buildArgs> | undefined

/** PROTOCOL §3: the arguments of each op, checked before a command is accepted (`invalid-args`); built on first use (runtime/zod.ts). */
export function opArgs(): ReturnType<typeof buildArgs> {
  return (args ??= buildArgs(zod()))
}

/**
 * Build the validators, the ops' arguments and the device spec, and run each
 * once (on `{}`, which most refuse): zod compiles an object's checks on its
 * first parse. The agent calls this in the background after it is ready;
 * without it the first command after a start paid ~5 ms for the building
 * and ~1 ms for its op's first parse, the first revocation's time among them.
 */
export function prepareValidators(): void {
  for (const schema of Object.values(opArgs())) schema.safeParse({})
  parseDeviceSpec({})
}

/** Whether `op` names an op. */
export const isOp = (op: unknown): op is Op => typeof op === 'string' && (OPS as readonly string[]).includes(op)

/** What the ops act with: the core's parts. */
export interface OpParts {
  gw: Gateway
  enforcer: AccessEnforcer
  actions: DeviceActions
  retirements: Retirements
  /** the site PKI, for enrollments with a certificate request (PROTOCOL §3 x509.csr) */
  pki?: SitePki
}

/** One run of an op: who asked, and when the request arrived (for `accessRemovedMs`). */
export interface OpRequest {
  who: Actor
  /** performance.now() when the request arrived */
  receivedAt: number
  /** seconds since the epoch when it arrived */
  receivedAtS: number
}

export interface OpResult {
  deviceId?: string
  evidence?: Record<string, unknown>
  /** it finishes later (a retire waits for the wipe ack): the retirement completes the command by its jti */
  pending?: boolean
  /** the admin socket's answer (`result`), as the CLI prints it */
  local: Record<string, unknown>
}

export type OpRunner = (args: Record<string, unknown>, req: OpRequest) => Promise<OpResult>

/** The ops, bound to the core's parts. */
export function opTable(parts: OpParts): Record<Op, OpRunner> {
  const { gw, enforcer, actions, retirements } = parts
  // one credential, one identity (devices/credential-index.ts)
  const credentials = new CredentialIndex(gw.registry)
  gw.onRecordChange((_before, after) => credentials.changed(after))
  const refuseShared = (id: string, facts: ReturnType<typeof specCredentials>): void => {
    const c = credentials.conflict(id, facts)
    if (c) throw new EdgewardenError('DUPLICATE_CREDENTIAL', `device ${id}: its ${c.what} is already the credential of device ${c.otherId} (${gw.getDevice(c.otherId)?.state ?? 'enrolled'}); every device needs its own`)
  }

  const stateChange =
    (t: Transition): OpRunner =>
    async (args, req) => {
      const id = args.deviceId as string
      const reasonArg = typeof args.reason === 'string' ? args.reason : undefined
      const who = reasonArg !== undefined ? { ...req.who, reason: reasonArg } : req.who
      const r = await gw.transition(id, t, who)
      const enforcement = await enforcer.settled(id)
      const evidence: Record<string, unknown> = {
        deviceId: id,
        from: r.from,
        state: r.record.state,
        changed: r.changed,
        receivedAt: req.receivedAtS,
        network: enforcement.network,
      }
      if (!inService(r.record.state)) {
        evidence.accessRemovedMs = r.changed ? accessRemovedMs(enforcement, req.receivedAt) : 0
        evidence.sessionsClosed = r.changed ? enforcement.sessionsClosed : noSessions()
      }
      return { deviceId: id, evidence, local: { from: r.from, to: r.record.state, changed: r.changed } }
    }

  const queueing =
    (act: Act): OpRunner =>
    async (args, req) => {
      const id = args.deviceId as string
      // PROTOCOL §3 password: a fixed password cannot be renewed on the device; the control plane enrolls a new hash
      if ((act === 'renew' || act === 'reenroll') && credentialKind(gw.requireDevice(id).spec) === 'password') {
        throw new CommandFailure('not-supported', `device ${id} has a fixed password: rotate it by enrolling a new password hash`)
      }
      const a = await actions.queue(id, act, req.who)
      return {
        deviceId: id,
        evidence: { deviceId: id, actionId: a.id, act, queued: true, reachable: actions.dispatcher.isReachable(id) },
        local: { actionId: a.id, act: a.act },
      }
    }

  return {
    'device.enroll': async (args, req) => {
      const parsed = parseDeviceSpec(args.device)
      if (!parsed.ok) throw new EdgewardenError('INVALID_DEVICE', `invalid device: ${parsed.problems.join('; ')}`)
      const spec = parsed.spec
      refuseShared(spec.id, specCredentials(spec))
      // PROTOCOL §3 x509.csr: the site CA issues the certificate now, for the id of the record, whatever the request names.
      let issued: CertificateRecord | undefined
      const x = spec.x509
      if (x && 'csr' in x) {
        const before = gw.getDevice(spec.id)
        const same = before !== undefined && before.state !== 'revoked' && JSON.stringify(before.spec.x509) === JSON.stringify(x) && (before.certificates ?? []).some((c) => !c.revoked)
        if (!same) {
          if (!parts.pki) throw new EdgewardenError('PKI', 'this gateway has no site CA to issue with')
          const der = b64urlDecode(x.csr)
          if (!der) throw new EdgewardenError('CSR_INVALID', 'x509.csr is not base64url')
          issued = parts.pki.record((await parts.pki.issue(spec.id, der, spec.criticality)).cert, 'enroll')
          // the key it certifies, whatever the request looked like (issued, never handed out, when refused here)
          const spki = issued.pem ? spkiOfPem(issued.pem) : null
          if (spki) refuseShared(spec.id, [{ fp: `spki:${spki}`, what: 'certificate key' }])
        }
      }
      // again, in the same synchronous step as the record is set (gw.enroll): a concurrent enroll of another id may have taken the key while the CA signed
      refuseShared(spec.id, specCredentials(spec))
      const existing = gw.getDevice(spec.id)
      const changes = existing ? recordChanges(existing, spec, req.who.reason) : undefined
      const extra = issued
        ? { audit: [{ actor: req.who.actor, action: 'certificate.issued', subject: spec.id, data: { serial: issued.serial, sha256: issued.sha256, notAfter: issued.notAfter, via: 'enroll' } }], events: parts.pki!.issuedEvent(spec.id, issued) ?? [] }
        : {}
      const record = await gw.enroll(spec, req.who, extra, { ...(issued ? { certificate: issued } : {}), ...(changes ? { changes } : {}) })
      const id = record.spec.id
      const certificate = issued ? parts.pki!.chainFor(issued).join('') : undefined
      return {
        deviceId: id,
        evidence: { deviceId: id, state: record.state, credentialExpiresAt: record.credentialExpiresAt, ...(certificate ? { certificate } : {}) },
        local: { state: record.state, ...(certificate ? { certificate } : {}), ...(changes ? { replaced: true, changes } : {}) },
      }
    },
    'device.revoke': stateChange('revoke'),
    'device.quarantine': stateChange('quarantine'),
    'device.release': stateChange('release'),
    'device.wipe': queueing('wipe'),
    'device.reenroll': queueing('reenroll'),
    'device.renew': queueing('renew'),
    'device.retire': async (args, req) => {
      const id = args.deviceId as string
      const from = gw.requireDevice(id).state as DeviceState
      const reasonArg = typeof args.reason === 'string' ? args.reason : undefined
      const who = reasonArg !== undefined ? { ...req.who, reason: reasonArg } : req.who
      const r = await retirements.start(
        id,
        {
          receivedAt: req.receivedAt,
          receivedAtS: req.receivedAtS,
          // a command waits for the end of the retirement by its jti; the admin socket does not wait
          ...(who.jti !== undefined ? { origin: { jti: who.jti } } : {}),
          ...(typeof args.wipe === 'boolean' ? { wipe: args.wipe } : {}),
          ...(typeof args.deadlineS === 'number' ? { deadlineS: args.deadlineS } : {}),
          ...(reasonArg !== undefined ? { reason: reasonArg } : {}),
        },
        who,
      )
      const to = gw.requireDevice(id).state
      return r.done
        ? { deviceId: id, evidence: r.evidence, local: { from, to, evidence: r.evidence } }
        : { deviceId: id, pending: true, local: { from, to, wipeActionId: r.wipeActionId } }
    },
    'inventory.report': async (_args, req) => {
      const devices = [...gw.registry.values()].map((d) => {
        const seen = enforcer.inventoryOf(d.spec.id)
        const cert = d.certificates?.find((c) => c.role === 'current')
        const exceptions = offboardingExceptions(d).map((x) => x.code)
        return {
          id: d.spec.id,
          state: d.state,
          criticality: d.spec.criticality ?? 'medium',
          credentialKind: credentialKind(d.spec),
          credentialExpiresAt: d.credentialExpiresAt,
          pendingActions: gw.actions.pending(d.spec.id).length,
          ...(exceptions.length ? { exceptions } : {}),
          ...(cert ? { certificate: { serial: cert.serial, notAfter: cert.notAfter, issuer: cert.issuer } } : {}),
          ...(seen ? { seen } : {}),
        }
      })
      // A JWS is at most 16 KiB (PROTOCOL §1): a large fleet is reported in
      // parts of at most 50 devices, each event naming its part and the total;
      // a part also closes at ~10 KB of JSON (base64url adds a third).
      const chunks: (typeof devices)[] = [[]]
      let bytes = 0
      for (const d of devices) {
        const size = JSON.stringify(d).length
        if (chunks.at(-1)!.length >= 50 || (bytes + size > 10_000 && chunks.at(-1)!.length > 0)) {
          chunks.push([])
          bytes = 0
        }
        chunks.at(-1)!.push(d)
        bytes += size
      }
      const parts = chunks.length
      for (let i = 0; i < parts; i++) {
        await gw.commit({ events: [{ type: 'inventory', data: { devices: chunks[i]!, part: i + 1, parts, jti: req.who.jti } }] })
      }
      return { evidence: { devices: devices.length, parts }, local: { devices: devices.length, parts } }
    },
  }
}
