// The read-only fleet page: one static HTML document; its inline script
// fetches /v1/fleet with the bearer token and renders it with textContent
// only (device ids, reasons and alert details come from gateways and
// operators: nothing is ever parsed as HTML). The token is given once in the
// address's fragment (#token=…, never sent to the server nor kept in its
// logs), held in sessionStorage, and the fragment is cleared. The page loads
// nothing from anywhere else; its Content-Security-Policy allows exactly its
// own inline script and style (by hash) and fetches to its own origin.
import { createHash } from 'node:crypto'

export const FLEET_REFRESH_MS = 3000

const STYLE = `
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;min-width:30em;background:#fff}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}.muted{color:#777}.bad{color:#b00020;font-weight:600}.ok{color:#1b7a2b}.warn{color:#a05a00}
#login{display:none;margin:1em 0}#login input{width:30em}
`

const SCRIPT = `
(function () {
  var REFRESH = ${FLEET_REFRESH_MS};
  var m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) { sessionStorage.setItem('edgewarden-cp-token', decodeURIComponent(m[1])); history.replaceState(null, '', location.pathname); }
  function token() { return sessionStorage.getItem('edgewarden-cp-token'); }
  function el(tag, text, cls) { var e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = String(text); if (cls) e.className = cls; return e; }
  function table(id, head, rows) {
    var host = document.getElementById(id); host.replaceChildren();
    if (!rows.length) { host.appendChild(el('p', 'none', 'muted')); return; }
    var t = el('table'), tr = el('tr');
    head.forEach(function (h) { tr.appendChild(el('th', h)); }); t.appendChild(tr);
    rows.forEach(function (r) {
      var row = el('tr');
      if (r.attrs) Object.keys(r.attrs).forEach(function (k) { row.setAttribute('data-' + k, String(r.attrs[k])); });
      r.cells.forEach(function (c) { var td = el('td', c && typeof c === 'object' ? c.text : c, c && typeof c === 'object' ? c.cls : undefined); row.appendChild(td); });
      t.appendChild(row);
    });
    host.appendChild(t);
  }
  function age(s) { if (s === null || s === undefined) return ''; if (s < 120) return s + ' s'; if (s < 7200) return Math.floor(s / 60) + ' min'; if (s < 172800) return Math.floor(s / 3600) + ' h'; return Math.floor(s / 86400) + ' d'; }
  function render(f) {
    document.getElementById('generated').textContent = 'as of ' + f.generatedAt + ' (' + f.instances.length + ' instance' + (f.instances.length === 1 ? '' : 's') + ')';
    var gws = [];
    f.sites.forEach(function (s) { s.gateways.forEach(function (g) {
      gws.push({ attrs: { site: s.id, gateway: g.id, online: g.online }, cells: [s.id, g.id,
        { text: g.online === true ? 'online' : g.online === false ? 'offline' : 'unknown', cls: g.online === true ? 'ok' : g.online === false ? 'bad' : 'muted' },
        g.version || '', g.seq + (g.gap ? ' (gap)' : ''), g.lastEventAt || '', g.waiting.queued + g.waiting.sent, g.waiting.accepted,
        { text: g.openAlerts, cls: g.openAlerts ? 'bad' : '' }] });
    }); });
    table('gateways', ['site', 'gateway', 'status', 'version', 'last seq', 'last event', 'commands waiting', 'accepted, outcome to come', 'open alerts'], gws);
    table('states', ['state', 'devices', 'by site'], f.devicesByState.map(function (s) {
      return { attrs: { state: s.state }, cells: [s.state, s.total, Object.keys(s.bySite).map(function (k) { return k + ': ' + s.bySite[k]; }).join(', ')] };
    }));
    table('retirements', ['device', 'site', 'gateway', 'state', 'since', 'age', 'command'], f.openRetirements.map(function (r) {
      return { attrs: { device: r.deviceId }, cells: [r.deviceId, r.site, r.gateway, r.state || 'pending', r.since || '', { text: age(r.ageS), cls: r.ageS > 86400 * 7 ? 'warn' : '' }, (r.command || '') + (r.commandState ? ' (' + r.commandState + ')' : '')] };
    }));
    table('expiring', ['device', 'site', 'gateway', 'expires', 'in'], f.expiringCredentials.map(function (r) {
      return { attrs: { device: r.deviceId }, cells: [r.deviceId, r.site, r.gateway, r.expiresAt, { text: r.inS < 0 ? 'expired ' + age(-r.inS) + ' ago' : age(r.inS), cls: r.inS < 0 ? 'bad' : 'warn' }] };
    }));
    table('residual', ['when', 'device', 'site', 'gateway', 'protocol', 'attempts', 'detail'], f.residualUse.map(function (a) {
      return { attrs: { device: a.deviceId }, cells: [a.createdAt, a.deviceId, a.site, a.gateway, a.detail.protocol || '', a.detail.count || '', a.detail.detail || ''] };
    }));
    table('exceptions', ['device', 'site', 'gateway', 'retired', 'why not proven end to end'], f.offboardingExceptions.map(function (x) {
      return { attrs: { device: x.deviceId }, cells: [x.deviceId, x.site, x.gateway, x.at || '', { text: x.exceptions.join('; '), cls: 'warn' }] };
    }));
    table('alerts', ['when', 'kind', 'site', 'gateway', 'detail'], f.alerts.map(function (a) {
      return { attrs: { kind: a.kind }, cells: [a.createdAt, { text: a.kind, cls: 'bad' }, a.site || '', a.gateway || '', a.detail.detail || JSON.stringify(a.detail)] };
    }));
  }
  function login(show, why) {
    document.getElementById('login').style.display = show ? 'block' : 'none';
    document.getElementById('why').textContent = why || '';
  }
  function load() {
    var t = token();
    if (!t) { login(true, 'a token with the read scope is needed'); return; }
    fetch('/v1/fleet', { headers: { authorization: 'Bearer ' + t }, cache: 'no-store' }).then(function (r) {
      if (r.status === 401 || r.status === 403) { sessionStorage.removeItem('edgewarden-cp-token'); login(true, 'the token was refused (' + r.status + ')'); return null; }
      if (!r.ok) throw new Error('HTTP ' + r.status);
      return r.json();
    }).then(function (f) { if (f) { login(false); render(f); document.getElementById('error').textContent = ''; } })
      .catch(function (e) { document.getElementById('error').textContent = 'refresh failed: ' + e.message; });
  }
  document.getElementById('use').addEventListener('click', function () {
    var v = document.getElementById('token').value.trim();
    if (v) { sessionStorage.setItem('edgewarden-cp-token', v); document.getElementById('token').value = ''; load(); }
  });
  load();
  setInterval(load, REFRESH);
})();
`

const hash = (s: string): string => `'sha256-${createHash('sha256').update(s).digest('base64')}'`

export const FLEET_PAGE_CSP = [
  "default-src 'none'",
  `script-src ${hash(SCRIPT)}`,
  `style-src ${hash(STYLE)}`,
  "connect-src 'self'",
  "img-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ')

export const FLEET_PAGE_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer"><title>edgewarden fleet</title><style>${STYLE}</style></head>
<body>
<h1>edgewarden fleet</h1><div id="generated" class="muted">loading…</div><div id="error" class="bad"></div>
<div id="login"><p id="why" class="warn"></p><label>token <input id="token" type="password" autocomplete="off"></label> <button id="use" type="button">show the fleet</button></div>
<h2>Sites and gateways</h2><div id="gateways"></div>
<h2>Devices by state, across sites</h2><div id="states"></div>
<h2>Open retirements</h2><div id="retirements"></div>
<h2>Credentials expiring (30 days)</h2><div id="expiring"></div>
<h2>Residual use: retired, revoked or quarantined identities trying to get in</h2><div id="residual"></div>
<h2>Offboarding exceptions</h2><div id="exceptions"></div>
<h2>Other open alerts</h2><div id="alerts"></div>
<script>${SCRIPT}</script>
</body></html>
`
