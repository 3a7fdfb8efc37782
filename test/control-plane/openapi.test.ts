// The OpenAPI document and the router, kept in step: every route the router
// serves is documented with the same method, path and path parameters, and
// nothing else is; the scope each operation documents is the one the router
// enforces (checked on the running service: no token is 401, a token with
// every scope but that one is 403, a token with it gets past the check);
// the service serves the document; control-plane/api/openapi.yaml is the
// document as built.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { parse } from 'yaml'
import { SCOPES, type Scope } from '../../control-plane/api/auth.ts'
import { OPENAPI_FILE, openApiDocument, renderOpenApiYaml } from '../../control-plane/api/openapi.ts'
import { apiRoutes, type ApiServices } from '../../control-plane/api/routes.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { startTestCp } from './helpers/cp.ts'

type Doc = { openapi: string; paths: Record<string, Record<string, { operationId: string; security: { bearer: string[] }[]; parameters?: { name: string; in: string }[] }>>; components: unknown }

const doc = openApiDocument() as unknown as Doc
// The handlers are not called here: the table of routes is what is compared.
const routes = apiRoutes({} as ApiServices)

const documented = (): { method: string; path: string; scope: Scope | null; pathParams: string[] }[] =>
  Object.entries(doc.paths).flatMap(([path, item]) =>
    Object.entries(item).map(([method, op]) => ({
      method: method.toUpperCase(),
      path,
      scope: op.security.length === 0 ? null : (op.security[0]!.bearer[0] as Scope),
      pathParams: (op.parameters ?? []).filter((p) => p.in === 'path').map((p) => p.name).sort(),
    })),
  )

test('every route the router serves is in the OpenAPI document, with its scope, and nothing else is', () => {
  assert.equal(doc.openapi, '3.1.0')
  const key = (r: { method: string; path: string }): string => `${r.method} ${r.path}`
  const served = new Map(routes.map((r) => [key(r), r]))
  const docs = new Map(documented().map((d) => [key(d), d]))
  assert.ok(served.size >= 30, `found the routes (${served.size})`)
  assert.deepEqual([...served.keys()].filter((k) => !docs.has(k)), [], 'served but not documented')
  assert.deepEqual([...docs.keys()].filter((k) => !served.has(k)), [], 'documented but not served')
  for (const [k, r] of served) {
    const d = docs.get(k)!
    assert.equal(d.scope, r.scope, `${k}: documented scope ${d.scope}, enforced ${r.scope}`)
    const inPath = [...r.path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!).sort()
    assert.deepEqual(d.pathParams, inPath, `${k}: path parameters`)
  }
  // Operation ids unique; every $ref resolves inside the document.
  const ids = documented().map((d) => doc.paths[d.path]![d.method.toLowerCase()]!.operationId)
  assert.equal(new Set(ids).size, ids.length, 'operationIds are unique')
  const text = JSON.stringify(doc)
  for (const m of text.matchAll(/"\$ref":"#\/([^"]+)"/g)) {
    let node: unknown = doc
    for (const part of m[1]!.split('/')) node = (node as Record<string, unknown> | undefined)?.[part]
    assert.ok(node !== undefined, `$ref #/${m[1]} resolves`)
  }
})

test('control-plane/api/openapi.yaml is the document as built (node --import tsx control-plane/api/openapi.ts --write)', () => {
  const onDisk = readFileSync(OPENAPI_FILE, 'utf8')
  assert.equal(onDisk, renderOpenApiYaml(), 'openapi.yaml is stale: run node --import tsx control-plane/api/openapi.ts --write')
  assert.deepEqual(parse(onDisk), doc)
})

test('the running service serves the document and enforces exactly the documented scope on every operation', async (t) => {
  const m = await Mosquitto.start(t)
  const c = await startTestCp(t, { broker: m.url })
  const served = await c.api('GET', '/v1/openapi.json', undefined, { token: null })
  assert.equal(served.status, 200)
  assert.deepEqual(served.json, JSON.parse(JSON.stringify(doc)))
  const yaml = await fetch(`${c.base}/v1/openapi.yaml`)
  assert.match(yaml.headers.get('content-type') ?? '', /^application\/yaml/)
  assert.deepEqual(parse(await yaml.text()), served.json)

  // One token per scope, and per scope one holding every other scope but admin.
  const tokens = new Map<string, string>()
  for (const s of SCOPES) {
    tokens.set(`only:${s}`, (await c.api('POST', '/v1/tokens', { name: `only-${s}`, scopes: [s] })).json.token)
    const others = SCOPES.filter((x) => x !== s && x !== 'admin')
    tokens.set(`but:${s}`, (await c.api('POST', '/v1/tokens', { name: `all-but-${s}`, scopes: others })).json.token)
  }
  const sample: Record<string, string> = { site: 's1', gateway: 'gw1', id: 'x1', action: 'retire', jti: 'j1' }
  for (const d of documented()) {
    const path = d.path.replace(/\{(\w+)\}/g, (_, p: string) => sample[p]!)
    const what = `${d.method} ${d.path}`
    const body = d.method === 'POST' ? {} : undefined
    const bare = await c.api(d.method, path, body, { token: null })
    if (d.scope === null) {
      assert.ok(bare.status < 400, `${what} needs no token: ${bare.status} ${bare.text.slice(0, 200)}`)
      continue
    }
    assert.deepEqual([bare.status, bare.json?.error?.code], [401, 'CP_UNAUTHORIZED'], `${what} without a token`)
    const without = await c.api(d.method, path, body, { token: tokens.get(`but:${d.scope}`)! })
    assert.deepEqual([without.status, without.json?.error?.code], [403, 'CP_FORBIDDEN'], `${what} without the ${d.scope} scope`)
    const withIt = await c.api(d.method, path, body, { token: tokens.get(`only:${d.scope}`)! })
    assert.ok(![401, 403, 405].includes(withIt.status) && !/^no route/.test(withIt.json?.error?.message ?? ''), `${what} with the ${d.scope} scope: ${withIt.status} ${withIt.text.slice(0, 200)}`)
  }
})
