// The control plane in this process for tests: a CP key, a data dir, fast
// timings (re-sends after 1 s, rollbacks confirmed after 0.4 s, gaps after
// 0.5 s), PGlite or a PostgreSQL database, the first admin token read back,
// and a small JSON client of its API; or the real command as a child
// process (spawnCp), to be killed like a production instance.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { generateKeyPair, writeKeyFile } from '../../../agent/store/keys.ts'
import { loadConfig, type CpConfig } from '../../../control-plane/runtime/config.ts'
import { createLogger } from '../../../control-plane/runtime/log.ts'
import { startControlPlane, type RunningControlPlane } from '../../../control-plane/service.ts'
import { spawnReady, tempDir, type SpawnedAgent } from '../../helpers/agent.ts'

export const KID = 'cp-test'

export interface CpKey {
  keyFile: string
  publicKey: string
}

export function cpKey(t: { after(fn: () => void): void }): CpKey {
  const dir = tempDir(t)
  const k = generateKeyPair()
  const keyFile = join(dir, 'cp.key')
  writeKeyFile(keyFile, k)
  return { keyFile, publicKey: k.publicKeyB64 }
}

export type Api = <T = any>(method: string, path: string, body?: unknown, o?: { token?: string | null; headers?: Record<string, string> }) => Promise<{ status: number; json: T; headers: Headers; text: string }>

export interface TestCp {
  cp: RunningControlPlane
  base: string
  admin: string
  api: Api
  key: CpKey
  config: CpConfig
  stop(): Promise<void>
}

export const FAST: Record<string, string> = {
  tick: '50ms',
  'resend-after': '1s',
  'resend-max': '2s',
  'rollback-confirm': '0.4s',
  'gap-grace': '0.5s',
  'log-level': 'silent',
}

export function apiClient(base: string, token: string): Api {
  return async (method, path, body, o = {}) => {
    const tok = o.token === undefined ? token : o.token
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { ...(tok ? { authorization: `Bearer ${tok}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...o.headers },
      ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
    })
    const text = await res.text()
    let json: any = null
    try {
      json = text ? JSON.parse(text) : null
    } catch {}
    return { status: res.status, json, headers: res.headers, text }
  }
}

export async function startTestCp(
  t: { after(fn: () => Promise<void> | void): void },
  o: { broker: string; database?: string; dataDir?: string; key?: CpKey; flags?: Record<string, string>; logSink?: (line: string) => void },
): Promise<TestCp> {
  const key = o.key ?? cpKey(t)
  const dataDir = o.dataDir ?? tempDir(t)
  const config = loadConfig({
    flags: { 'data-dir': dataDir, broker: o.broker, key: key.keyFile, kid: KID, 'http-port': '0', ...(o.database ? { database: o.database } : {}), ...FAST, ...o.flags },
    env: {},
  })
  const log = o.logSink ? createLogger('debug', { write: (l: string) => void o.logSink!(l) }) : createLogger('silent')
  const cp = await startControlPlane(config, { log })
  let stopped = false
  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    await cp.stop()
  }
  t.after(stop)
  const admin = cp.adminTokenFile ? readFileSync(cp.adminTokenFile, 'utf8').trim() : readFileSync(join(dataDir, 'admin.token'), 'utf8').trim()
  const base = `http://127.0.0.1:${cp.http.port}`
  return { cp, base, admin, api: apiClient(base, admin), key, config, stop }
}

export interface SpawnedCp extends SpawnedAgent {
  base: string
  instanceId: string
}

/**
 * `edgewarden control-plane` as a real child process (bin/edgewarden.js),
 * with the fast timings of FAST; resolves once it logs its ready line.
 * Killed with SIGKILL when the test ends, if still running.
 */
export async function spawnCp(
  t: { after(fn: () => Promise<void> | void): void },
  o: { broker: string; key: CpKey; database?: string; dataDir?: string; instanceId: string; flags?: Record<string, string>; timeoutMs?: number },
): Promise<SpawnedCp> {
  const flags: Record<string, string> = { 'data-dir': o.dataDir ?? tempDir(t), broker: o.broker, key: o.key.keyFile, kid: KID, 'http-port': '0', 'instance-id': o.instanceId, ...(o.database ? { database: o.database } : {}), ...FAST, 'log-level': 'info', ...o.flags }
  const args = Object.entries(flags).flatMap(([k, v]) => [`--${k}`, v])
  const p = await spawnReady(['control-plane', ...args], { timeoutMs: o.timeoutMs ?? 30_000, what: `control plane ${o.instanceId}`, t })
  const http = p.ready.http as { port: number }
  return { ...p, base: `http://127.0.0.1:${http.port}`, instanceId: o.instanceId }
}
