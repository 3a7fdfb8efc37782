// Verification of a device's ack (PROTOCOL §5): signed by a currently valid
// key of the device it names, addressed to this gateway, referring to an
// action pending for that device; for a `done` re-key, the proof that the
// device holds the new key. Pure: nothing changes here.
import { b64urlDecode, utf8 } from '../../wire/base64url.ts'
import { isJti } from '../../wire/ids.ts'
import { JwsFormatError, parseJws } from '../../wire/jws.ts'
import type { QueuedAction } from './action-queue.ts'
import type { Gateway } from '../gateway.ts'
import { type PublicKeyCache, publicKeyFromB64, verifyBytes } from '../store/keys.ts'
import { signingKey } from '../trust/rights.ts'
import { ACK_STATUSES, type AckStatus } from '../../wire/protocol.ts'

export { ACK_STATUSES, type AckStatus }

export interface VerifiedAck {
  deviceId: string
  jti: string
  action: QueuedAction
  status: AckStatus
  detail?: string
  /** for a `done` reenroll or renew: the proven new key */
  newPublicKey?: string
}

export type AckVerdict = { ok: true; ack: VerifiedAck } | { ok: false; reason: string; ref?: string }

/**
 * `deviceId` is who the transport says sent it (the MQTT client id of the
 * `dev/<id>/ack` topic, the device a relay called). The ack must be that
 * device's own.
 */
export function verifyAck(gw: Gateway, deviceId: string, input: string | Uint8Array, keys: PublicKeyCache): AckVerdict {
  let jws
  try {
    jws = parseJws(input)
  } catch (err) {
    if (err instanceof JwsFormatError) return { ok: false, reason: `${err.reason}: ${err.message}` }
    throw err
  }
  const c = jws.payload
  const ref = typeof c.ref === 'string' ? c.ref : undefined
  const fail = (reason: string): AckVerdict => ({ ok: false, reason, ...(ref ? { ref } : {}) })
  if (jws.header.kid !== deviceId || c.iss !== deviceId) return fail(`kid and iss must be the sending device ${deviceId}`)
  const record = gw.registry.get(deviceId)
  if (!record) return fail('unknown device')
  const nowS = gw.nowS()
  // the clock skew on a key's notBefore, as on the ack's own times
  const signedByDevice = signingKey(record, jws, nowS, keys, { earlyS: gw.config.clockSkewS }) !== null
  if (!signedByDevice) return fail('signature is not by a currently valid key of the device')
  if (c.aud !== gw.id) return fail(`aud ${JSON.stringify(c.aud ?? null)} is not this gateway`)
  if (!isJti(c.jti)) return fail('jti missing or malformed')
  if (!Number.isSafeInteger(c.iat)) return fail('iat is not an integer')
  if (!ref) return fail('ref missing')
  const action = gw.actions.find(deviceId, ref)
  if (!action) return fail(`ref ${ref} is not an action pending for ${deviceId}`)
  if (typeof c.status !== 'string' || !(ACK_STATUSES as readonly string[]).includes(c.status)) return fail(`status ${JSON.stringify(c.status ?? null)} is not done, failed or unsupported`)
  const status = c.status as AckStatus
  const ack: VerifiedAck = { deviceId, jti: c.jti, action, status }
  if (typeof c.detail === 'string') ack.detail = c.detail.slice(0, 1024)
  if (status === 'done' && (action.act === 'reenroll' || action.act === 'renew')) {
    // Possession of the new key: its signature over the action id.
    if (typeof c.newPublicKey !== 'string' || typeof c.newKeyProof !== 'string') return fail('a done re-key ack must carry newPublicKey and newKeyProof')
    const newKey = publicKeyFromB64(c.newPublicKey)
    const proof = b64urlDecode(c.newKeyProof)
    if (!newKey || !proof || !verifyBytes(newKey, utf8(action.id), proof)) return fail('newKeyProof does not verify with newPublicKey')
    if (record.keys.some((k) => k.publicKey === c.newPublicKey)) return fail('newPublicKey is a key the device already has')
    ack.newPublicKey = c.newPublicKey
  }
  return { ok: true, ack }
}
