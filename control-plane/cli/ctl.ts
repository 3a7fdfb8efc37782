// `edgewarden ctl send|bulk --control-plane URL`: the same verbs as the
// one-shot ctl, through the control-plane service. The service signs,
// stores, sends through its window and re-sends, and knows where each device
// lives: no broker, key, site or gateway here (site and gateway only to
// enroll a new device or ask a gateway's inventory).
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { FINAL_STATES } from '../commands/command-store.ts'
import { ApiClient, ApiError } from './api-client.ts'
import { bindValues, out } from './args.ts'

class CtlUsage extends Error {}

const FINAL = new Set<string>(FINAL_STATES)

const OPTIONS = {
  'control-plane': { type: 'string' },
  'token-file': { type: 'string' },
  site: { type: 'string' },
  gateway: { type: 'string' },
  wait: { type: 'boolean' },
  json: { type: 'boolean' },
  timeout: { type: 'string' },
  file: { type: 'string' },
  args: { type: 'string' },
  'idempotency-key': { type: 'string' },
} as const

function jsonObject(text: string | undefined, what: string): Record<string, unknown> {
  if (text === undefined) return {}
  try {
    const v = JSON.parse(text) as unknown
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>
  } catch {}
  throw new CtlUsage(`${what} must be a JSON object, got ${text}`)
}

function tokenOf(file: string | undefined): string {
  if (file !== undefined) {
    try {
      return readFileSync(file, 'utf8').trim()
    } catch (err) {
      throw new CtlUsage(`--token-file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
  }
  const env = process.env.EDGEWARDEN_CP_TOKEN
  if (env) return env.trim()
  throw new CtlUsage('--control-plane needs a token: --token-file FILE or EDGEWARDEN_CP_TOKEN')
}

/** One request body from OP and its args, as `ctl send` takes them. */
export function bodyOf(op: string, args: Record<string, unknown>, where: { site?: string; gateway?: string }): Record<string, unknown> {
  const loc = where.site !== undefined ? { site: where.site, gateway: where.gateway } : {}
  if (op === 'device.enroll') return { op, ...loc, ...(Array.isArray(args.devices) ? { devices: args.devices } : { device: args.device }) }
  if (op === 'inventory.report') return { op, ...loc }
  const { deviceId, deviceIds, ...rest } = args
  return { op, ...loc, ...(deviceIds !== undefined ? { deviceIds } : { deviceId }), ...(Object.keys(rest).length ? { args: rest } : {}) }
}

async function waitAll(api: ApiClient, jtis: string[], timeoutMs: number): Promise<Map<string, Record<string, unknown>>> {
  const done = new Map<string, Record<string, unknown>>()
  const t0 = Date.now()
  let pending = [...jtis]
  while (pending.length && Date.now() - t0 < timeoutMs) {
    for (const jti of pending.slice(0, 200)) {
      const c = await api.request('GET', `/v1/commands/${encodeURIComponent(jti)}`)
      if (FINAL.has(String(c.state))) done.set(jti, c)
    }
    pending = pending.filter((j) => !done.has(j))
    if (pending.length) await new Promise((r) => setTimeout(r, 250))
  }
  return done
}

export async function runCtlViaService(argv: string[]): Promise<number> {
  try {
    const [sub, ...rest] = argv
    if (sub !== 'send' && sub !== 'bulk') throw new CtlUsage(`ctl ${sub ?? ''} --control-plane: only send and bulk go through the service (watch the fleet at its page or GET /v1/events)`.trim())
    let parsed
    try {
      parsed = parseArgs({ args: bindValues(rest, OPTIONS), options: OPTIONS, strict: true, allowPositionals: true })
    } catch (err) {
      throw new CtlUsage((err as Error).message)
    }
    const v = parsed.values
    const url = v['control-plane']
    if (!url || !/^https?:\/\//.test(url)) throw new CtlUsage('--control-plane must be the service\'s URL, http(s)://host:port')
    if ((v.site === undefined) !== (v.gateway === undefined)) throw new CtlUsage('--site and --gateway go together')
    const timeoutS = v.timeout === undefined ? 60 : Number(v.timeout)
    if (!(timeoutS > 0)) throw new CtlUsage('--timeout must be a number of seconds above 0')
    const api = new ApiClient(url, tokenOf(v['token-file']))
    const where = { ...(v.site !== undefined ? { site: v.site } : {}), ...(v.gateway !== undefined ? { gateway: v.gateway } : {}) }
    const [op, argsJson, ...extra] = parsed.positionals
    if (!op) throw new CtlUsage(`ctl ${sub} needs OP`)
    let body: Record<string, unknown>
    if (sub === 'send') {
      if (extra.length) throw new CtlUsage('ctl send takes OP [ARGS-JSON]')
      body = bodyOf(op, jsonObject(argsJson, 'ARGS'), where)
    } else {
      if (argsJson !== undefined) throw new CtlUsage('ctl bulk takes OP, the devices from --file or standard input, their args in --args')
      const text = v.file !== undefined ? readFileSync(v.file, 'utf8') : readFileSync(0, 'utf8')
      const template = jsonObject(v.args, '--args')
      if (op === 'device.enroll') {
        const devices = text.split('\n').filter((l) => l.trim()).map((l, i) => {
          try {
            return JSON.parse(l) as unknown
          } catch {
            throw new CtlUsage(`ctl bulk device.enroll: line ${i + 1} is not a JSON device record`)
          }
        })
        body = bodyOf(op, { devices }, where)
      } else {
        const ids = [...new Set(text.split(/[\s,]+/).filter(Boolean))]
        if (!ids.length) throw new CtlUsage('ctl bulk: no device ids given')
        body = bodyOf(op, { ...template, deviceIds: ids }, where)
      }
    }
    const created = await api.createCommands(body, v['idempotency-key'])
    const jtis = created.commands.map((c) => String(c.jti))
    if (!v.wait) {
      if (v.json) out(JSON.stringify({ commands: created.commands.map((c) => ({ jti: c.jti, deviceId: c.deviceId, site: c.site, gateway: c.gateway, state: c.state })) }))
      else for (const c of created.commands) out(`stored ${c.op} ${c.jti}${c.deviceId ? ` for ${c.deviceId}` : ''} at ${c.site}/${c.gateway}: the service sends it and re-sends it until the gateway answers`)
      return 0
    }
    const done = await waitAll(api, jtis, timeoutS * 1000)
    const counts: Record<string, number> = {}
    for (const j of jtis) {
      const s = String(done.get(j)?.state ?? 'waiting')
      counts[s] = (counts[s] ?? 0) + 1
    }
    if (sub === 'send') {
      const c = done.get(jtis[0]!)
      if (v.json) out(JSON.stringify(c ?? { jti: jtis[0], state: 'waiting' }))
      else if (!c) process.stderr.write(`edgewarden: ${jtis[0]}: no outcome within ${timeoutS} s (the service keeps sending it; GET /v1/commands/${jtis[0]})\n`)
      else out(`${c.state}: ${JSON.stringify(c.evidence ?? (c.reason !== null ? { reason: c.reason } : {}))}`)
      return c?.state === 'completed' ? 0 : 1
    }
    if (v.json) out(JSON.stringify({ total: jtis.length, ...counts }))
    else {
      for (const j of jtis) {
        const c = done.get(j)
        if (c?.state !== 'completed') out(`${String(created.commands.find((x) => x.jti === j)?.deviceId ?? j)}: ${c ? `${c.state}${c.reason ? ` (${c.reason})` : ''}` : 'no outcome yet'}`)
      }
      out(Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(', '))
    }
    return (counts.completed ?? 0) === jtis.length ? 0 : 1
  } catch (err) {
    if (err instanceof CtlUsage) {
      process.stderr.write(`edgewarden: ${err.message}\n(see edgewarden ctl --help)\n`)
      return 2
    }
    if (err instanceof ApiError) {
      process.stderr.write(`edgewarden: ${err.status ? `${err.code}: ` : ''}${err.message}\n`)
      return 1
    }
    throw err
  }
}
