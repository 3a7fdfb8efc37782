// `edgewarden identity` and `edgewarden keygen`.
import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { isEdgewardenError } from '../runtime/errors.ts'
import { generateKeyPair, readKeyFile, writeKeyFile } from '../store/keys.ts'
import { Store } from '../store/store.ts'
import { adminRequest, expectOk } from './admin-client.ts'
import { dataDirOf, out } from './common.ts'
import { parseVerbArgs } from './main.ts'
import { UsageError } from './usage.ts'

interface Identity {
  site: string
  gateway: string
  publicKey: string
}

export async function runIdentity(args: string[]): Promise<number> {
  const { values } = parseVerbArgs(args, { key: { type: 'string' }, json: { type: 'boolean' } })
  const dataDir = dataDirOf(values['data-dir'])
  const id = await readIdentity(dataDir, typeof values.key === 'string' ? resolve(values.key) : undefined)
  out(values.json ? JSON.stringify(id) : `site       ${id.site}\ngateway    ${id.gateway}\npublic key ${id.publicKey}`)
  return 0
}

/** From the running agent if there is one, else from the store and key file. */
async function readIdentity(dataDir: string, keyFile?: string): Promise<Identity> {
  try {
    // the same three facts whether the agent runs or not (its listeners are for simulate)
    const { site, gateway, publicKey } = expectOk(await adminRequest(dataDir, 'GET', '/v1/identity')) as unknown as Identity
    return { site, gateway, publicKey }
  } catch (err) {
    if (!isEdgewardenError(err, 'ADMIN_UNAVAILABLE')) throw err
  }
  const key = readKeyFile(keyFile ?? join(dataDir, 'gateway.key'))
  let stored: Identity | undefined
  if (existsSync(join(dataDir, 'db'))) {
    const store = await Store.open(dataDir)
    try {
      stored = await store.getJson<Identity>('meta!identity')
    } finally {
      await store.close()
    }
  }
  return { site: stored?.site ?? 'default', gateway: stored?.gateway ?? '(not started yet)', publicKey: key.publicKeyB64 }
}

export async function runKeygen(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, { out: { type: 'string' }, json: { type: 'boolean' } })
  if (positionals.length) throw new UsageError(`keygen takes no arguments (got ${positionals.join(' ')})`)
  if (typeof values.out !== 'string') throw new UsageError('keygen needs --out FILE')
  const pair = generateKeyPair()
  writeKeyFile(resolve(values.out), pair)
  out(values.json ? JSON.stringify({ file: resolve(values.out), publicKey: pair.publicKeyB64 }) : pair.publicKeyB64)
  return 0
}
