// A central broker for demos and tests: plain aedes (no authentication) on
// a free loopback port, in the calling process. Imports nothing from agent/.
import { createServer, type AddressInfo } from 'node:net'
import { Aedes } from 'aedes'

export interface CentralBroker {
  url: string
  port: number
  close(): Promise<void>
}

export async function startCentralBroker(): Promise<CentralBroker> {
  const aedes = new Aedes()
  await aedes.listen()
  const server = createServer(aedes.handle)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const { port } = server.address() as AddressInfo
  return {
    url: `mqtt://127.0.0.1:${port}`,
    port,
    async close() {
      // stop accepting first; aedes.close() ends the clients, which lets the server finish closing
      const closed = new Promise<void>((resolve) => server.close(() => resolve()))
      await new Promise<void>((resolve) => aedes.close(() => resolve()))
      await closed
    },
  }
}
