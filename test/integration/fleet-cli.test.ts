// `edgewarden simulate` as a user runs it: the real agent as a child
// process with an uplink to a real Mosquitto, the fleet enrolled through its
// admin socket, devices coming and going on the system clock, reconnect
// storms, the control-plane side following the gateway's events, JSON lines out.
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { describe, test } from 'node:test'
import { runSimulate } from '../../agent/cli/simulate.ts'
import { UsageError } from '../../agent/cli/usage.ts'
import { runCli, spawnAgent, tempDir } from '../helpers/agent.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'

describe('edgewarden simulate', () => {
  test('bad options are refused with a clear message before anything is enrolled', async () => {
    for (const [args, want] of [
      [['--mix', 'zigbee=5'], /--mix zigbee=5: expected PROTOCOL=WEIGHT/],
      [['--mix', 'mqtt=0'], /at least one weight/],
      [['--devices', '0'], /--devices must be a whole number from 1 to 100000/],
      [['--online-fraction', '1.5'], /--online-fraction must be within 0\.\.1/],
      [['--prefix', '../x'], /--prefix/],
      [['extra'], /no arguments/],
    ] as const) {
      // no agent at this data dir: a refusal comes before the admin socket is tried
      await assert.rejects(runSimulate(['--data-dir', '/nonexistent/edgewarden', ...args]), (err: Error) => err instanceof UsageError && want.test(err.message), args.join(' '))
    }
  })

  test('a fleet of 6 (MQTT and Modbus) against the running agent: enrolled, intermittent, stormed, reported', async (t) => {
    const dataDir = tempDir(t)
    const central = await Mosquitto.start(t)
    const cpPublicKey = generateKeyPairSync('ed25519').publicKey.export({ format: 'jwk' }).x as string // pinned, never used: the fleet sends no command
    const agent = await spawnAgent(['--data-dir', dataDir, '--mqtt-host', '127.0.0.1', '--mqtt-port', '0', '--uplink', central.url, '--site', 'plant-a', '--gateway', 'gw-1', '--cp-key', `cp=${cpPublicKey}`], { timeoutMs: 60_000 })
    t.after(() => agent.stop())
    const port = (agent.ready.mqtt as { mqtt: number }).mqtt
    const r = await runCli([
      'simulate', '--data-dir', dataDir, '--mqtt-url', `mqtt://127.0.0.1:${port}`,
      '--devices', '6', '--mix', 'mqtt=2,modbus=1', '--online-fraction', '0.5', '--mean-offline', '0.3',
      '--duration', '3', '--storm-every', '1.5', '--report-every', '1', '--seed', '3', '--prefix', 'cli', '--json', '--central', central.url, '--keep',
    ])
    assert.equal(r.code, 0, r.stderr)
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
    assert.deepEqual(lines[0], { event: 'enrolling', devices: 6, mqtt: 4, modbus: 2, opcua: 0 })
    const storms = lines.filter((l) => l.event === 'storm')
    assert.ok(storms.length >= 1, 'a storm ran')
    assert.ok(storms.every((s) => s.online === 6 && s.failed === 0), JSON.stringify(storms))
    const last = lines.at(-1)!
    assert.equal(last.event, 'stopped')
    assert.equal(last.size, 6)
    assert.equal(last.failures, 0)
    assert.ok((last.ups as number) > 6 && (last.downs as number) > 0, `devices came and went: ${JSON.stringify(last)}`)
    // the control-plane side: the six enrollments' events, each verified against the gateway key, no gap
    const cp = last.controlPlane as { events: Record<string, number>; gaps: number; invalid: number; unverified: number }
    assert.equal(cp.events['device.state'], 6, JSON.stringify(cp))
    assert.deepEqual([cp.gaps, cp.invalid, cp.unverified], [0, 0, 0])

    const ls = await runCli(['device', 'ls', '--json', '--data-dir', dataDir])
    const devices = JSON.parse(ls.stdout) as { id: string; protocols: string[]; state: string }[]
    assert.deepEqual(
      devices.map((d) => [d.id, d.protocols.join(','), d.state]),
      [
        ['cli-modbus-1', 'modbus', 'active'],
        ['cli-modbus-2', 'modbus', 'active'],
        ['cli-mqtt-1', 'mqtt', 'active'],
        ['cli-mqtt-2', 'mqtt', 'active'],
        ['cli-mqtt-3', 'mqtt', 'active'],
        ['cli-mqtt-4', 'mqtt', 'active'],
      ],
    )

    // Without --mqtt-url it dials the agent's own listener (asked over the admin socket, port chosen at run time),
    // and without --keep it removes what it enrolled, and only that.
    const again = await runCli(['simulate', '--data-dir', dataDir, '--devices', '2', '--mix', 'mqtt=1', '--duration', '1', '--report-every', '1', '--seed', '4', '--prefix', 'tmp', '--json'])
    assert.equal(again.code, 0, again.stderr)
    const out = again.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
    const stopped = out.find((l) => l.event === 'stopped')!
    assert.equal(stopped.failures, 0, JSON.stringify(stopped))
    assert.deepEqual(out.at(-1), { event: 'removed', devices: 2 })
    const after = JSON.parse((await runCli(['device', 'ls', '--json', '--data-dir', dataDir])).stdout) as { id: string }[]
    assert.deepEqual(after.map((d) => d.id), devices.map((d) => d.id), 'the first run\'s devices stay, the second run\'s are gone')
  })
})
