// `edgewarden ctl`: the control-plane side, for operators and tests. Signs
// commands with a CP key, publishes them to the central broker through a
// bounded window, re-sending what gets no answer (PROTOCOL §3), follows the
// gateway's events (verifying signatures, flagging seq gaps) and its status,
// and remembers each gateway's history to catch one restored from an old copy.
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, isAbsolute, join } from 'node:path'
import {
  ControlPlane,
  DEFAULT_WINDOW,
  HistoryGuard,
  type CommandResult,
  type GatewayEvent,
  type GatewayHistory,
  type Rollback,
} from '../../simulators/control-plane.ts'
import { palette } from './colour.ts'
import { out } from './common.ts'
import { runKeygen } from './identity.ts'
import { parseVerbArgs } from './main.ts'
import { ProgressBar, waiting } from './progress.ts'
import { didYouMean } from './suggest.ts'
import { UsageError } from './usage.ts'

const LINK = {
  broker: { type: 'string' },
  site: { type: 'string' },
  gateway: { type: 'string' },
  key: { type: 'string' },
  kid: { type: 'string' },
  iss: { type: 'string' },
  'gateway-key': { type: 'string' },
  username: { type: 'string' },
  password: { type: 'string' },
  // TLS to an mqtts:// broker; --key is the control-plane signing key, so the client certificate's key is --cert-key
  ca: { type: 'string' },
  cert: { type: 'string' },
  'cert-key': { type: 'string' },
  'client-id': { type: 'string' },
  timeout: { type: 'string' },
  lifetime: { type: 'string' },
  json: { type: 'boolean' },
} as const

type LinkValues = { [K in keyof typeof LINK]?: (typeof LINK)[K]['type'] extends 'boolean' ? boolean : string }

function need(v: LinkValues, ...names: (keyof LinkValues)[]): void {
  const missing = names.filter((n) => v[n] === undefined)
  if (missing.length) throw new UsageError(`ctl needs ${missing.map((m) => `--${m}`).join(', ')}`)
}

function seconds(v: string | undefined, name: string, dflt: number): number {
  if (v === undefined) return dflt
  if (!/^\d+$/.test(v) || Number(v) === 0) throw new UsageError(`--${name} must be a whole number of seconds`)
  return Number(v)
}

function whole(v: string | undefined, name: string, dflt: number): number {
  if (v === undefined) return dflt
  if (!/^\d+$/.test(v) || Number(v) === 0) throw new UsageError(`--${name} must be a whole number above 0`)
  return Number(v)
}

/** --resend-after: seconds, fractions allowed (tests and fast links want less than one). */
function resendAfterMs(v: string | undefined): number | undefined {
  if (v === undefined) return undefined
  if (!/^\d+(\.\d+)?$/.test(v) || Number(v) === 0) throw new UsageError('--resend-after must be a number of seconds above 0')
  return Number(v) * 1000
}

function readFlagFile(path: string, flag: string): Buffer {
  try {
    return readFileSync(path)
  } catch (err) {
    throw new UsageError(`--${flag} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
}

function tlsOptions(v: LinkValues): { ca?: Buffer; cert?: Buffer; key?: Buffer } | undefined {
  if ((v.cert === undefined) !== (v['cert-key'] === undefined)) throw new UsageError('--cert and --cert-key go together')
  if (v.ca === undefined && v.cert === undefined) return undefined
  return {
    ...(v.ca !== undefined ? { ca: readFlagFile(v.ca, 'ca') } : {}),
    ...(v.cert !== undefined ? { cert: readFlagFile(v.cert, 'cert'), key: readFlagFile(v['cert-key']!, 'cert-key') } : {}),
  }
}

function controlPlane(v: LinkValues, withKey: boolean, timeoutS: number): ControlPlane {
  need(v, 'broker', 'site', 'gateway', ...(withKey ? (['key', 'kid'] as const) : []))
  // The environment keeps the password out of `ps` and shell history; a flag wins over it.
  const password = v.password ?? (process.env.EDGEWARDEN_CTL_PASSWORD || undefined)
  const tls = tlsOptions(v)
  return new ControlPlane({
    broker: v.broker!,
    site: v.site!,
    gateway: v.gateway!,
    ...(withKey ? { key: v.key!, kid: v.kid! } : {}),
    ...(v.iss !== undefined ? { iss: v.iss } : {}),
    ...(v['gateway-key'] !== undefined ? { gatewayKey: v['gateway-key'] } : {}),
    ...(v.username !== undefined ? { username: v.username } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(tls ? { tls } : {}),
    ...(v['client-id'] !== undefined ? { clientId: v['client-id'] } : {}),
    connectTimeoutMs: timeoutS * 1000,
  })
}

/** The broker URL as it may be printed: a password in it is masked. */
function shownBroker(url: string): string {
  try {
    const u = new URL(url)
    if (u.password) u.password = '***'
    return u.toString()
  } catch {
    return url
  }
}

/** One clear line and false when the broker cannot be reached or refuses us. */
async function connect(cp: ControlPlane, v: LinkValues): Promise<boolean> {
  try {
    await cp.connect()
    return true
  } catch (err) {
    // OpenSSL's messages run over lines with source paths; its reason alone says it.
    const e = err as Error & { reason?: unknown; code?: unknown }
    const why = typeof e.reason === 'string' ? `${e.reason}${typeof e.code === 'string' ? ` (${e.code})` : ''}` : (e.message ?? String(err)).trim().split('\n')[0]
    process.stderr.write(`edgewarden: cannot connect to ${shownBroker(v.broker!)}: ${why}\n`)
    return false
  }
}

const describe = (e: GatewayEvent): string =>
  `${String(e.seq).padStart(6)} ${e.type.padEnd(18)} ${JSON.stringify(e.data)}${e.verified === false ? `  ${palette().red('[SIGNATURE INVALID]')}` : ''}`

function parseArgsJson(text: string | undefined): Record<string, unknown> {
  if (text === undefined) return {}
  try {
    const v = JSON.parse(text) as unknown
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>
  } catch {}
  throw new UsageError(`ARGS must be a JSON object, got ${text}`)
}

export async function runCtl(args: string[]): Promise<number> {
  const [sub, ...rest] = args
  if (sub === 'keygen') return runKeygen(rest)
  if (sub === 'send') return send(rest)
  if (sub === 'watch') return watch(rest)
  if (sub === 'bulk') return bulk(rest)
  throw new UsageError(sub ? `unknown ctl verb "${sub}"${didYouMean(sub, ['keygen', 'send', 'watch', 'bulk'])}` : 'ctl needs a verb: keygen, send, watch, bulk')
}

async function send(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, { ...LINK, wait: { type: 'boolean' }, 'resend-after': { type: 'string' } })
  const v = values as LinkValues & { wait?: boolean; 'resend-after'?: string }
  const [op, argsJson, ...extra] = positionals
  if (!op || extra.length) throw new UsageError('ctl send takes OP [ARGS-JSON]')
  const timeoutS = seconds(v.timeout, 'timeout', 30)
  const resend = resendAfterMs(v['resend-after'])
  const cmdArgs = parseArgsJson(argsJson)
  const lifetimeS = seconds(v.lifetime, 'lifetime', 3600)
  const cp = controlPlane(v, true, timeoutS)
  if (!(await connect(cp, v))) return 1
  try {
    const signed = cp.sign(op, cmdArgs, { lifetimeS })
    const opts = { timeoutMs: timeoutS * 1000, ...(resend !== undefined ? { resendAfterMs: resend } : {}) }
    if (!v.wait) {
      // An offline gateway's persistent session holds the command: nothing to wait for, and copies would only queue behind it.
      if (cp.status?.online === false) {
        await cp.publishRaw(signed.jws)
        out(v.json ? JSON.stringify({ jti: signed.jti, outcome: 'queued' }) : `sent ${op} ${signed.jti} (gateway offline: queued on the broker)`)
        return 0
      }
      // PROTOCOL §3: re-sent, same jti, until the gateway answers.
      const r = (await cp.sendAll([signed], { ...opts, untilAccepted: true })).results[0]!
      if (v.json) out(JSON.stringify({ jti: signed.jti, outcome: r.outcome, ...(r.reason !== undefined ? { reason: r.reason } : {}), ...(r.sends > 1 ? { sends: r.sends } : {}) }))
      else if (r.outcome === 'accepted' || r.outcome === 'completed') out(`sent ${op} ${signed.jti}`)
      else if (r.outcome === 'unanswered') process.stderr.write(`edgewarden: no answer for ${signed.jti} within ${timeoutS} s, sent ${r.sends === 1 ? 'once' : `${r.sends} times`} (the last copy stays queued on the broker for the gateway)\n`)
      else out(`${r.outcome}: ${JSON.stringify(r.event?.data ?? {})}`)
      return r.outcome === 'accepted' || r.outcome === 'completed' ? 0 : 1
    }
    // Print the command's events as they come, until its outcome (a retirement may wait for its device).
    const wait = waiting(`waiting for the outcome of ${op} ${signed.jti}`)
    const off = cp.onEvent((e) => {
      // a re-send's answer while the command runs says only what cmd.accepted said
      if (e.data.jti !== signed.jti || v.json || (e.type === 'cmd.duplicate' && e.data.state === 'accepted')) return
      wait.clear()
      out(describe(e))
    })
    let r: CommandResult
    try {
      r = (await cp.sendAll([signed], opts)).results[0]!
    } finally {
      off()
      wait.stop()
    }
    const final = r.event
    if (!final || r.outcome === 'accepted') {
      const what = r.outcome === 'accepted' ? 'accepted, but no outcome' : `no answer (sent ${r.sends === 1 ? 'once' : `${r.sends} times`})`
      process.stderr.write(`edgewarden: ${signed.jti}: ${what} within ${timeoutS} s (the command stays queued on the broker for the gateway)\n`)
      if (v.json) out(JSON.stringify({ jti: signed.jti, outcome: r.outcome, sends: r.sends }))
      return 1
    }
    if (v.json) out(JSON.stringify({ jti: signed.jti, type: final.type, data: final.data, seq: final.seq, verified: final.verified, ...(r.sends > 1 ? { sends: r.sends } : {}) }))
    else out(`${final.type === 'cmd.completed' ? 'completed' : final.type.replace('cmd.', '')}: ${JSON.stringify(final.data)}`)
    return r.outcome === 'completed' ? 0 : 1
  } finally {
    await cp.close()
  }
}

/** $XDG_STATE_HOME/edgewarden/watch.json, else ~/.local/state/edgewarden/watch.json (XDG Base Directory). */
function defaultStateFile(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_STATE_HOME && isAbsolute(env.XDG_STATE_HOME) ? env.XDG_STATE_HOME : join(homedir(), '.local', 'state')
  return join(base, 'edgewarden', 'watch.json')
}

type WatchEntry = GatewayHistory & { gatewayKey?: string; updatedAt?: string }
type WatchState = Record<string, WatchEntry>

function readWatchState(file: string): WatchState {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {}
    throw new UsageError(`--state ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  // A state we cannot read would silently forget every gateway's history: refuse rather than start over.
  try {
    const v = JSON.parse(text) as unknown
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as WatchState
  } catch {}
  throw new UsageError(`--state ${file} is not a watch state file (JSON object keyed by site/gateway); move it away to start afresh`)
}

/**
 * Written to a temp file, fsync'd, renamed over: a crash leaves the old
 * state or the new, never half of one. Re-read first so that watches of
 * other gateways sharing the file keep their entries.
 */
function writeWatchState(file: string, key: string, entry: WatchEntry): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 })
  let all: WatchState
  try {
    all = readWatchState(file)
  } catch {
    all = {}
  }
  all[key] = { ...entry, updatedAt: new Date().toISOString() }
  const tmp = `${file}.${process.pid}.tmp`
  const fd = openSync(tmp, 'w', 0o600)
  try {
    writeSync(fd, `${JSON.stringify(all, null, 2)}\n`)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
  renameSync(tmp, file)
}

/** State writes at most this often while events stream; always once at the end. */
const STATE_WRITE_MS = 500

async function watch(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, { ...LINK, count: { type: 'string' }, state: { type: 'string' } })
  const v = values as LinkValues & { count?: string; state?: string }
  if (positionals.length) throw new UsageError('ctl watch takes no arguments')
  const cp = controlPlane(v, false, 30)
  const limit = v.count === undefined ? Infinity : seconds(v.count, 'count', 1)
  const stateFile = v.state ?? defaultStateFile()
  const key = `${v.site}/${v.gateway}`
  const gatewayKey = v['gateway-key']
  let remembered = readWatchState(stateFile)[key]
  // Another key is another gateway under the same name (reinstalled, not restored: a restore brings its key back): its history starts afresh.
  if (remembered?.gatewayKey !== undefined && gatewayKey !== undefined && remembered.gatewayKey !== gatewayKey) {
    process.stderr.write(`edgewarden: ${key} has another gateway key than last time: its remembered history starts afresh\n`)
    remembered = undefined
  }
  const guard = new HistoryGuard(remembered)
  const keyOf = gatewayKey ?? remembered?.gatewayKey
  if (v['gateway-key'] === undefined) process.stderr.write('edgewarden: no --gateway-key: event signatures are NOT verified\n')
  let seen = 0
  let gapsReported = 0
  let bad = false
  let rolledBack = false
  let dirty = false
  let writeTimer: NodeJS.Timeout | null = null
  const save = (): void => {
    if (writeTimer) clearTimeout(writeTimer)
    writeTimer = null
    if (!dirty) return
    dirty = false
    writeWatchState(stateFile, key, { ...guard.history, ...(keyOf !== undefined ? { gatewayKey: keyOf } : {}) })
  }
  const changed = (): void => {
    dirty = true
    writeTimer ??= setTimeout(save, STATE_WRITE_MS)
  }
  // PROTOCOL §3: said loudly, on both streams, and in the exit code.
  const warn = (r: Rollback): void => {
    rolledBack = true
    const line = `ROLLBACK ${key}: ${r.detail}. This gateway was restored from an old copy of its data: treat every device decision sent to it since as unknown and send them again (PROTOCOL §3).`
    process.stderr.write(`${palette(process.stderr).red(`edgewarden: ${line}`)}\n`)
    out(v.json ? JSON.stringify({ rollback: { site: v.site, gateway: v.gateway, ...r } }) : palette().red(line))
    save() // the new baseline at once: a second run must not warn again for the same restore
  }
  if (!(await connect(cp, v))) return 1
  process.stderr.write(`watching ${cp.topics.evt}\n`)
  await new Promise<void>((resolve) => {
    const stop = (): void => resolve()
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
    const onStatus = (s: NonNullable<ControlPlane['status']>, retained: boolean): void => {
      if (seen >= limit) return
      const r = guard.status(s, retained)
      changed()
      if (r) warn(r)
      if (!v.json) process.stderr.write(`${key} ${s.online ? 'online' : 'offline'}${s.version ? ` (version ${s.version})` : ''}${s.seq !== undefined ? `, last event ${s.seq}` : ''}${retained ? ' [retained]' : ''}\n`)
    }
    cp.onStatus(onStatus)
    // connect() may have delivered the retained status before this listener existed
    if (cp.status) onStatus(cp.status, true)
    cp.onEvent((e) => {
      if (seen >= limit) return // --count reached: the rest arrive while closing
      for (const g of cp.gaps.slice(gapsReported)) out(v.json ? JSON.stringify({ gap: g }) : palette().red(`GAP: events ${g.from}..${g.to} never arrived`))
      gapsReported = cp.gaps.length
      if (e.verified === false) bad = true
      // A forged event must not move the remembered history.
      else {
        const r = guard.event(e)
        changed()
        if (r) warn(r)
      }
      out(v.json ? JSON.stringify({ seq: e.seq, type: e.type, data: e.data, verified: e.verified }) : describe(e))
      if (++seen >= limit) resolve()
    })
  })
  save()
  await cp.close()
  return bad || rolledBack || cp.gaps.length ? 1 : 0
}

/** One command's args per line of input: device ids, or for device.enroll also JSON device records, one a line. */
function bulkItems(op: string, text: string, template: Record<string, unknown>): { id: string; args: Record<string, unknown> }[] {
  const items = new Map<string, Record<string, unknown>>()
  const base = (template.device ?? {}) as Record<string, unknown>
  if (op === 'device.enroll' && text.trimStart().startsWith('{')) {
    for (const [n, line] of text.split('\n').entries()) {
      if (!line.trim()) continue
      let d: unknown
      try {
        d = JSON.parse(line)
      } catch {}
      if (!d || typeof d !== 'object' || typeof (d as { id?: unknown }).id !== 'string') throw new UsageError(`ctl bulk device.enroll: line ${n + 1} is not a JSON device record with an id`)
      const id = (d as { id: string }).id
      if (!items.has(id)) items.set(id, { ...template, device: { ...base, ...(d as Record<string, unknown>) } })
    }
  } else {
    for (const id of text.split(/[\s,]+/).filter(Boolean)) {
      if (items.has(id)) continue
      items.set(id, op === 'device.enroll' ? { ...template, device: { ...base, id } } : { ...template, deviceId: id })
    }
  }
  return [...items].map(([id, args]) => ({ id, args }))
}

async function bulk(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, { ...LINK, file: { type: 'string' }, args: { type: 'string' }, window: { type: 'string' }, 'resend-after': { type: 'string' } })
  const v = values as LinkValues & { file?: string; args?: string; window?: string; 'resend-after'?: string }
  const [op, ...extra] = positionals
  if (!op || extra.length) throw new UsageError('ctl bulk takes OP, device ids from --file or standard input')
  const text = v.file !== undefined ? readFileSync(v.file, 'utf8') : readFileSync(0, 'utf8')
  const items = bulkItems(op, text, parseArgsJson(v.args))
  if (items.length === 0) throw new UsageError('ctl bulk: no device ids given')
  const timeoutS = seconds(v.timeout, 'timeout', 60 + Math.ceil(items.length / 100))
  const window = whole(v.window, 'window', DEFAULT_WINDOW)
  const resend = resendAfterMs(v['resend-after'])
  const lifetimeS = seconds(v.lifetime, 'lifetime', 3600)
  const cp = controlPlane(v, true, timeoutS)
  if (!(await connect(cp, v))) return 1
  const bar = new ProgressBar(items.length, `${op}`)
  try {
    const signed = items.map((it) => cp.sign(op, it.args, { lifetimeS }))
    const report = await cp.sendAll(signed, {
      window,
      timeoutMs: timeoutS * 1000,
      ...(resend !== undefined ? { resendAfterMs: resend } : {}),
      onSettled: () => bar.tick(),
    })
    bar.finish()
    const counts = { completed: 0, failed: 0, rejected: 0, duplicate: report.duplicates, unanswered: 0 }
    type Named = { id: string; jti: string; outcome: CommandResult['outcome']; reason?: string; detail?: string }
    const failedDevices: Named[] = []
    const unansweredDevices: Named[] = []
    const failures: string[] = []
    report.results.forEach((r, i) => {
      const id = items[i]!.id
      const detail = r.event?.data.detail
      const named: Named = { id, jti: r.jti, outcome: r.outcome, ...(r.reason !== undefined ? { reason: r.reason } : {}), ...(typeof detail === 'string' ? { detail } : {}) }
      if (r.outcome === 'completed') counts.completed++
      else if (r.outcome === 'failed' || r.outcome === 'rejected') {
        counts[r.outcome]++
        failedDevices.push(named)
        failures.push(`${id}: ${r.event!.type} ${JSON.stringify(r.event!.data)}`)
      } else {
        counts.unanswered++
        unansweredDevices.push(named)
      }
    })
    if (v.json) {
      out(
        JSON.stringify({
          ...counts,
          ...(failures.length ? { failures, failedDevices } : {}),
          ...(unansweredDevices.length ? { unansweredDevices } : {}),
          ...(report.resends ? { resent: report.resends } : {}),
        }),
      )
    } else {
      for (const f of [...failedDevices, ...unansweredDevices]) out(`${f.id}: ${f.outcome}${f.reason !== undefined ? ` (${f.reason}${f.detail !== undefined ? `: ${f.detail}` : ''})` : ''}`)
      out(
        `${counts.completed} completed, ${counts.failed + counts.rejected} failed, ${counts.duplicate} duplicate` +
          `${counts.unanswered ? `, ${counts.unanswered} unanswered` : ''}${report.resends ? `, ${report.resends} re-sent` : ''}`,
      )
    }
    return counts.completed === items.length ? 0 : 1
  } finally {
    await cp.close()
  }
}
