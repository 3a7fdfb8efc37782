// A TCP port free on loopback now, for whatever listens next (tests, the
// demo, the fleet, the benchmark): ports are chosen at run time, never fixed.
import { createServer, type AddressInfo } from 'node:net'

export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, host, () => {
      const { port } = s.address() as AddressInfo
      s.close(() => resolve(port))
    })
  })
}
