// The control-plane suite on its default engine: PGlite in the data dir.
import { controlPlaneSuite } from './suite.ts'

controlPlaneSuite({ name: 'pglite', database: async () => undefined })
