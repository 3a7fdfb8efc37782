// deploy/install.sh installs what deploy/stage.sh builds: the files `npm pack`
// ships (package.json "files") and the runtime dependencies, never what else
// lies in the checkout. Run here as install.sh runs it, without root or
// systemd, on a copy of the checkout holding the strays the README's tour
// leaves (a control-plane key, a device key, an audit export, a data dir).
import assert from 'node:assert/strict'
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { createInterface } from 'node:readline'
import { test } from 'node:test'
import { ROOT, tempDir } from '../helpers/agent.ts'

/** every file under dir, relative to it, node_modules left out */
function walk(dir: string, base = dir): string[] {
  const out: string[] = []
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) {
      if (e.name !== 'node_modules') out.push(`${relative(base, p)}/`, ...walk(p, base))
    } else out.push(relative(base, p))
  }
  return out
}

/** The checkout as git sees it (tracked and new files, nothing ignored), copied. */
function copyCheckout(to: string): string[] {
  const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT, encoding: 'utf8' })
    .split('\0')
    .filter((f) => f !== '' && existsSync(join(ROOT, f)))
  for (const f of files) {
    mkdirSync(dirname(join(to, f)), { recursive: true })
    cpSync(join(ROOT, f), join(to, f))
  }
  return files
}

/** `edgewarden start` of the copy at bin on free ports, until it says ready; stop() sends SIGTERM and gives the exit code. */
async function startUntilReady(bin: string, dataDir: string, cwd: string, env: NodeJS.ProcessEnv, t: { after(fn: () => void): void }): Promise<{ stop(): Promise<number | null>; stderr(): string }> {
  const proc = spawn(process.execPath, [bin, 'start', '--data-dir', dataDir, '--mqtt-host', '127.0.0.1', '--mqtt-port', '0'], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise<number | null>((resolve) => proc.once('exit', resolve))
  t.after(() => void proc.kill('SIGKILL'))
  let stderr = ''
  proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the agent was not ready within 30 s: ${stderr}`)), 30_000)
    createInterface({ input: proc.stdout }).on('line', (l) => {
      if (l.includes('"event":"ready"')) {
        clearTimeout(timer)
        resolve()
      }
    })
    void exited.then((code) => reject(new Error(`the agent exited (${code}): ${stderr}`)))
  })
  return {
    stop: async () => {
      proc.kill('SIGTERM')
      return exited
    },
    stderr: () => stderr,
  }
}

/** the source folders whose compiled JavaScript the package ships under dist/ */
const SOURCES = ['wire/', 'agent/', 'protocols/', 'firmware-hooks/', 'simulators/', 'control-plane/']

test('deploy/stage.sh: what npm pack ships and its runtime dependencies, no key, data dir or export from the checkout', { timeout: 300_000 }, async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'checkout')
  const files = copyCheckout(src)
  // a built checkout, as npm install leaves it (npm test built dist/ before the tests)
  cpSync(join(ROOT, 'dist'), join(src, 'dist'), { recursive: true })
  // the README's tour, run in the checkout
  const strays = ['cp.key', 'pump-7.key', 'audit.jsonl', 'edgewarden-data/gateway.key', 'edgewarden-data/db/CURRENT', 'edgewarden-data/admin.sock.txt']
  // and what a developer's runs leave inside the source folders
  const nested = ['agent/stray.key', 'simulators/.opcua-scratch/own/private/private_key.pem', 'protocols/opcua/.opcua-scratch/x.ts', 'agent/edgewarden-data/db/LOG']
  for (const f of [...strays, ...nested]) {
    mkdirSync(dirname(join(src, f)), { recursive: true })
    writeFileSync(join(src, f), 'SECRET-STRAY\n', { mode: 0o600 })
  }

  const stage = join(dir, 'stage')
  const r = spawnSync('bash', [join(src, 'deploy', 'stage.sh'), stage], { cwd: dir, encoding: 'utf8', timeout: 240_000 })
  assert.equal(r.error, undefined, `stage.sh ran (within 240 s): ${String(r.error)}`)
  assert.equal(r.status, 0, r.stderr)

  const staged = walk(stage)
  await t.test('what runtime needs is there: bin/ and the compiled JavaScript of every source file of git, no TypeScript', () => {
    assert.ok(staged.includes('bin/edgewarden.js'))
    const sources = files.filter((f) => SOURCES.some((d) => f.startsWith(d)) && f.endsWith('.ts'))
    assert.ok(sources.length > 50, `${sources.length} source files`)
    for (const f of sources) assert.ok(staged.includes(`dist/${f.replace(/\.ts$/, '.js')}`), `dist/${f.replace(/\.ts$/, '.js')} staged`)
    assert.deepEqual(staged.filter((f) => f.endsWith('.ts')), [], 'no TypeScript shipped')
    for (const f of ['package.json', 'package-lock.json', 'deploy/config.example.yaml', 'deploy/edgewarden.service', 'docs/operations.md']) assert.ok(staged.includes(f), `${f} staged`)
  })

  await t.test('no stray, no test/ or bench/', () => {
    for (const f of [...strays, ...nested]) assert.ok(!existsSync(join(stage, f)), `${f} must not be staged`)
    for (const d of ['edgewarden-data/', 'agent/edgewarden-data/', 'test/', 'bench/', 'scripts/', '.ci/']) assert.ok(!staged.includes(d), `${d} must not be staged`)
    assert.deepEqual(staged.filter((f) => /\.(key|pem|jsonl)$|(^|\/)\.opcua-scratch\//.test(f)), [])
    for (const f of staged) if (!f.endsWith('/')) assert.ok(!readFileSync(join(stage, f), 'utf8').includes('SECRET-STRAY'), `${f} is a stray`)
  })

  await t.test('the staged agent runs on its own dependencies: --version, then start until ready', async () => {
    assert.ok(existsSync(join(stage, 'node_modules', 'aedes')), 'runtime dependencies installed')
    for (const dev of ['typescript', 'tsx']) assert.ok(!existsSync(join(stage, 'node_modules', dev)), `no dev dependency ${dev}: the compiled JavaScript runs on its own`)
    const bin = join(stage, 'bin', 'edgewarden.js')
    const version = spawnSync(process.execPath, [bin, '--version'], { cwd: dir, encoding: 'utf8', timeout: 60_000 })
    assert.equal(version.status, 0, version.stderr)
    assert.equal(version.stdout.trim(), (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version)

    const env: NodeJS.ProcessEnv = {}
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('EDGEWARDEN_')) env[k] = v
    const agent = await startUntilReady(bin, join(dir, 'run-data'), dir, env, t)
    assert.equal(await agent.stop(), 0, agent.stderr())
  })

  await t.test('install.sh stages with stage.sh, not by copying the checkout', () => {
    const install = readFileSync(join(ROOT, 'deploy', 'install.sh'), 'utf8')
    assert.match(install, /^\s*bash "\$SRC\/deploy\/stage\.sh" "\$STAGE"$/m)
    assert.doesNotMatch(install, /tar -C "\$SRC"/)
    assert.equal(spawnSync('bash', ['-n', join(ROOT, 'deploy', 'install.sh')]).status, 0, 'install.sh parses')
  })
})

test('deploy/stage.sh refuses a checkout whose dist/ is missing or older than its sources (it never builds, as root, itself)', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'checkout')
  copyCheckout(src)
  const stage = (dest: string) => spawnSync('bash', [join(src, 'deploy', 'stage.sh'), '--no-deps', join(dir, dest)], { cwd: dir, encoding: 'utf8', timeout: 60_000 })
  const unbuilt = stage('a')
  assert.notEqual(unbuilt.status, 0)
  assert.match(unbuilt.stderr, /dist\/ is not built: run npm install \(or npm run build\)/)
  cpSync(join(ROOT, 'dist'), join(src, 'dist'), { recursive: true })
  const future = new Date(Date.now() + 60_000)
  const { utimesSync } = await import('node:fs')
  utimesSync(join(src, 'agent', 'gateway.ts'), future, future)
  const stale = stage('b')
  assert.notEqual(stale.status, 0)
  assert.match(stale.stderr, /dist\/ is older than the sources \(agent\/gateway\.ts changed since\)/)
  utimesSync(join(src, 'agent', 'gateway.ts'), new Date(0), new Date(0))
  const fresh = stage('c')
  assert.equal(fresh.status, 0, fresh.stderr)
  assert.ok(existsSync(join(dir, 'c', 'dist', 'agent', 'gateway.js')))
})

test('npm run release makes one checksummed tarball that deploy/install.sh installs offline into an empty directory, refusing a damaged one', { timeout: 300_000 }, async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'checkout')
  copyCheckout(src)
  cpSync(join(ROOT, 'dist'), join(src, 'dist'), { recursive: true })
  const out = join(dir, 'release')
  const rel = spawnSync('bash', [join(src, 'deploy', 'release.sh'), out], { cwd: src, encoding: 'utf8', timeout: 240_000 })
  assert.equal(rel.status, 0, rel.stderr)
  const tarball = rel.stdout.trim().split('\n').at(-1)!
  assert.match(tarball, /edgewarden-[\d.]+-linux-x64\.tar\.gz$/)
  const sum = readFileSync(`${tarball}.sha256`, 'utf8')
  assert.match(sum, /^[0-9a-f]{64} {2}edgewarden-[\d.]+-linux-x64\.tar\.gz\n$/)
  assert.equal(spawnSync('sha256sum', ['-c', `${tarball}.sha256`], { cwd: out }).status, 0, 'sha256sum -c accepts it')

  // No registry: npm pointed at a closed port, and no npm on PATH either (only node and the basics).
  const binDir = join(dir, 'bin')
  mkdirSync(binDir)
  for (const tool of ['node', 'bash', 'tar', 'gzip', 'sha256sum', 'awk', 'mktemp', 'mkdir', 'mv', 'rm', 'chmod', 'chown', 'dirname', 'basename', 'head', 'cat', 'id', 'sed', 'grep']) {
    const at = spawnSync('bash', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim()
    if (at) symlinkSync(tool === 'node' ? process.execPath : at, join(binDir, tool))
  }
  const env: NodeJS.ProcessEnv = { PATH: binDir, HOME: dir, npm_config_registry: 'http://127.0.0.1:9/' }
  const install = (tar: string, prefix: string) => spawnSync('bash', [join(src, 'deploy', 'install.sh'), '--no-system', '--prefix', prefix, tar], { cwd: dir, env, encoding: 'utf8', timeout: 120_000 })

  await t.test('a damaged tarball is refused and nothing is installed', () => {
    const bad = join(dir, 'damaged.tar.gz')
    const bytes = readFileSync(tarball)
    bytes.writeUInt8(bytes.readUInt8(bytes.length >> 1) ^ 0xff, bytes.length >> 1)
    writeFileSync(bad, bytes)
    cpSync(`${tarball}.sha256`, `${bad}.sha256`)
    const r = install(bad, join(dir, 'opt-bad', 'edgewarden'))
    assert.equal(r.status, 1)
    assert.match(r.stderr, /damaged\.tar\.gz does not match .*damaged or not the release it claims; nothing was installed/)
    assert.ok(!existsSync(join(dir, 'opt-bad', 'edgewarden')))
  })

  await t.test('installed offline, the agent runs from it: --version, then start, device add and ls through its admin socket', async () => {
    const prefix = join(dir, 'opt', 'edgewarden')
    const r = install(tarball, prefix)
    assert.equal(r.status, 0, r.stderr)
    assert.match(r.stdout, /installed edgewarden [\d.]+ to .*\(code only\), offline from edgewarden-/)
    assert.match(readFileSync(join(prefix, 'RELEASE'), 'utf8'), /^name=edgewarden$/m)
    const bin = join(prefix, 'bin', 'edgewarden.js')
    const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { cwd: dir, env, encoding: 'utf8', timeout: 60_000 })
    assert.equal(run('--version').status, 0)
    const data = join(dir, 'data')
    const agent = await startUntilReady(bin, data, dir, env, t)
    const key = generateKeyPairSync('ed25519').publicKey.export({ format: 'jwk' }).x as string
    const add = run('device', 'add', 'pump-1', '--public-key', key, '--data-dir', data)
    assert.equal(add.status, 0, add.stderr)
    assert.match(run('device', 'ls', '--data-dir', data).stdout, /pump-1/)
    assert.equal(await agent.stop(), 0, agent.stderr())
  })
})
