// The OpenAPI 3.1 document of the HTTP API: the one description of every
// route, its parameters, bodies, answers and the scope its token needs. It
// is built here (so the compiled service carries it, whatever is installed
// beside it), served at GET /v1/openapi.json and /v1/openapi.yaml, and
// written to control-plane/api/openapi.yaml for readers and tools
// (`node --import tsx control-plane/api/openapi.ts --write`). A test keeps
// document and router in step: every route the router serves is here with
// the same method, path and scope, and nothing else is.
//
// Scopes are bearer-token scopes, given per operation as the security
// requirement's list (OpenAPI 3.1 §4.8.30: for a non-OAuth scheme the list
// names the roles needed); `security: []` is a route without a token.
import { writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { stringify } from 'yaml'
import { ID_PATTERN, JTI_PATTERN } from '../../wire/ids.ts'
import { ALERT_KINDS } from '../fleet/alerts.ts'
import { EVENT_TYPE } from '../intake/verify-event.ts'
import { DEVICE_ACTIONS, OPS } from '../commands/spec.ts'
import { WEBHOOK_EVENTS } from '../outward/webhooks.ts'
import { CP_ERRORS } from '../runtime/errors.ts'
import { VERSION } from '../runtime/version.ts'
import { SCOPES, type Scope } from './auth.ts'

type Json = Record<string, unknown>

const ref = (name: string): Json => ({ $ref: `#/components/schemas/${name}` })
const str = (description?: string, extra: Json = {}): Json => ({ type: 'string', ...(description ? { description } : {}), ...extra })
const int = (description?: string, extra: Json = {}): Json => ({ type: 'integer', ...(description ? { description } : {}), ...extra })
const bool = (description?: string): Json => ({ type: 'boolean', ...(description ? { description } : {}) })
const nullable = (schema: Json): Json => ({ oneOf: [schema, { type: 'null' }] })
const time = (description?: string): Json => nullable(str(description, { format: 'date-time' }))
const obj = (properties: Record<string, Json>, required: string[] = Object.keys(properties), extra: Json = {}): Json => ({ type: 'object', properties, required, ...extra })
const list = (item: Json, withNext = false): Json =>
  obj({ items: { type: 'array', items: item }, ...(withNext ? { next: nullable({ type: ['string', 'integer'], description: 'give it as `after` for the next page; null on the last page' }) } : {}) })

const ID = ID_PATTERN.source
const JTI = JTI_PATTERN.source

const pathParam = (name: string, description: string, schema: Json = str(undefined, { pattern: ID })): Json => ({ name, in: 'path', required: true, description, schema })
const query = (name: string, description: string, schema: Json = str()): Json => ({ name, in: 'query', required: false, description, schema })
const q = {
  after: (what: string) => query('after', `only ${what} after this one (paging)`, int(undefined, { minimum: 0 })),
  limit: (dflt: number) => query('limit', `at most this many (default ${dflt})`, int(undefined, { minimum: 1, maximum: 10_000, default: dflt })),
  site: query('site', 'only this site', str(undefined, { pattern: ID })),
  gateway: query('gateway', 'only this gateway', str(undefined, { pattern: ID })),
  device: query('device', 'only this device', str(undefined, { pattern: ID })),
  type: query('type', 'only events of this type (e.g. device.state, cmd.completed)', str(undefined, { pattern: EVENT_TYPE.source })),
}

const json = (schema: Json, description: string): Json => ({ description, content: { 'application/json': { schema } } })
const errors = (...codes: (keyof typeof CP_ERRORS)[]): Record<string, Json> => {
  const out: Record<string, Json> = {}
  for (const c of codes) {
    const status = String(CP_ERRORS[c].status)
    const prior = out[status] as { description: string } | undefined
    out[status] = { description: prior ? `${prior.description}; ${c}` : `${c}: ${CP_ERRORS[c].doc}`, content: { 'application/json': { schema: ref('Error') } } }
  }
  return out
}

interface Operation {
  summary: string
  description?: string
  scope: Scope | null
  parameters?: Json[]
  body?: Json
  responses: Record<string, Json>
}

const SCHEMAS: Record<string, Json> = {
  Error: obj({
    error: obj({ code: str('a stable code (see CP_ERRORS; scripts match on it)', { enum: Object.keys(CP_ERRORS) }), message: str('one line for a person; may change'), detail: { type: 'object', description: 'machine-readable detail, e.g. {"unknown": [ids]}' } }, ['code', 'message']),
  }),
  Gateway: obj({
    site: str(),
    id: str(),
    publicKey: str('the pinned Ed25519 key (base64url, raw 32 bytes) every event and status is verified against'),
    createdAt: time(),
    online: nullable(bool('from its retained status; null before the first')),
    version: nullable(str()),
    statusAt: time(),
    lastEventAt: time(),
    history: obj({
      epoch: int('bumped on each detected rollback (a restored data dir)'),
      baselineSeq: nullable(int()),
      maxSeq: nullable(int()),
      contiguousSeq: nullable(int()),
      gapSince: time(),
      statusSeq: nullable(int()),
      audit: nullable(obj({ seq: int(), hash: str() })),
    }),
  }),
  Device: obj({
    id: str(),
    site: str(),
    gateway: str(),
    state: str('PROTOCOL §2 state from the gateway\'s signed events; pending until the first'),
    criticality: nullable(str()),
    credentialKind: nullable(str()),
    credentialExpiresAt: time(),
    retiringSince: time(),
    retiredAt: time(),
    updatedAt: time(),
  }),
  Command: obj({
    jti: str('the command\'s id; every re-send carries the same one'),
    op: str(undefined, { enum: [...OPS] }),
    site: str(),
    gateway: str(),
    deviceId: nullable(str()),
    args: { type: 'object' },
    state: str('queued, sent, accepted, then completed, failed or rejected; expired, superseded or reissued', { enum: ['queued', 'sent', 'accepted', 'completed', 'failed', 'rejected', 'expired', 'superseded', 'reissued'] }),
    waiting: nullable(str('why an unanswered command waits (e.g. the gateway is offline); null once answered')),
    round: int('0, then +1 each time a rollback of its gateway re-sent it'),
    iat: int(),
    exp: int(),
    createdAt: time(),
    createdBy: str('the token name that asked for it'),
    sends: int('copies published so far (1 + re-sends)'),
    firstSentAt: time(),
    lastSentAt: time(),
    answeredAt: time(),
    finishedAt: time(),
    reason: nullable(str()),
    evidence: nullable({ type: 'object', description: 'PROTOCOL §6 evidence from the cmd.completed event' }),
    duplicates: int('cmd.duplicate answers: copies the gateway recognised and did not run again'),
    reissueOf: nullable(str()),
    reissuedAs: nullable(str()),
  }),
  CommandDetail: {
    allOf: [
      ref('Command'),
      obj({
        history: { type: 'array', items: obj({ at: time(), state: str(), detail: nullable(str()), eventId: nullable(int()) }) },
        events: { type: 'array', items: ref('Event') },
      }),
    ],
  },
  Event: obj(
    {
      id: int(),
      site: str(),
      gateway: str(),
      epoch: int(),
      seq: int(),
      type: str(),
      jti: str(),
      iat: int(),
      deviceId: nullable(str()),
      commandJti: nullable(str()),
      data: { type: 'object' },
      receivedAt: time(),
      jws: str('the compact JWS exactly as the gateway signed it: re-verify it offline with the gateway\'s public key'),
    },
    ['id', 'site', 'gateway', 'epoch', 'seq', 'type', 'jti', 'iat', 'deviceId', 'commandJti', 'data', 'receivedAt'],
  ),
  Alert: obj({
    id: int(),
    kind: str(undefined, { enum: [...ALERT_KINDS] }),
    site: nullable(str()),
    gateway: nullable(str()),
    deviceId: nullable(str()),
    detail: { type: 'object' },
    createdAt: time(),
    resolvedAt: time(),
    eventId: nullable(int()),
  }),
  CommandRequest: {
    type: 'object',
    description:
      'One op for one device or many. The service knows where each known device lives: site and gateway are only for enrolling a new device and for inventory.report. ' +
      'Everything is checked before anything is stored: one bad part refuses the whole request.',
    properties: {
      op: str(undefined, { enum: [...OPS] }),
      deviceId: str(undefined, { pattern: ID }),
      deviceIds: { type: 'array', items: str(undefined, { pattern: ID }), minItems: 1, maxItems: 10_000, uniqueItems: true },
      device: ref('DeviceRecord'),
      devices: { type: 'array', items: ref('DeviceRecord'), minItems: 1, maxItems: 10_000 },
      args: ref('CommandArgs'),
      site: str(undefined, { pattern: ID }),
      gateway: str(undefined, { pattern: ID }),
    },
    required: ['op'],
    additionalProperties: false,
  },
  CommandArgs: obj(
    {
      reason: str('revoke, quarantine, retire: 1 to 500 characters', { minLength: 1, maxLength: 500 }),
      wipe: bool('retire: false when the device was destroyed or taken away (PROTOCOL §6)'),
      deadlineS: int('retire: seconds the retirement may stay open', { minimum: 60, maximum: 365 * 86_400 }),
    },
    [],
    { description: 'the op\'s args; an op refuses an argument it does not take (release, wipe, reenroll, renew take none)', additionalProperties: false },
  ),
  DeviceRecord: {
    type: 'object',
    description: 'PROTOCOL §3 Device: an id and exactly one credential (publicKey, x509 or password); the gateway checks the rest',
    properties: {
      id: str(undefined, { pattern: ID }),
      publicKey: str('base64url of a raw Ed25519 key'),
      x509: { type: 'object', description: '{"csr"}, {"bootstrapSecretSha256"} or {"certificateSha256"}' },
      password: str('a PHC scrypt hash ($scrypt$…), never the password itself'),
      criticality: str(undefined, { enum: ['low', 'medium', 'high', 'safety'] }),
      owner: str(undefined, { maxLength: 200 }),
      credentialExpiresAt: int('seconds since the epoch'),
    },
    required: ['id'],
  },
  Commands: obj({ commands: { type: 'array', items: ref('Command') } }),
  Token: obj({ id: str(), name: str(), scopes: { type: 'array', items: str(undefined, { enum: [...SCOPES] }) }, createdAt: time(), revokedAt: time(), lastUsedAt: time() }),
  Webhook: obj({ id: str(), url: str(), events: { type: 'array', items: str() }, createdAt: time(), disabledAt: time() }),
}

const idem: Json = {
  name: 'Idempotency-Key',
  in: 'header',
  required: false,
  description: 'the same key with the same request replays the first answer (header idempotent-replayed: true) and creates nothing; with another request it is CP_IDEMPOTENCY_MISMATCH',
  schema: str(undefined, { pattern: '^[\\x21-\\x7e]{1,255}$' }),
}
const created = { '201': { ...json(ref('Commands'), 'stored (signed) before anything is sent; the service sends them in its window and re-sends each until answered'), headers: { 'idempotent-replayed': { schema: str(), description: '"true" on a replay' } } } }
const cmdErrors = errors('CP_BAD_REQUEST', 'CP_UNAUTHORIZED', 'CP_FORBIDDEN', 'CP_UNKNOWN_DEVICE', 'CP_UNKNOWN_GATEWAY', 'CP_IDEMPOTENCY_MISMATCH', 'CP_TOO_LARGE')
const auth = errors('CP_UNAUTHORIZED', 'CP_FORBIDDEN')
const ok = (schema: Json, description = 'OK'): Record<string, Json> => ({ '200': json(schema, description), ...auth })

const EXPORT_PARAMS = [q.site, q.gateway, q.device, q.type, q.after('events')]

/** Every route: path, then method. */
export const OPERATIONS: Record<string, Partial<Record<'get' | 'post' | 'delete', Operation>>> = {
  '/': { get: { summary: 'The fleet page (HTML; its token goes in the address fragment #token=…)', scope: null, responses: { '200': { description: 'the page', content: { 'text/html': { schema: str() } } } } } },
  '/healthz': { get: { summary: 'Liveness: the database answers', scope: null, responses: { '200': json(obj({ status: str(), instance: str() }), 'alive') } } },
  '/readyz': { get: { summary: 'Readiness: the central broker is connected and the service is not stopping', scope: null, responses: { '200': json({ type: 'object' }, 'ready'), '503': json({ type: 'object' }, 'not ready (detail says why)') } } },
  '/metrics': { get: { summary: 'Prometheus metrics of this instance', scope: 'metrics', responses: { '200': { description: 'Prometheus text format', content: { 'text/plain': { schema: str() } } }, ...auth } } },
  '/v1/openapi.json': { get: { summary: 'This document, as JSON', scope: null, responses: { '200': json({ type: 'object' }, 'OpenAPI 3.1') } } },
  '/v1/openapi.yaml': { get: { summary: 'This document, as YAML', scope: null, responses: { '200': { description: 'OpenAPI 3.1', content: { 'application/yaml': { schema: str() } } } } } },
  '/v1/fleet': {
    get: {
      summary: 'The fleet at a glance (the fleet page\'s one data source)',
      description: 'sites and their gateways\' status, devices by state across sites, open retirements and their age, credentials expiring within 30 days, residual-use alerts, offboarding exceptions, the other open alerts, the live instances',
      scope: 'read',
      responses: ok(obj({ generatedAt: time(), instances: { type: 'array' }, sites: { type: 'array' }, devicesByState: { type: 'array' }, openRetirements: { type: 'array' }, expiringCredentials: { type: 'array' }, residualUse: { type: 'array', items: ref('Alert') }, offboardingExceptions: { type: 'array' }, alerts: { type: 'array', items: ref('Alert') } })),
    },
  },
  '/v1/sites': {
    get: { summary: 'Sites', scope: 'read', responses: ok(list(obj({ id: str(), name: nullable(str()), createdAt: time() }))) },
    post: {
      summary: 'Add a site (the same id again is a no-op)',
      scope: 'admin',
      body: obj({ id: str(undefined, { pattern: ID }), name: str() }, ['id']),
      responses: { '201': json(obj({ id: str(), created: bool() }), 'added'), '200': json(obj({ id: str(), created: bool() }), 'already there'), ...errors('CP_BAD_REQUEST', 'CP_UNAUTHORIZED', 'CP_FORBIDDEN') },
    },
  },
  '/v1/gateways': {
    get: { summary: 'Gateways with their status and event history', scope: 'read', responses: ok(list(ref('Gateway'))) },
    post: {
      summary: 'Register a gateway and pin its public key (the same key again is a no-op; another key is a conflict)',
      scope: 'admin',
      body: obj({ site: str(undefined, { pattern: ID }), id: str(undefined, { pattern: ID }), publicKey: str('base64url of the raw Ed25519 key (edgewarden identity)') }, ['site', 'id', 'publicKey'], { additionalProperties: false }),
      responses: { '201': json(ref('Gateway'), 'registered'), '200': json(ref('Gateway'), 'already registered with this key'), ...errors('CP_BAD_REQUEST', 'CP_UNAUTHORIZED', 'CP_FORBIDDEN', 'CP_CONFLICT') },
    },
  },
  '/v1/gateways/{site}/{gateway}': {
    get: {
      summary: 'One gateway, with the commands waiting for it (and why)',
      scope: 'read',
      parameters: [pathParam('site', 'the site'), pathParam('gateway', 'the gateway')],
      responses: { ...ok({ allOf: [ref('Gateway'), obj({ waiting: { type: 'array', items: ref('Command') } })] }), ...errors('CP_UNKNOWN_GATEWAY') },
    },
  },
  '/v1/devices': {
    get: {
      summary: 'Devices across sites',
      scope: 'read',
      parameters: [query('state', 'only devices in this state (pending: enrolled, no event yet)', str(undefined, { pattern: '^[a-z]{1,20}$' })), q.site, q.gateway, query('after', 'only ids after this one (paging)'), q.limit(500)],
      responses: ok(list(ref('Device'), true)),
    },
  },
  '/v1/devices/{id}': {
    get: { summary: 'One device, with its last 20 commands', scope: 'read', parameters: [pathParam('id', 'the device')], responses: { ...ok({ allOf: [ref('Device'), obj({ commands: { type: 'array', items: ref('Command') } })] }), ...errors('CP_BAD_REQUEST', 'CP_NOT_FOUND') } },
  },
  '/v1/devices/{id}/timeline': {
    get: {
      summary: 'One device\'s story across sites: the signed events that name it, in arrival order',
      scope: 'audit',
      parameters: [pathParam('id', 'the device'), q.after('events'), q.limit(1000), query('jws', 'false: leave out the JWS of each event', str(undefined, { enum: ['true', 'false'] }))],
      responses: { ...ok(obj({ deviceId: str(), items: { type: 'array', items: ref('Event') } })), ...errors('CP_BAD_REQUEST', 'CP_NOT_FOUND') },
    },
  },
  '/v1/devices/{id}/offboarding': {
    get: {
      summary: 'Was every access path of the device closed, when, and how do we know',
      description: 'the verdict (not-offboarded, in-progress, failed, closed, closed-with-exceptions) from the signed evidence, each path (mqtt, opcua, modbus, network, credentials), the exceptions, and the proof: the events as signed, the gateway\'s public key and how to verify them offline',
      scope: 'read',
      parameters: [pathParam('id', 'the device')],
      responses: { ...ok(obj({ deviceId: str(), verdict: str(undefined, { enum: ['not-offboarded', 'in-progress', 'failed', 'closed', 'closed-with-exceptions'] }), closed: bool(), exceptions: { type: 'array' }, proof: { type: 'object' } }, ['verdict', 'closed'])), ...errors('CP_BAD_REQUEST', 'CP_NOT_FOUND') },
    },
  },
  '/v1/devices/{id}/{action}': {
    post: {
      summary: 'One device\'s command by its short name; the body is the op\'s args ({} or none for those without)',
      scope: 'command',
      parameters: [pathParam('id', 'the device'), pathParam('action', 'the op: device.<action>', str(undefined, { enum: Object.keys(DEVICE_ACTIONS) })), idem],
      body: ref('CommandArgs'),
      responses: { ...created, ...cmdErrors, ...errors('CP_NOT_FOUND') },
    },
  },
  '/v1/commands': {
    post: { summary: 'Create commands: one op for one device or many, located by the service', scope: 'command', parameters: [idem], body: ref('CommandRequest'), responses: { ...created, ...cmdErrors } },
    get: {
      summary: 'Commands and their lifecycle',
      scope: 'read',
      parameters: [
        q.after('commands (by their seq)'),
        query('state', 'only commands in this state', str(undefined, { pattern: '^[a-z]{1,20}$' })),
        query('waiting', 'true: only the unanswered (queued, sent, accepted); false: only the settled', str(undefined, { enum: ['true', 'false'] })),
        q.site,
        q.gateway,
        q.device,
        q.limit(500),
      ],
      responses: { ...ok(list(ref('Command'), true)), ...errors('CP_BAD_REQUEST') },
    },
  },
  '/v1/commands/{jti}': {
    get: { summary: 'One command: its lifecycle (every transition, with the event that caused it) and its events', scope: 'read', parameters: [pathParam('jti', 'the command\'s jti', str(undefined, { pattern: JTI }))], responses: { ...ok(ref('CommandDetail')), ...errors('CP_BAD_REQUEST', 'CP_NOT_FOUND') } },
  },
  '/v1/events': {
    get: { summary: 'Events as stored: verbatim JWS beside the decoded claims', scope: 'audit', parameters: [q.after('events'), q.site, q.gateway, q.device, q.type, q.limit(500)], responses: { ...ok(list(ref('Event'), true)), ...errors('CP_BAD_REQUEST') } },
  },
  '/v1/export/events.jsonl': {
    get: {
      summary: 'The auditors\' export, JSON lines: each event with its JWS and the gateway\'s pinned key (edgewarden control-plane verify-export re-verifies it offline)',
      scope: 'audit',
      parameters: EXPORT_PARAMS,
      responses: { '200': { description: 'one JSON object per line', content: { 'application/x-ndjson': { schema: str() } } }, ...auth, ...errors('CP_BAD_REQUEST') },
    },
  },
  '/v1/export/events.csv': {
    get: {
      summary: 'The same export as CSV (RFC 4180, a header row)',
      scope: 'audit',
      parameters: EXPORT_PARAMS,
      responses: { '200': { description: 'id,site,gateway,gatewayPublicKey,epoch,seq,type,jti,iat,deviceId,commandJti,receivedAt,jws', content: { 'text/csv': { schema: str() } } }, ...auth, ...errors('CP_BAD_REQUEST') },
    },
  },
  '/v1/alerts': {
    get: {
      summary: 'Alerts: rollbacks, seq gaps, forged or conflicting events, unknown gateways, residual use, credentials expiring, commands expired',
      scope: 'read',
      parameters: [q.after('alerts'), query('kind', 'only this kind', str(undefined, { enum: [...ALERT_KINDS] })), query('open', 'true: only unresolved; false: only resolved', str(undefined, { enum: ['true', 'false'] })), q.device, q.limit(500)],
      responses: { ...ok(list(ref('Alert'))), ...errors('CP_BAD_REQUEST') },
    },
  },
  '/v1/tokens': {
    get: { summary: 'Bearer tokens (never their secrets: only a hash is stored)', scope: 'admin', responses: ok(list(ref('Token'))) },
    post: {
      summary: 'Make a bearer token; it is shown once, in this answer',
      scope: 'admin',
      body: obj({ name: str(undefined, { pattern: '^[A-Za-z0-9][A-Za-z0-9 ._:@-]{0,63}$' }), scopes: { type: 'array', items: str(undefined, { enum: [...SCOPES] }), minItems: 1 } }),
      responses: { '201': json(obj({ id: str(), name: str(), scopes: { type: 'array', items: str() }, token: str('ewcp.<id>.<secret>') }), 'made'), ...errors('CP_BAD_REQUEST', 'CP_UNAUTHORIZED', 'CP_FORBIDDEN') },
    },
  },
  '/v1/tokens/{id}': {
    delete: { summary: 'Revoke a token (not the one making the request)', scope: 'admin', parameters: [pathParam('id', 'the token id', str())], responses: { ...ok(obj({ id: str(), revoked: bool() })), ...errors('CP_BAD_REQUEST', 'CP_NOT_FOUND') } },
  },
  '/v1/webhooks': {
    get: { summary: 'Webhooks (never their secrets)', scope: 'admin', responses: ok(list(ref('Webhook'))) },
    post: {
      summary: 'Add a webhook: HMAC-signed POSTs (X-Edgewarden-Signature: t=…,v1=…), retried with a doubling delay; the secret is shown once',
      scope: 'admin',
      body: obj({ url: str('http:// or https://, no credentials in it'), events: { type: 'array', items: str(undefined, { enum: ['*', ...WEBHOOK_EVENTS] }), minItems: 1, default: ['*'] }, secret: str('16 to 256 characters; made for you when left out', { minLength: 16, maxLength: 256 }) }, ['url']),
      responses: { '201': json(obj({ id: str(), url: str(), events: { type: 'array', items: str() }, secret: str() }), 'added'), ...errors('CP_BAD_REQUEST', 'CP_UNAUTHORIZED', 'CP_FORBIDDEN') },
    },
  },
  '/v1/webhooks/{id}': {
    delete: { summary: 'Disable a webhook (its deliveries are kept)', scope: 'admin', parameters: [pathParam('id', 'the webhook id', str())], responses: { ...ok(obj({ id: str(), disabled: bool() })), ...errors('CP_NOT_FOUND') } },
  },
  '/v1/webhooks/{id}/deliveries': {
    get: {
      summary: 'A webhook\'s last 500 deliveries and their attempts',
      scope: 'admin',
      parameters: [pathParam('id', 'the webhook id', str())],
      responses: ok(list(obj({ id: int(), event: str(), key: str(), state: str(undefined, { enum: ['pending', 'delivered', 'failed'] }), attempts: int(), lastStatus: nullable(int()), lastError: nullable(str()), createdAt: time(), deliveredAt: time(), nextAttemptAt: time() }))),
    },
  },
}

function operationId(method: string, path: string): string {
  const words = path
    .replace(/\.(\w+)$/, ' $1')
    .split(/[/{} .]+/)
    .filter(Boolean)
  return [method, ...(words.length ? words : ['page'])].map((w, i) => (i === 0 ? w : w[0]!.toUpperCase() + w.slice(1))).join('')
}

export function openApiDocument(version: string = VERSION): Json {
  const paths: Record<string, Json> = {}
  for (const [path, methods] of Object.entries(OPERATIONS)) {
    const item: Json = {}
    for (const [method, op] of Object.entries(methods)) {
      item[method] = {
        operationId: operationId(method, path),
        summary: op.summary,
        ...(op.description ? { description: op.description } : {}),
        security: op.scope === null ? [] : [{ bearer: [op.scope] }],
        ...(op.parameters ? { parameters: op.parameters } : {}),
        ...(op.body ? { requestBody: { required: method === 'post' && path !== '/v1/devices/{id}/{action}', content: { 'application/json': { schema: op.body } } } } : {}),
        responses: op.responses,
      }
    }
    paths[path] = item
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'edgewarden control plane',
      version,
      description:
        'The central service of edgewarden: commands to every site, re-sent until answered, and the signed evidence of what each gateway did. ' +
        'JSON in and out; every error is {"error":{"code","message"}} with a stable code. ' +
        'A bearer token (ewcp.<id>.<secret>) carries scopes: read (fleet, devices, commands, alerts), command (create commands), audit (events, evidence, exports), metrics (/metrics), admin (gateways, tokens, webhooks; implies every other scope). ' +
        'On a loopback listener a Host header that is not loopback is refused (DNS rebinding).',
      license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
    },
    servers: [{ url: 'http://127.0.0.1:8080', description: 'the default listener (--http-host, --http-port)' }],
    security: [{ bearer: [] }],
    paths,
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'ewcp.<id>.<secret>', description: `scopes: ${SCOPES.join(', ')}; admin implies all` } },
      schemas: SCHEMAS,
    },
  }
}

export const OPENAPI_FILE = fileURLToPath(new URL('./openapi.yaml', import.meta.url))

export function renderOpenApiYaml(version: string = VERSION): string {
  return `# Generated from control-plane/api/openapi.ts: do not edit by hand\n# (node --import tsx control-plane/api/openapi.ts --write).\n${stringify(openApiDocument(version), { lineWidth: 0, aliasDuplicateObjects: false })}`
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const text = renderOpenApiYaml()
  if (process.argv.includes('--write')) writeFileSync(OPENAPI_FILE, text)
  else process.stdout.write(text)
}
