// A device played by the test with node:crypto: its key, tokens-free acks.
import { sign, type KeyObject } from 'node:crypto'
import { generateKeyPair } from '../../agent/store/keys.ts'
import { b64urlEncode, utf8 } from '../../wire/base64url.ts'
import { newJti } from '../../wire/ids.ts'
import { assembleJws, jwsSigningInput } from '../../wire/jws.ts'

export interface TestKey {
  privateKey: KeyObject
  publicKey: string
}

export function testKey(): TestKey {
  const { privateKey, publicKeyB64 } = generateKeyPair()
  return { privateKey, publicKey: publicKeyB64 }
}

export function signAs(key: KeyObject, kid: string, claims: Record<string, unknown>): string {
  const input = jwsSigningInput(kid, claims)
  return assembleJws(input, new Uint8Array(sign(null, utf8(input), key)))
}

/** An ack as PROTOCOL §5 has it, signed by `key`; `over` replaces any claim. */
export function ackFor(
  key: KeyObject,
  deviceId: string,
  gatewayId: string,
  ref: string,
  status: string,
  over: Record<string, unknown> = {},
): string {
  return signAs(key, deviceId, { iss: deviceId, aud: gatewayId, iat: Math.floor(Date.now() / 1000), jti: newJti('ack.'), ref, status, ...over })
}

/** The new-key part of a done re-key ack: the new key and its proof over the action id. */
export function rekeyProof(newKey: TestKey, actionId: string): { newPublicKey: string; newKeyProof: string } {
  return { newPublicKey: newKey.publicKey, newKeyProof: b64urlEncode(new Uint8Array(sign(null, utf8(actionId), newKey.privateKey))) }
}
