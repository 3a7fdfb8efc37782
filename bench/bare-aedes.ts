// The "bare aedes" anchor: the same aedes the site broker runs, no
// authentication, no policy, nothing else. Prints one JSON ready line with
// its port, like `edgewarden start`, and stops on SIGTERM.
import { createServer, type AddressInfo } from 'node:net'
import { Aedes } from 'aedes'

const aedes = new Aedes()
await aedes.listen()
// The same socket options as the site broker.
const server = createServer({ noDelay: true }, aedes.handle)
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
process.stdout.write(`${JSON.stringify({ event: 'ready', mqtt: { mqtt: (server.address() as AddressInfo).port } })}\n`)
process.once('SIGTERM', () => {
  server.close()
  aedes.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
})
