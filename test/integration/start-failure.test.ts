// `edgewarden start` on a port something else holds: one line naming the port
// and the flag, a prompt non-zero exit, and nothing half-made (a data dir, key
// or store the failed start created is gone; one that existed is as it was).
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer, type AddressInfo, type Server } from 'node:net'
import { join } from 'node:path'
import { test } from 'node:test'
import { runCli, spawnAgent, tempDir } from '../helpers/agent.ts'

const NO_STACK = /\n\s+at \S/
/** generous for loading tsx and the agent on a busy machine; a start that hangs is killed at this bound */
const EXIT_WITHIN_MS = 20_000

function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('EDGEWARDEN_')) env[k] = v
  return env
}

async function holdPort(t: { after(fn: () => Promise<void>): void }): Promise<number> {
  const server: Server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return (server.address() as AddressInfo).port
}

async function startOnTakenPort(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const r = await runCli(['start', '--mqtt-host', '127.0.0.1', ...args], { env: cleanEnv(), timeoutMs: EXIT_WITHIN_MS })
  assert.equal(r.timedOut, false, `the failed start did not exit within ${EXIT_WITHIN_MS} ms; stderr: ${r.stderr}`)
  return r
}

function assertOneLine(r: { code: number | null; stderr: string }, port: number, flag: string): void {
  assert.equal(r.code, 1, r.stderr)
  assert.doesNotMatch(r.stderr, NO_STACK, 'no stack trace')
  assert.equal(r.stderr, `edgewarden: port ${port} on 127.0.0.1 is already in use (${flag}); pick another with ${flag}\n`)
}

test('start on a taken port: one line naming port and flag, exits 1, removes the data dir, key and store it made', { timeout: 120_000 }, async (t) => {
  const port = await holdPort(t)
  const dir = tempDir(t)
  const cert = join(dir, 'c.pem')
  const key = join(dir, 'k.pem')
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost'], { stdio: 'ignore' })
  const cases: [string, string[]][] = [
    ['--mqtt-port', ['--mqtt-port', String(port)]],
    ['--mqtts-port', ['--mqtt-port', '0', '--mqtts-port', String(port), '--tls-cert', cert, '--tls-key', key]],
    ['--modbus-port', ['--mqtt-port', '0', '--modbus-host', '127.0.0.1', '--modbus-port', String(port)]],
    ['--http-port', ['--mqtt-port', '0', '--http-host', '127.0.0.1', '--http-port', String(port)]],
  ]
  for (const [flag, args] of cases) {
    await t.test(flag, async () => {
      // a data dir two levels below anything that exists: Store.open makes every missing parent
      const top = join(dir, `fresh${flag}`)
      const r = await startOnTakenPort(['--data-dir', join(top, 'data'), ...args])
      assertOneLine(r, port, flag)
      assert.ok(!/"event":"ready"/.test(r.stdout), 'never ready')
      assert.equal(existsSync(top), false, 'the data dir (and the parent) the failed start made are removed')
    })
  }
})

test('start on a taken port leaves a data dir that existed as it was', { timeout: 120_000 }, async (t) => {
  const port = await holdPort(t)
  const dir = tempDir(t)

  await t.test('an empty data dir made beforehand (as systemd StateDirectory= does) gets no key and no store', async () => {
    const dataDir = join(dir, 'state')
    mkdirSync(dataDir)
    writeFileSync(join(dataDir, 'operator-note.txt'), 'keep me')
    const r = await startOnTakenPort(['--data-dir', dataDir, '--mqtt-port', String(port)])
    assertOneLine(r, port, '--mqtt-port')
    assert.deepEqual(readdirSync(dataDir), ['operator-note.txt'])
  })

  await t.test('a data dir in use by an earlier start keeps its key and store', async () => {
    const dataDir = join(dir, 'used')
    const first = await spawnAgent(['--data-dir', dataDir, '--mqtt-host', '127.0.0.1', '--mqtt-port', '0'], { env: cleanEnv() })
    t.after(async () => void (await first.stop('SIGKILL')))
    assert.equal(await first.stop(), 0)
    const keyBefore = readFileSync(join(dataDir, 'gateway.key'))
    const entriesBefore = readdirSync(dataDir).sort()
    const auditBefore = await runCli(['audit', 'export', '--data-dir', dataDir], { env: cleanEnv(), timeoutMs: EXIT_WITHIN_MS })
    assert.equal(auditBefore.code, 0, auditBefore.stderr)
    const r = await startOnTakenPort(['--data-dir', dataDir, '--http-host', '127.0.0.1', '--http-port', String(port), '--mqtt-port', '0'])
    assertOneLine(r, port, '--http-port')
    assert.deepEqual(readdirSync(dataDir).sort(), entriesBefore)
    assert.deepEqual(readFileSync(join(dataDir, 'gateway.key')), keyBefore, 'the gateway key is untouched')
    const auditAfter = await runCli(['audit', 'export', '--data-dir', dataDir], { env: cleanEnv(), timeoutMs: EXIT_WITHIN_MS })
    assert.equal(auditAfter.code, 0, auditAfter.stderr)
    assert.equal(auditAfter.stdout, auditBefore.stdout, 'the store is still there, its audit log as it was')
  })
})
