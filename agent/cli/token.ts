// `edgewarden token`: a fresh device token (PROTOCOL §5), so an operator can
// try a device identity with any MQTT client (mosquitto_pub -P "$(…)").
import { resolve } from 'node:path'
import { isId, newJti } from '../../wire/ids.ts'
import { MAX_TOKEN_LIFETIME_S } from '../trust/admission.ts'
import { signJws } from '../store/jws.ts'
import { readKeyFile } from '../store/keys.ts'
import { out } from './common.ts'
import { parseVerbArgs } from './main.ts'
import { UsageError } from './usage.ts'

const DEFAULT_LIFETIME_S = 300

export async function runToken(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, {
    key: { type: 'string' },
    device: { type: 'string' },
    gateway: { type: 'string' },
    lifetime: { type: 'string' },
    json: { type: 'boolean' },
  })
  if (positionals.length) throw new UsageError(`token takes no arguments (got ${positionals.join(' ')})`)
  if (typeof values.key !== 'string') throw new UsageError('token needs --key FILE (the device private key, PKCS#8 PEM, mode 0600)')
  if (!isId(values.device)) throw new UsageError('token needs --device ID (letters, digits, . _ : -; at most 64)')
  if (!isId(values.gateway)) throw new UsageError('token needs --gateway GW, the id of the gateway it is for')
  const lifetime = values.lifetime === undefined ? DEFAULT_LIFETIME_S : /^\d+$/.test(values.lifetime) ? Number(values.lifetime) : NaN
  if (!Number.isSafeInteger(lifetime) || lifetime < 1 || lifetime > MAX_TOKEN_LIFETIME_S) {
    throw new UsageError(`--lifetime must be 1 to ${MAX_TOKEN_LIFETIME_S} seconds`)
  }
  const key = readKeyFile(resolve(values.key))
  const iat = Math.floor(Date.now() / 1000)
  const claims = { iss: values.device, aud: values.gateway, iat, exp: iat + lifetime, jti: newJti() }
  const token = signJws(key.privateKey, values.device, claims)
  out(values.json ? JSON.stringify({ token, device: values.device, gateway: values.gateway, exp: claims.exp, jti: claims.jti }) : token)
  return 0
}
