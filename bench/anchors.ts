// The processes a benchmark run measures, each in its own child process so
// that its core and its resident memory are its own: the agent (the real
// `edgewarden start`), the bare-aedes anchor, Mosquitto (as the anchor and
// as the central broker of the uplink), and the load generator. Every
// process started here is registered and killed by `Procs.stopAll()`.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { verify as nodeVerify } from 'node:crypto'
import { connect } from 'node:net'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
export { freePort } from '../simulators/ports.ts'
import type { CpuProfile } from './profile.ts'
import { freePort } from '../simulators/ports.ts'
import { generateKeyPair, signBytes } from '../agent/store/keys.ts'

export const ROOT = fileURLToPath(new URL('..', import.meta.url))
const MOSQUITTO_CANDIDATES = ['/usr/sbin/mosquitto', '/usr/bin/mosquitto', '/usr/local/sbin/mosquitto']
export const MOSQUITTO: string | null = MOSQUITTO_CANDIDATES.find((p) => existsSync(p)) ?? null


/** Resident set size of a process, bytes, from /proc (null where /proc is not there). */
export function rssOf(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : null
  } catch {
    return null
  }
}

/** CPU time a process (or, with `tid`, one of its threads) has used so far (user + system), ms, from /proc (null where /proc is not there). */
export function cpuMsOf(pid: number, tid?: number): number | null {
  try {
    // the fields after the command name (which may hold spaces): utime and stime are the 12th and 13th, in clock ticks (100 a second on Linux)
    const f = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8').split(') ').pop()!.split(' ')
    return (Number(f[11]) + Number(f[12])) * 10
  } catch {
    return null
  }
}

/** CPU a process has used so far, ms: all its threads, its main thread (the event loop) alone, and each thread by its id; null where /proc is not there. */
export function threadCpuMsOf(pid: number): { total: number; main: number; threads: Map<number, number> } | null {
  const total = cpuMsOf(pid)
  const main = cpuMsOf(pid, pid) // the main thread's id is the process id
  if (total === null || main === null) return null
  const threads = new Map<number, number>()
  try {
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      const ms = cpuMsOf(pid, Number(t))
      if (ms !== null) threads.set(Number(t), ms)
    }
  } catch {
    // the process is gone: the totals above still hold
  }
  return { total, main, threads }
}

/**
 * CPU per Ed25519 verify as the agent's crypto workers make it (node:crypto,
 * the public key handed over as a JWK), µs: `n` verifies over 200 keys in
 * this process, after a warm-up. The one piece of a connect's work the
 * agent cannot leave out (PROTOCOL §5: every token checked in full).
 */
export function verifyCostUs(n = 4000): number {
  const keys = Array.from({ length: 200 }, (_, i) => {
    const k = generateKeyPair()
    const data = Buffer.from(`bench verify ${i}`)
    return { x: k.publicKeyB64, data, sig: signBytes(k.privateKey, data) }
  })
  const once = (i: number): boolean => {
    const k = keys[i % keys.length]!
    return nodeVerify(null, k.data, { key: { kty: 'OKP', crv: 'Ed25519', x: k.x }, format: 'jwk' }, k.sig)
  }
  return cpuUsPerCall(n, (i) => {
    if (!once(i)) throw new Error('verify failed')
  })
}

/** CPU per call of `once`, µs: `n` calls in this process after a warm-up of 500. */
function cpuUsPerCall(n: number, once: (i: number) => void): number {
  for (let i = 0; i < 500; i++) once(i)
  const t0 = process.cpuUsage()
  for (let i = 0; i < n; i++) once(i)
  const used = process.cpuUsage(t0)
  return (used.user + used.system) / n
}

/**
 * CPU per Ed25519 signature as the crypto workers make the agent's (one
 * private key, node:crypto), µs: `n` signatures of ~300-byte inputs in
 * this process, after a warm-up. Each retirement's evidence needs three
 * (two events and the wipe envelope), which is what bounds the bulk retire.
 */
export function signCostUs(n = 4000): number {
  const key = generateKeyPair().privateKey
  const inputs = Array.from({ length: 200 }, (_, i) => Buffer.from(`bench sign ${i} `.padEnd(300, 'x')))
  return cpuUsPerCall(n, (i) => {
    if (signBytes(key, inputs[i % inputs.length]!).length !== 64) throw new Error('sign failed')
  })
}

/** CPU each thread but the main one used between two readings, ms, by thread id. */
export function otherThreadsMs(pid: number, before: { threads: Map<number, number> }, after: { threads: Map<number, number> }): Map<number, number> {
  const out = new Map<number, number>()
  for (const [tid, ms] of after.threads) if (tid !== pid) out.set(tid, ms - (before.threads.get(tid) ?? 0))
  return out
}

export interface Child {
  name: string
  proc: ChildProcess
  stderr(): string
  exited: Promise<number | null>
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<void>
}

/** Every child of this run; stopAll() on the way out, whatever happened. */
export class Procs {
  readonly #children = new Set<Child>()

  add(name: string, proc: ChildProcess): Child {
    let err = ''
    proc.stderr?.on('data', (c: Buffer) => {
      err += c.toString()
      if (err.length > 64 * 1024) err = err.slice(-32 * 1024)
    })
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)))
    const child: Child = {
      name,
      proc,
      stderr: () => err,
      exited,
      stop: async (signal = 'SIGTERM', timeoutMs = 10_000) => {
        if (proc.exitCode === null && proc.signalCode === null) {
          proc.kill(signal)
          const t = setTimeout(() => proc.kill('SIGKILL'), timeoutMs)
          await exited
          clearTimeout(t)
        }
        this.#children.delete(child)
      },
    }
    this.#children.add(child)
    return child
  }

  /** Last resort, synchronous (from process.on('exit')): SIGKILL whatever is still running. */
  killAllNow(): void {
    for (const c of this.#children) if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL')
  }

  /** SIGTERM each, SIGKILL after `timeoutMs` (longer when a child writes a CPU profile on its way out). */
  async stopAll(timeoutMs = 5000): Promise<void> {
    await Promise.all([...this.#children].map((c) => c.stop('SIGTERM', timeoutMs)))
  }
}

export interface Broker extends Child {
  port: number
  pid: number
  /** ms from spawn to the ready line */
  readyMs: number
  ready: Record<string, unknown>
  /** process.memoryUsage() after GC and V8's heap spaces, from bench/probe.mjs (brokers started with probe: true) */
  memory(): Promise<NodeJS.MemoryUsage & { statusRss: number | null; spaces: HeapSpaces }>
  /** V8's CPU profiler in the broker (bench/probe.mjs): started, then stopped with the profile of the window */
  profile(what: 'start'): Promise<void>
  profile(what: 'stop'): Promise<CpuProfile>
}

/** V8's heap spaces by name (new_space, old_space, …): bytes reserved and in use */
export type HeapSpaces = Record<string, { size: number; used: number }>

/**
 * The JSON line with `event: "ready"` a child prints on its stdout. Past
 * `timeoutMs`, rejects with what `onTimeout` does and says; if the child
 * exits first, with `onExit`'s error.
 */
export function readyLine(child: Child, timeoutMs: number, onTimeout: () => Error, onExit: (code: number | null) => Error): Promise<Record<string, any>> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), timeoutMs)
    createInterface({ input: child.proc.stdout! }).on('line', (line) => {
      if (!line.startsWith('{')) return
      try {
        const obj = JSON.parse(line) as Record<string, any>
        if (obj.event === 'ready') {
          clearTimeout(timer)
          resolve(obj)
        }
      } catch {}
    })
    void child.exited.then((code) => {
      clearTimeout(timer)
      reject(onExit(code))
    })
  })
}

/** taskset, which confines a process to some cores (util-linux), where installed */
export const TASKSET: string | null = ['/usr/bin/taskset', '/bin/taskset'].find((p) => existsSync(p)) ?? null

const spawnOpts = (opts: { probe?: boolean; env?: NodeJS.ProcessEnv }): SpawnOptions => ({
  cwd: ROOT,
  env: { ...process.env, ...opts.env },
  stdio: ['ignore', 'pipe', 'pipe', ...(opts.probe ? (['ipc'] as const) : [])],
})

/**
 * A node broker (the agent's CLI or bench/bare-aedes.ts) that prints a JSON
 * `ready` line with `mqtt.mqtt` as its port (`mqtt.mqtts` with `listener:
 * 'mqtts'`: the TLS listener is the one measured). With `probe`, it runs
 * with --expose-gc and bench/probe.mjs and answers memory() over IPC.
 */
export async function spawnNodeBroker(
  procs: Procs,
  name: string,
  script: string,
  args: string[],
  opts: { probe?: boolean; nodeFlags?: string[]; timeoutMs?: number; env?: NodeJS.ProcessEnv; listener?: 'mqtt' | 'mqtts'; cpus?: string } = {},
): Promise<Broker> {
  const flags = [...(opts.nodeFlags ?? [])]
  if (opts.probe) flags.push('--expose-gc', '--import', join(ROOT, 'bench', 'probe.mjs'))
  if (script.endsWith('.ts')) flags.push('--import', 'tsx')
  const started = performance.now()
  // `cpus`: the process confined to those cores (taskset execs node, so the pid is node's)
  const argv = [...flags, script, ...args]
  const proc = opts.cpus === undefined ? spawn(process.execPath, argv, spawnOpts(opts)) : spawn(TASKSET!, ['-c', opts.cpus, process.execPath, ...argv], spawnOpts(opts))
  const child = procs.add(name, proc)
  const ready = await readyLine(
    child,
    opts.timeoutMs ?? 60_000,
    () => {
      proc.kill('SIGKILL')
      return new Error(`${name} did not log ready within ${opts.timeoutMs ?? 60_000} ms; stderr: ${child.stderr().slice(-2000)}`)
    },
    (code) => new Error(`${name} exited (${code}) before ready; stderr: ${child.stderr().slice(-2000)}`),
  )
  const readyMs = performance.now() - started
  const listener = opts.listener ?? 'mqtt'
  const port = (ready.mqtt as { mqtt?: number; mqtts?: number } | undefined)?.[listener]
  if (typeof port !== 'number') throw new Error(`${name}: no ${listener} port in its ready line`)
  return {
    ...child,
    port,
    pid: proc.pid!,
    readyMs,
    ready,
    profile: ((what: 'start' | 'stop') =>
      new Promise<CpuProfile | undefined>((resolve, reject) => {
        if (!opts.probe) return reject(new TypeError(`${name} runs without the probe`))
        const timer = setTimeout(() => reject(new Error(`${name}: no answer to profile-${what}`)), 30_000)
        const on = (m: { profiling?: boolean; profile?: CpuProfile; profileError?: string }): void => {
          if (m.profiling === undefined && m.profile === undefined && m.profileError === undefined) return
          clearTimeout(timer)
          proc.off('message', on)
          if (m.profileError !== undefined) reject(new Error(`${name}: ${m.profileError}`))
          else resolve(m.profile)
        }
        proc.on('message', on)
        proc.send(`profile-${what}`)
      })) as Broker['profile'],
    memory: () =>
      new Promise((resolve, reject) => {
        if (!opts.probe) return reject(new TypeError(`${name} runs without the memory probe`))
        const timer = setTimeout(() => reject(new Error(`${name}: no memory answer`)), 10_000)
        const on = (m: { memory?: NodeJS.MemoryUsage; spaces?: HeapSpaces }): void => {
          if (!m.memory) return
          clearTimeout(timer)
          proc.off('message', on)
          resolve({ ...m.memory, statusRss: rssOf(proc.pid!), spaces: m.spaces ?? {} })
        }
        proc.on('message', on)
        proc.send('memory')
      }),
  }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port }, () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

/** Mosquitto on a free loopback port with its own config in `dir`, no persistence, anonymous. */
export async function startMosquitto(procs: Procs, name: string, dir: string): Promise<Child & { port: number; pid: number; url: string }> {
  if (!MOSQUITTO) throw new Error('mosquitto is not installed')
  mkdirSync(dir, { recursive: true })
  const port = await freePort()
  const conf = join(dir, 'mosquitto.conf')
  writeFileSync(
    conf,
    [`listener ${port} 127.0.0.1`, 'allow_anonymous true', 'persistence false', 'max_queued_messages 0', 'max_inflight_messages 0', 'max_connections -1', 'set_tcp_nodelay true', 'log_dest stderr', 'log_type error', 'log_type warning', 'log_type notice', ''].join('\n'),
  )
  const proc = spawn(MOSQUITTO, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] })
  const child = procs.add(name, proc)
  // Ready once its listener accepts (its "running" line is information-level,
  // and logging every connection at that level would slow the anchor).
  const deadline = performance.now() + 10_000
  while (!(await canConnect(port))) {
    if (proc.exitCode !== null) throw new Error(`${name} exited (${proc.exitCode}): ${child.stderr()}`)
    if (performance.now() > deadline) throw new Error(`${name} did not listen within 10 s: ${child.stderr()}`)
    await new Promise((r) => setTimeout(r, 20))
  }
  return { ...child, port, pid: proc.pid!, url: `mqtt://127.0.0.1:${port}` }
}
