// Sites and gateways, each gateway with its pinned public key (PROTOCOL §2):
// every event and status of a gateway is checked against that key and no
// other. Registering again with the same key is a no-op; with another key it
// is refused (a new key is a new gateway identity: retire the old record
// first). Keys are cached; a miss re-reads the database, a negative answer is
// kept briefly so junk topics do not hammer it.
import type { KeyObject } from 'node:crypto'
import { isId } from '../../wire/ids.ts'
import type { Clock } from '../runtime/clock.ts'
import { badRequest, CpError } from '../runtime/errors.ts'
import { publicKeyFromB64 } from '../runtime/keys.ts'
import type { Database, Row, Sql } from '../storage/database.ts'

export interface GatewayRow extends Row {
  site: string
  id: string
  public_key: string
  created_at: number
  epoch: number
  baseline_seq: number | null
  max_seq: number
  max_seq_iat: number | null
  contiguous_seq: number
  gap_since: number | null
  last_event_at: number | null
  online: boolean | null
  version: string | null
  status_seq: number | null
  audit_seq: number | null
  audit_hash: string | null
  status_at: number | null
}

const NEGATIVE_TTL_MS = 5000

export class Registry {
  readonly #db: Database
  readonly #clock: Clock
  readonly #keys = new Map<string, { key: KeyObject; b64: string } | { missUntil: number }>()

  constructor(db: Database, clock: Clock) {
    this.#db = db
    this.#clock = clock
  }

  async addSite(q: Sql, id: unknown, name?: unknown): Promise<{ created: boolean }> {
    if (!isId(id)) throw badRequest(`site id ${JSON.stringify(id)} is not an identifier (PROTOCOL §1)`)
    if (name !== undefined && (typeof name !== 'string' || name.length > 200)) throw badRequest('site name must be a string of at most 200 characters')
    const rows = await q.query('INSERT INTO sites (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING RETURNING id', [id, name ?? null, this.#clock.nowMs()])
    return { created: rows.length === 1 }
  }

  /** Register a gateway (and its site if new) with its pinned key. */
  async registerGateway(input: { site?: unknown; id?: unknown; publicKey?: unknown }): Promise<{ created: boolean; gateway: GatewayRow }> {
    const { site, id, publicKey } = input
    if (!isId(site)) throw badRequest(`site ${JSON.stringify(site ?? null)} is not an identifier (PROTOCOL §1)`)
    if (!isId(id)) throw badRequest(`gateway id ${JSON.stringify(id ?? null)} is not an identifier (PROTOCOL §1)`)
    if (!publicKeyFromB64(publicKey)) throw badRequest('publicKey must be the gateway\'s Ed25519 public key, base64url of its raw 32 bytes (edgewarden identity prints it)')
    const out = await this.#db.tx(async (q) => {
      await this.addSite(q, site)
      const existing = (await q.query<GatewayRow>('SELECT * FROM gateways WHERE site = $1 AND id = $2 FOR UPDATE', [site, id]))[0]
      if (existing) {
        if (existing.public_key !== publicKey) throw new CpError('CP_CONFLICT', `gateway ${site}/${id} is registered with another public key; a new key is a new gateway identity`)
        return { created: false, gateway: existing }
      }
      const rows = await q.query<GatewayRow>('INSERT INTO gateways (site, id, public_key, created_at) VALUES ($1, $2, $3, $4) RETURNING *', [site, id, publicKey, this.#clock.nowMs()])
      return { created: true, gateway: rows[0]! }
    })
    this.#keys.delete(`${site}/${id}`)
    return out
  }

  async gateway(site: string, id: string): Promise<GatewayRow | null> {
    return (await this.#db.query<GatewayRow>('SELECT * FROM gateways WHERE site = $1 AND id = $2', [site, id]))[0] ?? null
  }

  async gateways(): Promise<GatewayRow[]> {
    return this.#db.query<GatewayRow>('SELECT * FROM gateways ORDER BY site, id')
  }

  /** The pinned key of a gateway; null when it is not registered. */
  async keyOf(site: string, id: string): Promise<{ key: KeyObject; b64: string } | null> {
    const k = `${site}/${id}`
    const hit = this.#keys.get(k)
    if (hit && 'key' in hit) return hit
    if (hit && hit.missUntil > this.#clock.nowMs()) return null
    const row = await this.gateway(site, id)
    const key = row ? publicKeyFromB64(row.public_key) : null
    if (!row || !key) {
      this.#keys.set(k, { missUntil: this.#clock.nowMs() + NEGATIVE_TTL_MS })
      return null
    }
    const entry = { key, b64: row.public_key }
    this.#keys.set(k, entry)
    return entry
  }
}
