// deploy/install.sh installs what deploy/stage.sh builds: the files `npm pack`
// ships (package.json "files") and the runtime dependencies, never what else
// lies in the checkout. Run here as install.sh runs it, without root or
// systemd, on a copy of the checkout holding the strays the README's tour
// leaves (a control-plane key, a device key, an audit export, a data dir).
import assert from 'node:assert/strict'
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
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

const RUNTIME = ['bin/', 'wire/', 'agent/', 'protocols/', 'firmware-hooks/', 'simulators/']

test('deploy/stage.sh: what npm pack ships and its runtime dependencies, no key, data dir or export from the checkout', { timeout: 300_000 }, async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'checkout')
  const files = copyCheckout(src)
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
  await t.test('what runtime needs is there: every file of git under bin/ agent/ protocols/ firmware-hooks/ simulators/', () => {
    for (const d of RUNTIME) assert.ok(staged.includes(d), `${d} staged`)
    const runtime = files.filter((f) => RUNTIME.some((d) => f.startsWith(d)))
    assert.ok(runtime.length > 50, `${runtime.length} runtime files`)
    for (const f of runtime) assert.ok(staged.includes(f), `${f} staged`)
    for (const f of ['package.json', 'package-lock.json', 'deploy/config.example.yaml', 'deploy/edgewarden.service', 'docs/operations.md']) assert.ok(staged.includes(f), `${f} staged`)
  })

  await t.test('no stray, no test/ or bench/', () => {
    for (const f of [...strays, ...nested]) assert.ok(!existsSync(join(stage, f)), `${f} must not be staged`)
    for (const d of ['edgewarden-data/', 'agent/edgewarden-data/', 'test/', 'bench/', 'scripts/', '.ci/']) assert.ok(!staged.includes(d), `${d} must not be staged`)
    assert.deepEqual(staged.filter((f) => /\.(key|pem|jsonl)$|(^|\/)\.opcua-scratch\//.test(f)), [])
    for (const f of staged) if (!f.endsWith('/')) assert.ok(!readFileSync(join(stage, f), 'utf8').includes('SECRET-STRAY'), `${f} is a stray`)
  })

  await t.test('the staged agent runs on its own dependencies: --version, then start until ready', async () => {
    assert.ok(existsSync(join(stage, 'node_modules', 'tsx')), 'runtime dependencies installed')
    assert.ok(!existsSync(join(stage, 'node_modules', 'typescript')), 'no dev dependencies')
    const bin = join(stage, 'bin', 'edgewarden.js')
    const version = spawnSync(process.execPath, [bin, '--version'], { cwd: dir, encoding: 'utf8', timeout: 60_000 })
    assert.equal(version.status, 0, version.stderr)
    assert.equal(version.stdout.trim(), (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version)

    const env: NodeJS.ProcessEnv = {}
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('EDGEWARDEN_')) env[k] = v
    const proc = spawn(process.execPath, [bin, 'start', '--data-dir', join(dir, 'run-data'), '--mqtt-host', '127.0.0.1', '--mqtt-port', '0'], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = new Promise<number | null>((resolve) => proc.once('exit', resolve))
    t.after(() => void proc.kill('SIGKILL'))
    let stderr = ''
    proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the staged agent was not ready within 30 s: ${stderr}`)), 30_000)
      createInterface({ input: proc.stdout }).on('line', (l) => {
        if (l.includes('"event":"ready"')) {
          clearTimeout(timer)
          resolve()
        }
      })
      void exited.then((code) => reject(new Error(`the staged agent exited (${code}): ${stderr}`)))
    })
    proc.kill('SIGTERM')
    assert.equal(await exited, 0, stderr)
  })

  await t.test('install.sh stages with stage.sh, not by copying the checkout', () => {
    const install = readFileSync(join(ROOT, 'deploy', 'install.sh'), 'utf8')
    assert.match(install, /^bash "\$SRC\/deploy\/stage\.sh" "\$STAGE"$/m)
    assert.doesNotMatch(install, /tar -C "\$SRC"/)
    assert.equal(spawnSync('bash', ['-n', join(ROOT, 'deploy', 'install.sh')]).status, 0, 'install.sh parses')
  })
})
