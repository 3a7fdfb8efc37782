#!/usr/bin/env node
// The `edgewarden` command. It runs the compiled JavaScript in dist/, which
// `npm install` builds (the "prepare" script: `npm run build`) and the
// package ships. EDGEWARDEN_FROM_SOURCE=1 runs the TypeScript sources through
// tsx instead (development; tsx is a development dependency), as does a
// checkout that was never built.
import { existsSync } from 'node:fs'

const compiled = new URL('../dist/agent/cli/main.js', import.meta.url)
let entry = compiled.href
if (process.env.EDGEWARDEN_FROM_SOURCE === '1' || !existsSync(compiled)) {
  let register
  try {
    ;({ register } = await import('tsx/esm/api'))
  } catch {
    process.stderr.write(`edgewarden: ${existsSync(compiled) ? 'EDGEWARDEN_FROM_SOURCE=1 needs tsx (npm install with dev dependencies)' : 'dist/ is missing: run npm run build (or npm install, which builds it)'}\n`)
    process.exit(1)
  }
  register()
  entry = new URL('../agent/cli/main.ts', import.meta.url).href
}
const { main } = await import(entry)
process.exitCode = await main(process.argv.slice(2))
