// The OPC UA relay against real node-opcua servers (PROTOCOL §8): the agent
// in-process is the client, simulated devices (simulators/opcua-device.ts)
// run the EdgeWarden hook on 127.0.0.1. Device certificates are made once per
// file (two PKI folders: certificate A and certificate B) and reused; each
// test has its own agent, hence its own gateway PKI.
import assert from 'node:assert/strict'
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import type { RunningAgent } from '../../agent/compose.ts'
import { exportAuditLog } from '../../agent/store/audit.ts'
import { parseJws } from '../../wire/jws.ts'
import type { DeliveryReport } from '../../protocols/opcua/relay.ts'
import { SimulatedOpcuaDevice, type SimulatedOpcuaDeviceOptions } from '../../simulators/opcua-device.ts'
import { freePort, startTestAgent, tempDir } from '../helpers/agent.ts'
import { signAs, testKey } from '../helpers/device-keys.ts'
import { nextEvent, stateReached } from '../helpers/wait.ts'

type T = { after(fn: () => Promise<void> | void): void }
type Agent = RunningAgent & { config: { dataDir: string } }
const WHO = { actor: 'local:test' }
const shared = tempDir()
after(() => import('node:fs').then((fs) => fs.rmSync(shared, { recursive: true, force: true })))
/** certificate A and certificate B: one PKI folder each, generated on first use */
const PKI_A = { pkiDir: join(shared, 'device-a'), applicationUri: 'urn:edgewarden:test:device-a' }
const PKI_B = { pkiDir: join(shared, 'device-b'), applicationUri: 'urn:edgewarden:test:device-b' }

async function startAgent(t: T): Promise<Agent> {
  const agent = await startTestAgent(t)
  // short backoff for the tests (defaults: 1 s doubling to 60 s)
  agent.opcua.retry.initialMs = 100
  agent.opcua.retry.maxMs = 400
  return agent
}

async function startDevice(t: T, agent: Agent, id: string, o: Partial<SimulatedOpcuaDeviceOptions> = {}): Promise<SimulatedOpcuaDevice> {
  const dev = await SimulatedOpcuaDevice.create({
    deviceId: id,
    gatewayId: agent.gateway.id,
    gatewayPublicKey: agent.gateway.key.publicKeyB64,
    ...PKI_A,
    port: await freePort(),
    ...o,
  })
  t.after(() => dev.stop())
  await dev.start()
  return dev
}

async function enroll(agent: Agent, dev: SimulatedOpcuaDevice, opcua: { certificateSha256?: string; trustOnFirstUse?: boolean } = { certificateSha256: dev.certificateSha256 }): Promise<void> {
  await agent.gateway.enroll({ id: dev.runtime.deviceId, publicKey: dev.runtime.publicKeyB64!, opcua: { endpoint: dev.endpoint, ...opcua } }, WHO)
}

async function events(agent: Agent): Promise<{ type: string; data: Record<string, unknown> }[]> {
  return (await agent.gateway.outbox.pending(agent.gateway.store, 0, 10_000)).map((e) => {
    const p = parseJws(e.jws).payload as { type: string; data: Record<string, unknown> }
    return { type: p.type, data: p.data }
  })
}

/** The evidence of a finished retirement (the audit entry written right after the state change). */
async function retirementEvidence(agent: Agent, id: string): Promise<Record<string, unknown>> {
  for (let i = 0; i < 500; i++) {
    const found = (await audit(agent, 'device.retired')).find((d) => d.deviceId === id)
    if (found) return found
    await new Promise((r) => setTimeout(r, 10))
  }
  throw new Error(`no device.retired evidence for ${id}`)
}

async function audit(agent: Agent, action: string): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = []
  for await (const e of exportAuditLog(agent.gateway.store)) if (e.action === action) out.push((e.data ?? {}) as Record<string, unknown>)
  return out
}

const rejectedFiles = (agent: Agent): string[] => readdirSync(join(agent.config.dataDir, 'opcua-pki', 'rejected')).filter((f) => f.endsWith('.pem'))

describe('OPC UA relay (PROTOCOL §8)', () => {
  test('an agent with no OPC UA device never loads node-opcua nor makes a PKI', async (t) => {
    const agent = await startTestAgent(t)
    assert.equal((agent.opcua.describe().opcua as { loaded: boolean }).loaded, false)
    assert.equal(existsSync(join(agent.config.dataDir, 'opcua-pki')), false)
  })

  test('reachable device: reenroll and then retire relayed through EdgeWarden.Execute; certificate rejected once retired', async (t) => {
    const agent = await startAgent(t)
    const dev = await startDevice(t, agent, 'plc-1')
    const connected = nextEvent<[string, { mode: string; policy: string }]>(agent.opcua.events, 'connected', (id) => id === 'plc-1')
    await enroll(agent, dev)
    const [, sec] = await connected
    // the strongest the device offers
    assert.deepEqual(sec, { mode: 'SignAndEncrypt', policy: 'Aes256_Sha256_RsaPss' })
    assert.equal(agent.opcua.sessionCount('plc-1'), 1)
    assert.equal(await agent.opcua.certificateStatus(dev.certificate), 'trusted')

    // re-enrollment (a new device key) through Execute, as for other protocols
    const oldKey = dev.runtime.publicKeyB64
    const rekeyed = nextEvent<[DeliveryReport]>(agent.opcua.events, 'delivery', (r) => r.act === 'reenroll')
    await agent.actions.queue('plc-1', 'reenroll', WHO)
    const [rep] = await rekeyed
    assert.equal(rep.ok, true, rep.reason)
    t.diagnostic(`reenroll relayed (Execute + ack verified and settled): ${rep.ms} ms`)
    const newKey = agent.gateway.registry.get('plc-1')!.spec.publicKey
    assert.notEqual(newKey, oldKey)
    await new Promise((r) => setImmediate(r)) // the device switches keys once Execute returned
    assert.equal(dev.runtime.publicKeyB64, newKey)

    // retire: session closed at once, wipe over a new (wipe-only) session, evidence
    const retired = stateReached(agent.gateway, 'plc-1', 'retired')
    // the delivery report is written once Execute returned, which is after the ack settled the retirement
    const wipeDelivered = new Promise<void>((resolve) => {
      const off = agent.gateway.onEventsStored((stored) => {
        const hit = stored.some((e) => {
          const p = parseJws(e.jws).payload as { type: string; data: Record<string, unknown> }
          return p.type === 'action.delivered' && p.data.act === 'wipe' && p.data.protocol === 'opcua'
        })
        if (hit) (off(), resolve())
      })
    })
    const r = await agent.retirements.start('plc-1', { receivedAt: performance.now(), receivedAtS: agent.gateway.nowS(), reason: 'decommissioned' }, WHO)
    assert.equal(r.done, false)
    await retired
    assert.equal(dev.runtime.wiped, true)
    const evidence = await retirementEvidence(agent, 'plc-1')
    assert.equal((evidence.wipe as { status: string }).status, 'done')
    // the live session at retire, then the wipe-only one at retired
    assert.deepEqual(evidence.sessionsClosed, { mqtt: 0, opcua: 1, modbus: 0 })
    assert.deepEqual(evidence.wipeOnlySessionsClosed, { mqtt: 0, opcua: 1, modbus: 0 })
    const acked = (await events(agent)).filter((e) => e.type === 'action.acked').map((e) => [e.data.act, e.data.status])
    assert.deepEqual(acked, [['reenroll', 'done'], ['wipe', 'done']])
    await wipeDelivered
    assert.ok((await events(agent)).some((e) => e.type === 'action.delivered' && e.data.act === 'wipe' && e.data.protocol === 'opcua'))
    await agent.opcua.settled('plc-1')
    assert.equal(agent.opcua.sessionCount('plc-1'), 0)
    assert.equal(await agent.opcua.certificateStatus(dev.certificate), 'rejected')
  })

  test('device down when the retire arrives: the wipe waits, and is done when the device answers again', async (t) => {
    const agent = await startAgent(t)
    const dev = await startDevice(t, agent, 'plc-2')
    const connected = nextEvent(agent.opcua.events, 'connected', (id) => id === 'plc-2')
    await enroll(agent, dev)
    await connected
    const down = nextEvent(agent.opcua.events, 'down', (id) => id === 'plc-2')
    await dev.stop()
    await down
    assert.equal(agent.opcua.sessionCount('plc-2'), 0)

    const r = await agent.retirements.start('plc-2', { receivedAt: performance.now(), receivedAtS: agent.gateway.nowS() }, WHO)
    assert.equal(r.done, false)
    // probed with backoff while down; the wipe stays queued
    await nextEvent(agent.opcua.events, 'down', (id) => id === 'plc-2')
    await nextEvent(agent.opcua.events, 'down', (id) => id === 'plc-2')
    assert.equal(agent.gateway.registry.get('plc-2')!.state, 'retiring')
    assert.deepEqual(agent.gateway.actions.pending('plc-2').map((a) => a.act), ['wipe'])
    assert.equal(dev.runtime.wiped, false)

    const retired = stateReached(agent.gateway, 'plc-2', 'retired')
    const wiped = nextEvent<[DeliveryReport]>(agent.opcua.events, 'delivery', (d) => d.deviceId === 'plc-2')
    await dev.start()
    const [rep] = await wiped
    await retired
    assert.equal(rep.ok, true)
    t.diagnostic(`wipe relayed on the device's return: ${rep.ms} ms`)
    assert.equal(dev.runtime.wiped, true)
    const evidence = await retirementEvidence(agent, 'plc-2')
    assert.equal((evidence.wipe as { status: string }).status, 'done')
    assert.deepEqual(evidence.sessionsClosed, { mqtt: 0, opcua: 0, modbus: 0 })
    assert.deepEqual(evidence.wipeOnlySessionsClosed, { mqtt: 0, opcua: 1, modbus: 0 })
    assert.deepEqual(agent.gateway.actions.pending('plc-2'), [])
  })

  test('an ack signed by another key is refused: the action stays queued', async (t) => {
    const agent = await startAgent(t)
    const impostor = testKey()
    const dev = await startDevice(t, agent, 'plc-3', {
      // the device acts, but its ack comes back re-signed by a key the gateway does not know
      wrapHandler: (runtime) => ({
        async handle(envelope) {
          const res = await runtime.handle(envelope)
          if (res.kind !== 'ack') return res
          return { ...res, ack: signAs(impostor.privateKey, 'plc-3', parseJws(res.ack).payload) }
        },
      }),
    })
    const connected = nextEvent(agent.opcua.events, 'connected', (id) => id === 'plc-3')
    await enroll(agent, dev)
    await connected
    const refused = nextEvent<[DeliveryReport]>(agent.opcua.events, 'delivery', (d) => d.deviceId === 'plc-3')
    const action = await agent.actions.queue('plc-3', 'wipe', WHO)
    const [rep] = await refused
    assert.equal(rep.ok, false)
    assert.match(rep.reason!, /ack refused: signature is not by a currently valid key/)
    assert.equal(dev.calls[0]?.status, 'Good')
    assert.deepEqual(agent.gateway.actions.pending('plc-3').map((a) => a.id), [action.id])
    assert.equal((await events(agent)).filter((e) => e.type === 'action.acked').length, 0)
    assert.ok(agent.actions.strayAcks >= 1)
    // offered again later (backoff), refused again: still queued
    const again = await nextEvent<[DeliveryReport]>(agent.opcua.events, 'delivery', (d) => d.deviceId === 'plc-3')
    assert.equal(again[0].ok, false)
    assert.deepEqual(agent.gateway.actions.pending('plc-3').map((a) => a.id), [action.id])
  })

  test('quarantine and revoke move the certificate to rejected and close the session; release restores trust', async (t) => {
    const agent = await startAgent(t)
    const dev = await startDevice(t, agent, 'plc-4')
    let connected = nextEvent(agent.opcua.events, 'connected', (id) => id === 'plc-4')
    await enroll(agent, dev)
    await connected
    assert.equal(dev.sessionCount, 1)

    let closed = nextEvent(agent.opcua.events, 'closed', (id) => id === 'plc-4')
    await agent.gateway.transition('plc-4', 'quarantine', WHO)
    assert.equal((await agent.enforcer.settled('plc-4')).sessionsClosed.opcua, 1)
    assert.equal(agent.opcua.sessionCount('plc-4'), 0)
    await closed
    assert.equal(dev.sessionCount, 0)
    await agent.opcua.settled('plc-4')
    assert.equal(await agent.opcua.certificateStatus(dev.certificate), 'rejected')
    assert.equal(agent.opcua.ready('plc-4'), false)

    connected = nextEvent(agent.opcua.events, 'connected', (id) => id === 'plc-4')
    await agent.gateway.transition('plc-4', 'release', WHO)
    await agent.opcua.settled('plc-4')
    assert.equal(await agent.opcua.certificateStatus(dev.certificate), 'trusted')
    await connected
    assert.equal(agent.opcua.sessionCount('plc-4'), 1)

    closed = nextEvent(agent.opcua.events, 'closed', (id) => id === 'plc-4')
    await agent.gateway.transition('plc-4', 'revoke', WHO)
    assert.equal((await agent.enforcer.settled('plc-4')).sessionsClosed.opcua, 1)
    await closed
    await agent.opcua.settled('plc-4')
    assert.equal(agent.opcua.sessionCount('plc-4'), 0)
    assert.equal(dev.sessionCount, 0)
    assert.equal(await agent.opcua.certificateStatus(dev.certificate), 'rejected')
    assert.equal(rejectedFiles(agent).length, 1)
    const moves = (await audit(agent, 'opcua.certificate-rejected')).map((d) => d.cause)
    assert.deepEqual(moves, ['quarantine', 'revoke'])
  })

  test('a device presenting a certificate other than the pinned one is refused, with alert.residual-use', async (t) => {
    const agent = await startAgent(t)
    const dev = await startDevice(t, agent, 'plc-5', PKI_B)
    const pinned = 'ab'.repeat(32)
    const refused = nextEvent<[string, string]>(agent.opcua.events, 'refused', (id) => id === 'plc-5')
    await enroll(agent, dev, { certificateSha256: pinned })
    const [, why] = await refused
    assert.match(why, new RegExp(`${dev.certificateSha256} is not the pinned ${pinned}`))
    await agent.mqttPolicy.residual.idle()
    const alert = (await events(agent)).find((e) => e.type === 'alert.residual-use')
    assert.ok(alert, 'alert.residual-use raised')
    assert.equal(alert.data.deviceId, 'plc-5')
    assert.equal(alert.data.protocol, 'opcua')
    assert.equal(alert.data.remote, dev.endpoint)
    assert.equal(agent.opcua.sessionCount('plc-5'), 0)
    assert.equal(dev.sessionCount, 0)
    assert.equal(dev.calls.length, 0)
    assert.equal(await agent.opcua.certificateStatus(dev.certificate), 'rejected')
    // an action for it stays queued
    await agent.actions.queue('plc-5', 'renew', WHO)
    assert.equal(agent.gateway.actions.pending('plc-5').length, 1)
  })

  test('trust on first use pins the first certificate, records it, and refuses a different one later', async (t) => {
    const agent = await startAgent(t)
    const port = await freePort()
    const first = await startDevice(t, agent, 'plc-6', { port })
    const pinnedEv = nextEvent<[string, string]>(agent.opcua.events, 'pinned', (id) => id === 'plc-6')
    const connected = nextEvent(agent.opcua.events, 'connected', (id) => id === 'plc-6')
    await enroll(agent, first, { trustOnFirstUse: true })
    const [, sha] = await pinnedEv
    await connected
    assert.equal(sha, first.certificateSha256)
    const rec = agent.gateway.registry.get('plc-6')!
    assert.equal(rec.opcuaPin?.sha256, sha)
    assert.equal(rec.spec.opcua?.certificateSha256, undefined, 'the spec is not changed')
    assert.deepEqual((await audit(agent, 'opcua.certificate-pinned')).map((d) => d.sha256), [sha])
    // an update of the record keeps the pin
    await enroll(agent, first, { trustOnFirstUse: true })
    assert.equal(agent.gateway.registry.get('plc-6')!.opcuaPin?.sha256, sha)
    await nextEvent(agent.opcua.events, 'connected', (id) => id === 'plc-6')

    // another server with another certificate on the same endpoint
    const down = nextEvent(agent.opcua.events, 'down', (id) => id === 'plc-6')
    await first.stop()
    await down
    const other = await startDevice(t, agent, 'plc-6', { port, ...PKI_B })
    assert.notEqual(other.certificateSha256, sha)
    const [, why] = await nextEvent<[string, string]>(agent.opcua.events, 'refused', (id) => id === 'plc-6')
    assert.match(why, /is not the pinned/)
    await agent.mqttPolicy.residual.idle()
    assert.ok((await events(agent)).some((e) => e.type === 'alert.residual-use' && e.data.deviceId === 'plc-6' && e.data.protocol === 'opcua'))
    assert.equal(agent.gateway.registry.get('plc-6')!.opcuaPin?.sha256, sha)
    assert.equal(other.sessionCount, 0)
  })
})
