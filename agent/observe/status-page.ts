// The read-only status page: one static HTML document whose small inline
// script fetches /api/status every 1.5 s and renders it with textContent
// only (device ids, reasons and audit subjects come from outside: nothing is
// ever parsed as HTML). The page carries no data itself and loads nothing
// from anywhere else; its Content-Security-Policy allows exactly its own
// inline script and style (by hash) and fetches to its own origin.
import { createHash } from 'node:crypto'
import { AUDIT_PREFIX, type AuditEntry } from '../store/audit.ts'
import type { ProtocolAdapter } from '../adapter.ts'
import { VERSION, type Gateway } from '../gateway.ts'
import { describeDevice } from './views.ts'
import { prefixEnd } from '../store/store.ts'

export const STATUS_REFRESH_MS = 1500
const RECENT_AUDIT = 25

export interface StatusSources {
  gateway: Gateway
  adapters: readonly ProtocolAdapter[]
  uplink: { readonly connected: boolean } | null
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
  stateReason?: string
}

export interface StatusSnapshot {
  gateway: { id: string; site: string; version: string }
  /** seconds since the epoch, the gateway's clock */
  now: number
  uplink: { configured: boolean; connected: boolean }
  outbox: { depth: number; lastSeq: number; droppedAtBound: number }
  devices: StatusDevice[]
  audit: { seq: number; at: number; actor: string; action: string; subject: string | null }[]
}

/** What /api/status answers: the live view the page renders. */
export async function statusSnapshot(src: StatusSources): Promise<StatusSnapshot> {
  const gw = src.gateway
  const devices = [...gw.registry.values()]
    .sort((a, b) => a.spec.id.localeCompare(b.spec.id))
    .map((d): StatusDevice => {
      const v = describeDevice(gw, d)
      const out: StatusDevice = {
        id: v.id,
        state: v.state,
        criticality: v.criticality,
        protocols: v.protocols,
        pendingActions: v.pendingActions.map((a) => a.act),
        credentialExpiresAt: v.credentialExpiresAt,
        credential: v.certificate
          ? `certificate ${v.certificate.serial.slice(0, 12)}${v.certificate.overlap ? ', overlap' : ''}${v.certificate.renewal ? `, ${v.certificate.renewal}` : ''}`
          : v.credentialKind === 'publicKey'
            ? 'token key'
            : v.credentialKind,
        lastSeenAt: v.lastSeenAt,
        sessions: src.adapters.reduce((n, a) => n + a.sessionCount(v.id), 0),
      }
      if (v.stateReason !== undefined) out.stateReason = v.stateReason
      return out
    })
  const audit: StatusSnapshot['audit'] = []
  for await (const [, value] of gw.store.db.iterator({ gte: AUDIT_PREFIX, lt: prefixEnd(AUDIT_PREFIX), reverse: true, limit: RECENT_AUDIT })) {
    const e = JSON.parse(value) as AuditEntry
    audit.push({ seq: e.seq, at: e.at, actor: e.actor, action: e.action, subject: e.subject ?? null })
  }
  return {
    gateway: { id: gw.id, site: gw.site, version: VERSION },
    now: gw.nowS(),
    uplink: { configured: src.uplink !== null, connected: src.uplink?.connected ?? false },
    outbox: { depth: gw.outbox.depth, lastSeq: gw.outbox.lastSeq, droppedAtBound: gw.eventsDroppedAtBound },
    devices,
    audit,
  }
}

const STYLE = `
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right}.muted{color:#777}
.state-active{color:#11722b}.state-quarantined{color:#a15c00;font-weight:bold}.state-revoked,.state-retired{color:#b00020;font-weight:bold}.state-retiring{color:#6a1b9a;font-weight:bold}
.ok{color:#11722b}.bad{color:#b00020}#error{color:#b00020}
`

const SCRIPT = `
'use strict'
const $ = (id) => document.getElementById(id)
const fmtTime = (s) => (s == null ? '-' : new Date(s * 1000).toISOString().replace('T', ' ').slice(0, 19) + 'Z')
function fmtLeft(s, now) {
  if (s == null) return 'none'
  const d = s - now
  const a = Math.abs(d)
  const n = a >= 86400 ? Math.floor(a / 86400) + 'd' : a >= 3600 ? Math.floor(a / 3600) + 'h' : Math.floor(a / 60) + 'm'
  return d <= 0 ? 'expired ' + n + ' ago' : 'in ' + n
}
function row(cells, attrs) {
  const tr = document.createElement('tr')
  for (const [text, cls] of cells) {
    const td = document.createElement('td')
    td.textContent = String(text)
    if (cls) td.className = cls
    tr.appendChild(td)
  }
  if (attrs) for (const [k, v] of Object.entries(attrs)) tr.dataset[k] = String(v)
  return tr
}
function render(s) {
  $('gateway').textContent = s.gateway.site + ' / ' + s.gateway.id + ' (edgewarden ' + s.gateway.version + ')'
  const up = $('uplink')
  up.textContent = !s.uplink.configured ? 'not configured' : s.uplink.connected ? 'connected' : 'down'
  up.className = !s.uplink.configured ? 'muted' : s.uplink.connected ? 'ok' : 'bad'
  $('outbox').textContent = s.outbox.depth + ' event(s) waiting; last seq ' + s.outbox.lastSeq + (s.outbox.droppedAtBound ? '; ' + s.outbox.droppedAtBound + ' dropped at the bound' : '')
  const counts = {}
  for (const d of s.devices) counts[d.state] = (counts[d.state] || 0) + 1
  $('summary').textContent = s.devices.length + ' device(s): ' + (Object.entries(counts).map(([k, v]) => v + ' ' + k).join(', ') || 'none')
  $('devices').replaceChildren(...s.devices.map((d) => row([
    [d.id],
    [d.state + (d.stateReason ? ' (' + d.stateReason + ')' : ''), /^[a-z]+$/.test(d.state) ? 'state state-' + d.state : 'state'],
    [d.criticality],
    [d.protocols.join(', ')],
    [d.sessions, 'num'],
    [d.pendingActions.join(', ') || '-'],
    [fmtLeft(d.credentialExpiresAt, s.now)],
    [fmtTime(d.lastSeenAt)],
    [d.credential],
  ], { deviceId: d.id, state: d.state })))
  $('audit').replaceChildren(...s.audit.map((e) => row([[e.seq, 'num'], [fmtTime(e.at / 1000)], [e.actor], [e.action], [e.subject == null ? '-' : e.subject]])))
  $('updated').textContent = 'updated ' + fmtTime(s.now)
}
async function refresh() {
  try {
    const r = await fetch('/api/status', { cache: 'no-store', headers: { accept: 'application/json' } })
    if (!r.ok) throw new Error('HTTP ' + r.status)
    render(await r.json())
    $('error').textContent = ''
  } catch (err) {
    $('error').textContent = 'status unavailable: ' + err.message
  } finally {
    setTimeout(refresh, ${STATUS_REFRESH_MS})
  }
}
refresh()
`

const sha256 = (s: string): string => `'sha256-${createHash('sha256').update(s, 'utf8').digest('base64')}'`

/** Exactly this page's inline script and style, fetches to its own origin, nothing else. */
export const STATUS_PAGE_CSP = [
  "default-src 'none'",
  `script-src ${sha256(SCRIPT)}`,
  `style-src ${sha256(STYLE)}`,
  "connect-src 'self'",
  "img-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ')

export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgewarden status</title>
<style>${STYLE}</style>
</head>
<body>
<h1>edgewarden <span id="gateway" class="muted"></span></h1>
<p>Uplink: <span id="uplink">-</span> &middot; Outbox: <span id="outbox">-</span> &middot; <span id="updated" class="muted"></span></p>
<p id="error" role="alert"></p>
<h2>Devices</h2>
<p id="summary"></p>
<table>
<thead><tr><th>Device</th><th>State</th><th>Criticality</th><th>Protocols</th><th>Sessions</th><th>Pending actions</th><th>Credential expires</th><th>Last seen</th><th>Credential</th></tr></thead>
<tbody id="devices"></tbody>
</table>
<h2>Recent audit entries</h2>
<table>
<thead><tr><th>#</th><th>Time</th><th>Actor</th><th>Action</th><th>Subject</th></tr></thead>
<tbody id="audit"></tbody>
</table>
<script>${SCRIPT}</script>
</body>
</html>
`
