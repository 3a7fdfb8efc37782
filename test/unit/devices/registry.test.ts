// The registry over a real LevelDB store: records are held as their stored
// JSON until first read, then parsed once; the start's narrow passes
// (mayHoldProtocolOrCertificate) visit every record with a certificate, a
// Modbus or an OPC UA spec, and leave the token devices unparsed; parseAll
// parses the rest in steps.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { Store } from '../../../agent/store/store.ts'
import { Registry } from '../../../agent/devices/registry.ts'
import type { DeviceRecord, DeviceSpec } from '../../../agent/devices/device.ts'
import { tempDir } from '../../helpers/agent.ts'

const record = (spec: DeviceSpec, extra: Partial<DeviceRecord> = {}): DeviceRecord => ({
  spec,
  state: 'active',
  keys: [],
  credentialExpiresAt: 2_000_000_000,
  createdAt: 1,
  updatedAt: 1,
  stateChangedAt: 1,
  ...extra,
})
const KEY = 'pmMoJ0qMxv0WZxFvpeBOpDNr7LLEDonvqfwRR8UOoXY'

test('registry: parsed on first read and once; the narrow pass sees every certificate, Modbus and OPC UA record and parses no other', async (t) => {
  const dir = tempDir(t)
  const tokens = Array.from({ length: 5000 }, (_, i) => record({ id: `tok-${i}`, publicKey: KEY, mqtt: {}, owner: 'opcua": "modbus": not a key' }))
  const special = [
    record({ id: 'plc-1', publicKey: KEY, modbus: { host: '10.0.0.5', port: 502, unitId: 1 } }),
    record({ id: 'srv-1', publicKey: KEY, opcua: { endpoint: 'opc.tcp://10.0.0.6:4840' } }),
    record({ id: 'cert-1', x509: { certificateSha256: 'a'.repeat(64) } }, { certificates: [{ serial: '01', sha256: 'a'.repeat(64), notBefore: 0, notAfter: 2_000_000_000, issuer: 'site', role: 'current' }] }),
  ]
  {
    const store = await Store.open(dir)
    const r = await Registry.load(store)
    await store.write([...tokens, ...special].map((d) => r.set(d)), { sync: true })
    await store.close()
  }
  const store = await Store.open(dir)
  t.after(() => store.close())
  const r = await Registry.load(store)
  assert.equal(r.size, tokens.length + special.length)
  // A JSON.parse spy: what the narrow pass parses
  const parse = JSON.parse
  let parsed = 0
  JSON.parse = ((text: string, reviver?: (this: unknown, key: string, value: unknown) => unknown) => (parsed++, parse(text, reviver))) as typeof JSON.parse
  let narrow: string[]
  try {
    narrow = [...r.mayHoldProtocolOrCertificate()].map((d) => d.spec.id).sort()
  } finally {
    JSON.parse = parse
  }
  assert.deepEqual(narrow, ['cert-1', 'plc-1', 'srv-1'], 'the three, and no token device (a string value naming the keys does not count)')
  assert.equal(parsed, 3, 'only they were parsed')

  // first read parses; the second read is the same object
  const a = r.get('tok-7')!
  assert.equal(a.spec.id, 'tok-7')
  assert.equal(r.get('tok-7'), a)
  assert.equal(r.get('nobody'), undefined)
  // a record written with a Modbus spec after the load is seen by the narrow pass too
  r.set({ ...a, spec: { ...a.spec, modbus: { host: '10.0.0.9', port: 502, unitId: 9 } } })
  assert.ok([...r.mayHoldProtocolOrCertificate()].some((d) => d.spec.id === 'tok-7'))
  r.delete('plc-1')
  assert.ok(![...r.mayHoldProtocolOrCertificate()].some((d) => d.spec.id === 'plc-1'))
  assert.equal(r.has('plc-1'), false)

  // parseAll: everything parsed, in steps (connects are judged meanwhile), the same records as stored
  // a stop asked for ends it after the step in progress: the rest is parsed on first read
  const fresh = await Registry.load(store)
  await fresh.parseAll(() => true)
  let late = 0
  JSON.parse = ((text: string, reviver?: (this: unknown, key: string, value: unknown) => unknown) => (late++, parse(text, reviver))) as typeof JSON.parse
  try {
    assert.equal([...fresh.values()].length, fresh.size)
  } finally {
    JSON.parse = parse
  }
  assert.ok(late > 0 && late < fresh.size, `parseAll stopped after a step (${late} of ${fresh.size} left)`)

  let yielded = false
  setImmediate(() => (yielded = true)) // runs only if parseAll gives the event loop a turn before it is done
  await r.parseAll()
  const all = [...r.values()]
  assert.equal(all.length, tokens.length + special.length - 1)
  assert.ok(all.every((d) => typeof d === 'object' && typeof d.spec.id === 'string'))
  assert.deepEqual(r.get('tok-4999'), tokens[4999])
  assert.deepEqual(r.get('cert-1'), special[2])
  assert.ok(yielded, 'the event loop turned while it parsed')
})

test('registry: a stored record that is not JSON fails closed (its device unknown), is reported once, and passes go on without it', async (t) => {
  const dir = tempDir(t)
  const store = await Store.open(dir)
  t.after(() => store.close())
  const r0 = await Registry.load(store)
  await store.write([r0.set(record({ id: 'ok-1', publicKey: KEY })), r0.set(record({ id: 'plc-9', publicKey: KEY, modbus: { host: '10.0.0.9', port: 502, unitId: 9 } }))], { sync: true })
  await store.db.put('dev!bad-1', '{"spec":{"id":"bad-1","modbus":{')
  const r = await Registry.load(store)
  assert.equal(r.size, 3)
  assert.deepEqual([...r.mayHoldProtocolOrCertificate()].map((d) => d.spec.id), ['plc-9'], 'the narrow pass skips it')
  assert.equal(r.get('bad-1'), undefined, 'refused as unknown')
  assert.equal(r.has('bad-1'), false)
  await r.parseAll()
  assert.deepEqual([...r.values()].map((d) => d.spec.id).sort(), ['ok-1', 'plc-9'])
  const unreadable = r.takeUnreadable()
  assert.equal(unreadable.length, 1, 'reported once')
  assert.equal(unreadable[0]!.id, 'bad-1')
  assert.match(unreadable[0]!.problem, /device "bad-1" is not valid JSON.*restore the data dir/)
  assert.deepEqual(r.takeUnreadable(), [])
  assert.equal(r.size, 2)
})
