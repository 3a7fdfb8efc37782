// The store conformance suite (store-suite.ts), run by the agent's LevelDB
// Store on disk in temp dirs. Its backend fault is the database closed
// under it (and opened again: the store must stay failed); a second agent
// and a crashed writer are child processes (helpers/store-child.ts).
import { test } from 'node:test'
import { Store } from '../../agent/store/store.ts'
import { storeChild } from '../helpers/store-child.ts'
import { storeConformance, type StoreImplementation } from './store-suite.ts'

const level: StoreImplementation<Store> = {
  name: 'Store (LevelDB)',
  open: (dir) => Store.open(dir),
  snapshot(store) {
    const snapshot = store.db.snapshot()
    return { snapshot, close: () => snapshot.close() }
  },
  async fault(store) {
    await store.db.close()
    return { heal: () => store.db.open() }
  },
  lockedCode: 'STORE_LOCKED',
  async openElsewhere(dir) {
    const { line, kill } = await storeChild(['open', dir])
    await kill()
    return line === 'opened' ? null : line
  },
  async crashAfterSyncWrite(dir, ops) {
    const { line, kill } = await storeChild(['write-sync', dir, JSON.stringify(ops)])
    await kill()
    if (line !== 'written') throw new Error(`the writer said ${line}`)
  },
}

test('store conformance: Store (LevelDB)', { timeout: 120_000 }, async (t) => {
  await Promise.all(storeConformance(t, level))
})
