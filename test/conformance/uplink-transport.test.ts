// The uplink transport conformance suite (uplink-transport-suite.ts), run by
// MqttUplinkTransport against a real Mosquitto in three configurations a
// site meets: an open listener, a password file with anonymous access off,
// and mqtts with a client certificate required. The transport reaches the
// broker through a TCP pass-through (helpers/tcp-tap.ts); the control
// plane's client (the peer) talks to the broker directly.
import { execFileSync } from 'node:child_process'
import { chmodSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import type { IClientOptions } from 'mqtt'
import { createLogger } from '../../agent/observe/logger.ts'
import { MqttUplinkTransport, topicRoot } from '../../protocols/mqtt/uplink-transport.ts'
import { tempDir } from '../helpers/agent.ts'
import { Mosquitto } from '../helpers/mosquitto.ts'
import { mqttConnect } from '../helpers/mqtt-devices.ts'
import { TcpTap } from '../helpers/tcp-tap.ts'
import { makeTestPki } from '../helpers/test-pki.ts'
import { uplinkTransportConformance, type UplinkHarness, type UplinkImplementation } from './uplink-transport-suite.ts'

const SITE = 'site1'
const GATEWAY = 'gw1'

interface BrokerSetup {
  /** Mosquitto listener lines (replacing `allow_anonymous true`); none: an open listener */
  listener: string[]
  scheme: 'mqtt' | 'mqtts'
  /** the transport's credentials and TLS files (MqttUplinkOptions) */
  transport: { username?: string; password?: string; caFile?: string; certFile?: string; keyFile?: string }
  /** the control plane client's */
  peer: IClientOptions
}

function mqttImplementation(name: string, setup: (t: TestContext) => Promise<BrokerSetup> | BrokerSetup): UplinkImplementation {
  return {
    name,
    async make(t): Promise<UplinkHarness> {
      // Registered first, so it runs before the broker and the tap go (after hooks run in order).
      let transport: MqttUplinkTransport | null = null
      t.after(() => transport?.stop())
      const s = await setup(t)
      const m = await Mosquitto.start(t, s.listener)
      const tap = await TcpTap.open(t, { port: m.port })
      transport = new MqttUplinkTransport({
        url: `${s.scheme}://127.0.0.1:${tap.port}`,
        ...s.transport,
        site: SITE,
        gateway: GATEWAY,
        version: '0.0.0-conformance',
        log: createLogger('silent'),
        backoff: { minMs: 20, maxMs: 200 },
      })
      let peers = 0
      return {
        transport,
        root: topicRoot(SITE, GATEWAY),
        tap,
        async peer() {
          const r = await mqttConnect(m.port, { url: `${s.scheme}://127.0.0.1:${m.port}`, clientId: `cp-conformance-${++peers}`, ...s.peer })
          if (!r.ok) throw new Error(`the control plane's client was refused: ${r.message}`)
          t.after(() => void r.client.end(true))
          return r.client
        },
        broker: { stop: () => m.stop(), start: () => m.restart() },
      }
    },
  }
}

const open = mqttImplementation('MqttUplinkTransport, open listener', () => ({ listener: [], scheme: 'mqtt', transport: {}, peer: {} }))

const password = mqttImplementation('MqttUplinkTransport, password file, no anonymous access', (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'passwd')
  execFileSync('mosquitto_passwd', ['-c', '-b', file, 'gw1-user', 'gw1-pw-Tq73'], { stdio: 'pipe' })
  execFileSync('mosquitto_passwd', ['-b', file, 'cp', 'cp-pw-Lm58'], { stdio: 'pipe' })
  // Mosquitto run as root reads it as its own user
  chmodSync(dir, 0o755)
  chmodSync(file, 0o644)
  return {
    listener: [`password_file ${file}`, 'allow_anonymous false'],
    scheme: 'mqtt',
    transport: { username: 'gw1-user', password: 'gw1-pw-Tq73' },
    peer: { username: 'cp', password: 'cp-pw-Lm58' },
  }
})

const mtls = mqttImplementation('MqttUplinkTransport, mqtts with a client certificate', (t) => {
  const pki = tempDir(t)
  makeTestPki(pki, { server: 'subjectAltName=IP:127.0.0.1', gateway: 'extendedKeyUsage=clientAuth', operator: 'extendedKeyUsage=clientAuth' })
  const file = (f: string): string => join(pki, f)
  return {
    listener: [`cafile ${file('ca.pem')}`, `certfile ${file('server.pem')}`, `keyfile ${file('server.key')}`, 'require_certificate true', 'allow_anonymous true'],
    scheme: 'mqtts',
    transport: { caFile: file('ca.pem'), certFile: file('gateway.pem'), keyFile: file('gateway.key') },
    peer: { ca: readFileSync(file('ca.pem')), cert: readFileSync(file('operator.pem')), key: readFileSync(file('operator.key')) },
  }
})

for (const impl of [open, password, mtls]) {
  test(`uplink transport conformance: ${impl.name}`, { timeout: 120_000 }, async (t) => {
    await Promise.all(uplinkTransportConformance(t, impl))
  })
}
