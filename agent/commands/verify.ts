// Verification of a control-plane command (PROTOCOL §3), in the order the
// spec gives: JWS form, pinned key, signature, issuer, audience, time,
// op, arguments, the device it names. Pure: no state is touched.
import type { KeyObject } from 'node:crypto'
import { JwsFormatError, parseJws, checkTimeClaims, type Claims } from '../../wire/jws.ts'
import { isJti } from '../../wire/ids.ts'
import { MAX_COMMAND_LIFETIME_S, type RejectReason } from '../../wire/protocol.ts'
import { parseDeviceSpec } from '../devices/device.ts'
import { verifyParsed } from '../store/jws.ts'
import { isOp, opArgs, type Op } from './ops.ts'

export interface Command {
  jti: string
  iss: string
  iat: number
  exp: number
  op: Op
  args: Record<string, unknown>
}

export type Verification =
  | { ok: true; cmd: Command }
  | { ok: false; reason: RejectReason; detail: string; jti?: string; /** the signature verified */ signed: boolean; /** the claim, where it is a number */ exp?: number }

export interface VerifyContext {
  gatewayId: string
  cpKeys: ReadonlyMap<string, KeyObject>
  nowS: number
  skewS: number
  deviceExists(id: string): boolean
}

/** PROTOCOL §3 checks, in its order. Pure: no state is touched. */
export function verifyCommand(input: string | Uint8Array, ctx: VerifyContext): Verification {
  let jws
  try {
    jws = parseJws(input)
  } catch (err) {
    if (err instanceof JwsFormatError) return { ok: false, reason: err.reason, detail: err.message, signed: false }
    throw err
  }
  const claims: Claims = jws.payload
  const jti = isJti(claims.jti) ? claims.jti : undefined
  const exp = typeof claims.exp === 'number' ? claims.exp : undefined
  const reject = (reason: RejectReason, detail: string, signed: boolean): Verification => ({ ok: false, reason, detail, signed, ...(jti ? { jti } : {}), ...(signed && exp !== undefined ? { exp } : {}) })
  const key = ctx.cpKeys.get(jws.header.kid)
  if (!key) return reject('unknown-key', `kid ${JSON.stringify(jws.header.kid)} is not a pinned control-plane key`, false)
  if (!verifyParsed(jws, key)) return reject('bad-signature', 'signature does not verify with the pinned key', false)
  if (typeof claims.iss !== 'string' || claims.iss.length === 0 || claims.iss.length > 128) return reject('malformed', 'iss is missing', true)
  if (claims.aud !== ctx.gatewayId) return reject('wrong-audience', `aud ${JSON.stringify(claims.aud ?? null)} is not this gateway (${ctx.gatewayId})`, true)
  const time = checkTimeClaims(claims, ctx.nowS, { skewS: ctx.skewS, maxLifetimeS: MAX_COMMAND_LIFETIME_S })
  if (time) return reject(time.reason, time.detail, true)
  const op = claims.op
  // Own keys only: `in` would take '__proto__' or 'constructor' for an op and throw below.
  if (!isOp(op)) return reject('unknown-op', `op ${JSON.stringify(op ?? null)} is not known`, true)
  const parsed = opArgs()[op].safeParse(claims.args ?? undefined)
  if (!parsed.success) {
    return reject('invalid-args', parsed.error.issues.map((i) => `${i.path.join('.') || 'args'}: ${i.message}`).join('; '), true)
  }
  const args = parsed.data as Record<string, unknown>
  if (op === 'device.enroll') {
    const d = parseDeviceSpec(args.device)
    if (!d.ok) return reject('invalid-args', d.problems.join('; '), true)
    args.device = d.spec
  } else if (typeof args.deviceId === 'string' && !ctx.deviceExists(args.deviceId)) {
    return reject('unknown-device', `no device ${args.deviceId} is enrolled`, true)
  }
  return { ok: true, cmd: { jti: jti!, iss: claims.iss, iat: claims.iat as number, exp: claims.exp as number, op: op as Op, args } }
}

/** The device a `device.*` command changes (PROTOCOL §3 `superseded`), or null for other ops. */
export function deviceOf(cmd: Pick<Command, 'op' | 'args'>): string | null {
  if (cmd.op === 'device.enroll') return (cmd.args.device as { id: string }).id
  return cmd.op.startsWith('device.') && typeof cmd.args.deviceId === 'string' ? cmd.args.deviceId : null
}

