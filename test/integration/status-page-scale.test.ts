// The status page at a site's size, in a real headless Chromium (Debian's
// `chromium`, driven by playwright-core): 10,000 enrolled devices (through
// the in-process gateway, test/helpers/status-fleet.ts) plus a real MQTT
// device online and a real Modbus device answering through the proxy. The
// page loads one page of rows, filters by state, criticality, protocol,
// credential and a search, sorts naturally (sim-9 before sim-10), pages,
// opens a device page from the table, shows Modbus sessions and last seen,
// warns that quarantine `none` enforces nothing on the network, and reflects
// a quarantine within seconds. What it costs (load time, the browser's DOM
// and heap, the answer's size) is reported as diagnostics, never asserted
// as speed; the DOM's size is asserted, as that is what paging is for.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { Page } from 'playwright-core'
import { adminRequest } from '../../agent/cli/admin-client.ts'
import { statusSnapshot, STATUS_REFRESH_MS, PAGE_SIZE } from '../../agent/observe/status-page.ts'
import { createLegacyModbusDevice } from '../../simulators/modbus-device.ts'
import { SimulatedMqttDevice } from '../../simulators/mqtt-device.ts'
import { startTestAgent } from '../helpers/agent.ts'
import { mbpoll } from '../helpers/modbus.ts'
import { enrollFleet, plannedFleet, type PlannedDevice } from '../helpers/status-fleet.ts'
import { chromiumSkipReason, openWatchedPage } from '../helpers/browser.ts'

const FLEET = 10_000
/** how long the page may take to show what changed: a refresh or two, on a busy machine */
const SHOWN_WITHIN_MS = 10_000

/** What the functions run in the page use of it (the project's types have no DOM library). */
interface BrowserGlobals {
  document: { querySelector(s: string): { textContent: string | null } | null; getElementsByTagName(s: string): { length: number } }
  location: { hash: string }
  performance: { getEntriesByType(type: string): { name: string; duration: number; encodedBodySize?: number; domContentLoadedEventEnd?: number }[] }
}

/** Resolves once the element's text is `want` (a string, or a test of it). */
async function textOf(page: Page, selector: string, want: string | RegExp, timeout = SHOWN_WITHIN_MS): Promise<string> {
  const source = typeof want === 'string' ? { s: want } : { re: want.source, flags: want.flags }
  try {
    await page.waitForFunction(
      ([sel, w]) => {
        const t = (globalThis as unknown as BrowserGlobals).document.querySelector(sel)?.textContent ?? null
        return t !== null && ('s' in w ? t === w.s : new RegExp(w.re, w.flags).test(t))
      },
      [selector, source] as const,
      { timeout },
    )
  } catch (err) {
    throw new Error(`${selector}: expected ${String(want)}, have ${JSON.stringify(await page.locator(selector).first().textContent().catch(() => null))}`, { cause: err })
  }
  return (await page.locator(selector).first().textContent())!
}

const tableIds = (page: Page): Promise<string[]> => page.locator('#devices tr').evaluateAll((trs) => trs.map((tr) => tr.getAttribute('data-device-id')!))
const cellsOf = (page: Page, col: number): Promise<string[]> => page.locator(`#devices tr td:nth-child(${col + 1})`).allTextContents()

test(`the status page at ${FLEET.toLocaleString('en')} devices in Chromium: loads one page, filters, sorts naturally, pages, opens a device, shows a quarantine`, { skip: chromiumSkipReason(), timeout: 240_000 }, async (t) => {
  const agent = await startTestAgent(t, { flags: { httpPort: '0', modbusPort: '0', modbusHost: '127.0.0.1' } })
  const base = `http://127.0.0.1:${agent.http!.port}`
  const gw = agent.gateway

  const plan = plannedFleet(FLEET)
  const enrollMs = await enrollFleet(gw, plan)
  t.diagnostic(`enrolled ${FLEET} devices in-process in ${Math.round(enrollMs)} ms (${plan.filter((d) => d.state !== 'active').length} then quarantined or revoked)`)
  // Beside the fleet, two real devices: an MQTT pump online, and a Modbus PLC (no hook) behind the proxy.
  const pump = await SimulatedMqttDevice.create({ url: `mqtt://127.0.0.1:${agent.mqttPort}`, deviceId: 'pump-7', gatewayId: gw.id, gatewayPublicKey: gw.key.publicKeyB64 })
  t.after(() => pump.goOffline())
  await gw.enroll({ id: 'pump-7', publicKey: pump.runtime.publicKeyB64!, criticality: 'high', owner: 'line-2' }, { actor: 'local:test' })
  assert.ok(await pump.goOnline(), 'pump-7 admitted')
  const plc = await createLegacyModbusDevice()
  await plc.device.start()
  t.after(() => plc.device.stop())
  await gw.enroll({ id: 'plc-1', publicKey: plc.publicKey, criticality: 'safety', owner: 'line-2', modbus: { host: '127.0.0.1', port: plc.device.port, unitId: 247, hookBase: null } }, { actor: 'local:test' })
  // a stolen tablet, revoked, that tries to get back in (a residual-use alert); a camera whose pinned certificate ends in 6 days
  const tablet = await SimulatedMqttDevice.create({ url: `mqtt://127.0.0.1:${agent.mqttPort}`, deviceId: 'tablet-4', gatewayId: gw.id, gatewayPublicKey: gw.key.publicKeyB64 })
  t.after(() => tablet.goOffline())
  await gw.enroll({ id: 'tablet-4', publicKey: tablet.runtime.publicKeyB64!, criticality: 'low' }, { actor: 'local:test' })
  await gw.transition('tablet-4', 'revoke', { actor: 'local:test', reason: 'reported stolen' })
  assert.equal(await tablet.goOnline(), false, 'a revoked device is refused')
  await gw.enroll({ id: 'camera-1', x509: { certificateSha256: 'a3'.repeat(32) }, credentialExpiresAt: gw.nowS() + 6 * 86400 + 3600 }, { actor: 'local:test' })
  const extra: PlannedDevice[] = [
    { id: 'camera-1', criticality: 'medium', protocol: 'mqtt', credential: 'x509', owner: '', state: 'active' },
    { id: 'tablet-4', criticality: 'low', protocol: 'mqtt', credential: 'publicKey', owner: '', state: 'revoked', reason: 'reported stolen' },
    { id: 'plc-1', criticality: 'safety', protocol: 'modbus', credential: 'publicKey', owner: 'line-2', state: 'active' },
    { id: 'pump-7', criticality: 'high', protocol: 'mqtt', credential: 'publicKey', owner: 'line-2', state: 'active' },
  ]
  const all = [...plan, ...extra]
  const total = all.length
  const count = (f: (d: PlannedDevice) => boolean): number => all.filter(f).length

  const { page, problems } = await openWatchedPage(t, { viewport: { width: 1400, height: 900 } })
  const cdp = await page.context().newCDPSession(page)
  await cdp.send('Performance.enable')
  const browserMetrics = async (): Promise<Record<string, number>> => Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((m) => [m.name, m.value]))

  await t.test('loads: one page of rows in natural order, whatever the fleet', async () => {
    const t0 = performance.now()
    assert.equal((await page.goto(`${base}/`))?.status(), 200)
    await textOf(page, '#page-info', `showing 1-${PAGE_SIZE} of ${total}`)
    const loadMs = performance.now() - t0
    const timing = await page.evaluate(() => {
      const { performance: perf, document: doc } = globalThis as unknown as BrowserGlobals
      const nav = perf.getEntriesByType('navigation')[0]!
      const api = perf.getEntriesByType('resource').filter((r) => r.name.includes('/api/status'))
      return { domContentLoaded: nav.domContentLoadedEventEnd!, apiMs: api[0]?.duration ?? null, apiBytes: api[0]?.encodedBodySize ?? null, elements: doc.getElementsByTagName('*').length }
    })
    const m = await browserMetrics()
    t.diagnostic(`first page shown ${Math.round(loadMs)} ms after navigation (DOMContentLoaded ${Math.round(timing.domContentLoaded)} ms; /api/status ${timing.apiMs === null ? '?' : Math.round(timing.apiMs)} ms, ${timing.apiBytes} bytes)`)
    t.diagnostic(`browser: ${timing.elements} elements, ${m.Nodes} DOM nodes, JS heap ${(m.JSHeapUsedSize! / 1e6).toFixed(1)} MB used of ${(m.JSHeapTotalSize! / 1e6).toFixed(1)} MB, ${m.LayoutCount} layouts`)
    assert.equal(await page.locator('#devices tr').count(), PAGE_SIZE, 'one page of rows in the DOM, not ten thousand')
    assert.ok(timing.elements < 3000, `the DOM stays small at ${total} devices: ${timing.elements} elements`)
    assert.match((await page.locator('#summary').textContent())!, new RegExp(`^${total} device\\(s\\): `))
    // natural order: plc-1, pump-7, then sim-1, sim-2, … sim-9, sim-10, … (not sim-1, sim-10, sim-100, …)
    const ids = await tableIds(page)
    assert.deepEqual(ids.slice(0, 5), ['camera-1', 'plc-1', 'pump-7', 'sim-1', 'sim-2'])
    assert.deepEqual(ids.slice(11, 14), ['sim-9', 'sim-10', 'sim-11'])
    assert.deepEqual(ids, ['camera-1', 'plc-1', 'pump-7', ...Array.from({ length: PAGE_SIZE - 3 }, (_, k) => `sim-${k + 1}`)])
    assert.equal(await page.locator('tr[data-device-id="pump-7"] td').nth(4).textContent(), 'mqtt 1', 'the MQTT device\'s live session')
  })

  await t.test('panels, counted over every device: residual-use alerts, credentials expiring soon, offboarding exceptions', async () => {
    await textOf(page, '#alerts tr td:nth-child(2)', 'tablet-4')
    assert.match((await page.locator('#alerts tr td').nth(3).textContent())!, /revoked/)
    assert.equal(await textOf(page, '#expiring-summary', /^1 device\(s\)/), '1 device(s) whose credential expires within 30 days or has expired')
    assert.deepEqual(await page.locator('#expiring tr td').allTextContents(), ['camera-1', 'active', 'certificate', 'in 6d'])
    // no wipe path: password devices and Modbus without the hook; an outside CA's certificate: a pinned one
    const flagged = count((d) => d.credential === 'password' || d.credential === 'x509' || d.protocol === 'modbus')
    assert.match((await page.locator('#exceptions-summary').textContent())!, new RegExp(`^${flagged} device\\(s\\) rely on containment`))
    assert.ok((await page.locator('#exceptions tr').count()) <= 50, 'the panel lists the first few, not all')
  })

  await t.test('quarantine none: a plain warning that nothing is enforced on the network (and none with a backend that enforces)', async () => {
    const warning = page.locator('#quarantine-warning')
    assert.ok(await warning.isVisible())
    assert.match((await warning.textContent())!, /quarantine: none\): nothing is enforced on the network/)
    const enforcing = await statusSnapshot({ gateway: gw, adapters: [], uplink: null, quarantineBackend: 'nftables' }, { limit: 1 })
    assert.deepEqual(enforcing.quarantine, { backend: 'nftables', enforces: true })
    const none = await statusSnapshot({ gateway: gw, adapters: [], uplink: null }, { limit: 1 })
    assert.deepEqual(none.quarantine, { backend: 'none', enforces: false })
  })

  await t.test('pages: next, previous, and the last page, in the address for a bookmark', async () => {
    await page.click('#next')
    await textOf(page, '#page-info', `showing ${PAGE_SIZE + 1}-${2 * PAGE_SIZE} of ${total}`)
    assert.equal((await tableIds(page))[0], `sim-${PAGE_SIZE - 2}`)
    assert.match(page.url(), new RegExp(`#offset=${PAGE_SIZE}$`))
    assert.equal(await page.locator('#prev').isDisabled(), false)
    await page.click('#prev')
    await textOf(page, '#page-info', `showing 1-${PAGE_SIZE} of ${total}`)
    assert.equal(await page.locator('#prev').isDisabled(), true)
    await page.evaluate((o) => ((globalThis as unknown as BrowserGlobals).location.hash = `offset=${o}`), total - 3)
    await textOf(page, '#page-info', `showing ${total - 2}-${total} of ${total}`)
    assert.deepEqual(await tableIds(page), [`sim-${FLEET - 1}`, `sim-${FLEET}`, 'tablet-4'], 'sim-10000 after sim-9999')
    assert.equal(await page.locator('#next').isDisabled(), true)
    await page.evaluate(() => ((globalThis as unknown as BrowserGlobals).location.hash = ''))
    await textOf(page, '#page-info', `showing 1-${PAGE_SIZE} of ${total}`)
  })

  await t.test('filters: state, criticality, protocol, credential, combined, and a search over id and reason', async () => {
    const matching = (n: number): string => (n > PAGE_SIZE ? `showing 1-${PAGE_SIZE} of ${n} matching` : `showing 1-${n} of ${n} matching`)
    const timings: string[] = []
    const expectFilter = async (what: string, set: () => Promise<unknown>, pred: (d: PlannedDevice) => boolean, col?: [number, (cell: string) => boolean]): Promise<void> => {
      const n = count(pred)
      assert.ok(n > 0 && n < total, `${what} narrows the list`)
      const t0 = performance.now()
      await set()
      await textOf(page, '#page-info', matching(n))
      timings.push(`${what} ${n} in ${Math.round(performance.now() - t0)} ms`)
      const ids = await tableIds(page)
      const planned = new Map(all.map((d) => [d.id, d]))
      assert.ok(ids.every((id) => pred(planned.get(id)!)), `${what}: every row matches`)
      if (col) assert.ok((await cellsOf(page, col[0])).every(col[1]), `${what}: the column shows it`)
    }
    await expectFilter('state quarantined', () => page.selectOption('#f-state', 'quarantined'), (d) => d.state === 'quarantined', [1, (c) => c.startsWith('quarantined (odd traffic')])
    await expectFilter('and protocol modbus', () => page.selectOption('#f-protocol', 'modbus'), (d) => d.state === 'quarantined' && d.protocol === 'modbus', [3, (c) => c === 'modbus'])
    await page.selectOption('#f-state', '')
    await expectFilter('protocol modbus', async () => {}, (d) => d.protocol === 'modbus')
    assert.equal((await tableIds(page))[0], 'plc-1')
    await page.selectOption('#f-protocol', '')
    await expectFilter('criticality safety', () => page.selectOption('#f-criticality', 'safety'), (d) => d.criticality === 'safety', [2, (c) => c === 'safety'])
    await page.selectOption('#f-criticality', '')
    await expectFilter('credential password', () => page.selectOption('#f-credential', 'password'), (d) => d.credential === 'password', [8, (c) => c === 'password'])
    await expectFilter('credential certificate', () => page.selectOption('#f-credential', 'x509'), (d) => d.credential === 'x509', [8, (c) => c.startsWith('certificate')])
    await page.selectOption('#f-credential', '')
    // the search is over id, owner and state reason, any case; typing waits for a pause
    await expectFilter('search SIM-77', () => page.fill('#f-q', 'SIM-77'), (d) => d.id.includes('sim-77'))
    assert.deepEqual((await tableIds(page)).slice(0, 3), ['sim-77', 'sim-770', 'sim-771'])
    await expectFilter('search a reason', () => page.fill('#f-q', 'from cell 3'), (d) => d.reason?.includes('from cell 3') === true)
    assert.match(page.url(), /#q=from\+cell\+3$/)
    await page.fill('#f-q', '')
    await textOf(page, '#page-info', `showing 1-${PAGE_SIZE} of ${total}`)
    t.diagnostic(`filters shown: ${timings.join('; ')}`)
  })

  await t.test('a Modbus device answering through the proxy shows its session and last seen, in the table and on its page', async () => {
    const row = 'tr[data-device-id="plc-1"]'
    assert.equal(await page.locator(`${row} td`).nth(7).textContent(), '-', 'not seen before it answers')
    const read = await mbpoll(agent.modbus.proxy.port!, 247, { table: 4, ref: 0, count: 2 })
    assert.equal(read.code, 0, read.stdout + read.stderr)
    await textOf(page, `${row} td:nth-child(5)`, 'modbus 1')
    assert.match((await page.locator(`${row} td`).nth(7).textContent())!, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$/)
    // opened from the table
    await page.click(`${row} a`)
    await page.waitForURL(`${base}/devices/plc-1`)
    await textOf(page, 'dd[data-fact="sessions"]', /modbus 1/)
    assert.match((await page.locator('dd[data-fact="state"]').textContent())!, /^active since /)
    assert.match((await page.locator('dd[data-fact="last seen"]').textContent())!, /^\d{4}-/)
    assert.match((await page.locator('dd[data-fact="offboarding"]').textContent())!, /no-wipe-path/)
    await textOf(page, '#history-summary', /^\d+ entr(y|ies) in the audit log/)
    assert.ok((await page.locator('#history td:nth-child(4)').allTextContents()).includes('device.enroll'))
    await page.goBack()
    await textOf(page, '#page-info', `showing 1-${PAGE_SIZE} of ${total}`)
  })

  await t.test('a quarantine is shown within seconds, with the counts', async () => {
    const before = (await page.locator('#summary').textContent())!
    const t0 = Date.now()
    assert.equal((await adminRequest(agent.config.dataDir, 'POST', '/v1/devices/sim-5/quarantine', { reason: 'found on the wrong line' })).status, 200)
    await page.locator('tr[data-device-id="sim-5"][data-state="quarantined"]').waitFor({ timeout: SHOWN_WITHIN_MS })
    t.diagnostic(`quarantine of sim-5 shown after ${Date.now() - t0} ms (refresh every ${STATUS_REFRESH_MS} ms)`)
    assert.equal(await page.locator('tr[data-device-id="sim-5"] td').nth(1).textContent(), 'quarantined (found on the wrong line)')
    const quarantined = count((d) => d.state === 'quarantined')
    assert.match(before, new RegExp(`\\b${quarantined} quarantined\\b`))
    assert.match((await page.locator('#summary').textContent())!, new RegExp(`\\b${quarantined + 1} quarantined\\b`))
    const m = await browserMetrics()
    t.diagnostic(`browser after paging, filtering and refreshing: ${m.Nodes} DOM nodes, JS heap ${(m.JSHeapUsedSize! / 1e6).toFixed(1)} MB used`)
    assert.deepEqual(problems, [], 'no script error and no CSP violation')
  })
})
