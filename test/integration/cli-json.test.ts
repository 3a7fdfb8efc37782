// The CLI as scripts see it: every verb that prints a result gives valid JSON
// with --json; with standard output a pipe there is no colour (no ANSI
// escape) and no progress on standard error; FORCE_COLOR and NO_COLOR are
// respected; on a real terminal (script(1)) progress and colour appear.
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { ANSI_ESCAPE, colourEnabled } from '../../agent/cli/colour.ts'
import { ProgressBar, waiting } from '../../agent/cli/progress.ts'
import { generateKeyPair, writeKeyFile } from '../../agent/store/keys.ts'
import { startCentralBroker } from '../../simulators/demo-broker.ts'
import { ControlPlane } from '../../simulators/control-plane.ts'
import { BIN, ROOT, runCli, startTestAgent, tempDir } from '../helpers/agent.ts'

const WHO = { actor: 'local:test' }
/** Whatever the test runner's environment says, colour is decided by the terminal alone. */
const PLAIN = { FORCE_COLOR: undefined, NO_COLOR: undefined }

function fakeStream(isTTY: boolean): { isTTY: boolean; written: string; write(s: string): boolean } {
  return {
    isTTY,
    written: '',
    write(s: string) {
      this.written += s
      return true
    },
  }
}

test('colour: a terminal only; FORCE_COLOR wins, then NO_COLOR, then TERM=dumb', () => {
  const tty = { isTTY: true }
  const pipe = { isTTY: false }
  assert.equal(colourEnabled(tty, {}), true)
  assert.equal(colourEnabled(pipe, {}), false)
  assert.equal(colourEnabled(tty, { NO_COLOR: '1' }), false)
  assert.equal(colourEnabled(tty, { NO_COLOR: '' }), true, 'an empty NO_COLOR is not set')
  assert.equal(colourEnabled(tty, { TERM: 'dumb' }), false)
  assert.equal(colourEnabled(pipe, { FORCE_COLOR: '1' }), true)
  assert.equal(colourEnabled(pipe, { FORCE_COLOR: '' }), true)
  assert.equal(colourEnabled(tty, { FORCE_COLOR: '0' }), false)
  assert.equal(colourEnabled(tty, { FORCE_COLOR: 'false', NO_COLOR: '' }), false)
  assert.equal(colourEnabled(pipe, { FORCE_COLOR: '1', NO_COLOR: '1' }), true)
})

test('progress: drawn on a terminal only, ended with a newline; nothing at all elsewhere', () => {
  const tty = fakeStream(true)
  const bar = new ProgressBar(3, 'work', tty)
  for (let i = 0; i < 3; i++) bar.tick()
  bar.finish()
  assert.equal(bar.done, true)
  assert.match(tty.written, /\rwork \[#{30}\] 3\/3\n$/)
  const counter = fakeStream(true)
  const c = new ProgressBar(null, 'reading', counter)
  c.tick(5)
  c.finish()
  assert.match(counter.written, /reading: 5\n$/)

  const pipe = fakeStream(false)
  const quiet = new ProgressBar(3, 'work', pipe)
  for (let i = 0; i < 3; i++) quiet.tick()
  quiet.finish()
  const w = waiting('waiting', pipe)
  w.clear()
  w.stop()
  assert.equal(pipe.written, '')
  const onTty = fakeStream(true)
  const w2 = waiting('waiting for x', onTty)
  w2.stop()
  assert.match(onTty.written, /^\rwaiting for x… 0 s\r +\r$/)
})

/** main() in this process, its standard output and error captured: the same code path as the command, at a fraction of the start-up. */
async function inProcess(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const { main } = await import('../../agent/cli/main.ts')
  const out = { stdout: '', stderr: '' }
  const saved = { out: process.stdout.write, err: process.stderr.write, env: { FORCE_COLOR: process.env.FORCE_COLOR, NO_COLOR: process.env.NO_COLOR } }
  const grab = (k: 'stdout' | 'stderr') => ((c: string | Uint8Array) => ((out[k] += String(c)), true)) as typeof process.stdout.write
  process.stdout.write = grab('stdout')
  process.stderr.write = grab('stderr')
  delete process.env.FORCE_COLOR
  delete process.env.NO_COLOR
  try {
    return { code: await main(args), ...out }
  } finally {
    process.stdout.write = saved.out
    process.stderr.write = saved.err
    for (const [k, v] of Object.entries(saved.env)) if (v !== undefined) process.env[k] = v
  }
}

test('every listing verb with --json prints valid JSON; without a terminal no ANSI escape and no progress', async (t) => {
  const central = await startCentralBroker()
  t.after(() => central.close())
  const dir = tempDir(t)
  const cp = generateKeyPair()
  const cpKeyFile = join(dir, 'cp.key')
  writeKeyFile(cpKeyFile, cp)
  const dev = generateKeyPair()
  const devKeyFile = join(dir, 'pump-1.key')
  writeKeyFile(devKeyFile, dev)
  const agent = await startTestAgent(t, { flags: { uplink: central.url, cpKey: [`ops=${cp.publicKeyB64}`] } })
  const gw = agent.gateway
  await gw.enroll({ id: 'pump-1', publicKey: dev.publicKeyB64, mqtt: {} }, WHO)
  for (const id of ['pump-2', 'pump-4']) await gw.enroll({ id, publicKey: generateKeyPair().publicKeyB64, mqtt: {} }, WHO)
  const online = new ControlPlane({ broker: central.url, site: 'site1', gateway: 'gw1' })
  await online.connect()
  await online.waitOnline()
  await online.close()
  const idsFile = join(dir, 'ids.txt')
  writeFileSync(idsFile, 'pump-2\nghost-9\n')
  const otherIds = join(dir, 'other-ids.txt')
  writeFileSync(otherIds, 'pump-4\nghost-9\n')
  const D = ['--data-dir', agent.config.dataDir]
  const link = ['--broker', central.url, '--site', 'site1', '--gateway', 'gw1']
  const signed = [...link, '--key', cpKeyFile, '--kid', 'ops', '--gateway-key', gw.key.publicKeyB64]

  // Real processes, started first (they run while the in-process checks do):
  // ctl watch --json, which must print the events of one command; ctl bulk
  // and device ls without --json and without a terminal; device ls with FORCE_COLOR=1.
  const watch = spawn(process.execPath, [BIN, 'ctl', 'watch', ...link, '--gateway-key', gw.key.publicKeyB64, '--count', '2', '--json', '--state', join(tempDir(t), 'watch.json')], { cwd: ROOT, env: { ...process.env, ...PLAIN }, stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(() => void watch.kill())
  let watchOut = ''
  let watchErr = ''
  watch.stdout.on('data', (c: Buffer) => (watchOut += c.toString()))
  const watching = new Promise<void>((resolve) => watch.stderr.on('data', (c: Buffer) => ((watchErr += c.toString()), /watching/.test(watchErr) && resolve())))
  const watchExit = new Promise<number | null>((resolve) => watch.once('exit', resolve))
  const processes = Promise.all([
    runCli(['ctl', 'bulk', ...signed, '--file', otherIds, 'device.quarantine'], { env: PLAIN }),
    runCli(['device', 'ls', ...D], { env: PLAIN }),
    runCli(['device', 'ls', ...D], { env: { FORCE_COLOR: '1', NO_COLOR: undefined } }),
  ])

  // verb -> [args, expected exit code, check of the parsed JSON]
  const jsonRuns: [string, string[], number, (v: any, lines: any[]) => void][] = [
    ['identity', ['identity', ...D, '--json'], 0, (v) => assert.equal(v.publicKey, gw.key.publicKeyB64)],
    ['keygen', ['keygen', '--out', join(dir, 'k1.key'), '--json'], 0, (v) => assert.match(v.publicKey, /^[A-Za-z0-9_-]{43}$/)],
    ['ctl keygen', ['ctl', 'keygen', '--out', join(dir, 'k2.key'), '--json'], 0, (v) => assert.match(v.publicKey, /^[A-Za-z0-9_-]{43}$/)],
    ['token', ['token', '--key', devKeyFile, '--device', 'pump-1', '--gateway', 'gw1', '--json'], 0, (v) => assert.equal(v.token.split('.').length, 3)],
    ['device ls', ['device', 'ls', ...D, '--json'], 0, (v) => assert.deepEqual(v.map((d: { id: string }) => d.id).sort(), ['pump-1', 'pump-2', 'pump-4'])],
    ['device show', ['device', 'show', 'pump-1', ...D, '--json'], 0, (v) => assert.equal(v.id, 'pump-1')],
    ['device add', ['device', 'add', 'pump-3', '--public-key', generateKeyPair().publicKeyB64, ...D, '--json'], 0, (v) => assert.equal(v.state, 'active')],
    ['device quarantine', ['device', 'quarantine', 'pump-3', '--reason', 'test', ...D, '--json'], 0, (v) => assert.equal(v.device.state, 'quarantined')],
    ['audit verify', ['audit', 'verify', ...D, '--json'], 0, (v) => assert.equal(v.ok, true)],
    ['audit export', ['audit', 'export', ...D, '--json'], 0, (_v, lines) => assert.ok(lines.length >= 2 && lines.every((e) => typeof e.seq === 'number'))],
    ['quarantine show', ['quarantine', 'show', ...D, '--json'], 0, (v) => assert.equal(v.backend, 'none')],
    ['ctl send', ['ctl', 'send', ...signed, '--wait', 'inventory.report', '--json'], 0, (v) => assert.equal(v.type, 'cmd.completed')],
    ['ctl bulk', ['ctl', 'bulk', ...signed, '--file', idsFile, 'device.revoke', '--json'], 1, (v) => {
      assert.equal(v.completed, 1)
      assert.equal(v.rejected, 1)
      assert.match(v.failures[0], /^ghost-9: cmd.rejected/)
    }],
  ]
  for (const [name, args, code, check] of jsonRuns) {
    const r = await inProcess(args)
    assert.equal(r.code, code, `${name}: ${r.stderr}`)
    assert.doesNotMatch(r.stdout + r.stderr, ANSI_ESCAPE, name)
    const lines = r.stdout.trim().split('\n').map((l, i) => {
      try {
        return JSON.parse(l) as unknown
      } catch {
        return assert.fail(`${name}: line ${i + 1} of its --json output is not JSON: ${l}`)
      }
    })
    if (name !== 'audit export') assert.equal(lines.length, 1, `${name}: one JSON document`)
    check(lines[0], lines)
  }
  for (const args of [['device', 'show', 'pump-2', ...D], ['audit', 'verify', ...D], ['quarantine', 'show', ...D], ['identity', ...D]]) {
    const r = await inProcess(args)
    assert.equal(r.code, 0, r.stderr)
    assert.doesNotMatch(r.stdout + r.stderr, ANSI_ESCAPE, `${args.join(' ')}: no colour without a terminal`)
  }

  await watching
  await inProcess(['ctl', 'send', ...signed, 'device.release', '{"deviceId":"pump-3"}'])
  assert.equal(await watchExit, 0, watchErr)
  const watched = watchOut.trim().split('\n').map((l) => JSON.parse(l) as { type: string; verified: boolean })
  assert.equal(watched.length, 2, watchOut)
  assert.ok(watched.every((e) => e.verified === true && typeof e.type === 'string'))

  const [bulk, ls, forced] = await processes
  assert.equal(bulk.code, 1, bulk.stderr)
  assert.match(bulk.stdout, /1 completed, 1 failed/)
  assert.equal(bulk.stderr, '', 'no progress on standard error without a terminal')
  assert.equal(ls.code, 0, ls.stderr)
  assert.match(ls.stdout, /^ID +STATE/)
  for (const r of [bulk, ls]) assert.doesNotMatch(r.stdout + r.stderr, ANSI_ESCAPE, 'no colour without a terminal')
  assert.match(forced.stdout, /^\x1b\[1mID +STATE/, 'FORCE_COLOR=1: the header is bold even through a pipe')
})

test('on a terminal (script(1)): audit verify of a stopped agent draws progress and colours its verdict', async (t) => {
  const dir = tempDir(t)
  const agent = await startTestAgent(t, { dataDir: dir })
  for (let i = 0; i < 3; i++) await agent.gateway.enroll({ id: `d-${i}`, publicKey: generateKeyPair().publicKeyB64, mqtt: {} }, WHO)
  await agent.stop()
  const cmd = `${process.execPath} ${BIN} audit verify --data-dir ${dir}`
  const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
    execFile('script', ['-qec', cmd, '/dev/null'], { cwd: ROOT, env: { ...process.env, ...PLAIN, TERM: 'xterm' }, timeout: 30_000 }, (err, stdout) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, out: stdout }),
    )
  })
  assert.equal(r.code, 0, r.out)
  assert.match(r.out, /verifying \[#+\] \d+\/\d+/, 'a progress bar on the terminal')
  assert.match(r.out, /\x1b\[32maudit log verifies\x1b\[0m: \d+ entries/, 'the verdict in green')
})
