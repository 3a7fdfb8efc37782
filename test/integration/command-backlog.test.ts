// A backlog of accepted commands waiting to run (device commands
// interleaved with inventory.report, as after an outage) costs memory in
// proportion to its length, not to its square. The chain here is stuck (its
// first op never finishes while the rest arrive), so past
// COMMANDS_WAITING_MAX each command waits COMMAND_WAIT_MAX_MS for room and
// is then taken anyway: a stuck op does not stop the intake
// (test/integration/command-intake.test.ts has the bound itself).
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { test } from 'node:test'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { COMMAND_WAIT_MAX_MS } from '../../agent/commands/processor.ts'
import { ControlPlane, publicKeyB64 } from '../../simulators/control-plane.ts'
import { startTestAgent } from '../helpers/agent.ts'

setFlagsFromString('--expose_gc')
const gc = runInNewContext('gc') as () => void
const cpKey = generateKeyPairSync('ed25519').privateKey

test('a backlog of commands interleaved with inventory.report costs memory linear in the backlog', async (t) => {
  const agent = await startTestAgent(t, { flags: { cpKey: [`cp1=${publicKeyB64(cpKey)}`] } })
  const cp = new ControlPlane({ broker: 'mqtt://unused', site: 'site1', gateway: 'gw1', key: cpKey, kid: 'cp1' })
  let release!: () => void
  const gate = new Promise<void>((r) => (release = r))
  // a slow first executor stands for anything that makes execution lag (a CA, nft, a slow disk)
  agent.commands.register('device.enroll', async () => {
    await gate
    return {}
  })
  agent.commands.register('inventory.report', async () => ({}))
  const pk = publicKeyB64(generateKeyPairSync('ed25519').privateKey)
  const now = Math.floor(Date.now() / 1000)
  const N = 1000
  const msgs: string[] = []
  for (let i = 0; i < N; i++) {
    msgs.push(cp.sign('device.enroll', { device: { id: `d${i}`, publicKey: pk } }, { nowS: now }).jws)
    msgs.push(cp.sign('inventory.report', {}, { nowS: now }).jws)
  }
  gc()
  const before = process.memoryUsage().heapUsed
  const t0 = performance.now()
  await Promise.all(msgs.map((m) => agent.commands.handle(m)))
  assert.ok(performance.now() - t0 >= COMMAND_WAIT_MAX_MS - 50, 'taken past the bound only once they had waited')
  gc()
  const grownMb = (process.memoryUsage().heapUsed - before) / 1e6
  release()
  await agent.commands.idle()
  assert.ok(grownMb < 64, `2000 commands waiting should not hold ${Math.round(grownMb)} MB`)
})
