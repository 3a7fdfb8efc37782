// Every route of the HTTP API (documented in api/openapi.ts, written out as
// api/openapi.yaml; test/control-plane/openapi.test.ts keeps them in step). Handlers check and normalise their input,
// then call the store; a bad request changes nothing.
import { createHash } from 'node:crypto'
import { isId, isJti } from '../../wire/ids.ts'
import { commandView, insertCommands, type CommandRow } from '../commands/command-store.ts'
import type { CommandSigner } from '../commands/signer.ts'
import { buildSpecs, DEVICE_ACTIONS } from '../commands/spec.ts'
import { exportRows, EXPORT_COLUMNS, csvLine } from '../evidence/export.ts'
import { offboarding } from '../evidence/offboarding.ts'
import { deviceTimeline, eventView, type EventRow } from '../evidence/timeline.ts'
import { ALERT_KINDS, alertView } from '../fleet/alerts.ts'
import { EVENT_TYPE } from '../intake/verify-event.ts'
import { fleetView } from '../fleet/fleet-view.ts'
import type { GatewayRow, Registry } from '../fleet/registry.ts'
import type { CpMetrics } from '../outward/metrics.ts'
import { createWebhook, disableWebhook } from '../outward/webhooks.ts'
import { iso, type Clock } from '../runtime/clock.ts'
import { badRequest, CpError } from '../runtime/errors.ts'
import type { Database } from '../storage/database.ts'
import type { Tokens } from './auth.ts'
import { FLEET_PAGE_CSP, FLEET_PAGE_HTML } from './fleet-page.ts'
import { openApiDocument, renderOpenApiYaml } from './openapi.ts'
import { intParam, type Ctx, type Reply, type Route } from './http.ts'

export interface ApiServices {
  db: Database
  clock: Clock
  registry: Registry
  tokens: Tokens
  signer: CommandSigner
  metrics: CpMetrics
  instanceId: string
  /** the re-send loop should look now */
  kick(): void
  readiness(): { ready: boolean; detail: Record<string, unknown> }
}

function gatewayView(g: GatewayRow): Record<string, unknown> {
  return {
    site: g.site,
    id: g.id,
    publicKey: g.public_key,
    createdAt: iso(g.created_at),
    online: g.online,
    version: g.version,
    statusAt: iso(g.status_at),
    lastEventAt: iso(g.last_event_at),
    history: { epoch: g.epoch, baselineSeq: g.baseline_seq, maxSeq: g.max_seq, contiguousSeq: g.contiguous_seq, gapSince: iso(g.gap_since), statusSeq: g.status_seq, audit: g.audit_seq === null ? null : { seq: g.audit_seq, hash: g.audit_hash } },
  }
}

function deviceView(d: Record<string, unknown>): Record<string, unknown> {
  return {
    id: d.id,
    site: d.site,
    gateway: d.gateway,
    state: d.state ?? 'pending',
    criticality: d.criticality,
    credentialKind: d.credential_kind,
    credentialExpiresAt: d.credential_expires_at === null ? null : new Date(Number(d.credential_expires_at) * 1000).toISOString(),
    retiringSince: iso(d.retiring_since as number | null),
    retiredAt: iso(d.retired_at as number | null),
    updatedAt: iso(d.updated_at as number),
  }
}

/** A JSON value with its object keys sorted: the same request hashes the same. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`
  if (v && typeof v === 'object') return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`).join(',')}}`
  return JSON.stringify(v ?? null)
}

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/

/** POST /v1/commands and the per-device shortcuts: stored in one transaction with the idempotency record. */
async function createCommands(s: ApiServices, ctx: Ctx, body: unknown): Promise<Reply> {
  const key = ctx.req.headers['idempotency-key']
  if (key !== undefined && (typeof key !== 'string' || !IDEMPOTENCY_KEY.test(key))) throw badRequest('Idempotency-Key must be 1 to 255 visible ASCII characters')
  const requestHash = createHash('sha256').update(`${ctx.req.method} ${ctx.req.url?.split('?')[0]} ${canonical(body)}`).digest('hex')
  const p = ctx.principal!
  const out = await s.db.tx(async (q) => {
    const now = s.clock.nowMs()
    if (key !== undefined) {
      const claimed = await q.query('INSERT INTO idempotency (key, token_id, request_sha256, status, response, created_at) VALUES ($1, $2, $3, 0, $4, $5) ON CONFLICT (key) DO NOTHING RETURNING key', [key, p.tokenId, requestHash, {}, now])
      if (!claimed.length) {
        const prior = (await q.query<{ request_sha256: string; status: number; response: unknown }>('SELECT request_sha256, status, response FROM idempotency WHERE key = $1', [key]))[0]!
        if (prior.request_sha256 !== requestHash) throw new CpError('CP_IDEMPOTENCY_MISMATCH', `Idempotency-Key ${key} was used for another request; nothing was changed`)
        return { replay: true, status: prior.status, json: prior.response, created: 0, ops: [] as string[] }
      }
    }
    const specs = await buildSpecs(q, body)
    const rows = await insertCommands(q, specs, { signer: s.signer, clock: s.clock, by: p.name, requestKey: key ?? null })
    const json = { commands: rows.map((r) => commandView(r)) }
    if (key !== undefined) await q.query('UPDATE idempotency SET status = 201, response = $2 WHERE key = $1', [key, json])
    return { replay: false, status: 201, json, created: rows.length, ops: rows.map((r) => r.op) }
  })
  for (const op of out.ops) s.metrics.commandsCreated.inc({ op })
  if (out.created) s.kick()
  return { status: out.status, json: out.json, headers: out.replay ? { 'idempotent-replayed': 'true' } : {} }
}

const optId = (q: URLSearchParams, name: string): string | undefined => {
  const v = q.get(name)
  if (v === null) return undefined
  if (!isId(v)) throw badRequest(`${name} must be an identifier`)
  return v
}

const optType = (q: URLSearchParams): string | null => {
  const type = q.get('type')
  if (type !== null && !EVENT_TYPE.test(type)) throw badRequest('type must be an event type')
  return type
}

/** The API document, built on first use. */
let openApiJson: unknown
let openApiYaml: string | undefined

export function apiRoutes(s: ApiServices): Route[] {
  const r = (method: Route['method'], path: string, scope: Route['scope'], handle: (ctx: Ctx) => Promise<Reply>): Route => ({ method, path, scope, name: `${method} ${path}`, handle })
  const deviceOr404 = async (id: string): Promise<Record<string, unknown>> => {
    if (!isId(id)) throw badRequest('device id must be an identifier')
    const d = (await s.db.query('SELECT * FROM devices WHERE id = $1', [id]))[0]
    if (!d) throw new CpError('CP_NOT_FOUND', `device ${id} is not known on any gateway`)
    return d
  }
  return [
    r('GET', '/', null, async () => ({ status: 200, text: FLEET_PAGE_HTML, type: 'text/html; charset=utf-8', headers: { 'content-security-policy': FLEET_PAGE_CSP, 'x-frame-options': 'DENY' } })),
    r('GET', '/healthz', null, async () => {
      await s.db.query('SELECT 1')
      return { status: 200, json: { status: 'ok', instance: s.instanceId } }
    }),
    r('GET', '/readyz', null, async () => {
      const { ready, detail } = s.readiness()
      return { status: ready ? 200 : 503, json: { ready, ...detail } }
    }),
    r('GET', '/metrics', 'metrics', async () => ({ status: 200, text: await s.metrics.registry.metrics(), type: s.metrics.registry.contentType })),
    r('GET', '/v1/openapi.json', null, async () => ({ status: 200, json: (openApiJson ??= openApiDocument()) })),
    r('GET', '/v1/openapi.yaml', null, async () => ({ status: 200, text: (openApiYaml ??= renderOpenApiYaml()), type: 'application/yaml; charset=utf-8' })),
    r('GET', '/v1/fleet', 'read', async () => ({ status: 200, json: await fleetView(s.db, s.clock) })),

    r('GET', '/v1/sites', 'read', async () => {
      const rows = await s.db.query<{ id: string; name: string | null; created_at: number }>('SELECT * FROM sites ORDER BY id')
      return { status: 200, json: { items: rows.map((x) => ({ id: x.id, name: x.name, createdAt: iso(x.created_at) })) } }
    }),
    r('POST', '/v1/sites', 'admin', async (ctx) => {
      const b = (await ctx.body()) as Record<string, unknown> | undefined
      if (!b || typeof b !== 'object') throw badRequest('the body must be {"id", "name"?}')
      const { created } = await s.registry.addSite(s.db, b.id, b.name)
      return { status: created ? 201 : 200, json: { id: b.id, created } }
    }),
    r('GET', '/v1/gateways', 'read', async () => ({ status: 200, json: { items: (await s.registry.gateways()).map(gatewayView) } })),
    r('POST', '/v1/gateways', 'admin', async (ctx) => {
      const b = (await ctx.body()) as Record<string, unknown> | undefined
      if (!b || typeof b !== 'object' || Array.isArray(b)) throw badRequest('the body must be {"site", "id", "publicKey"}')
      for (const k of Object.keys(b)) if (!['site', 'id', 'publicKey'].includes(k)) throw badRequest(`unknown field "${k}" (a gateway takes site, id, publicKey)`)
      const { created, gateway } = await s.registry.registerGateway(b)
      return { status: created ? 201 : 200, json: { ...gatewayView(gateway), created } }
    }),
    r('GET', '/v1/gateways/{site}/{gateway}', 'read', async (ctx) => {
      const g = await s.registry.gateway(ctx.params.site!, ctx.params.gateway!)
      if (!g) throw new CpError('CP_UNKNOWN_GATEWAY', `gateway ${ctx.params.site}/${ctx.params.gateway} is not registered`)
      const waiting = await s.db.query<CommandRow>("SELECT * FROM commands WHERE site = $1 AND gateway = $2 AND state IN ('queued', 'sent', 'accepted') ORDER BY seq LIMIT 1000", [g.site, g.id])
      return { status: 200, json: { ...gatewayView(g), waiting: waiting.map((c) => commandView(c, { online: g.online })) } }
    }),

    r('GET', '/v1/devices', 'read', async (ctx) => {
      const q = ctx.query
      const state = q.get('state')
      if (state !== null && !/^[a-z]{1,20}$/.test(state)) throw badRequest('state must be a device state')
      const limit = intParam(q, 'limit', 500, 1, 10_000)
      const after = q.get('after') ?? ''
      const rows = await s.db.query(
        `SELECT * FROM devices WHERE id > $1 AND ($2::text IS NULL OR COALESCE(state, 'pending') = $2) AND ($3::text IS NULL OR site = $3) AND ($4::text IS NULL OR gateway = $4) ORDER BY id LIMIT $5`,
        [after, state, optId(q, 'site') ?? null, optId(q, 'gateway') ?? null, limit],
      )
      return { status: 200, json: { items: rows.map(deviceView), next: rows.length === limit ? rows.at(-1)!.id : null } }
    }),
    r('GET', '/v1/devices/{id}', 'read', async (ctx) => {
      const d = await deviceOr404(ctx.params.id!)
      const cmds = await s.db.query<CommandRow>('SELECT * FROM commands WHERE device_id = $1 ORDER BY seq DESC LIMIT 20', [d.id])
      return { status: 200, json: { ...deviceView(d), commands: cmds.map((c) => commandView(c)) } }
    }),
    r('GET', '/v1/devices/{id}/timeline', 'audit', async (ctx) => {
      const d = await deviceOr404(ctx.params.id!)
      const rows = await deviceTimeline(s.db, d.id as string, { afterId: intParam(ctx.query, 'after', 0, 0, Number.MAX_SAFE_INTEGER), limit: intParam(ctx.query, 'limit', 1000, 1, 10_000) })
      return { status: 200, json: { deviceId: d.id, items: rows.map((e) => eventView(e, ctx.query.get('jws') !== 'false')) } }
    }),
    r('GET', '/v1/devices/{id}/offboarding', 'read', async (ctx) => {
      if (!isId(ctx.params.id)) throw badRequest('device id must be an identifier')
      return { status: 200, json: await offboarding(s.db, ctx.params.id) }
    }),
    r('POST', '/v1/devices/{id}/{action}', 'command', async (ctx) => {
      const op = DEVICE_ACTIONS[ctx.params.action!]
      if (!op) throw new CpError('CP_NOT_FOUND', `no device action "${ctx.params.action}" (there are ${Object.keys(DEVICE_ACTIONS).join(', ')})`)
      const b = ((await ctx.body()) ?? {}) as Record<string, unknown>
      if (typeof b !== 'object' || Array.isArray(b)) throw badRequest('the body must be a JSON object of the op\'s args')
      return createCommands(s, ctx, { op, deviceId: ctx.params.id, ...(Object.keys(b).length ? { args: b } : {}) })
    }),

    r('POST', '/v1/commands', 'command', async (ctx) => createCommands(s, ctx, await ctx.body())),
    r('GET', '/v1/commands', 'read', async (ctx) => {
      const q = ctx.query
      const state = q.get('state')
      if (state !== null && !/^[a-z]{1,20}$/.test(state)) throw badRequest('state must be a command state')
      const waiting = q.get('waiting')
      if (waiting !== null && waiting !== 'true' && waiting !== 'false') throw badRequest('waiting must be true or false')
      const limit = intParam(q, 'limit', 500, 1, 10_000)
      const rows = await s.db.query<CommandRow>(
        `SELECT * FROM commands WHERE seq > $1 AND ($2::text IS NULL OR state = $2) AND ($3::boolean IS NULL OR (state IN ('queued', 'sent', 'accepted')) = $3)
           AND ($4::text IS NULL OR site = $4) AND ($5::text IS NULL OR gateway = $5) AND ($6::text IS NULL OR device_id = $6) ORDER BY seq LIMIT $7`,
        [intParam(q, 'after', 0, 0, Number.MAX_SAFE_INTEGER), state, waiting === null ? null : waiting === 'true', optId(q, 'site') ?? null, optId(q, 'gateway') ?? null, optId(q, 'device') ?? null, limit],
      )
      const online = new Map((await s.registry.gateways()).map((g) => [`${g.site}/${g.id}`, { online: g.online }]))
      return { status: 200, json: { items: rows.map((c) => commandView(c, online.get(`${c.site}/${c.gateway}`))), next: rows.length === limit ? rows.at(-1)!.seq : null } }
    }),
    r('GET', '/v1/commands/{jti}', 'read', async (ctx) => {
      if (!isJti(ctx.params.jti)) throw badRequest('jti must be 1-64 of [A-Za-z0-9._:-]')
      const c = (await s.db.query<CommandRow>('SELECT * FROM commands WHERE jti = $1', [ctx.params.jti]))[0]
      if (!c) throw new CpError('CP_NOT_FOUND', `no command ${ctx.params.jti}`)
      const [history, events, g] = await Promise.all([
        s.db.query<{ at: number; state: string; detail: string | null; event_id: number | null }>('SELECT at, state, detail, event_id FROM command_history WHERE jti = $1 ORDER BY id', [c.jti]),
        s.db.query<EventRow>('SELECT * FROM events WHERE command_jti = $1 ORDER BY id', [c.jti]),
        s.registry.gateway(c.site, c.gateway),
      ])
      return {
        status: 200,
        json: {
          ...commandView(c, g ?? undefined),
          history: history.map((h) => ({ at: iso(h.at), state: h.state, detail: h.detail, eventId: h.event_id })),
          events: events.map((e) => eventView(e)),
        },
      }
    }),

    r('GET', '/v1/events', 'audit', async (ctx) => {
      const q = ctx.query
      const limit = intParam(q, 'limit', 500, 1, 10_000)
      const type = optType(q)
      const rows = await s.db.query<EventRow>(
        `SELECT * FROM events WHERE id > $1 AND ($2::text IS NULL OR site = $2) AND ($3::text IS NULL OR gateway = $3) AND ($4::text IS NULL OR device_id = $4) AND ($5::text IS NULL OR type = $5) ORDER BY id LIMIT $6`,
        [intParam(q, 'after', 0, 0, Number.MAX_SAFE_INTEGER), optId(q, 'site') ?? null, optId(q, 'gateway') ?? null, optId(q, 'device') ?? null, type, limit],
      )
      return { status: 200, json: { items: rows.map((e) => eventView(e)), next: rows.length === limit ? rows.at(-1)!.id : null } }
    }),
    ...(['jsonl', 'csv'] as const).map((format) =>
      r('GET', `/v1/export/events.${format}`, 'audit', async (ctx) => {
        const q = ctx.query
        const type = optType(q)
        const filter = { site: optId(q, 'site'), gateway: optId(q, 'gateway'), deviceId: optId(q, 'device'), type: type ?? undefined, afterId: intParam(q, 'after', 0, 0, Number.MAX_SAFE_INTEGER) }
        const db = s.db
        async function* lines(): AsyncGenerator<string> {
          if (format === 'csv') yield csvLine(EXPORT_COLUMNS)
          for await (const row of exportRows(db, filter)) yield format === 'csv' ? csvLine(EXPORT_COLUMNS.map((c) => row[c])) : `${JSON.stringify(row)}\n`
        }
        return {
          status: 200,
          stream: lines(),
          type: format === 'csv' ? 'text/csv; charset=utf-8' : 'application/x-ndjson; charset=utf-8',
          headers: { 'content-disposition': `attachment; filename="edgewarden-events.${format}"` },
        }
      }),
    ),
    r('GET', '/v1/alerts', 'read', async (ctx) => {
      const q = ctx.query
      const kind = q.get('kind')
      if (kind !== null && !(ALERT_KINDS as readonly string[]).includes(kind)) throw badRequest(`kind must be one of ${ALERT_KINDS.join(', ')}`)
      const open = q.get('open')
      if (open !== null && open !== 'true' && open !== 'false') throw badRequest('open must be true or false')
      const rows = await s.db.query(
        `SELECT * FROM alerts WHERE id > $1 AND ($2::text IS NULL OR kind = $2) AND ($3::boolean IS NULL OR (resolved_at IS NULL) = $3) AND ($4::text IS NULL OR device_id = $4) ORDER BY id LIMIT $5`,
        [intParam(q, 'after', 0, 0, Number.MAX_SAFE_INTEGER), kind, open === null ? null : open === 'true', optId(q, 'device') ?? null, intParam(q, 'limit', 500, 1, 10_000)],
      )
      return { status: 200, json: { items: rows.map(alertView) } }
    }),

    r('GET', '/v1/tokens', 'admin', async () => ({ status: 200, json: { items: await s.tokens.list() } })),
    r('POST', '/v1/tokens', 'admin', async (ctx) => {
      const b = ((await ctx.body()) ?? {}) as Record<string, unknown>
      const t = await s.tokens.create({ name: b.name, scopes: b.scopes })
      return { status: 201, json: t }
    }),
    r('DELETE', '/v1/tokens/{id}', 'admin', async (ctx) => {
      if (ctx.params.id === ctx.principal?.tokenId) throw badRequest('a token cannot revoke itself (use another admin token)')
      await s.tokens.revoke(ctx.params.id!)
      return { status: 200, json: { id: ctx.params.id, revoked: true } }
    }),
    r('GET', '/v1/webhooks', 'admin', async () => {
      const rows = await s.db.query<Record<string, unknown>>('SELECT id, url, events, created_at, disabled_at FROM webhooks ORDER BY created_at')
      return { status: 200, json: { items: rows.map((w) => ({ id: w.id, url: w.url, events: w.events, createdAt: iso(w.created_at as number), disabledAt: iso(w.disabled_at as number | null) })) } }
    }),
    r('POST', '/v1/webhooks', 'admin', async (ctx) => {
      const b = ((await ctx.body()) ?? {}) as Record<string, unknown>
      const { webhook, secret } = await createWebhook(s.db, b, s.clock.nowMs())
      return { status: 201, json: { id: webhook.id, url: webhook.url, events: webhook.events, secret } }
    }),
    r('DELETE', '/v1/webhooks/{id}', 'admin', async (ctx) => {
      await disableWebhook(s.db, ctx.params.id!, s.clock.nowMs())
      return { status: 200, json: { id: ctx.params.id, disabled: true } }
    }),
    r('GET', '/v1/webhooks/{id}/deliveries', 'admin', async (ctx) => {
      const rows = await s.db.query<Record<string, unknown>>('SELECT id, event, dedupe, state, attempts, last_status, last_error, created_at, delivered_at, next_at FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT 500', [ctx.params.id])
      return {
        status: 200,
        json: { items: rows.map((d) => ({ id: d.id, event: d.event, key: d.dedupe, state: d.state, attempts: d.attempts, lastStatus: d.last_status, lastError: d.last_error, createdAt: iso(d.created_at as number), deliveredAt: iso(d.delivered_at as number | null), nextAttemptAt: d.state === 'pending' ? iso(d.next_at as number) : null })) },
      }
    }),
  ]
}
