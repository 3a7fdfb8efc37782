// The status page in a real headless Chromium (Debian's `chromium`, driven
// by playwright-core): it loads under its own strict CSP, shows an enrolled
// device, and reflects a quarantine on its own within a few seconds, with an
// attacker-chosen reason shown as text, never as markup.
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { test } from 'node:test'
import { chromium } from 'playwright-core'
import { adminRequest } from '../../agent/cli/admin-client.ts'
import { STATUS_REFRESH_MS } from '../../agent/observe/status-page.ts'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { startTestAgent } from '../helpers/agent.ts'

const CHROMIUM = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/lib/chromium/chromium'].find((p) => p && existsSync(p))

/** Skipped only on a developer machine without Chromium; in CI or as root (where .ci/run installs it) a missing browser fails. */
function skipReason(): string | false {
  if (CHROMIUM) return false
  if (process.env.CI || process.getuid?.() === 0) return false
  return 'needs Debian\'s chromium (apt-get install chromium); skipped because it is missing, not root and CI is unset'
}

test('the status page shows an enrolled device and reflects its quarantine within seconds', { skip: skipReason() }, async (t) => {
  assert.ok(CHROMIUM, 'no Chromium binary (/usr/bin/chromium): .ci/run installs Debian\'s chromium package; set CHROMIUM_PATH to use another')
  const agent = await startTestAgent(t, { flags: { httpPort: '0' } })
  const base = `http://127.0.0.1:${agent.http!.port}`
  const key = publicKeyToB64((await keygen()).publicKey)
  assert.equal((await adminRequest(agent.config.dataDir, 'POST', '/v1/devices', { device: { id: 'pump-7', publicKey: key, criticality: 'safety', owner: 'line-2' } })).status, 200)

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
  t.after(() => browser.close())
  const page = await browser.newPage()
  const problems: string[] = []
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(msg.text())
  })
  page.on('pageerror', (err) => problems.push(err.message))
  const dialogs: string[] = []
  page.on('dialog', (d) => {
    dialogs.push(d.message())
    void d.dismiss()
  })
  const requests: string[] = []
  page.on('request', (r) => requests.push(r.url()))

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
