import { writeFileSync } from 'node:fs'
import { renderErrorCodes, renderReferenceConfig } from '../agent/cli/reference-config.ts'

writeFileSync(new URL('../docs/configuration.md', import.meta.url), renderReferenceConfig())
writeFileSync(new URL('../docs/errors.md', import.meta.url), renderErrorCodes())
