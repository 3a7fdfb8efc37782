// The agent's node flags (agent/runtime/node-flags.ts) are the ones every way
// of running it as deployed passes: the systemd unit, the installed wrapper
// and `npm start`; and this Node accepts them and applies them.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { AGENT_NODE_FLAGS } from '../../../agent/runtime/node-flags.ts'

const root = new URL('../../../', import.meta.url)
const read = (p: string): string => readFileSync(new URL(p, root), 'utf8')
const flags = AGENT_NODE_FLAGS.join(' ')

test('the systemd unit, the installed wrapper and npm start run node with the agent flags', () => {
  const execStart = read('deploy/edgewarden.service').split('\n').find((l) => l.startsWith('ExecStart='))
  assert.equal(execStart?.startsWith(`ExecStart=/usr/bin/node ${flags} /opt/edgewarden/bin/edgewarden.js start `), true, execStart)
  assert.match(read('deploy/install.sh'), new RegExp(`exec "\\$NODE" ${flags} "\\$PREFIX/bin/edgewarden.js"`))
  const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> }
  assert.equal(pkg.scripts.start, `node ${flags} bin/edgewarden.js start`)
})

test('this Node takes the flags: a young generation of two 32 MiB halves under load', () => {
  const newSpace = (args: string[]): number =>
    Number(
      execFileSync(process.execPath, [...args, '-e', "const v8=require('node:v8');let k=[];for(let i=0;i<6e6;i++){const o={i};if(i%2===0)k.push(o);if(k.length>5e5)k=[]}process.stdout.write(String(v8.getHeapSpaceStatistics().find(s=>s.space_name==='new_space').space_size))"], { encoding: 'utf8' }),
    )
  // Node 20 and 22 grow it to 2 × 16 MiB on their own; Node 24's V8 already to 2 × 32
  const tuned = newSpace([...AGENT_NODE_FLAGS])
  assert.equal(tuned, 64 << 20, `new space with ${flags}: ${tuned} bytes`)
})
