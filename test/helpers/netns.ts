// Networks the tests build for themselves: network namespaces and veth pairs
// with addresses of the test's own choosing (10.213.x.y, fd00:ed9e::/48),
// every piece removed in t.after, also on failure. Nothing here touches the
// host's own tables or interfaces.
import { spawn, spawnSync } from 'node:child_process'

/**
 * Why a root-only test cannot run here, or false. Never skipped in CI: there
 * it runs (and fails loudly if root or the tools are missing).
 */
export function rootOnlySkip(): string | false {
  if (process.env.CI) return false
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, nftables); skipped because not root and CI is unset'
  for (const tool of ['nft', 'ip']) {
    if (spawnSync(tool, ['-V'], { stdio: 'ignore' }).error) return `needs ${tool} (nftables, iproute2); skipped because it is missing and CI is unset`
  }
  return false
}

export interface ShResult {
  code: number | null
  stdout: string
  stderr: string
}

export function sh(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<ShResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 15_000)
    p.stdout!.on('data', (c: Buffer) => (stdout += c.toString()))
    p.stderr!.on('data', (c: Buffer) => (stderr += c.toString()))
    p.on('error', (err) => (clearTimeout(timer), reject(err)))
    p.on('close', (code) => (clearTimeout(timer), resolve({ code, stdout, stderr })))
    if (p.stdin) {
      p.stdin.on('error', () => {}) // a child that exits without reading its input
      p.stdin.end(opts.input)
    }
  })
}

/** Run and throw with stderr unless it exits 0. */
export async function must(cmd: string, ...args: string[]): Promise<string> {
  const r = await sh(cmd, args)
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`)
  return r.stdout
}

type After = { after(fn: () => Promise<void> | void): void }

/** A namespace of the test's own, deleted (with every veth end in it) at the end. */
export async function addNamespace(t: After, name: string): Promise<string> {
  await sh('ip', ['netns', 'del', name]) // left over from a killed run of this same test
  await must('ip', 'netns', 'add', name)
  t.after(async () => void (await sh('ip', ['netns', 'del', name])))
  await must('ip', '-n', name, 'link', 'set', 'lo', 'up')
  return name
}

export interface Veth {
  ns: string
  hostIf: string
  devIf: string
  /** the device end's MAC */
  devMac: string
}

/**
 * A veth pair: one end in the root namespace with `hostAddr`, the other in
 * `ns` with `devAddr` (CIDR). IPv6 addresses skip DAD so they work at once.
 * Deleting the namespace deletes the pair; the host end is deleted too in case.
 */
export async function vethInto(t: After, o: { ns: string; hostIf: string; devIf: string; hostAddr: string; devAddr: string }): Promise<Veth> {
  await sh('ip', ['link', 'del', o.hostIf])
  await must('ip', 'link', 'add', o.hostIf, 'type', 'veth', 'peer', 'name', o.devIf, 'netns', o.ns)
  t.after(async () => void (await sh('ip', ['link', 'del', o.hostIf])))
  const v6 = o.hostAddr.includes(':')
  await must('ip', 'addr', 'add', o.hostAddr, 'dev', o.hostIf, ...(v6 ? ['nodad'] : []))
  await must('ip', '-n', o.ns, 'addr', 'add', o.devAddr, 'dev', o.devIf, ...(v6 ? ['nodad'] : []))
  await must('ip', 'link', 'set', o.hostIf, 'up')
  await must('ip', '-n', o.ns, 'link', 'set', o.devIf, 'up')
  const link = JSON.parse(await must('ip', '-n', o.ns, '-j', 'link', 'show', o.devIf)) as { address: string }[]
  return { ns: o.ns, hostIf: o.hostIf, devIf: o.devIf, devMac: link[0]!.address }
}

// One short-lived node process in the namespace tries each port once, with a
// 1 s connect timeout, all at the same time; prints which ones connected.
const PROBE = `
const net = require('node:net')
const [host, ...ports] = process.argv.slice(1)
Promise.all(ports.map((p) => new Promise((resolve) => {
  const s = net.connect({ host, port: Number(p), timeout: 1000 })
  const done = (ok) => { s.destroy(); resolve(ok) }
  s.once('connect', () => done(true)).once('timeout', () => done(false)).once('error', () => done(false))
}))).then((r) => process.stdout.write(JSON.stringify(r)))
`

/** From inside `ns`: which of `ports` on `host` accept a TCP connection (1 s timeout each, one attempt). */
export async function reachable(ns: string, host: string, ports: number[]): Promise<boolean[]> {
  const out = await must('ip', 'netns', 'exec', ns, process.execPath, '-e', PROBE, host, ...ports.map(String))
  return JSON.parse(out) as boolean[]
}
