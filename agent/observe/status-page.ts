// The read-only status page: one static HTML document whose small inline
// script fetches /api/status every 1.5 s and renders it with textContent
// only (device ids, reasons and audit subjects come from outside: nothing is
// ever parsed as HTML). The page carries no data itself and loads nothing
// from anywhere else; its Content-Security-Policy allows exactly its own
// inline scripts and style (by hash) and fetches to its own origin.
//
// Built for a site's size: the gateway filters (state, criticality,
// protocol, credential, a search over id, owner and reason), sorts
// naturally (sim-2 before sim-10) and pages, so the browser holds one page
// of rows however many devices there are; the panels (residual-use alerts,
// credentials expiring soon, offboarding exceptions) are counted over every
// device and show the first few. Each device id links to its own page
// (device-page.ts).
import { AUDIT_PREFIX, type AuditEntry } from '../store/audit.ts'
import type { ProtocolAdapter } from '../adapter.ts'
import { VERSION, type Gateway } from '../gateway.ts'
import { credentialKind, protocolsOf, type DeviceRecord } from '../devices/device.ts'
import { offboardingExceptions } from '../devices/offboarding.ts'
import { CREDENTIAL_LABEL, describeDevice, type DeviceView } from './views.ts'
import { naturalCompare } from './natural-sort.ts'
import type { DeviceActivity } from './device-activity.ts'
import { prefixEnd } from '../store/store.ts'
import { DEVICE_SCRIPT } from './device-page.ts'
import { pageHead, SCRIPT_PRELUDE, sha256, STYLE, table } from './page-assets.ts'

export const STATUS_REFRESH_MS = 1500
const RECENT_AUDIT = 25
/** rows per page unless asked otherwise, and at most */
export const PAGE_SIZE = 100
const MAX_PAGE = 1000
/** what the panels list (each also says how many there are in all) */
const PANEL_ROWS = 20
/** credentials expiring within this are in their panel */
export const EXPIRING_WITHIN_S = 30 * 86400

export interface StatusSources {
  gateway: Gateway
  adapters: readonly ProtocolAdapter[]
  uplink: { readonly connected: boolean } | null
  /** last refusals and residual-use alerts */
  activity?: DeviceActivity
  /** the network quarantine backend (`none` enforces nothing on the network) */
  quarantineBackend?: string
}

export interface StatusDevice {
  id: string
  state: string
  criticality: string
  protocols: string[]
  pendingActions: string[]
  credentialExpiresAt: number | null
  /** the credential kind, and for a certificate its serial and the renewal under way */
  credential: string
  lastSeenAt: number | null
  /** live sessions on every protocol right now */
  sessions: number
  /** live sessions per protocol of the device */
  sessionsBy: Record<string, number>
  /** why its offboarding cannot be proven end to end (devices/offboarding.ts); empty when it can */
  exceptions: { code: string; reason: string }[]
  stateReason?: string
}

/** What the list is narrowed to; every field optional (the page sends what is set). */
export interface StatusQuery {
  /** part of an id, owner or state reason, any case */
  q?: string
  state?: string
  criticality?: string
  protocol?: string
  /** publicKey (token key), x509 (certificate) or password */
  credential?: string
  offset?: number
  limit?: number
}

export interface StatusSnapshot {
  gateway: { id: string; site: string; version: string }
  /** seconds since the epoch, the gateway's clock */
  now: number
  uplink: { configured: boolean; connected: boolean }
  outbox: { depth: number; lastSeq: number; droppedAtBound: number }
  quarantine: { backend: string; enforces: boolean }
  /** every device by state, and how many the query matched */
  counts: { total: number; byState: Record<string, number>; matched: number }
  page: { offset: number; limit: number }
  /** the page of matching devices, in natural order of their ids */
  devices: StatusDevice[]
  panels: {
    residualAlerts: { at: number; deviceId: string; protocol: string; detail: string; count: number }[]
    expiring: { count: number; devices: { id: string; state: string; credential: string; credentialExpiresAt: number }[] }
    exceptions: { count: number; devices: { id: string; state: string; exceptions: { code: string; reason: string }[] }[] }
  }
  audit: { seq: number; at: number; actor: string; action: string; subject: string | null }[]
}

/** The query of /api/status?q=…&state=…&offset=…&limit=…; bad numbers fall back to the defaults. */
export function parseStatusQuery(params: URLSearchParams): StatusQuery {
  const q: StatusQuery = {}
  for (const k of ['q', 'state', 'criticality', 'protocol', 'credential'] as const) {
    const v = params.get(k)
    if (v) q[k] = v.slice(0, 200)
  }
  const int = (v: string | null): number | undefined => (v !== null && /^\d{1,9}$/.test(v) ? Number(v) : undefined)
  const offset = int(params.get('offset'))
  const limit = int(params.get('limit'))
  if (offset !== undefined) q.offset = offset
  if (limit !== undefined) q.limit = limit
  return q
}

/**
 * Device ids in natural order, per gateway, sorted again only when a device
 * was added (every addition is a record change with no record before; a
 * removed id stays until then, and is skipped).
 */
const sortedIds = new WeakMap<Gateway, string[] | null>()

function naturalOrder(gw: Gateway): string[] {
  if (!sortedIds.has(gw)) {
    gw.onRecordChange((before) => {
      if (before === undefined) sortedIds.set(gw, null)
    })
  }
  let ids = sortedIds.get(gw)
  if (!ids) sortedIds.set(gw, (ids = [...gw.registry.values()].map((d) => d.spec.id).sort(naturalCompare)))
  return ids
}

function credentialLabel(v: DeviceView): string {
  return v.certificate
    ? `certificate ${v.certificate.serial.slice(0, 12)}${v.certificate.overlap ? ', overlap' : ''}${v.certificate.renewal ? `, ${v.certificate.renewal}` : ''}`
    : CREDENTIAL_LABEL[v.credentialKind]
}

function matches(d: DeviceRecord, q: StatusQuery, text: string | undefined): boolean {
  if (q.state && d.state !== q.state) return false
  if (q.criticality && (d.spec.criticality ?? 'medium') !== q.criticality) return false
  if (q.protocol && !protocolsOf(d.spec).includes(q.protocol)) return false
  if (q.credential && credentialKind(d.spec) !== q.credential) return false
  if (text !== undefined) {
    const hay = `${d.spec.id}\n${d.spec.owner ?? ''}\n${d.stateReason ?? ''}`.toLowerCase()
    if (!hay.includes(text)) return false
  }
  return true
}

/** What /api/status answers: the live view the page renders, narrowed by `query`. */
export async function statusSnapshot(src: StatusSources, query: StatusQuery = {}): Promise<StatusSnapshot> {
  const gw = src.gateway
  const now = gw.nowS()
  const text = query.q?.trim().toLowerCase() || undefined
  const limit = Math.min(Math.max(query.limit ?? PAGE_SIZE, 1), MAX_PAGE)
  const byState: Record<string, number> = {}
  const matched: DeviceRecord[] = []
  const expiring: DeviceRecord[] = []
  const flagged: { d: DeviceRecord; exceptions: { code: string; reason: string }[] }[] = []
  for (const id of naturalOrder(gw)) {
    const d = gw.registry.get(id)
    if (!d) continue
    byState[d.state] = (byState[d.state] ?? 0) + 1
    if (matches(d, query, text)) matched.push(d)
    // a credential that matters: of a device in service or that may come back
    if ((d.state === 'active' || d.state === 'quarantined') && d.credentialExpiresAt - now <= EXPIRING_WITHIN_S) expiring.push(d)
    const exceptions = offboardingExceptions(d)
    if (exceptions.length) flagged.push({ d, exceptions })
  }
  const offset = Math.min(query.offset ?? 0, Math.max(0, matched.length - 1))
  const devices = matched.slice(offset, offset + limit).map((d): StatusDevice => {
    const v = describeDevice(gw, d)
    const sessionsBy = Object.fromEntries(src.adapters.map((a) => [a.protocol, a.sessionCount(v.id)]))
    const out: StatusDevice = {
      id: v.id,
      state: v.state,
      criticality: v.criticality,
      protocols: v.protocols,
      pendingActions: v.pendingActions.map((a) => a.act),
      credentialExpiresAt: v.credentialExpiresAt,
      credential: credentialLabel(v),
      lastSeenAt: v.lastSeenAt,
      sessions: Object.values(sessionsBy).reduce((a, b) => a + b, 0),
      sessionsBy,
      exceptions: v.exceptions,
    }
    if (v.stateReason !== undefined) out.stateReason = v.stateReason
    return out
  })
  expiring.sort((a, b) => a.credentialExpiresAt - b.credentialExpiresAt || naturalCompare(a.spec.id, b.spec.id))
  const audit: StatusSnapshot['audit'] = []
  for await (const [, value] of gw.store.db.iterator({ gte: AUDIT_PREFIX, lt: prefixEnd(AUDIT_PREFIX), reverse: true, limit: RECENT_AUDIT })) {
    const e = JSON.parse(value) as AuditEntry
    audit.push({ seq: e.seq, at: e.at, actor: e.actor, action: e.action, subject: e.subject ?? null })
  }
  const backend = src.quarantineBackend ?? gw.config.quarantine
  return {
    gateway: { id: gw.id, site: gw.site, version: VERSION },
    now,
    uplink: { configured: src.uplink !== null, connected: src.uplink?.connected ?? false },
    outbox: { depth: gw.outbox.depth, lastSeq: gw.outbox.lastSeq, droppedAtBound: gw.eventsDroppedAtBound },
    quarantine: { backend, enforces: backend !== 'none' },
    counts: { total: gw.registry.size, byState, matched: matched.length },
    page: { offset, limit },
    devices,
    panels: {
      residualAlerts: (src.activity?.recentAlerts(PANEL_ROWS) ?? []).map((a) => ({ at: a.at, deviceId: a.deviceId, protocol: a.protocol, detail: a.detail, count: a.count })),
      expiring: {
        count: expiring.length,
        devices: expiring.slice(0, PANEL_ROWS).map((d) => ({ id: d.spec.id, state: d.state, credential: CREDENTIAL_LABEL[credentialKind(d.spec)], credentialExpiresAt: d.credentialExpiresAt })),
      },
      exceptions: { count: flagged.length, devices: flagged.slice(0, 50).map((f) => ({ id: f.d.spec.id, state: f.d.state, exceptions: f.exceptions })) },
    },
    audit,
  }
}

const SCRIPT = `${SCRIPT_PRELUDE}function fmtLeft(s, now) {
  if (s == null) return 'none'
  const d = s - now
  const a = Math.abs(d)
  const n = a >= 86400 ? Math.floor(a / 86400) + 'd' : a >= 3600 ? Math.floor(a / 3600) + 'h' : Math.floor(a / 60) + 'm'
  return d <= 0 ? 'expired ' + n + ' ago' : 'in ' + n
}
function deviceLink(id) {
  const a = document.createElement('a')
  a.href = '/devices/' + encodeURIComponent(id)
  a.textContent = id
  return a
}
function row(cells, attrs) {
  const tr = document.createElement('tr')
  for (const [text, cls, link] of cells) {
    const td = document.createElement('td')
    if (link) td.appendChild(deviceLink(String(text)))
    else td.textContent = String(text)
    if (cls) td.className = cls
    tr.appendChild(td)
  }
  if (attrs) for (const [k, v] of Object.entries(attrs)) tr.dataset[k] = String(v)
  return tr
}
const FILTERS = ['q', 'state', 'criticality', 'protocol', 'credential']
const view = { offset: 0, limit: ${PAGE_SIZE} }
function readHash() {
  const p = new URLSearchParams(location.hash.slice(1))
  for (const k of FILTERS) $('f-' + k).value = p.get(k) || ''
  view.offset = Number(p.get('offset')) || 0
}
function params() {
  const p = new URLSearchParams()
  for (const k of FILTERS) if ($('f-' + k).value) p.set(k, $('f-' + k).value)
  if (view.offset) p.set('offset', String(view.offset))
  return p
}
function sessionsText(d) {
  const parts = Object.entries(d.sessionsBy).filter(([, n]) => n > 0).map(([p, n]) => p + ' ' + n)
  return parts.length ? parts.join(', ') : '0'
}
let last = null
function render(s) {
  last = s
  $('gateway').textContent = s.gateway.site + ' / ' + s.gateway.id + ' (edgewarden ' + s.gateway.version + ')'
  const up = $('uplink')
  up.textContent = !s.uplink.configured ? 'not configured' : s.uplink.connected ? 'connected' : 'down'
  up.className = !s.uplink.configured ? 'muted' : s.uplink.connected ? 'ok' : 'bad'
  $('outbox').textContent = s.outbox.depth + ' event(s) waiting; last seq ' + s.outbox.lastSeq + (s.outbox.droppedAtBound ? '; ' + s.outbox.droppedAtBound + ' dropped at the bound' : '')
  $('quarantine-warning').textContent = s.quarantine.enforces ? '' : 'Network quarantine is off (quarantine: none): nothing is enforced on the network. A cut device is refused by this gateway\\'s broker, proxy and relays only; it can still reach anything else on the network.'
  $('summary').textContent = s.counts.total + ' device(s): ' + (Object.entries(s.counts.byState).map(([k, v]) => v + ' ' + k).join(', ') || 'none')
  const from = s.counts.matched ? s.page.offset + 1 : 0
  const to = s.page.offset + s.devices.length
  $('page-info').textContent = s.counts.matched ? 'showing ' + from + '-' + to + ' of ' + s.counts.matched + (s.counts.matched < s.counts.total ? ' matching' : '') : 'no device matches'
  $('prev').disabled = s.page.offset === 0
  $('next').disabled = to >= s.counts.matched
  $('devices').replaceChildren(...s.devices.map((d) => row([
    [d.id, '', true],
    [d.state + (d.stateReason ? ' (' + d.stateReason + ')' : ''), /^[a-z]+$/.test(d.state) ? 'state state-' + d.state : 'state'],
    [d.criticality],
    [d.protocols.join(', ')],
    [sessionsText(d), 'num'],
    [d.pendingActions.join(', ') || '-'],
    [fmtLeft(d.credentialExpiresAt, s.now)],
    [fmtTime(d.lastSeenAt)],
    [d.credential],
    [d.exceptions.length ? d.exceptions.map((x) => x.code).join(', ') : 'provable', d.exceptions.length ? 'bad' : 'muted'],
  ], { deviceId: d.id, state: d.state })))
  const alerts = s.panels.residualAlerts
  $('alerts-summary').textContent = alerts.length ? 'the latest ' + alerts.length + ' alert(s): a cut identity tried to get back in' : 'none since the agent started'
  $('alerts').replaceChildren(...alerts.map((a) => row([[fmtTime(a.at)], [a.deviceId, '', true], [a.protocol], [a.detail + (a.count > 1 ? ' (' + a.count + ' attempts)' : '')]], { deviceId: a.deviceId })))
  const exp = s.panels.expiring
  $('expiring-summary').textContent = exp.count ? exp.count + ' device(s) whose credential expires within 30 days or has expired' + (exp.count > exp.devices.length ? ' (the first ' + exp.devices.length + ' shown)' : '') : 'none within 30 days'
  $('expiring').replaceChildren(...exp.devices.map((d) => row([[d.id, '', true], [d.state, 'state state-' + d.state], [d.credential], [fmtLeft(d.credentialExpiresAt, s.now), d.credentialExpiresAt <= s.now ? 'bad' : '']], { deviceId: d.id })))
  const flagged = s.panels.exceptions
  $('exceptions-summary').textContent = flagged.count
    ? flagged.count + ' device(s) rely on containment instead of erasure: their offboarding cannot be proven end to end.'
    : 'none: every device can be wiped with a signed ack and every credential revoked here.'
  $('exceptions').replaceChildren(...flagged.devices.flatMap((d) => d.exceptions.map((x) => row([[d.id, '', true], [d.state, 'state state-' + d.state], [x.code], [x.reason]], { deviceId: d.id }))))
  $('audit').replaceChildren(...s.audit.map((e) => row([[e.seq, 'num'], [fmtTime(e.at / 1000)], [e.actor], [e.action], [e.subject == null ? '-' : e.subject]])))
  $('updated').textContent = 'updated ' + fmtTime(s.now)
}
let timer = null
let asked = 0
async function refresh() {
  clearTimeout(timer)
  const n = ++asked
  try {
    const p = params()
    p.set('limit', String(view.limit))
    const r = await fetch('/api/status?' + p, { cache: 'no-store', headers: { accept: 'application/json' } })
    if (!r.ok) throw new Error('HTTP ' + r.status)
    const s = await r.json()
    // an answer to an older question (the filter changed meanwhile) is dropped
    if (n !== asked) return
    render(s)
    $('error').textContent = ''
  } catch (err) {
    if (n === asked) $('error').textContent = 'status unavailable: ' + err.message
  } finally {
    if (n === asked) timer = setTimeout(refresh, ${STATUS_REFRESH_MS})
  }
}
function changed() {
  view.offset = 0
  history.replaceState(null, '', '#' + params())
  void refresh()
}
let typing = null
$('f-q').addEventListener('input', () => {
  clearTimeout(typing)
  typing = setTimeout(changed, 200)
})
for (const k of FILTERS.slice(1)) $('f-' + k).addEventListener('change', changed)
$('filters').addEventListener('submit', (e) => e.preventDefault())
$('prev').addEventListener('click', () => {
  view.offset = Math.max(0, view.offset - view.limit)
  history.replaceState(null, '', '#' + params())
  void refresh()
})
$('next').addEventListener('click', () => {
  if (last && view.offset + view.limit < last.counts.matched) view.offset += view.limit
  history.replaceState(null, '', '#' + params())
  void refresh()
})
window.addEventListener('hashchange', () => {
  readHash()
  void refresh()
})
readHash()
void refresh()
`

/** Exactly these pages' inline scripts and style, fetches to their own origin, nothing else. */
export const STATUS_PAGE_CSP = [
  "default-src 'none'",
  `script-src ${sha256(SCRIPT)} ${sha256(DEVICE_SCRIPT)}`,
  `style-src ${sha256(STYLE)}`,
  "connect-src 'self'",
  "img-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ')

const option = (v: string, label = v): string => `<option value="${v}">${label}</option>`

export const STATUS_PAGE_HTML = `${pageHead('edgewarden status')}
<h1>edgewarden <span id="gateway" class="muted"></span></h1>
<p>Uplink: <span id="uplink">-</span> &middot; Outbox: <span id="outbox">-</span> &middot; <span id="updated" class="muted"></span></p>
<p id="quarantine-warning" class="warn" role="status"></p>
<p id="error" role="alert"></p>
<h2>Devices</h2>
<p id="summary"></p>
<form id="filters" class="filters" role="search">
<input id="f-q" type="search" placeholder="search id, owner, reason" aria-label="search">
<select id="f-state" aria-label="state">${option('', 'any state')}${['active', 'quarantined', 'revoked', 'retiring', 'retired'].map((s) => option(s)).join('')}</select>
<select id="f-criticality" aria-label="criticality">${option('', 'any criticality')}${['low', 'medium', 'high', 'safety'].map((s) => option(s)).join('')}</select>
<select id="f-protocol" aria-label="protocol">${option('', 'any protocol')}${option('mqtt', 'MQTT')}${option('modbus', 'Modbus')}${option('opcua', 'OPC UA')}</select>
<select id="f-credential" aria-label="credential">${option('', 'any credential')}${option('publicKey', 'token key')}${option('x509', 'certificate')}${option('password', 'password')}</select>
</form>
<div class="pager"><button id="prev" type="button">&larr; previous</button><span id="page-info"></span><button id="next" type="button">next &rarr;</button></div>
${table('devices', ['Device', 'State', 'Criticality', 'Protocols', 'Sessions', 'Pending actions', 'Credential expires', 'Last seen', 'Credential', 'Offboarding'])}
<div class="panels">
<section>
<h2>Residual-use alerts</h2>
<p id="alerts-summary"></p>
${table('alerts', ['Time', 'Device', 'Protocol', 'What'])}
</section>
<section>
<h2>Credentials expiring soon</h2>
<p id="expiring-summary"></p>
${table('expiring', ['Device', 'State', 'Credential', 'Expires'])}
</section>
</div>
<h2>Offboarding exceptions</h2>
<p id="exceptions-summary"></p>
${table('exceptions', ['Device', 'State', 'Exception', 'Why'])}
<h2>Recent audit entries</h2>
${table('audit', ['#', 'Time', 'Actor', 'Action', 'Subject'])}
<script>${SCRIPT}</script>
</body>
</html>
`
