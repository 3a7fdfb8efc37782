// The one conformance suite every network quarantine backend runs (STYLE.md:
// one suite per pluggable interface). What a backend must do follows from
// what it declares: `enforces: false` backends report and apply nothing;
// enforcing ones show, read back from where they enforce, exactly the
// addresses the devices' states call for.
import assert from 'node:assert/strict'
import type { TestContext } from 'node:test'
import { type QuarantineBackend, type QuarantineDevice, type QuarantineLevel, type QuarantineState } from '../../agent/quarantine/quarantine.ts'
import { networkLevel } from '../../agent/trust/rights.ts'

export interface QuarantineHarness {
  backend: QuarantineBackend
  /** Remove the backend's rules behind its back (an operator deleting the table), where it has any. */
  tamper?(): Promise<void>
}

/** Build a backend over `devices` (mutable: the suite changes it as the registry would), re-checking every `checkIntervalMs`. */
export type QuarantineFactory = (t: TestContext, devices: QuarantineDevice[], opts: { checkIntervalMs: number }) => Promise<QuarantineHarness>

const LEVELS: QuarantineLevel[] = ['open', 'wipe-only', 'blocked']

/** address -> level, from a backend's show() */
const applied = (s: QuarantineState): Record<string, string> => Object.fromEntries(s.entries.map((e) => [e.address, e.level]))

async function until(what: string, check: () => Promise<boolean>, boundMs: number): Promise<number> {
  const t0 = performance.now()
  while (!(await check())) {
    if (performance.now() - t0 > boundMs) throw new Error(`${what}: not within ${boundMs} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
  return performance.now() - t0
}

export function quarantineConformance(t: TestContext, make: QuarantineFactory): Promise<void>[] {
  const fleet = (): QuarantineDevice[] => [
    { id: 'v4', state: 'quarantined', network: { ip: '192.0.2.10' } },
    { id: 'v6', state: 'retiring', network: { ip: '2001:db8:0:0::10' } },
    { id: 'mac', state: 'revoked', network: { mac: '02:00:5E:00:00:10' } },
    { id: 'both', state: 'retired', network: { ip: '192.0.2.11', mac: '02:00:5e:00:00:11' } },
    { id: 'mapped', state: 'quarantined', network: { ip: '::ffff:192.0.2.12' } },
    { id: 'open', state: 'active', network: { ip: '192.0.2.13' } },
    { id: 'bare', state: 'quarantined' },
  ]
  const expected: Record<string, string> = {
    '192.0.2.10': 'blocked',
    '2001:db8::10': 'wipe-only',
    '02:00:5e:00:00:10': 'blocked',
    '192.0.2.11': 'blocked',
    '02:00:5e:00:00:11': 'blocked',
    '192.0.2.12': 'blocked',
  }
  return [
    t.test('apply answers with its backend, the level asked, and whether it is on the wire', async (t) => {
      const devices = fleet()
      const { backend } = await make(t, devices, { checkIntervalMs: 60_000 })
      assert.match(backend.name, /^[a-z][a-z0-9-]*$/)
      for (const level of LEVELS) {
        const r = await backend.apply('v4', level)
        assert.equal(r.backend, backend.name)
        assert.equal(r.rule, level)
        assert.equal(r.enforced, backend.enforces)
      }
      // No address known: the level is still answered, never as enforced, and an enforcing backend says why.
      const bare = await backend.apply('bare', 'blocked')
      assert.deepEqual({ backend: bare.backend, rule: bare.rule, enforced: bare.enforced }, { backend: backend.name, rule: 'blocked', enforced: false })
      if (backend.enforces) assert.match(bare.detail ?? '', /no network address/)
      await backend.stop()
    }),

    t.test('reconcile puts every device at the level its state calls for, idempotently', async (t) => {
      const devices = fleet()
      const { backend } = await make(t, devices, { checkIntervalMs: 60_000 })
      await backend.reconcile()
      const first = await backend.show()
      await backend.reconcile()
      const second = await backend.show()
      assert.deepEqual(second, { ...first, dropped: second.dropped })
      assert.equal(first.backend, backend.name)
      assert.equal(first.enforces, backend.enforces)
      if (!backend.enforces) {
        assert.deepEqual(first.entries, [])
        return
      }
      assert.equal(first.present, true)
      assert.deepEqual(applied(first), expected)
      const both = first.entries.filter((e) => e.devices.includes('both')).map((e) => e.kind).sort()
      assert.deepEqual(both, ['ipv4', 'mac'])
      await backend.stop()
    }),

    t.test('apply moves a device between levels, follows a changed address, and the strictest level wins a shared one', async (t) => {
      const devices = fleet()
      const { backend } = await make(t, devices, { checkIntervalMs: 60_000 })
      await backend.reconcile()
      const open = devices.find((d) => d.id === 'open')!
      for (const level of ['blocked', 'wipe-only', 'open'] as const) {
        open.state = level === 'open' ? 'active' : level === 'blocked' ? 'quarantined' : 'retiring'
        await backend.apply('open', networkLevel(open.state))
        if (backend.enforces) assert.equal(applied(await backend.show())['192.0.2.13'], level === 'open' ? undefined : level)
      }
      // The registry changes a device's address (re-enrollment): the old one is released with the change.
      const v4 = devices.find((d) => d.id === 'v4')!
      v4.network = { ip: '192.0.2.20' }
      await backend.apply('v4', 'blocked')
      // Two devices claim one address: blocked beats open.
      devices.push({ id: 'twin', state: 'active', network: { ip: '192.0.2.20' } })
      await backend.apply('twin', 'open')
      if (backend.enforces) {
        const s = await backend.show()
        assert.equal(applied(s)['192.0.2.10'], undefined)
        assert.equal(applied(s)['192.0.2.20'], 'blocked')
        assert.deepEqual(s.entries.find((e) => e.address === '192.0.2.20')?.devices, ['v4'])
      }
      await backend.stop()
    }),

    t.test('many changes at once all land, batched into few transactions', async (t) => {
      const devices: QuarantineDevice[] = Array.from({ length: 1000 }, (_, i) => ({
        id: `bulk-${i}`,
        state: 'active',
        network: { ip: `10.${(i >> 8) & 255}.${i & 255}.7`, mac: `02:00:00:00:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}` },
      }))
      const { backend } = await make(t, devices, { checkIntervalMs: 60_000 })
      let t0 = performance.now()
      await backend.reconcile()
      const reconcileMs = performance.now() - t0
      for (const d of devices) d.state = 'quarantined'
      t0 = performance.now()
      const results = await Promise.all(devices.map((d) => backend.apply(d.id, 'blocked')))
      const bulkMs = performance.now() - t0
      assert.ok(results.every((r) => r.rule === 'blocked' && r.enforced === backend.enforces))
      t0 = performance.now()
      await backend.apply('bulk-0', 'blocked')
      const oneMs = performance.now() - t0
      if (backend.enforces) assert.equal((await backend.show()).entries.length, 2000)
      t.diagnostic(`${backend.name}: reconcile of 1000 open devices ${reconcileMs.toFixed(1)} ms; 1000 concurrent apply(blocked) ${bulkMs.toFixed(1)} ms; one apply with 2000 addresses in force ${oneMs.toFixed(1)} ms`)
      await backend.stop()
    }),

    t.test('stop leaves the rules in force (fail closed)', async (t) => {
      const devices = fleet()
      const { backend } = await make(t, devices, { checkIntervalMs: 60_000 })
      await backend.reconcile()
      await backend.stop()
      const s = await backend.show()
      if (backend.enforces) assert.deepEqual(applied(s), expected)
    }),

    t.test('rules removed behind its back are put back within seconds while started', async (t) => {
      const devices = fleet()
      const h = await make(t, devices, { checkIntervalMs: 200 })
      const { backend } = h
      await backend.reconcile()
      backend.start()
      t.after(() => backend.stop())
      if (!backend.enforces || !h.tamper) return
      await h.tamper()
      assert.equal((await backend.show()).present, false)
      const ms = await until('healed', async () => (await backend.show()).present, 5000)
      assert.deepEqual(applied(await backend.show()), expected)
      t.diagnostic(`${backend.name}: healed ${ms.toFixed(0)} ms after the rules were removed (re-check every 200 ms)`)
    }),
  ]
}
