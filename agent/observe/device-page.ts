// A page per device (`/devices/<id>`, linked from the status page): its
// state and why, live sessions per protocol, credential and expiry, the last
// refused connect and why, pending actions, offboarding exceptions, and its
// history from the audit log, newest first. Like the status page: static
// HTML, an inline script that renders /api/devices/<id> with textContent
// only, refreshed every 1.5 s; the history is read in full once, then only
// what is new (`?after=SEQ`).
import type { StatusSources } from './status-page.ts'
import { describeDevice, type DeviceView } from './views.ts'
import { deviceHistory, type HistoryItem } from './device-history.ts'
import { pageHead, SCRIPT_PRELUDE, table } from './page-assets.ts'

export interface DeviceSnapshot {
  /** seconds since the epoch, the gateway's clock */
  now: number
  deviceId: string
  /** null: not enrolled (any more): its history remains */
  device: DeviceView | null
  /** entries after `after`, oldest first */
  history: HistoryItem[]
  /** the audit seq the history is read through: the next `after` */
  through: number
}

/** What /api/devices/<id>?after=SEQ answers; null for an id neither the registry nor the audit log knows. */
export async function deviceSnapshot(src: StatusSources, deviceId: string, after = 0): Promise<DeviceSnapshot | null> {
  const gw = src.gateway
  // only entries on disk: a batch being written is read next time
  const through = gw.durableHead.audit.seq
  const history = after < through ? await deviceHistory(gw.store, deviceId, { afterSeq: after, throughSeq: through }) : []
  const record = gw.getDevice(deviceId)
  if (!record && history.length === 0 && after === 0) return null
  return {
    now: gw.nowS(),
    deviceId,
    device: record ? describeDevice(gw, record, { adapters: src.adapters, ...(src.activity ? { activity: src.activity } : {}) }) : null,
    history,
    through,
  }
}

export const DEVICE_SCRIPT = `${SCRIPT_PRELUDE}const deviceId = decodeURIComponent(location.pathname.replace(/^\\/devices\\//, ''))
document.title = deviceId + ' - edgewarden'
$('device-id').textContent = deviceId
const HISTORY_SHOWN = 500
let after = 0
let items = []
function facts(rows) {
  const out = []
  for (const [k, v, cls] of rows) {
    const dt = document.createElement('dt')
    dt.textContent = k
    const dd = document.createElement('dd')
    dd.textContent = String(v)
    if (cls) dd.className = cls
    dd.dataset.fact = k
    out.push(dt, dd)
  }
  return out
}
function row(cells) {
  const tr = document.createElement('tr')
  for (const [text, cls] of cells) {
    const td = document.createElement('td')
    td.textContent = String(text)
    if (cls) td.className = cls
    tr.appendChild(td)
  }
  return tr
}
function render(s) {
  const d = s.device
  if (!d) {
    $('facts').replaceChildren(...facts([['state', 'not enrolled (removed): its history follows']]))
  } else {
    const sessions = Object.entries(d.sessions || {}).map(([p, n]) => p + ' ' + n).join(', ') || '-'
    const r = d.lastRefusal
    $('facts').replaceChildren(...facts([
      ['state', d.state + (d.stateReason ? ' (' + d.stateReason + ')' : '') + ' since ' + fmtTime(d.stateChangedAt), 'state state-' + d.state],
      ['criticality', d.criticality],
      ['owner', d.owner || '-'],
      ['protocols', d.protocols.join(', ')],
      ['sessions', sessions],
      ['credential', (d.credentialKind === 'publicKey' ? 'token key' : d.credentialKind === 'x509' ? 'certificate' : d.credentialKind) + ', expires ' + fmtTime(d.credentialExpiresAt), d.credentialExpiresAt != null && d.credentialExpiresAt <= s.now ? 'bad' : ''],
      ['certificate', d.certificate ? 'serial ' + (d.certificate.serial || '(not yet seen)') + ', ' + d.certificate.daysLeft + ' days left' + (d.certificate.renewal ? ', ' + d.certificate.renewal : '') : '-'],
      ['last seen', fmtTime(d.lastSeenAt)],
      ['last refusal', r ? fmtTime(r.at) + ' over ' + r.protocol + ': ' + r.reason + ' (' + r.detail + ')' : 'none known', r ? 'bad' : ''],
      ['pending actions', d.pendingActions.map((a) => a.act + ' ' + a.id).join(', ') || 'none'],
      ['offboarding', d.exceptions.length ? d.exceptions.map((x) => x.code + ': ' + x.reason).join('; ') : 'provable end to end', d.exceptions.length ? 'bad' : ''],
    ]))
  }
  for (const h of s.history) if (!items.length || h.seq > items[items.length - 1].seq) items.push(h)
  if (items.length > HISTORY_SHOWN) items = items.slice(-HISTORY_SHOWN)
  after = s.through
  $('history-summary').textContent = items.length ? items.length + ' entr' + (items.length === 1 ? 'y' : 'ies') + ' in the audit log, newest first' : 'nothing in the audit log'
  $('history').replaceChildren(...items.slice().reverse().map((h) => row([[h.seq, 'num'], [fmtTime(h.at / 1000)], [h.actor], [h.action], [h.summary], [h.reason || '']])))
  $('updated').textContent = 'updated ' + fmtTime(s.now)
}
async function refresh() {
  try {
    const r = await fetch('/api/devices/' + encodeURIComponent(deviceId) + '?after=' + after, { cache: 'no-store', headers: { accept: 'application/json' } })
    if (r.status === 404) throw new Error('no device ' + deviceId + ' on this gateway')
    if (!r.ok) throw new Error('HTTP ' + r.status)
    render(await r.json())
    $('error').textContent = ''
  } catch (err) {
    $('error').textContent = 'device unavailable: ' + err.message
  } finally {
    setTimeout(refresh, 1500)
  }
}
void refresh()
`

export const DEVICE_PAGE_HTML = `${pageHead('edgewarden device')}
<p><a href="/">&larr; all devices</a></p>
<h1>Device <span id="device-id"></span></h1>
<p class="muted" id="updated"></p>
<p id="error" role="alert"></p>
<dl id="facts" class="facts"></dl>
<h2>History</h2>
<p id="history-summary"></p>
${table('history', ['#', 'Time', 'Actor', 'Action', 'What', 'Reason'])}
<script>${DEVICE_SCRIPT}</script>
</body>
</html>
`
