// The uplink transport against a broker that answers late: a CONNACK that
// arrives after stop() began must not publish on the closing client (mqtt.js
// throws on that, outside any handler, and the agent died with exit 1).
import assert from 'node:assert/strict'
import { createServer, type Socket } from 'node:net'
import { once } from 'node:events'
import { test } from 'node:test'
import pino from 'pino'
import { MqttUplinkTransport } from '../../../protocols/mqtt/uplink-transport.ts'

test('a CONNACK arriving while the uplink stops publishes nothing and throws nothing', async (t) => {
  const sockets: Socket[] = []
  const received: Buffer[] = []
  const connected = new Promise<Socket>((resolve) => {
    const server = createServer((s) => {
      sockets.push(s)
      s.on('data', (d) => received.push(d))
      s.on('error', () => {})
      resolve(s)
    })
    server.listen(0, '127.0.0.1')
    t.after(() => {
      for (const s of sockets) s.destroy()
      server.close()
    })
    void once(server, 'listening').then(() => {
      const { port } = server.address() as { port: number }
      transport = new MqttUplinkTransport({
        url: `mqtt://127.0.0.1:${port}`,
        site: 's',
        gateway: 'g',
        version: 'test',
        log: pino({ level: 'silent' }),
      } as ConstructorParameters<typeof MqttUplinkTransport>[0])
      transport.start({ onUp: () => ups++, onDown: () => {}, onCommand: async () => {}, status: () => ({}) })
    })
  })
  let transport!: MqttUplinkTransport
  let ups = 0
  const uncaught: unknown[] = []
  const onUncaught = (err: unknown): void => void uncaught.push(err)
  process.on('uncaughtException', onUncaught)
  t.after(() => process.off('uncaughtException', onUncaught))

  const socket = await connected
  await new Promise<void>((resolve) => (received.length ? resolve() : socket.once('data', () => resolve())))
  const stopping = transport.stop()
  // The broker answers only now: CONNACK, session not present, accepted.
  socket.write(Buffer.from([0x20, 0x02, 0x00, 0x00]))
  await stopping
  await new Promise((r) => setImmediate(r))
  assert.deepEqual(uncaught, [])
  assert.equal(ups, 0, 'a stopping uplink does not report itself up')
  // Only the CONNECT (whose will names the status topic once) and possibly a
  // DISCONNECT went out: no status PUBLISH, no SUBSCRIBE.
  const bytes = Buffer.concat(received)
  assert.equal(bytes[0]! >> 4, 1, 'the first packet is CONNECT')
  assert.equal(bytes.toString('latin1').split('edgewarden/v1/s/g/status').length - 1, 1, 'no status published')
  assert.ok(!bytes.toString('latin1').includes('edgewarden/v1/s/g/cmd'), 'no subscription made')
})
