// PROTOCOL §5: the password a device presents to the site broker, a JWS
// signed by its device key. A token is good for one connect, so a device
// mints a fresh one (fresh jti) for every connect.
import { assembleJws, jwsSigningInput } from '../wire/jws.ts'
import { utf8 } from '../wire/base64url.ts'
import { isId, newJti } from '../wire/ids.ts'
import { sign } from './crypto.ts'
import { MAX_TOKEN_LIFETIME_S } from '../wire/protocol.ts'

/** PROTOCOL §5: `exp - iat` at most 3600 s. */
export { MAX_TOKEN_LIFETIME_S }
export const DEFAULT_TOKEN_LIFETIME_S = 300

export interface MintTokenOptions {
  deviceId: string
  gatewayId: string
  /** the device's 32-byte Ed25519 seed */
  secretKey: Uint8Array
  /** seconds since the epoch; default the runtime clock */
  nowS?: number
  /** default 300 s; the gateway refuses more than 3600 */
  lifetimeS?: number
  /** only tests set this, to replay a token */
  jti?: string
}

export async function mintToken(opts: MintTokenOptions): Promise<string> {
  if (!isId(opts.deviceId)) throw new TypeError('deviceId is not a PROTOCOL §1 identifier')
  if (!isId(opts.gatewayId)) throw new TypeError('gatewayId is not a PROTOCOL §1 identifier')
  const iat = opts.nowS ?? Math.floor(Date.now() / 1000)
  const lifetime = opts.lifetimeS ?? DEFAULT_TOKEN_LIFETIME_S
  if (!Number.isSafeInteger(iat) || !Number.isSafeInteger(lifetime) || lifetime < 1) throw new TypeError('nowS and lifetimeS must be whole numbers, lifetimeS at least 1')
  const claims = { iss: opts.deviceId, aud: opts.gatewayId, iat, exp: iat + lifetime, jti: opts.jti ?? newJti() }
  const input = jwsSigningInput(opts.deviceId, claims)
  return assembleJws(input, await sign(utf8(input), opts.secretKey))
}
