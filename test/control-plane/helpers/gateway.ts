// Real gateways for the control-plane tests: the agent in this process with
// an uplink to the test Mosquitto, pinning the test CP key, restartable on
// its data dir (same key, same client id: its persistent session on the
// broker survives), registered with the control plane through the API. A
// ledger of what each gateway committed is the ground truth of "ran once".
// And a gateway played by the test itself (a key, events signed by hand).
import { sign, type KeyObject } from 'node:crypto'
import mqtt from 'mqtt'
import { generateKeyPair } from '../../../agent/store/keys.ts'
import { utf8 } from '../../../wire/base64url.ts'
import { newJti } from '../../../wire/ids.ts'
import { assembleJws, jwsSigningInput } from '../../../wire/jws.ts'
import { startTestAgent } from '../../helpers/agent.ts'
import { KID, type TestCp } from './cp.ts'

export type TestAgent = Awaited<ReturnType<typeof startTestAgent>>

export interface Ledger {
  accepted: Map<string, number>
  completed: Map<string, number>
  duplicate: Map<string, number>
  stateChanges: Map<string, string[]>
}

export const newLedger = (): Ledger => ({ accepted: new Map(), completed: new Map(), duplicate: new Map(), stateChanges: new Map() })

export function follow(agent: TestAgent, l: Ledger): void {
  const bump = (m: Map<string, number>, k: string): void => void m.set(k, (m.get(k) ?? 0) + 1)
  agent.gateway.onCommitted((change) => {
    for (const e of change.events ?? []) {
      const jti = String(e.data.jti)
      if (e.type === 'cmd.accepted') bump(l.accepted, jti)
      else if (e.type === 'cmd.completed') bump(l.completed, jti)
      else if (e.type === 'cmd.duplicate') bump(l.duplicate, jti)
      else if (e.type === 'device.state') {
        const id = String(e.data.deviceId)
        l.stateChanges.set(id, [...(l.stateChanges.get(id) ?? []), String(e.data.to)])
      }
    }
  })
}

export async function startGateway(
  t: { after(fn: () => Promise<void> | void): void },
  o: { broker: string; cpPublicKey: string; site?: string; gateway?: string; dataDir?: string; ledger?: Ledger },
): Promise<TestAgent> {
  const agent = await startTestAgent(t, {
    ...(o.dataDir ? { dataDir: o.dataDir } : {}),
    flags: { uplink: o.broker, cpKey: [`${KID}=${o.cpPublicKey}`], site: o.site ?? 's1', gateway: o.gateway ?? 'gw1', uplinkBackoffMinMs: '100', uplinkBackoffMaxMs: '500' },
  })
  if (o.ledger) follow(agent, o.ledger)
  return agent
}

export async function register(c: TestCp, agent: TestAgent | { site: string; id: string; publicKey: string }): Promise<void> {
  const body = 'gateway' in agent ? { site: agent.gateway.site, id: agent.gateway.id, publicKey: agent.gateway.key.publicKeyB64 } : agent
  const r = await c.api('POST', '/v1/gateways', body)
  if (r.status !== 201 && r.status !== 200) throw new Error(`registering the gateway: ${r.status} ${r.text}`)
}

/** A gateway the test plays: its key, and events it signs by hand and publishes on the central broker. */
export class HandGateway {
  readonly site: string
  readonly id: string
  readonly publicKey: string
  readonly #key: KeyObject
  seq = 0

  constructor(site: string, id: string) {
    const k = generateKeyPair()
    this.site = site
    this.id = id
    this.publicKey = k.publicKeyB64
    this.#key = k.privateKey
  }

  event(type: string, data: Record<string, unknown>, o: { seq?: number; iat?: number; jti?: string; key?: KeyObject; claims?: Record<string, unknown> } = {}): string {
    const seq = o.seq ?? ++this.seq
    const claims = { iss: this.id, aud: 'cp', iat: o.iat ?? Math.floor(Date.now() / 1000), jti: o.jti ?? newJti('evt.'), seq, type, data, ...o.claims }
    const input = jwsSigningInput(this.id, claims)
    return assembleJws(input, new Uint8Array(sign(null, utf8(input), o.key ?? this.#key)))
  }

  publish(broker: string, payloads: readonly string[], topic = `edgewarden/v1/${this.site}/${this.id}/evt`): Promise<void> {
    return this.#session(broker, async (c) => {
      for (const p of payloads) await c.publishAsync(topic, p, { qos: 1 })
    })
  }

  status(broker: string, status: Record<string, unknown>): Promise<void> {
    return this.#session(broker, async (c) => void (await c.publishAsync(`edgewarden/v1/${this.site}/${this.id}/status`, JSON.stringify(status), { qos: 1, retain: true })))
  }

  /** `fn` on a connection of its own to the central broker, closed after. */
  async #session(broker: string, fn: (c: mqtt.MqttClient) => Promise<void>): Promise<void> {
    const c = await mqtt.connectAsync(broker, { clientId: `hand-${this.id}-${newJti().slice(0, 8)}`, protocolVersion: 4, reconnectPeriod: 0 })
    try {
      await fn(c)
    } finally {
      await c.endAsync()
    }
  }
}
