// What the status page and the device pages share: their one style sheet
// (allowed by its hash in the CSP, status-page.ts) and the hash itself, the
// head of each document, the start of each inline script, and the markup of
// a table the script fills.
import { createHash } from 'node:crypto'

/** A CSP source for an inline script or style: its SHA-256. */
export const sha256 = (s: string): string => `'sha256-${createHash('sha256').update(s, 'utf8').digest('base64')}'`

export const STYLE = `
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right}.muted{color:#777}
.state-active{color:#11722b}.state-quarantined{color:#a15c00;font-weight:bold}.state-revoked,.state-retired{color:#b00020;font-weight:bold}.state-retiring{color:#6a1b9a;font-weight:bold}
.ok{color:#11722b}.bad{color:#b00020}#error{color:#b00020}
.warn{background:#fff4e0;border:1px solid #e0a040;padding:.5em .8em;margin:.6em 0}.warn:empty{display:none}
.filters{display:flex;flex-wrap:wrap;gap:.6em;align-items:center;margin:.4em 0}.filters input[type=search]{min-width:16em}
#devices td:not(.state){white-space:nowrap}
.pager{display:flex;gap:.6em;align-items:center;margin:.4em 0}
.panels{display:grid;grid-template-columns:repeat(auto-fit,minmax(22em,1fr));gap:1em}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dl.facts dt{color:#555}dl.facts dd{margin:0}
`

/** The document up to `<body>`: the same head on every page, with its own title. */
export const pageHead = (title: string): string => `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title}</title>
<style>${STYLE}</style>
</head>
<body>`

/** How each page's script begins: strict, `$` for an element by id, and the one way times are shown. */
export const SCRIPT_PRELUDE = `
'use strict'
const $ = (id) => document.getElementById(id)
const fmtTime = (s) => (s == null ? '-' : new Date(s * 1000).toISOString().replace('T', ' ').slice(0, 19) + 'Z')
`

/** A table whose rows the page's script puts in `<tbody id="bodyId">`. */
export const table = (bodyId: string, headers: readonly string[]): string => `<table>
<thead><tr>${headers.map((h) => `<th>${h}</th>`).join('')}</tr></thead>
<tbody id="${bodyId}"></tbody>
</table>`
