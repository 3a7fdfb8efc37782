// The agent's stdout is its JSON log, one object per line, also once
// node-opcua is loaded: node-opcua's own warnings (it prints them with
// console.log) go through pino with the OPC UA component's fields.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { test } from 'node:test'
import { SimulatedOpcuaDevice } from '../../simulators/opcua-device.ts'
import { freePort, runCli, spawnAgent, tempDir } from '../helpers/agent.ts'

/** Resolves once `text()` matches `re`, checked on each chunk of `stream`; rejects after `ms`. */
function seen(stream: NodeJS.ReadableStream, text: () => string, re: RegExp, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (!re.test(text())) return
      clearTimeout(timer)
      stream.off('data', check)
      resolve()
    }
    const timer = setTimeout(() => {
      stream.off('data', check)
      reject(new Error(`${re} not on stdout within ${ms} ms:\n${text()}`))
    }, ms)
    stream.on('data', check)
    check()
  })
}

test('with an OPC UA device enrolled (node-opcua loaded and connecting), stdout is only JSON lines', { timeout: 120_000 }, async (t) => {
  const dir = tempDir(t)
  const dataDir = join(dir, 'data')
  const agent = await spawnAgent(['--data-dir', dataDir, '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--gateway', 'gw1', '--log-level', 'info'])
  t.after(async () => void (await agent.stop('SIGKILL')))
  let raw = ''
  const stdout = agent.proc.stdout!
  stdout.on('data', (c: Buffer) => (raw += c.toString()))
  const closed = new Promise((resolve) => stdout.once('close', resolve))

  const dev = await SimulatedOpcuaDevice.create({
    deviceId: 'opc-1',
    gatewayId: 'gw1',
    gatewayPublicKey: agent.ready.publicKey as string,
    pkiDir: join(dir, 'device-pki'),
    port: await freePort(),
  })
  t.after(() => dev.stop())
  await dev.start()
  const add = await runCli(['device', 'add', 'opc-1', `--public-key=${dev.runtime.publicKeyB64!}`, '--opcua', dev.endpoint, '--opcua-cert-sha256', dev.certificateSha256, '--data-dir', dataDir])
  assert.equal(add.code, 0, add.stderr)

  // node-opcua loads, makes the gateway's application certificate (it warns while it does) and opens a session
  await seen(stdout, () => raw, /"msg":"OPC UA session with the device up"/, 60_000)
  assert.equal(await agent.stop(), 0)
  await closed // every line the process wrote has been read

  const lines = raw.split('\n').filter((l) => l !== '')
  const notJson = lines.filter((l) => {
    try {
      return typeof JSON.parse(l) !== 'object'
    } catch {
      return true
    }
  })
  assert.deepEqual(notJson, [], 'every stdout line is a JSON object')
  const fromOpcua = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => typeof l.msg === 'string' && l.msg.startsWith('node-opcua: '))
  // node-opcua warns on Node 20 (NODE-OPCUA-W27: the node version and RSA PKCS#1 v1.5); on 22 and 24 it may write nothing
  if (Number(process.versions.node.split('.')[0]) < 22) assert.ok(fromOpcua.length > 0, 'node-opcua warned (its certificate was made), through pino')
  for (const l of fromOpcua) {
    assert.equal(l.component, 'opcua')
    assert.equal(l.name, 'edgewarden')
    assert.match(String(l.source), /^[\w.-]+:\d+$/, 'the node-opcua source line that wrote it')
    assert.doesNotMatch(String(l.msg), /\u001b\[/, 'no terminal colour codes')
  }
})
