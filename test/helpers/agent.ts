// Test harness: temporary data dirs, the agent in-process or as a real
// child process (bin/edgewarden.js), ports chosen free at run time.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { Clock } from '../../agent/runtime/clock.ts'
import { loadConfig, type AgentConfig } from '../../agent/runtime/config.ts'
import { createLogger } from '../../agent/observe/logger.ts'
import { startAgent, type RunningAgent } from '../../agent/compose.ts'
export { freePort } from '../../simulators/ports.ts'
import { freePort } from '../../simulators/ports.ts'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))
export const BIN = join(ROOT, 'bin', 'edgewarden.js')
// `npm test` builds dist/ first and sets EDGEWARDEN_TEST_COMPILED=1: the CLI
// the tests spawn is then the compiled JavaScript that production runs. A
// test file run on its own runs the sources (through tsx), which a build
// may not have caught up with.
if (process.env.EDGEWARDEN_TEST_COMPILED !== '1') process.env.EDGEWARDEN_FROM_SOURCE ??= '1'

/** Retried: a file written while it is removed (ENOTEMPTY) is not a failure of the test. */
const removeDir = (dir: string): void => rmSync(dir, { recursive: true, force: true, maxRetries: 5 })

export function tempDir(t?: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'edgewarden-test-'))
  t?.after(() => removeDir(dir))
  return dir
}


export function testConfig(dataDir: string, flags: Record<string, unknown> = {}): AgentConfig {
  return loadConfig({
    flags: { dataDir, mqttHost: '127.0.0.1', mqttPort: '0', site: 'site1', gateway: 'gw1', logLevel: 'silent', ...flags },
    env: {},
  })
}

/** The agent in this process: fast, and the clock can be injected. */
export async function startTestAgent(
  t: { after(fn: () => Promise<void> | void): void },
  opts: { dataDir?: string; flags?: Record<string, unknown>; clock?: Clock; logLevel?: string; logSink?: (line: string) => void } = {},
): Promise<RunningAgent & { config: AgentConfig; mqttPort: number }> {
  // A data dir of its own is removed once the agent has stopped (after hooks run in the order they were
  // added: removed first, it raced the agent's last writes, e.g. node-opcua's PKI, and the stop never ran).
  const ownDir = opts.dataDir === undefined ? tempDir() : null
  const dataDir = opts.dataDir ?? ownDir!
  const config = testConfig(dataDir, opts.flags)
  const sink = opts.logSink
  const log = sink ? createLogger(opts.logLevel ?? 'info', { write: (line: string) => void sink(line) }) : createLogger(opts.logLevel ?? 'silent')
  const agent = await startAgent(config, { log, ...(opts.clock ? { clock: opts.clock } : {}) }).catch((err: unknown) => {
    if (ownDir) removeDir(ownDir)
    throw err
  })
  let stopped = false
  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    await agent.stop()
  }
  t.after(async () => {
    await stop()
    if (ownDir) removeDir(ownDir)
  })
  return { ...agent, stop, config, mqttPort: agent.broker.describe().mqtt as number }
}

/**
 * Hold an agent's command chain: its inventory.report waits until the
 * returned release() is called, so what is accepted after one is stored, not
 * run. Release before the agent stops (its stop waits for the chain).
 */
export function holdChain(agent: Pick<RunningAgent, 'commands'>): () => void {
  let release = (): void => {}
  const held = new Promise<void>((resolve) => (release = resolve))
  agent.commands.register('inventory.report', async () => (await held, {}))
  return () => release()
}

export interface SpawnedAgent {
  proc: ChildProcess
  ready: Record<string, unknown>
  /** every JSON log line so far */
  lines: Record<string, unknown>[]
  stderr: () => string
  /** SIGTERM (or `signal`) and wait for exit; resolves to the exit code */
  stop(signal?: NodeJS.Signals): Promise<number | null>
  exited: Promise<number | null>
}

/** The real command as a child process; resolves once it logs `ready`. */
export function spawnAgent(args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): Promise<SpawnedAgent> {
  return spawnReady(['start', ...args], { ...opts, timeoutMs: opts.timeoutMs ?? 20000, what: 'agent' })
}

/**
 * `bin/edgewarden.js ARGS` as a child process; resolves once it logs a JSON
 * line with event "ready" (`what` names it when it does not). With `t`, it
 * is killed with SIGKILL when the test ends, if still running.
 */
export async function spawnReady(
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs: number; what: string; t?: { after(fn: () => Promise<void> | void): void } },
): Promise<SpawnedAgent> {
  const proc = spawn(process.execPath, [BIN, ...args], {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const lines: Record<string, unknown>[] = []
  let err = ''
  proc.stderr!.on('data', (c: Buffer) => (err += c.toString()))
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)))
  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal)
    return exited
  }
  opts.t?.after(() => stop('SIGKILL').then(() => undefined))
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL')
      reject(new Error(`${opts.what} did not log ready within ${opts.timeoutMs} ms; stderr: ${err}`))
    }, opts.timeoutMs)
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      let obj: Record<string, unknown>
      try {
        obj = JSON.parse(line) as Record<string, unknown>
      } catch {
        return
      }
      lines.push(obj)
      if (obj.event === 'ready') {
        clearTimeout(timer)
        resolve(obj)
      }
    })
    void exited.then((code) => {
      clearTimeout(timer)
      reject(new Error(`${opts.what} exited (${code}) before ready; stderr: ${err}`))
    })
  })
  return { proc, ready, lines, stderr: () => err, exited, stop }
}

/** Run the CLI to completion: exit code, stdout, stderr. With timeoutMs, a process still running then is killed (code null, timedOut). */
export function runCli(
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; input?: string; timeoutMs?: number } = {},
): Promise<{ code: number | null; stdout: string; stderr: string; timedOut: boolean }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd ?? ROOT, env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    let timedOut = false
    const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => ((timedOut = true), proc.kill('SIGKILL')), opts.timeoutMs)
    proc.stdout.on('data', (c: Buffer) => (stdout += c.toString()))
    proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
    proc.on('error', reject)
    proc.on('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr, timedOut })
    })
    proc.stdin.end(opts.input ?? '')
  })
}
