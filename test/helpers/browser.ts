// Headless Chromium for the page tests (Debian's `chromium`, driven by
// playwright-core): where it is, whether a test skips without it, and a
// page that records what a page test asserts on (script errors and CSP
// violations, dialogs a script opened, every request made).
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { chromium, type Page } from 'playwright-core'

export const CHROMIUM = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/lib/chromium/chromium'].find((p) => p && existsSync(p))

/** Skipped only on a developer machine without Chromium; in CI or as root (where .ci/run installs it) a missing browser fails. */
export function chromiumSkipReason(): string | false {
  if (CHROMIUM) return false
  if (process.env.CI || process.getuid?.() === 0) return false
  return 'needs Debian\'s chromium (apt-get install chromium); skipped because it is missing, not root and CI is unset'
}

export interface WatchedPage {
  page: Page
  /** console errors and uncaught exceptions (a CSP violation is a console error) */
  problems: string[]
  /** messages of dialogs a script opened (each dismissed) */
  dialogs: string[]
  /** every URL the page requested */
  requests: string[]
}

/** A new browser (closed after the test) and one page in it, watched. */
export async function openWatchedPage(t: { after(fn: () => Promise<void> | void): void }, opts: { viewport?: { width: number; height: number } } = {}): Promise<WatchedPage> {
  assert.ok(CHROMIUM, 'no Chromium binary (/usr/bin/chromium): .ci/run installs Debian\'s chromium package; set CHROMIUM_PATH to use another')
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
  t.after(() => browser.close())
  const page = await browser.newPage(opts.viewport ? { viewport: opts.viewport } : {})
  const w: WatchedPage = { page, problems: [], dialogs: [], requests: [] }
  page.on('console', (msg) => {
    if (msg.type() === 'error') w.problems.push(msg.text())
  })
  page.on('pageerror', (err) => w.problems.push(err.message))
  page.on('dialog', (d) => {
    w.dialogs.push(d.message())
    void d.dismiss()
  })
  page.on('request', (r) => w.requests.push(r.url()))
  return w
}
