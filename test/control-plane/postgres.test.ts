// The control-plane suite on PostgreSQL: a real server (helpers/postgres.ts),
// a database of its own per test.
import { after, before } from 'node:test'
import { PgServer, pgSkipReason } from './helpers/postgres.ts'
import { controlPlaneSuite } from './suite.ts'

const skip = pgSkipReason()
let server: PgServer | null = null
if (skip) {
  const { test } = await import('node:test')
  test('postgres: the control-plane suite', { skip }, () => {})
} else {
  before(async () => {
    server = await PgServer.start()
  })
  after(async () => {
    await server?.stop()
  })
  controlPlaneSuite({ name: 'postgres', database: () => server!.createDatabase() })
}
