// The fleet page in a real headless Chromium (Debian's `chromium`, driven by
// playwright-core), against the running service (PGlite) fed by a real
// Mosquitto with events a gateway signs (the test plays the gateway):
// sites and status, devices by state, open retirements with their age,
// expiring credentials, residual-use alerts, offboarding exceptions. It
// loads under its strict CSP (an inline script not allowed by hash does not
// run), and every text that comes from a gateway or an operator is shown as
// text, never as markup.
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { test } from 'node:test'
import { FLEET_REFRESH_MS } from '../../control-plane/api/fleet-page.ts'
import { generateKeyPair } from '../../agent/store/keys.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { until } from '../helpers/wait.ts'
import { startTestCp } from './helpers/cp.ts'
import { HandGateway, register } from './helpers/gateway.ts'
import { chromiumSkipReason, openWatchedPage } from '../helpers/browser.ts'

const MARKUP = '<img src=x onerror="alert(1)"><script>alert(2)</script>'

test('the fleet page shows sites, devices by state, retirements, expiring credentials, residual use and exceptions, as text, under its CSP', { skip: chromiumSkipReason() }, async (t) => {
  const m = await Mosquitto.start(t)
  const c = await startTestCp(t, { broker: m.url })
  const north = new HandGateway('plant-north', 'gw-n1')
  const south = new HandGateway('plant-south', 'gw-s1')
  for (const g of [north, south]) await register(c, { site: g.site, id: g.id, publicKey: g.publicKey })
  const enroll = await c.api('POST', '/v1/commands', { op: 'device.enroll', site: north.site, gateway: north.id, devices: ['pump-1', 'pump-2', 'press-3', 'door-4'].map((id) => ({ id, publicKey: generateKeyPair().publicKeyB64 })) })
  assert.equal(enroll.status, 201, enroll.text)
  // A retirement of press-3 asked through the API; the gateway answers it with evidence that cannot prove a wipe.
  const retire = await c.api('POST', '/v1/devices/press-3/retire', { wipe: false, reason: `destroyed ${MARKUP}` })
  assert.equal(retire.status, 201, retire.text)
  const retireJti = retire.json.commands[0].jti as string

  const now = Math.floor(Date.now() / 1000)
  const day = 86_400
  await north.status(m.url, { online: true, version: `1.2 ${MARKUP}`.slice(0, 64) })
  await south.status(m.url, { online: false, version: '1.1' })
  const state = (g: HandGateway, deviceId: string, to: string, iat = now) => g.event('device.state', { deviceId, from: 'none', to, cause: 'x' }, { iat })
  await north.publish(m.url, [
    state(north, 'pump-1', 'active'),
    state(north, 'pump-2', 'quarantined'),
    // retiring since three days ago: the age the page shows
    state(north, 'door-4', 'retiring', now - 3 * day),
    north.event('credential.expiring', { deviceId: 'pump-1', expiresAt: now + 3 * day + 600 }),
    north.event('alert.residual-use', { deviceId: 'pump-2', protocol: `mqtt${MARKUP}`, detail: `quarantined key tried ${MARKUP}`, count: 4 }),
    north.event('cmd.accepted', { jti: retireJti, op: 'device.retire' }),
    state(north, 'press-3', 'retired'),
    north.event('cmd.completed', {
      jti: retireJti,
      op: 'device.retire',
      deviceId: 'press-3',
      evidence: { deviceId: 'press-3', state: 'retired', accessRemovedMs: 2, sessionsClosed: { mqtt: 0, opcua: 0, modbus: 0 }, network: { backend: 'none', rule: 'blocked' }, wipe: { status: 'not-performed', reason: 'destroyed' }, credentialsRevoked: 1, residualUse: 0 },
    }),
    // A device id that is markup: not an identifier, so the service keeps no device of it.
    north.event('device.state', { deviceId: '<img src=x onerror=alert(3)>', from: 'none', to: 'active', cause: 'x' }),
  ])
  await south.publish(m.url, [state(south, 'valve-9', 'active'), south.event('credential.expired', { deviceId: 'valve-9', expiresAt: now - 3 * day - 600 })])
  // A forged event: its sample (with the markup) is in the invalid-event alert.
  await north.publish(m.url, [north.event('device.state', { deviceId: 'pump-1', from: 'active', to: 'revoked', cause: MARKUP }, { key: generateKeyPair().privateKey })])
  await until(
    'the service has every event',
    async () => {
      const f = (await c.api('GET', '/v1/fleet')).json
      return f.offboardingExceptions.length === 1 && f.residualUse.length === 1 && f.alerts.some((a: { kind: string }) => a.kind === 'invalid-event') && f.expiringCredentials.length === 2
    },
    15_000,
    50,
  )
  const reader = (await c.api('POST', '/v1/tokens', { name: 'wall-screen', scopes: ['read'] })).json.token as string

  const { page, problems, dialogs, requests } = await openWatchedPage(t)

  // Without a token: asked for one, nothing shown.
  const first = await page.goto(`${c.base}/`)
  assert.equal(first?.status(), 200)
  await page.locator('#login').waitFor({ state: 'visible', timeout: 10_000 })
  // The token in the fragment: kept in the tab's sessionStorage, the address cleared of it.
  await page.goto('about:blank')
  await page.goto(`${c.base}/#token=${encodeURIComponent(reader)}`)
  await page.locator('#gateways tr[data-gateway="gw-n1"]').waitFor({ timeout: 10_000 })
  assert.equal(new URL(page.url()).hash, '', 'the token left the address bar')

  const rows = async (sel: string): Promise<string[][]> => page.locator(`${sel} tr`).evaluateAll((trs) => trs.slice(1).map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent ?? '')))
  // Sites and their gateways' status.
  const gws = await rows('#gateways')
  assert.deepEqual(gws.map((r) => [r[0], r[1], r[2]]), [['plant-north', 'gw-n1', 'online'], ['plant-south', 'gw-s1', 'offline']])
  assert.equal(gws[0]![3], `1.2 ${MARKUP}`.slice(0, 64), 'the version a gateway reported, as text')
  // Devices by state, across sites.
  const states = new Map((await rows('#states')).map((r) => [r[0], r]))
  assert.deepEqual(states.get('active')?.slice(1), ['2', 'plant-north: 1, plant-south: 1'])
  for (const s of ['quarantined', 'retiring', 'retired']) assert.equal(states.get(s)?.[1], '1', `${s}: one device`)
  assert.ok(![...states.keys()].some((k) => k?.includes('<')), 'no device of the markup id')
  // Open retirements and their age.
  const retiring = await rows('#retirements')
  assert.deepEqual(retiring.map((r) => [r[0], r[1], r[3], r[5]]), [['door-4', 'plant-north', 'retiring', '3 d']])
  // Credentials expiring (and expired).
  const expiring = new Map((await rows('#expiring')).map((r) => [r[0], r]))
  assert.equal(expiring.get('pump-1')?.[4], '3 d')
  assert.match(expiring.get('valve-9')?.[4] ?? '', /^expired 3 d ago$/)
  // Residual use, with the gateway's own words shown as they are.
  const residual = await rows('#residual')
  assert.equal(residual.length, 1)
  assert.deepEqual(residual[0]!.slice(1, 7), ['pump-2', 'plant-north', 'gw-n1', `mqtt${MARKUP}`, '4', `quarantined key tried ${MARKUP}`])
  // The offboarding that cannot be proven end to end, and why.
  const exceptions = await rows('#exceptions')
  assert.deepEqual(exceptions.map((r) => [r[0], r[4]]), [['press-3', 'wipe not-performed; network none/blocked']])
  // The other alerts: the forged event, its sample as text.
  const alerts = await rows('#alerts')
  const invalid = alerts.find((r) => r[1] === 'invalid-event')
  assert.ok(invalid, 'the forged event is an alert')

  // Nothing of the markup became an element; nothing ran.
  assert.equal(await page.locator('img').count(), 0)
  assert.equal(await page.locator('script').count(), 1, 'only the page\'s own script')
  assert.deepEqual(dialogs, [])

  // The CSP: the page's one inline script is allowed by its hash, and nothing else inline runs.
  const res = await page.request.get(`${c.base}/`)
  const policy = res.headers()['content-security-policy'] ?? ''
  const own = await page.locator('script').evaluate((s) => s.textContent ?? '')
  assert.ok(policy.includes(`script-src 'sha256-${createHash('sha256').update(own).digest('base64')}'`), policy)
  assert.doesNotMatch(policy, /unsafe-inline|unsafe-eval/)
  assert.match(policy, /default-src 'none'/)
  assert.equal(res.headers()['x-frame-options'], 'DENY')
  // (a string: it runs in the page, whose DOM types this Node project does not load)
  await page.evaluate("(() => { const s = document.createElement('script'); s.textContent = 'window.injectedRan = true'; document.body.appendChild(s) })()")
  assert.equal(await page.evaluate('window.injectedRan === true'), false, 'an inline script without the hash is refused')
  assert.ok(problems.some((p) => /Content Security Policy/.test(p)), 'and the browser says so')
  const cspReports = problems.filter((p) => /Content Security Policy/.test(p))
  assert.equal(cspReports.length, 1, `only the injected script was refused: ${cspReports.join(' | ')}`)
  assert.deepEqual(problems.filter((p) => !/Content Security Policy/.test(p)), [], 'no script error')

  // It refreshes on its own: a new quarantine appears without a reload.
  const t0 = Date.now()
  await north.publish(m.url, [state(north, 'pump-1', 'quarantined')])
  await page.locator('#states tr[data-state="quarantined"] td:nth-child(2)', { hasText: '2' }).waitFor({ timeout: 3 * FLEET_REFRESH_MS + 5000 })
  t.diagnostic(`a quarantine shown ${Date.now() - t0} ms after the gateway signed it (refresh every ${FLEET_REFRESH_MS} ms)`)

  // Only its own origin; the token only ever in the Authorization header.
  assert.ok(requests.filter((u) => u !== 'about:blank').every((u) => u.startsWith(`${c.base}/`)), requests.join(', '))
  assert.ok(requests.every((u) => !u.includes(reader.split('.')[2]!)), 'the token never in a URL the server sees')
})
