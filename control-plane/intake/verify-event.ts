// PROTOCOL §3 events: a JWS signed by the gateway key, claims iss = the
// gateway id, aud = "cp", iat, jti, seq (from 1, +1 per event), type, data.
// Checked in this order, every input for type and size before any crypto;
// anything that fails is never stored as evidence (it becomes an
// invalid-event alert).
import type { KeyObject } from 'node:crypto'
import { isJti } from '../../wire/ids.ts'
import { JwsFormatError, MAX_JWS_BYTES, parseJws } from '../../wire/jws.ts'
import { verifyEd25519 } from '../runtime/keys.ts'

export interface VerifiedEvent {
  jws: string
  claims: Record<string, unknown>
  seq: number
  iat: number
  jti: string
  type: string
  data: Record<string, unknown>
}

export type EventRefusal = 'malformed' | 'bad-alg' | 'wrong-kid' | 'bad-signature' | 'wrong-issuer' | 'wrong-audience' | 'bad-claims'

export type EventVerdict = { ok: true; event: VerifiedEvent } | { ok: false; reason: EventRefusal; detail: string }

/** An event's type (PROTOCOL §3): device.state, cmd.completed, … */
export const EVENT_TYPE = /^[a-z][a-z0-9.-]{0,63}$/

const refuse = (reason: EventRefusal, detail: string): EventVerdict => ({ ok: false, reason, detail })

export function verifyEvent(payload: Uint8Array | string, gatewayId: string, key: KeyObject): EventVerdict {
  const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length
  if (size > MAX_JWS_BYTES) return refuse('malformed', `${size} bytes, over ${MAX_JWS_BYTES}`)
  let parsed
  try {
    parsed = parseJws(payload)
  } catch (err) {
    if (err instanceof JwsFormatError) return refuse(err.reason, err.message)
    throw err
  }
  if (parsed.header.kid !== gatewayId) return refuse('wrong-kid', `kid ${JSON.stringify(parsed.header.kid)} is not the gateway id ${gatewayId}`)
  if (!verifyEd25519(key, parsed.signingInput, parsed.signature)) return refuse('bad-signature', 'signature does not verify with the pinned gateway key')
  const c = parsed.payload
  if (c.iss !== gatewayId) return refuse('wrong-issuer', `iss ${JSON.stringify(c.iss ?? null)} is not ${gatewayId}`)
  if (c.aud !== 'cp') return refuse('wrong-audience', `aud ${JSON.stringify(c.aud ?? null)} is not "cp"`)
  if (!isJti(c.jti)) return refuse('bad-claims', 'jti missing or not 1-64 of [A-Za-z0-9._:-]')
  if (!Number.isSafeInteger(c.seq) || (c.seq as number) < 1) return refuse('bad-claims', 'seq is not a positive integer')
  if (!Number.isSafeInteger(c.iat) || (c.iat as number) < 0) return refuse('bad-claims', 'iat is not an integer')
  if (typeof c.type !== 'string' || !EVENT_TYPE.test(c.type)) return refuse('bad-claims', 'type is not an event type')
  const data = c.data ?? {}
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return refuse('bad-claims', 'data is not an object')
  const jws = typeof payload === 'string' ? payload : Buffer.from(payload).toString('utf8')
  return { ok: true, event: { jws, claims: c, seq: c.seq as number, iat: c.iat as number, jti: c.jti as string, type: c.type, data: data as Record<string, unknown> } }
}
