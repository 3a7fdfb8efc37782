// PROTOCOL §3 commands: claims iss, aud = the gateway id, iat, exp
// (exp - iat at most 30 days), jti, op, args; header {"alg":"EdDSA","kid"}
// with the kid the gateways pin. Signed once, when the command is stored:
// every re-send publishes these same bytes, so the gateway sees one jti.
import type { KeyObject } from 'node:crypto'
import { utf8 } from '../../wire/base64url.ts'
import { newJti } from '../../wire/ids.ts'
import { assembleJws, jwsSigningInput } from '../../wire/jws.ts'
import { MAX_COMMAND_LIFETIME_S } from '../../wire/protocol.ts'
import { publicKeyB64, signEd25519 } from '../runtime/keys.ts'

export interface SignedCommand {
  jti: string
  iat: number
  exp: number
  jws: string
}

export class CommandSigner {
  readonly kid: string
  readonly iss: string
  readonly publicKey: string
  readonly lifetimeS: number
  readonly #key: KeyObject

  constructor(key: KeyObject, o: { kid: string; iss: string; lifetimeS: number }) {
    if (!(o.lifetimeS > 0 && o.lifetimeS <= MAX_COMMAND_LIFETIME_S)) throw new TypeError(`command lifetime must be 1..${MAX_COMMAND_LIFETIME_S} s`)
    this.#key = key
    this.kid = o.kid
    this.iss = o.iss
    this.lifetimeS = o.lifetimeS
    this.publicKey = publicKeyB64(key)
  }

  sign(gateway: string, op: string, args: Record<string, unknown>, nowS: number): SignedCommand {
    const jti = newJti('cmd.')
    const iat = nowS
    const exp = nowS + this.lifetimeS
    const input = jwsSigningInput(this.kid, { iss: this.iss, aud: gateway, iat, exp, jti, op, args })
    return { jti, iat, exp, jws: assembleJws(input, signEd25519(this.#key, utf8(input))) }
  }
}
