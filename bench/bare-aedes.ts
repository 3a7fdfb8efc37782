// The "bare aedes" anchor: the same aedes the site broker runs, no
// authentication, no policy, nothing else. Prints one JSON ready line with
// its port, like `edgewarden start`, and stops on SIGTERM.
//
// With --tls-cert, --tls-key and --tls-ca: the anchor of admission over
// mTLS, aedes behind a node:tls server that requires a client certificate
// chaining to --tls-ca (requestCert, rejectUnauthorized) and authenticates
// nothing else: what TLS with client certificates costs alone. Its ready
// line names the port as `mqtt.mqtts`.
import { readFileSync } from 'node:fs'
import { createServer, type AddressInfo, type Server } from 'node:net'
import { createServer as createTlsServer } from 'node:tls'
import { parseArgs } from 'node:util'
import { Aedes } from 'aedes'
import { OPTIONS } from '../agent/runtime/config.ts'

const { values: flags } = parseArgs({
  args: process.argv.slice(2),
  options: { 'tls-cert': { type: 'string' }, 'tls-key': { type: 'string' }, 'tls-ca': { type: 'string' } },
  strict: true,
})
const tls = flags['tls-cert'] !== undefined || flags['tls-key'] !== undefined || flags['tls-ca'] !== undefined
if (tls && (flags['tls-cert'] === undefined || flags['tls-key'] === undefined || flags['tls-ca'] === undefined)) throw new Error('--tls-cert, --tls-key and --tls-ca go together')

const aedes = new Aedes()
await aedes.listen()
// The same socket options as the site broker (and, over TLS, its minimum
// version), and the same listen backlog, so a storm's anchor measures the
// handshakes, not connects the kernel dropped from a shorter queue.
const server: Server = tls
  ? createTlsServer(
      { cert: readFileSync(flags['tls-cert']!, 'utf8'), key: readFileSync(flags['tls-key']!, 'utf8'), ca: readFileSync(flags['tls-ca']!, 'utf8'), requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2', noDelay: true },
      aedes.handle,
    )
  : createServer({ noDelay: true }, aedes.handle)
await new Promise<void>((resolve) => server.listen({ port: 0, host: '127.0.0.1', backlog: OPTIONS.find((o) => o.key === 'listenBacklog')!.default as number }, () => resolve()))
const port = (server.address() as AddressInfo).port
process.stdout.write(`${JSON.stringify({ event: 'ready', mqtt: tls ? { mqtts: port } : { mqtt: port } })}\n`)
process.once('SIGTERM', () => {
  server.close()
  aedes.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
})
