// startTestAgent on a data dir that is removed only once the agent has
// stopped. Test after-hooks run in the order registered, and
// startTestAgent's own temp dir is registered (so removed) before the
// agent's stop: a stopping agent can then write into it again (the OPC UA
// relay's PKI folder) and leave it behind in the temp dir.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startTestAgent } from './agent.ts'

export async function startTestAgentOwnDir(
  t: { after(fn: () => Promise<void> | void): void },
  flags: Record<string, unknown> = {},
): Promise<Awaited<ReturnType<typeof startTestAgent>>> {
  const dataDir = mkdtempSync(join(tmpdir(), 'edgewarden-test-'))
  const remove = (): void => rmSync(dataDir, { recursive: true, force: true })
  try {
    const agent = await startTestAgent(t, { dataDir, flags })
    t.after(remove)
    return agent
  } catch (err) {
    remove()
    throw err
  }
}
