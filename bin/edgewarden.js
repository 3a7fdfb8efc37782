#!/usr/bin/env node
// Node 20 cannot run TypeScript itself: tsx compiles the sources on the fly,
// so the command works straight after `npm install` with no build step.
import { register } from 'tsx/esm/api'

register()
const { main } = await import('../agent/cli/main.ts')
process.exitCode = await main(process.argv.slice(2))
