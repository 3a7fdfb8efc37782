// Helpers for site-broker tests: enrolled device identities, tokens, mqtt.js
// and mosquitto clients against the running agent.
import { spawn, type ChildProcess } from 'node:child_process'
import type { EventEmitter } from 'node:events'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { keygen, publicKeyToB64 } from '../../firmware-hooks/crypto.ts'
import { mintToken, type MintTokenOptions } from '../../firmware-hooks/token.ts'
import type { Gateway } from '../../agent/gateway.ts'
import type { DeviceSpec } from '../../agent/devices/device.ts'
import { nextEvent } from './wait.ts'

export interface TestDevice {
  id: string
  secretKey: Uint8Array
  publicKey: string
}

export const WHO = { actor: 'local:test' }

export async function enrollDevice(gw: Gateway, id: string, spec: Partial<DeviceSpec> = {}): Promise<TestDevice> {
  const kp = await keygen()
  const publicKey = publicKeyToB64(kp.publicKey)
  await gw.enroll({ id, publicKey, ...spec }, WHO)
  return { id, secretKey: kp.secretKey, publicKey }
}

export function tokenFor(gw: Gateway, dev: TestDevice, o: Partial<MintTokenOptions> = {}): Promise<string> {
  return mintToken({ deviceId: dev.id, gatewayId: gw.id, secretKey: dev.secretKey, nowS: gw.nowS(), ...o })
}

export type ConnectResult = { ok: true; client: MqttClient } | { ok: false; code: number | undefined; message: string }

/** mqtt.js, MQTT 3.1.1, no automatic reconnect: resolves on CONNACK 0 or on the refusal. */
export function mqttConnect(port: number, opts: IClientOptions & { url?: string }, timeoutMs = 10_000): Promise<ConnectResult> {
  const client = mqtt.connect(opts.url ?? `mqtt://127.0.0.1:${port}`, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: timeoutMs, clean: true, ...opts })
  return new Promise((resolve) => {
    const timer = setTimeout(() => finish({ ok: false, code: undefined, message: 'timeout' }), timeoutMs)
    const finish = (r: ConnectResult): void => {
      clearTimeout(timer)
      client.removeListener('connect', onConnect)
      client.removeListener('error', onError)
      client.removeListener('close', onClose)
      if (!r.ok) client.end(true)
      else client.on('error', () => {}) // later errors end up as 'close'
      resolve(r)
    }
    const onConnect = (): void => finish({ ok: true, client })
    const onError = (err: Error & { code?: number | string }): void =>
      finish({ ok: false, code: typeof err.code === 'number' ? err.code : undefined, message: err.message })
    const onClose = (): void => finish({ ok: false, code: undefined, message: 'closed before CONNACK' })
    client.on('connect', onConnect).on('error', onError).on('close', onClose)
  })
}

export async function connectDevice(gw: Gateway, port: number, dev: TestDevice, extra: IClientOptions = {}): Promise<MqttClient> {
  const r = await mqttConnect(port, { clientId: dev.id, username: dev.id, password: await tokenFor(gw, dev), ...extra })
  if (!r.ok) throw new Error(`device ${dev.id} refused: code ${r.code} ${r.message}`)
  return r.client
}

export function closed(client: MqttClient): Promise<void> {
  if (client.disconnected || (!client.connected && !client.reconnecting && client.stream?.destroyed)) return Promise.resolve()
  return new Promise((resolve) => client.once('close', () => resolve()))
}

/** The first event `name` whose arguments satisfy `pred`, within `timeoutMs` (wait.ts nextEvent). */
export const eventWhere = <A extends unknown[]>(emitter: EventEmitter, name: string, pred: (...args: A) => boolean, timeoutMs = 10_000): Promise<A> => nextEvent<A>(emitter, name, pred, timeoutMs)

/** Messages a client receives, and a way to await one. */
export class Inbox {
  readonly messages: { topic: string; payload: string; retain: boolean }[] = []
  readonly #waiters: { pred: (m: { topic: string; payload: string }) => boolean; resolve: () => void }[] = []
  constructor(client: MqttClient) {
    client.on('message', (topic, payload, packet) => {
      const m = { topic, payload: payload.toString(), retain: packet.retain }
      this.messages.push(m)
      for (const w of [...this.#waiters]) if (w.pred(m)) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1)
        w.resolve()
      }
    })
  }
  waitFor(pred: (m: { topic: string; payload: string }) => boolean, timeoutMs = 10_000): Promise<void> {
    if (this.messages.some(pred)) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`message not received within ${timeoutMs} ms; got ${JSON.stringify(this.messages)}`)), timeoutMs)
      this.#waiters.push({ pred, resolve: () => (clearTimeout(timer), resolve()) })
    })
  }
  topics(): string[] {
    return this.messages.map((m) => m.topic)
  }
}

export interface Proc {
  proc: ChildProcess
  stdout: () => string
  stderr: () => string
  exited: Promise<number | null>
  kill(): void
}

/** A mosquitto client (mosquitto_pub / mosquitto_sub), killed at the latest after `timeoutMs`. */
export function mosquitto(cmd: 'mosquitto_pub' | 'mosquitto_sub', args: string[], timeoutMs = 15_000): Proc {
  const proc = spawn(cmd, ['-V', 'mqttv311', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  proc.stdout!.on('data', (c: Buffer) => (out += c.toString()))
  proc.stderr!.on('data', (c: Buffer) => (err += c.toString()))
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs)
  const exited = new Promise<number | null>((resolve) =>
    proc.once('exit', (code) => {
      clearTimeout(timer)
      resolve(code)
    }),
  )
  return { proc, stdout: () => out, stderr: () => err, exited, kill: () => void (proc.exitCode === null && proc.kill('SIGKILL')) }
}

export const mqttArgs = (port: number, id: string, password: string, user = id): string[] => ['-h', '127.0.0.1', '-p', String(port), '-i', id, '-u', user, '-P', password]

/** Bounded concurrency over items. */
export async function pool<T, R>(items: T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i]!, i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return out
}

/** Subscribe to several filters in one SUBSCRIBE; the granted QoS of each, in order (128: denied), read off the SUBACK itself. */
export async function subscribeQos(client: MqttClient, filters: [string, 0 | 1 | 2][]): Promise<number[]> {
  const map: Record<string, { qos: 0 | 1 | 2 }> = {}
  for (const [f, qos] of filters) map[f] = { qos }
  let granted: number[] | null = null
  const onPacket = (p: { cmd: string }): void => {
    if (p.cmd === 'suback') granted = ((p as { granted?: number[] }).granted ?? []).slice()
  }
  client.on('packetreceive', onPacket)
  try {
    await client.subscribeAsync(map).catch((err: unknown) => {
      if (!granted) throw err // mqtt.js rejects when any filter is denied; the SUBACK says which
    })
  } finally {
    client.off('packetreceive', onPacket)
  }
  if (!granted) throw new Error('no SUBACK')
  return granted
}
