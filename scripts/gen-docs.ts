import { writeFileSync } from 'node:fs'
import { renderReferenceConfig } from '../agent/cli/reference-config.ts'

writeFileSync(new URL('../docs/configuration.md', import.meta.url), renderReferenceConfig())
