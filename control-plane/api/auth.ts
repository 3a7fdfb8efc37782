// Bearer tokens with scopes. A token is `ewcp.<id>.<secret>`: the id finds
// the row, the secret (32 random bytes) is compared by its SHA-256 in
// constant time. Only that hash is stored: a copy of the database gives no
// usable token. A token is shown once, when it is made.
//
// Scopes: read (fleet, devices, commands, alerts), command (create commands),
// audit (events, evidence, exports), metrics (/metrics), admin (gateways,
// tokens, webhooks; implies every other scope).
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { b64urlEncode } from '../../wire/base64url.ts'
import { iso, type Clock } from '../runtime/clock.ts'
import { badRequest, CpError } from '../runtime/errors.ts'
import type { Database, Sql } from '../storage/database.ts'

export const SCOPES = ['read', 'command', 'audit', 'metrics', 'admin'] as const
export type Scope = (typeof SCOPES)[number]

export interface Principal {
  tokenId: string
  name: string
  scopes: ReadonlySet<Scope>
}

const TOKEN = /^ewcp\.([A-Za-z0-9_-]{12})\.([A-Za-z0-9_-]{43})$/
const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex')
const LAST_USED_EVERY_MS = 60_000

export function can(p: Principal, scope: Scope): boolean {
  return p.scopes.has('admin') || p.scopes.has(scope)
}

export class Tokens {
  readonly #db: Database
  readonly #clock: Clock
  readonly #lastUsed = new Map<string, number>()

  constructor(db: Database, clock: Clock) {
    this.#db = db
    this.#clock = clock
  }

  /** A new token, shown this once; in `q`'s transaction when given. */
  async create(input: { name?: unknown; scopes?: unknown }, q: Sql = this.#db): Promise<{ id: string; name: string; scopes: Scope[]; token: string }> {
    const { name, scopes } = input
    if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9 ._:@-]{0,63}$/.test(name)) throw badRequest('name must be 1 to 64 of letters, digits, space and ._:@- (it names the token in every command it creates)')
    if (!Array.isArray(scopes) || scopes.length === 0 || scopes.some((s) => !(SCOPES as readonly string[]).includes(s as string))) throw badRequest(`scopes must be a non-empty array of ${SCOPES.join(', ')}`)
    const id = b64urlEncode(randomBytes(9))
    const secret = b64urlEncode(randomBytes(32))
    const uniq = [...new Set(scopes as Scope[])]
    await q.query('INSERT INTO tokens (id, name, scopes, secret_sha256, created_at) VALUES ($1, $2, $3, $4, $5)', [id, name, uniq, sha256(secret), this.#clock.nowMs()])
    return { id, name, scopes: uniq, token: `ewcp.${id}.${secret}` }
  }

  /** The principal of an Authorization header; CP_UNAUTHORIZED otherwise. */
  async authenticate(header: string | undefined): Promise<Principal> {
    const m = /^Bearer (\S+)$/.exec(header ?? '')
    if (!m) throw new CpError('CP_UNAUTHORIZED', 'an Authorization: Bearer <token> header is required')
    const t = TOKEN.exec(m[1]!)
    if (!t) throw new CpError('CP_UNAUTHORIZED', 'the bearer token is not a control-plane token')
    const row = (await this.#db.query<{ id: string; name: string; scopes: Scope[]; secret_sha256: string; revoked_at: number | null }>('SELECT id, name, scopes, secret_sha256, revoked_at FROM tokens WHERE id = $1', [t[1]]))[0]
    const given = Buffer.from(sha256(t[2]!))
    // The same work whether or not the id exists.
    const want = Buffer.from(row?.secret_sha256 ?? sha256('no such token'))
    if (!row || !timingSafeEqual(given, want) || row.revoked_at !== null) throw new CpError('CP_UNAUTHORIZED', 'the bearer token is unknown or revoked')
    const now = this.#clock.nowMs()
    if ((this.#lastUsed.get(row.id) ?? 0) + LAST_USED_EVERY_MS < now) {
      this.#lastUsed.set(row.id, now)
      void this.#db.query('UPDATE tokens SET last_used_at = $2 WHERE id = $1', [row.id, now]).catch(() => {})
    }
    return { tokenId: row.id, name: row.name, scopes: new Set(row.scopes) }
  }

  async list(): Promise<Record<string, unknown>[]> {
    const rows = await this.#db.query<{ id: string; name: string; scopes: string[]; created_at: number; revoked_at: number | null; last_used_at: number | null }>(
      'SELECT id, name, scopes, created_at, revoked_at, last_used_at FROM tokens ORDER BY created_at',
    )
    return rows.map((r) => ({ id: r.id, name: r.name, scopes: r.scopes, createdAt: iso(r.created_at), revokedAt: iso(r.revoked_at), lastUsedAt: iso(r.last_used_at) }))
  }

  async revoke(id: string): Promise<void> {
    const rows = await this.#db.query('UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING id', [id, this.#clock.nowMs()])
    if (!rows.length) throw new CpError('CP_NOT_FOUND', `no active token ${id}`)
  }
}
