// Verification of a device's ack (PROTOCOL §5): signed by a currently valid
// key of the device it names, addressed to this gateway, referring to an
// action pending for that device; for a `done` re-key, the proof that the
// device holds the new key. Pure: nothing changes here.
import { b64urlDecode, utf8 } from '../../wire/base64url.ts'
import { isJti } from '../../wire/ids.ts'
import { JwsFormatError, parseJws, type ParsedJws } from '../../wire/jws.ts'
import { verify as nodeVerify, X509Certificate, type KeyObject } from 'node:crypto'
import { credentialKind, type DeviceRecord } from '../devices/device.ts'
import type { QueuedAction } from './action-queue.ts'
import type { Gateway } from '../gateway.ts'
import { type PublicKeyCache, publicKeyFromB64, verifyBytes } from '../store/keys.ts'
import { signingCandidates, signingKey } from '../trust/rights.ts'
import { BoundedMap } from '../runtime/bounded-map.ts'
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
  /** for a `done` reenroll or renew of an x509 device: its request for the new certificate (DER; its signature is the proof, checked by the CA) */
  csr?: Uint8Array
}

export type AckVerdict = { ok: true; ack: VerifiedAck } | { ok: false; reason: string; ref?: string }

/** What the crypto pool found for a token-key device's ack (ackSigner): the key that signed it, or null, among the keys `tried`. */
export interface PoolCheck {
  signedBy: string | null
  tried: readonly string[]
}

/** An ack's claims checked (ackClaims): why it cannot settle anything, or the device and the pending action it settles. */
type AckClaims = { ok: false; reason: string } | { ok: true; record: DeviceRecord; action: QueuedAction; status: AckStatus }

/**
 * An ack's claims, from memory alone (no signature checked): it names the
 * sending device, is addressed to this gateway, and refers to an action
 * pending for that device with a status an ack may have. Every check here
 * costs no signature, so an ack refused by one of them costs none either
 * (verifyAck, ackSigner, the ack's turn).
 */
export function ackClaims(gw: Gateway, deviceId: string, jws: ParsedJws): AckClaims {
  const c = jws.payload
  const no = (reason: string): AckClaims => ({ ok: false, reason })
  if (jws.header.kid !== deviceId || c.iss !== deviceId) return no(`kid and iss must be the sending device ${deviceId}`)
  const record = gw.registry.get(deviceId)
  if (!record) return no('unknown device')
  if (c.aud !== gw.id) return no(`aud ${JSON.stringify(c.aud ?? null)} is not this gateway`)
  if (!isJti(c.jti)) return no('jti missing or malformed')
  if (!Number.isSafeInteger(c.iat)) return no('iat is not an integer')
  if (typeof c.ref !== 'string') return no('ref missing')
  const action = gw.actions.find(deviceId, c.ref)
  if (!action) return no(`ref ${c.ref} is not an action pending for ${deviceId}`)
  if (typeof c.status !== 'string' || !(ACK_STATUSES as readonly string[]).includes(c.status)) return no(`status ${JSON.stringify(c.status ?? null)} is not done, failed or unsupported`)
  return { ok: true, record, action, status: c.status as AckStatus }
}

/**
 * `deviceId` is who the transport says sent it (the MQTT client id of the
 * `dev/<id>/ack` topic, the device a relay called). The ack must be that
 * device's own. The claims are checked before the signature: what they
 * refuse costs no verify.
 */
export function verifyAck(
  gw: Gateway,
  deviceId: string,
  input: string | Uint8Array,
  keys: PublicKeyCache,
  opts: {
    /** a token-key device's signature checked already, off the event loop (ackSigner) */
    pool?: PoolCheck
    /** `input` as parseAck gave it (either algorithm): not parsed again where its alg is one this device may sign with */
    parsed?: ParsedJws | null
  } = {},
): AckVerdict {
  const record = gw.registry.get(deviceId)
  const x509 = record !== undefined && credentialKind(record.spec) === 'x509'
  let jws
  if (opts.parsed && (x509 || opts.parsed.header.alg === 'EdDSA')) jws = opts.parsed
  else {
    try {
      // A certificate device signs with its certificate's key: ES256 for P-256 (PROTOCOL §5, §9)
      jws = parseJws(input, x509 ? { algs: ['EdDSA', 'ES256'] } : {})
    } catch (err) {
      if (err instanceof JwsFormatError) return { ok: false, reason: `${err.reason}: ${err.message}` }
      throw err
    }
  }
  const c = jws.payload
  const ref = typeof c.ref === 'string' ? c.ref : undefined
  const fail = (reason: string): AckVerdict => ({ ok: false, reason, ...(ref ? { ref } : {}) })
  const claims = ackClaims(gw, deviceId, jws)
  if (!claims.ok) return fail(claims.reason)
  const { record: device, action, status } = claims
  const nowS = gw.nowS()
  // the clock skew on a key's notBefore, as on the ack's own times
  const signedByDevice = x509
    ? signedByCertificate(device, jws)
    : opts.pool !== undefined
      ? opts.pool.signedBy !== null
        ? // checked against the record as it was; the key must still be one the device may sign with now
          signingCandidates(device, nowS, gw.config.clockSkewS).includes(opts.pool.signedBy)
        : // none of the keys the pool tried: only a key the device got since (a re-key settled meanwhile) is checked here
          signingKey(device, jws, nowS, keys, { earlyS: gw.config.clockSkewS, except: opts.pool.tried }) !== null
      : signingKey(device, jws, nowS, keys, { earlyS: gw.config.clockSkewS }) !== null
  if (!signedByDevice) return fail('signature is not by a currently valid key of the device')
  const ack: VerifiedAck = { deviceId, jti: c.jti as string, action, status }
  if (typeof c.detail === 'string') ack.detail = c.detail.slice(0, 1024)
  if (status === 'done' && (action.act === 'reenroll' || action.act === 'renew') && x509) {
    // A new certificate: the request carries the new key, and its signature is the proof (checked when the CA issues).
    const csr = typeof c.csr === 'string' ? b64urlDecode(c.csr) : null
    if (!csr || csr.length < 16) return fail('a done re-key ack of a certificate device must carry csr (base64url DER PKCS#10)')
    ack.csr = csr
  } else if (status === 'done' && (action.act === 'reenroll' || action.act === 'renew')) {
    // Possession of the new key: its signature over the action id.
    if (typeof c.newPublicKey !== 'string' || typeof c.newKeyProof !== 'string') return fail('a done re-key ack must carry newPublicKey and newKeyProof')
    const newKey = publicKeyFromB64(c.newPublicKey)
    const proof = b64urlDecode(c.newKeyProof)
    if (!newKey || !proof || !verifyBytes(newKey, utf8(action.id), proof)) return fail('newKeyProof does not verify with newPublicKey')
    if (device.keys.some((k) => k.publicKey === c.newPublicKey)) return fail('newPublicKey is a key the device already has')
    ack.newPublicKey = c.newPublicKey
  }
  return { ok: true, ack }
}

/** An ack parsed without verifying, with either algorithm a device may sign with (ackSigner, the ack's turn); null when it is no JWS of the allowed shape (verifyAck says why). */
export function parseAck(input: string | Uint8Array): ParsedJws | null {
  try {
    return parseJws(input, { algs: ['EdDSA', 'ES256'] })
  } catch {
    return null
  }
}

/**
 * The signature check of a token-key device's ack, on the crypto pool (a
 * reconnect storm brings an ack from every device at once): the keys of the
 * device tried, and the one that signed it or null; null instead when it is
 * not for the pool (a certificate device, an unknown device, an ack not
 * signed EdDSA, one whose claims settle nothing: verifyAck checks or refuses
 * it inline and says why).
 */
export async function ackSigner(gw: Gateway, deviceId: string, jws: ParsedJws): Promise<PoolCheck | null> {
  if (jws.header.alg !== 'EdDSA') return null
  const claims = ackClaims(gw, deviceId, jws)
  if (!claims.ok || credentialKind(claims.record.spec) === 'x509') return null
  const tried = signingCandidates(claims.record, gw.nowS(), gw.config.clockSkewS)
  return { signedBy: await gw.crypto.verifyAny(tried, jws.signingInput, jws.signature), tried }
}

/** Certificate keys, parsed once per certificate (acks are rare next to connects, but a device may send many). */
const certKeys = new BoundedMap<string, KeyObject>(10_000)

/** Whether an ack is signed by the key of one of the device's certificates still valid (current, or the one it replaces). */
function signedByCertificate(record: DeviceRecord, jws: ParsedJws): boolean {
  for (const cert of record.certificates ?? []) {
    if (cert.revoked || !cert.pem) continue
    let key = certKeys.get(cert.sha256)
    if (!key) {
      key = new X509Certificate(cert.pem).publicKey
      certKeys.set(cert.sha256, key)
    }
    const type = key.asymmetricKeyType
    try {
      if (jws.header.alg === 'EdDSA' && type === 'ed25519' && nodeVerify(null, jws.signingInput, key, jws.signature)) return true
      if (jws.header.alg === 'ES256' && type === 'ec' && nodeVerify('sha256', jws.signingInput, { key, dsaEncoding: 'ieee-p1363' }, jws.signature)) return true
    } catch {}
  }
  return false
}
