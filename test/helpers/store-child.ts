// Child process of the store conformance suite (test/conformance/store.test.ts):
// another process on the same data dir, as a second agent or a crashed one.
//   node --import tsx test/helpers/store-child.ts open DIR
//     prints `opened` (and closes the store) or the code the open failed with
//   node --import tsx test/helpers/store-child.ts write-sync DIR OPS_JSON
//     writes OPS_JSON (a WriteOp[]) with sync, prints `written` once that
//     resolved, and then waits to be killed
import { spawn } from 'node:child_process'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { Store, type WriteOp } from '../../agent/store/store.ts'

const SELF = fileURLToPath(import.meta.url)
const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** Run the child: resolves with its first line of output and the process (still running for write-sync). */
export function storeChild(args: string[], timeoutMs = 20_000): Promise<{ line: string; kill(): Promise<void> }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', SELF, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()))
  let out = ''
  let err = ''
  proc.stderr.on('data', (c: Buffer) => (err += c.toString()))
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL')
      reject(new Error(`store child ${args[0]} said nothing within ${timeoutMs} ms; stderr: ${err}`))
    }, timeoutMs)
    proc.stdout.on('data', (c: Buffer) => {
      out += c.toString()
      const nl = out.indexOf('\n')
      if (nl < 0) return
      clearTimeout(timer)
      resolve({
        line: out.slice(0, nl),
        async kill() {
          if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL')
          await exited
        },
      })
    })
    void exited.then(() => {
      clearTimeout(timer)
      if (!out.includes('\n')) reject(new Error(`store child ${args[0]} exited (${proc.exitCode}) without a word; stderr: ${err}`))
    })
  })
}

async function main([verb, dir, ops]: string[]): Promise<void> {
  if (verb === 'open' && dir) {
    try {
      const s = await Store.open(dir)
      process.stdout.write('opened\n')
      await s.close()
    } catch (e) {
      process.stdout.write(`${(e as { code?: string }).code ?? 'no-code'}\n`)
    }
    return
  }
  if (verb === 'write-sync' && dir && ops) {
    const s = await Store.open(dir)
    await s.write(JSON.parse(ops) as WriteOp[], { sync: true })
    // stdout to a pipe is synchronous on Linux: once this returns the parent can read it
    process.stdout.write('written\n')
    setInterval(() => {}, 60_000) // wait for SIGKILL, the store left open
    return
  }
  process.stderr.write('usage: store-child.ts open DIR | write-sync DIR OPS_JSON\n')
  process.exit(2)
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`store-child: ${(err as Error).stack ?? String(err)}\n`)
    process.exit(1)
  })
}
