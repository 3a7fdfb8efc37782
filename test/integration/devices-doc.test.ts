// docs/devices.md is run, not just read: every `edgewarden …` line in its
// shell blocks names a verb the CLI has and only flags that verb's usage
// lists; and the blocks marked `<!-- doc-test: NAME -->` (the token, EST,
// CSR and password paths) are run as written, in bash, against a real agent
// process, with real curl, openssl and mosquitto_pub. Only what differs on
// a test machine is replaced: the ports (chosen free at run time for the
// doc's 1883, 8883 and 8443), `sudo` (a no-op) and `edgewarden` (this
// checkout's bin/edgewarden.js).
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { usageOf } from '../../agent/cli/usage.ts'
import type { DeviceView } from '../../agent/observe/views.ts'
import { BIN, ROOT, runCli, spawnAgent, tempDir } from '../helpers/agent.ts'

const DOC = readFileSync(join(ROOT, 'docs', 'devices.md'), 'utf8')

interface Block {
  tag: string | null
  text: string
}

/** The doc's ```sh blocks, each with the doc-test tag right above it, if any. */
function shellBlocks(md: string): Block[] {
  return [...md.matchAll(/(?:<!-- doc-test: ([\w-]+) -->\n)?```sh\n([\s\S]*?)```/g)].map((m) => ({ tag: m[1] ?? null, text: m[2]! }))
}

/** Shell words of one command (quotes kept together; enough for the doc's lines). */
function words(s: string): string[] {
  return [...s.matchAll(/"(?:[^"\\]|\\.)*"|'[^']*'|[^\s"']+/g)].map((m) => m[0])
}

/** Every `edgewarden …` command in a block: at a line's start, after sudo, in $( ), or after a pipe; up to its end or a shell operator. */
function edgewardenCommands(block: string): string[] {
  const joined = block.replace(/\\\n/g, ' ')
  const out: string[] = []
  for (const line of joined.split('\n')) {
    let code = line.replace(/(^|\s)#.*$/, '')
    // a command substitution is a command of its own, and one word of the command around it
    code = code.replace(/\$\(([^()]*)\)/g, (_, inner: string) => {
      if (/^edgewarden /.test(inner)) out.push(inner.slice('edgewarden '.length).trim())
      return 'SUBSTITUTED'
    })
    for (const m of code.matchAll(/(?:^|sudo |\| )edgewarden ([^|;&>]*)/g)) out.push(m[1]!.trim())
  }
  return out
}

test('docs/devices.md: every edgewarden command names a verb of the CLI and only flags its usage lists', () => {
  const commands = shellBlocks(DOC).flatMap((b) => edgewardenCommands(b.text))
  assert.equal(commands.length, 15, `the edgewarden commands found: ${commands.join('\n')}`)
  const common = new Set(['--data-dir', '--json', '--help'])
  for (const c of commands) {
    const [verb, maybeSub] = words(c)
    assert.ok(verb, c)
    const sub = maybeSub && /^[a-z][\w-]*$/.test(maybeSub) ? maybeSub : undefined
    const usage = usageOf(verb, sub)
    assert.ok(usage, `edgewarden ${c}: no verb ${verb}`)
    if (sub !== undefined && ['device', 'ctl', 'audit', 'ca', 'quarantine'].includes(verb)) {
      assert.match(usage, new RegExp(`edgewarden ${verb} (\\S+\\|)*${sub}[| ]`), `edgewarden ${c}: ${verb} has no sub-verb ${sub}`)
    }
    for (const flag of words(c).filter((w) => w.startsWith('--'))) {
      const name = flag.replace(/=.*$/, '')
      assert.ok(common.has(name) || new RegExp(`${name}(?![\\w-])`).test(usage), `edgewarden ${c}: ${name} is not in the usage of ${verb}${sub ? ` ${sub}` : ''}`)
    }
  }
})

/** Run a script in bash (set -euo pipefail) in `cwd`, with `env`; resolves with its exit code and output. */
function bash(script: string, cwd: string, env: NodeJS.ProcessEnv, input = ''): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const prelude = `set -euo pipefail\nedgewarden() { "${process.execPath}" "${BIN}" "$@"; }\nsudo() { "$@"; }\n`
    const p = spawn('bash', ['-c', prelude + script], { cwd, env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    const timer = setTimeout(() => p.kill('SIGKILL'), 60_000)
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()))
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
    p.on('error', reject)
    p.on('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
    p.stdin.end(input)
  })
}

test('docs/devices.md: the token, EST, CSR and password paths run as written against a real agent', { timeout: 180_000 }, async (t) => {
  const dir = tempDir(t)
  const dataDir = join(dir, 'data')
  const agent = await spawnAgent(['--data-dir', dataDir, '--gateway', 'gw-1', '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--mqtts-port', '0', '--est-port', '0', '--est-host', '127.0.0.1'])
  t.after(async () => void (await agent.stop()))
  const ports = agent.ready.mqtt as { mqtt: number; mqtts: number }
  const est = (agent.ready.est as { port: number }).port
  const env = { EDGEWARDEN_DATA_DIR: dataDir, GW_HOST: '127.0.0.1', GW_ID: 'gw-1', NO_COLOR: '1' }

  const blocks = shellBlocks(DOC)
  const script = (tag: string): string => {
    const text = blocks.filter((b) => b.tag === tag).map((b) => b.text).join('\n')
    assert.ok(text, `no block marked doc-test: ${tag}`)
    return text.replaceAll('-p 1883 ', `-p ${ports.mqtt} `).replaceAll('-p 8883 ', `-p ${ports.mqtts} `).replaceAll(':8443', `:${est}`)
  }
  const run = async (tag: string, input?: string): Promise<string> => {
    const r = await bash(script(tag), dir, env, input)
    assert.equal(r.code, 0, `doc-test ${tag} failed:\n${r.stdout}\n${r.stderr}`)
    return r.stdout
  }
  const device = async (id: string): Promise<DeviceView> => {
    const r = await runCli(['device', 'show', id, '--json', '--data-dir', dataDir])
    assert.equal(r.code, 0, r.stderr)
    return JSON.parse(r.stdout) as DeviceView
  }

  await t.test('token: keygen, device add with its public key, a token per connect; the same token twice is refused', async () => {
    assert.match(script('token'), new RegExp(`-p ${ports.mqtt} `), 'the doc\'s port 1883 was found and replaced')
    const out = await run('token')
    assert.match(out, /^[A-Za-z0-9_-]{43}$/m, 'the public key, printed')
    assert.equal(out.match(/^refused: a token is good for one connect$/gm)?.length, 1, 'the replayed token, and only it, refused')
    const d = await device('pump-7')
    assert.deepEqual([d.state, d.credentialKind, d.criticality, d.owner], ['active', 'publicKey', 'high', 'line-2'])
    assert.notEqual(d.lastSeenAt, null)
  })

  await t.test('EST: bootstrap secret, cacerts, simpleenroll with curl and openssl, then mosquitto_pub with the certificate', async () => {
    assert.match(script('est'), new RegExp(`:${est}\\b`))
    assert.match(script('est'), new RegExp(`-p ${ports.mqtts} `))
    const out = await run('est')
    assert.match(out, /^cam-1\.pem: OK$/m)
    assert.match(out, /URI:urn:edgewarden:device:cam-1/)
    const d = await device('cam-1')
    assert.deepEqual([d.state, d.credentialKind], ['active', 'x509'])
    assert.ok(d.certificate?.serial, 'a certificate of the site CA on the record')
    assert.notEqual(d.lastSeenAt, null, 'connected with it')
  })

  await t.test('CSR: the site CA signs it at device add, the chain on standard output', async () => {
    const out = await run('csr')
    assert.match(out, /subject=CN\s?=\s?cam-2/)
    assert.match(out, /URI:urn:edgewarden:device:cam-2/)
    assert.equal((await device('cam-2')).credentialKind, 'x509')
  })

  await t.test('password: --password-stdin from what is typed, then mosquitto_pub -u -P', async () => {
    await run('password', 'plug-9 secret\n')
    const d = await device('plug-9')
    assert.deepEqual([d.state, d.credentialKind], ['active', 'password'])
    assert.notEqual(d.lastSeenAt, null)
    const audit = await runCli(['audit', 'export', '--device', 'plug-9', '--data-dir', dataDir])
    assert.equal(audit.code, 0, audit.stderr)
    assert.ok(audit.stdout.includes('device.enroll') && !audit.stdout.includes('plug-9 secret'), 'enrolled, and the password is not in the audit log')
  })
})
