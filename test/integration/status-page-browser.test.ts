// The status page in a real headless Chromium (Debian's `chromium`, driven
// by playwright-core): it loads under its own strict CSP, shows an enrolled
// device, and reflects a quarantine on its own within a few seconds, with an
// attacker-chosen reason shown as text, never as markup.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { adminRequest } from '../../agent/cli/admin-client.ts'
import { STATUS_REFRESH_MS } from '../../agent/observe/status-page.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { hashPassword } from '../../agent/trust/password.ts'
import { startTestAgent } from '../helpers/agent.ts'
import { chromiumSkipReason, openWatchedPage } from '../helpers/browser.ts'

test('the status page shows an enrolled device and reflects its quarantine within seconds', { skip: chromiumSkipReason() }, async (t) => {
  const agent = await startTestAgent(t, { flags: { httpPort: '0' } })
  const base = `http://127.0.0.1:${agent.http!.port}`
  const key = publicKeyToB64((await keygen()).publicKey)
  assert.equal((await adminRequest(agent.config.dataDir, 'POST', '/v1/devices', { device: { id: 'pump-7', publicKey: key, criticality: 'safety', owner: 'line-2' } })).status, 200)

  const { page, problems, dialogs, requests } = await openWatchedPage(t)

  const res = await page.goto(`${base}/`)
  assert.equal(res?.status(), 200)
  const row = page.locator('tr[data-device-id="pump-7"]')
  await row.waitFor({ timeout: 10_000 })
  const cells = await row.locator('td').allTextContents()
  assert.equal(cells[0], 'pump-7')
  assert.equal(cells[1], 'active')
  assert.equal(cells[2], 'safety')
  assert.equal(cells[3], 'mqtt')
  assert.match(cells[6]!, /^in \d+d$/, 'credential expiry in days')
  assert.equal(await page.locator('#uplink').textContent(), 'not configured')
  assert.equal(cells[9], 'provable', 'a token device with MQTT can be wiped with a signed ack')
  assert.match((await page.locator('#exceptions-summary').textContent())!, /^none/)

  // Devices whose offboarding cannot be proven end to end are flagged, with the reason, in the table and in their own panel.
  const hash = await hashPassword('plug-secret', { ln: 10 })
  assert.equal((await adminRequest(agent.config.dataDir, 'POST', '/v1/devices', { device: { id: 'plug-3', password: hash, mqtt: {} } })).status, 200)
  assert.equal((await adminRequest(agent.config.dataDir, 'POST', '/v1/devices', { device: { id: 'plc-9', publicKey: publicKeyToB64((await keygen()).publicKey), modbus: { host: '127.0.0.1', port: 1, unitId: 9, hookBase: null } } })).status, 200)
  await page.locator('#exceptions tr[data-device-id="plc-9"]').waitFor({ timeout: 8000 })
  const exceptionRows = await page.locator('#exceptions tr').evaluateAll((trs) => trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)))
  assert.deepEqual(exceptionRows.map((r) => [r[0], r[2]]), [['plc-9', 'no-wipe-path'], ['plug-3', 'no-wipe-path']])
  assert.match(exceptionRows[0]![3]!, /Modbus without the hook registers/)
  assert.match(exceptionRows[1]![3]!, /fixed password/)
  assert.match((await page.locator('#exceptions-summary').textContent())!, /^2 device\(s\) rely on containment/)
  assert.equal(await page.locator('tr[data-device-id="plug-3"] td').nth(9).textContent(), 'no-wipe-path')

  // The reason is the operator's (or, by command, the control plane's) text: shown, never run.
  const reason = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
  const before = Date.now()
  assert.equal((await adminRequest(agent.config.dataDir, 'POST', '/v1/devices/pump-7/quarantine', { reason })).status, 200)
  await page.locator('tr[data-device-id="pump-7"][data-state="quarantined"]').waitFor({ timeout: 8000 })
  const reflectedMs = Date.now() - before
  t.diagnostic(`quarantine shown after ${reflectedMs} ms (refresh every ${STATUS_REFRESH_MS} ms)`)
  assert.equal(await row.locator('td').nth(1).textContent(), `quarantined (${reason})`)
  assert.equal(await page.locator('img').count(), 0)
  assert.equal(await page.locator('body script').count(), 1, 'only the page\'s own script')
  await page.locator('#audit tr', { hasText: 'device.quarantine' }).first().waitFor({ timeout: 5000 })

  assert.deepEqual(dialogs, [])
  assert.deepEqual(problems, [], 'no script error and no CSP violation')
  assert.ok(requests.every((u) => u.startsWith(`${base}/`)), `only its own origin: ${requests.filter((u) => !u.startsWith(base)).join(', ')}`)
})
