// `edgewarden ctl`: the control-plane side, for operators and tests. Signs
// commands with a CP key, publishes them to the central broker, follows the
// gateway's events (verifying signatures, flagging seq gaps).
import { readFileSync } from 'node:fs'
import { ControlPlane, TERMINAL, type GatewayEvent } from '../../simulators/control-plane.ts'
import { palette } from './colour.ts'
import { out } from './common.ts'
import { runKeygen } from './identity.ts'
import { parseVerbArgs } from './main.ts'
import { ProgressBar, waiting } from './progress.ts'
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

function controlPlane(v: LinkValues, withKey: boolean): ControlPlane {
  need(v, 'broker', 'site', 'gateway', ...(withKey ? (['key', 'kid'] as const) : []))
  return new ControlPlane({
    broker: v.broker!,
    site: v.site!,
    gateway: v.gateway!,
    ...(withKey ? { key: v.key!, kid: v.kid! } : {}),
    ...(v.iss !== undefined ? { iss: v.iss } : {}),
    ...(v['gateway-key'] !== undefined ? { gatewayKey: v['gateway-key'] } : {}),
    ...(v.username !== undefined ? { username: v.username } : {}),
    ...(v.password !== undefined ? { password: v.password ?? process.env.EDGEWARDEN_CTL_PASSWORD } : {}),
    ...(v['client-id'] !== undefined ? { clientId: v['client-id'] } : {}),
  })
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
  throw new UsageError(sub ? `unknown ctl verb "${sub}"` : 'ctl needs a verb: keygen, send, watch, bulk')
}

async function send(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, { ...LINK, wait: { type: 'boolean' } })
  const v = values as LinkValues & { wait?: boolean }
  const [op, argsJson, ...extra] = positionals
  if (!op || extra.length) throw new UsageError('ctl send takes OP [ARGS-JSON]')
  const cp = controlPlane(v, true)
  const timeoutS = seconds(v.timeout, 'timeout', 30)
  await cp.connect()
  try {
    const signed = cp.sign(op, parseArgsJson(argsJson), { lifetimeS: seconds(v.lifetime, 'lifetime', 3600) })
    if (!v.wait) {
      await cp.publishRaw(signed.jws)
      out(v.json ? JSON.stringify({ jti: signed.jti }) : `sent ${op} ${signed.jti}`)
      return 0
    }
    // Print the command's events as they come, until its outcome (a retirement may wait for its device).
    const wait = waiting(`waiting for the outcome of ${op} ${signed.jti}`)
    const off = cp.onEvent((e) => {
      if (e.data.jti !== signed.jti || v.json) return
      wait.clear()
      out(describe(e))
    })
    const done = cp.waitFor((e) => TERMINAL.has(e.type) && e.data.jti === signed.jti, timeoutS * 1000)
    await cp.publishRaw(signed.jws)
    let final: GatewayEvent
    try {
      final = await done
    } catch {
      process.stderr.write(`edgewarden: no outcome for ${signed.jti} within ${timeoutS} s (the command stays queued on the broker for the gateway)\n`)
      return 1
    } finally {
      off()
      wait.stop()
    }
    if (v.json) out(JSON.stringify({ jti: signed.jti, type: final.type, data: final.data, seq: final.seq, verified: final.verified }))
    else out(`${final.type === 'cmd.completed' ? 'completed' : final.type.replace('cmd.', '')}: ${JSON.stringify(final.data)}`)
    if (final.verified === false) return 1
    return final.type === 'cmd.completed' || (final.type === 'cmd.duplicate' && final.data.state === 'completed') ? 0 : 1
  } finally {
    await cp.close()
  }
}

async function watch(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, { ...LINK, count: { type: 'string' } })
  const v = values as LinkValues & { count?: string }
  if (positionals.length) throw new UsageError('ctl watch takes no arguments')
  if (v['gateway-key'] === undefined) process.stderr.write('edgewarden: no --gateway-key: event signatures are NOT verified\n')
  const cp = controlPlane(v, false)
  const limit = v.count === undefined ? Infinity : seconds(v.count, 'count', 1)
  let seen = 0
  let gapsReported = 0
  let bad = false
  await cp.connect()
  process.stderr.write(`watching ${cp.topics.evt}\n`)
  await new Promise<void>((resolve) => {
    const stop = (): void => resolve()
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
    cp.onEvent((e) => {
      if (seen >= limit) return // --count reached: the rest arrive while closing
      for (const g of cp.gaps.slice(gapsReported)) out(v.json ? JSON.stringify({ gap: g }) : palette().red(`GAP: events ${g.from}..${g.to} never arrived`))
      gapsReported = cp.gaps.length
      if (e.verified === false) bad = true
      out(v.json ? JSON.stringify({ seq: e.seq, type: e.type, data: e.data, verified: e.verified }) : describe(e))
      if (++seen >= limit) resolve()
    })
  })
  await cp.close()
  return bad || cp.gaps.length ? 1 : 0
}

async function bulk(args: string[]): Promise<number> {
  const { values, positionals } = parseVerbArgs(args, { ...LINK, file: { type: 'string' }, args: { type: 'string' } })
  const v = values as LinkValues & { file?: string; args?: string }
  const [op, ...extra] = positionals
  if (!op || extra.length) throw new UsageError('ctl bulk takes OP, device ids from --file or standard input')
  const text = v.file !== undefined ? readFileSync(v.file, 'utf8') : readFileSync(0, 'utf8')
  const ids = [...new Set(text.split(/[\s,]+/).filter(Boolean))]
  if (ids.length === 0) throw new UsageError('ctl bulk: no device ids given')
  const template = parseArgsJson(v.args)
  const cp = controlPlane(v, true)
  const timeoutS = seconds(v.timeout, 'timeout', 60 + Math.ceil(ids.length / 100))
  await cp.connect()
  const pending = new Map<string, string>()
  const results = { completed: 0, failed: 0, rejected: 0, duplicate: 0 }
  const failures: string[] = []
  const bar = new ProgressBar(ids.length, `${op}`)
  try {
    const allDone = new Promise<void>((resolve) => {
      cp.onEvent((e) => {
        const jti = e.data.jti as string | undefined
        if (!jti || !TERMINAL.has(e.type) || !pending.has(jti)) return
        const id = pending.get(jti)!
        pending.delete(jti)
        const kind = e.type.replace('cmd.', '') as keyof typeof results
        results[kind]++
        if (kind !== 'completed') failures.push(`${id}: ${e.type} ${JSON.stringify(e.data)}`)
        bar.tick()
        if (pending.size === 0 && bar.done) resolve()
      })
    })
    for (const id of ids) {
      const signed = cp.sign(op, { ...template, deviceId: id }, { lifetimeS: seconds(v.lifetime, 'lifetime', 3600) })
      pending.set(signed.jti, id)
      await cp.publishRaw(signed.jws)
    }
    const timer = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), timeoutS * 1000).unref())
    const r = await Promise.race([allDone, timer])
    bar.finish()
    if (!v.json) for (const f of failures) out(f)
    out(v.json ? JSON.stringify({ ...results, unanswered: pending.size, ...(failures.length ? { failures } : {}) }) : `${results.completed} completed, ${results.failed + results.rejected} failed, ${results.duplicate} duplicate${pending.size ? `, ${pending.size} unanswered` : ''}`)
    return r === 'timeout' || failures.length ? 1 : 0
  } finally {
    await cp.close()
  }
}
