// The quarantine conformance suite, run by each backend. nftables runs in a
// network namespace of this test's own (`ip netns exec <ns> nft`, the
// backend's nft prefix): nothing reaches the host's ruleset, and deleting the
// namespace removes every table the suite made.
import { test } from 'node:test'
import { NftablesQuarantine } from '../../agent/quarantine/nftables.ts'
import { NoneQuarantine } from '../../agent/quarantine/quarantine.ts'
import { addNamespace, must, rootOnlySkip } from '../helpers/netns.ts'
import { quarantineConformance } from './quarantine-suite.ts'

test('quarantine backend conformance: none', async (t) => {
  await Promise.all(quarantineConformance(t, async () => ({ backend: new NoneQuarantine() })))
})

test('quarantine backend conformance: nftables (in a namespace of its own)', { skip: rootOnlySkip(), timeout: 120_000 }, async (t) => {
  const ns = await addNamespace(t, `ew-conf-${process.pid}`)
  const nft = ['ip', 'netns', 'exec', ns, 'nft']
  let n = 0
  await Promise.all(
    quarantineConformance(t, async (st, devices, opts) => {
      const table = `ew_conf_${++n}`
      const backend = new NftablesQuarantine({ devices: () => devices, wipePorts: [1883, 8883], table, nft, checkIntervalMs: opts.checkIntervalMs })
      st.after(() => backend.stop())
      return { backend, tamper: async () => void (await must('ip', 'netns', 'exec', ns, 'nft', 'delete', 'table', 'inet', table)) }
    }),
  )
})
