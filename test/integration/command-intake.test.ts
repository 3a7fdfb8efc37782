// A gateway takes commands off the wire no faster than it runs them: at most
// COMMANDS_WAITING_MAX accepted and waiting, the rest left in the central
// broker's queue (the control plane's window bounds it). Commands run in
// arrival order, so without the bound a revocation sent during a bulk waits
// behind every command accepted before it: the bulk's whole backlog.
// A real Mosquitto, a real agent as its uplink client, ctl's sendAll.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { COMMANDS_WAITING_MAX } from '../../agent/commands/processor.ts'
import { generateKeyPair } from '../../agent/store/keys.ts'
import { ControlPlane } from '../../simulators/control-plane.ts'
import { holdChain, startTestAgent } from '../helpers/agent.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'

const BULK = 300
const WINDOW = 50

test(`a revocation sent during a bulk runs with at most ${COMMANDS_WAITING_MAX} accepted commands and the window ahead of it, not the bulk`, async (t) => {
  const m = await Mosquitto.start(t)
  const cpKey = generateKeyPair()
  const agent = await startTestAgent(t, { flags: { uplink: m.url, cpKey: [`ops=${cpKey.publicKeyB64}`] } })
  const cp = new ControlPlane({ broker: m.url, site: 'site1', gateway: 'gw1', key: cpKey.privateKey, kid: 'ops', gatewayKey: agent.gateway.key.publicKeyB64 })
  await cp.connect()
  t.after(() => cp.close())
  await cp.waitOnline()
  await agent.gateway.enroll({ id: 'stolen-1', publicKey: generateKeyPair().publicKeyB64 }, { actor: 'test' })

  // What the gateway committed, in order: acceptances and completions.
  const order: { type: string; jti: string }[] = []
  agent.gateway.onCommitted((change) => {
    for (const e of change.events ?? []) if (e.type === 'cmd.accepted' || e.type === 'cmd.completed') order.push({ type: e.type, jti: String(e.data.jti) })
  })

  // A slow stretch of the chain (held for well under COMMAND_WAIT_MAX_MS), then a bulk behind it.
  const release = holdChain(agent)
  try {
    const hold = cp.sign('inventory.report', {})
    const holding = cp.waitFor((e) => e.type === 'cmd.accepted' && e.data.jti === hold.jti)
    await cp.publishRaw(hold.jws)
    await holding
    const enrolls = Array.from({ length: BULK }, (_, i) => cp.sign('device.enroll', { device: { id: `new-${i}`, publicKey: generateKeyPair().publicKeyB64 } }))
    const lastAdmitted = cp.waitFor((e) => e.type === 'cmd.accepted' && e.data.jti === enrolls[COMMANDS_WAITING_MAX - 2]!.jti)
    const bulk = cp.sendAll(enrolls, { window: WINDOW, resendAfterMs: 30_000, timeoutMs: 120_000 })
    await lastAdmitted // the chain is at its bound: the hold and COMMANDS_WAITING_MAX - 1 enrolls
    const revoke = cp.sign('device.revoke', { deviceId: 'stolen-1', reason: 'stolen' })
    const revoked = cp.waitFor((e) => e.type === 'cmd.completed' && e.data.jti === revoke.jti, 60_000)
    await cp.publishRaw(revoke.jws) // on the broker now, behind what the window let out
    const acceptedWhileHeld = order.filter((x) => x.type === 'cmd.accepted').length
    release()
    await revoked
    const report = await bulk
    assert.deepEqual(new Set(report.results.map((r) => r.outcome)), new Set(['completed']))

    assert.ok(acceptedWhileHeld <= COMMANDS_WAITING_MAX, `${acceptedWhileHeld} accepted while the chain was held; the bound is ${COMMANDS_WAITING_MAX}`)
    const revokeAt = order.findIndex((x) => x.type === 'cmd.accepted' && x.jti === revoke.jti)
    const ahead = order.slice(0, revokeAt).filter((x) => x.type === 'cmd.accepted').length - 1 // less the hold
    assert.ok(ahead <= COMMANDS_WAITING_MAX + WINDOW, `${ahead} of the ${BULK} enrolls were accepted before the revocation; at most ${COMMANDS_WAITING_MAX} waiting plus the window of ${WINDOW}`)
    assert.equal(agent.gateway.getDevice('stolen-1')?.state, 'revoked')
    // Arrival order holds: every enroll accepted before the revocation completed before it.
    const completedAt = (jti: string): number => order.findIndex((x) => x.type === 'cmd.completed' && x.jti === jti)
    const revokeDone = completedAt(revoke.jti)
    for (const x of order.slice(0, revokeAt)) if (x.type === 'cmd.accepted' && x.jti !== hold.jti) assert.ok(completedAt(x.jti) < revokeDone, `${x.jti} ran before the revocation`)
  } finally {
    release()
  }
})

test('a command waiting for room when the agent stops is refused, not taken: its PUBACK is never sent, so the broker keeps it', async (t) => {
  const cpKey = generateKeyPair()
  const agent = await startTestAgent(t, { flags: { cpKey: [`ops=${cpKey.publicKeyB64}`] } })
  const cp = new ControlPlane({ broker: 'mqtt://unused', site: 'site1', gateway: 'gw1', key: cpKey.privateKey, kid: 'ops' })
  const release = holdChain(agent)
  try {
    const taken = Array.from({ length: COMMANDS_WAITING_MAX }, () => cp.sign('inventory.report', {}))
    await Promise.all(taken.map((c) => agent.commands.handle(c.jws)))
    const late = cp.sign('inventory.report', {})
    const waiting = agent.commands.handle(late.jws)
    agent.commands.close()
    await assert.rejects(waiting, /the gateway is stopping/)
    await assert.rejects(agent.commands.handle(cp.sign('inventory.report', {}).jws), /the gateway is stopping/)
    release()
    await agent.commands.idle()
    for (const c of taken) assert.equal(agent.commands.stateOf(c.jti), 'completed')
    assert.equal(agent.commands.stateOf(late.jti), undefined, 'never accepted')
  } finally {
    release()
  }
})
