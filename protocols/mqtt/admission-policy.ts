// The site broker's policy as aedes handlers (aedes injects policy as plain
// functions): admission by device token (PROTOCOL §5), topic isolation, and
// residual-use reporting (§4). Decisions come from the core (DeviceAdmission,
// the registry); this file only speaks aedes.
import type { AedesOptions, AuthenticateError, Client } from 'aedes'
import { TLSSocket } from 'node:tls'
import type { SitePki } from '../../agent/pki/site-pki.ts'
import type { DeviceAdmission, PeerCertificate } from '../../agent/trust/admission.ts'
import { currentRights, grantHolds, inService, keysRemoved, sessionRights, type Rights, type SessionGrant } from '../../agent/trust/rights.ts'
import { AuthThrottle, failureKind, hasTokenShape } from '../../agent/trust/auth-throttle.ts'
import type { DeviceRecord } from '../../agent/devices/device.ts'
import type { Gateway } from '../../agent/gateway.ts'
import type { Logger } from '../../agent/observe/logger.ts'
import type { ResidualUseMonitor } from '../../agent/trust/residual-use.ts'
import { cutOff } from './site-broker.ts'
import { aclCovers, mayPublish, mayReceive, maySubscribe, type TopicAcl } from './topic-rules.ts'

/** Longest topic or filter a device may use; longer ones are refused like any unauthorized one. */
export const MAX_TOPIC_LENGTH = 1024

export class MqttAdmissionPolicy {
  readonly admission: DeviceAdmission
  readonly residual: ResidualUseMonitor
  /** failed-authentication throttling per client id and source address */
  readonly throttle: AuthThrottle
  readonly #gw: Gateway
  readonly #log: Logger
  /** what each live session was admitted with, and the acl it was last judged under */
  readonly #grants = new WeakMap<Client, SessionGrant & { acl: TopicAcl | undefined }>()

  readonly #pki: SitePki | null
  /** who published a topic's retained message (the site broker tells, once it runs) */
  retainedPublisher: (topic: string) => string | undefined = () => undefined

  constructor(gw: Gateway, admission: DeviceAdmission, residual: ResidualUseMonitor, log: Logger, pki: SitePki | null = null) {
    this.#gw = gw
    this.#pki = pki
    this.admission = admission
    this.residual = residual
    this.#log = log
    this.throttle = new AuthThrottle(gw.config.authThrottle, () => gw.nowS())
  }

  /** The aedes handlers. */
  handlers(): Pick<AedesOptions, 'preConnect' | 'authenticate' | 'authorizePublish' | 'authorizeSubscribe' | 'authorizeForward'> {
    return {
      preConnect: (client, packet, done) => {
        // [MQTT-3.1.3-8]: a zero-byte client id with clean session off gets
        // CONNACK 0x02 (identifier rejected). aedes would make one up and go on.
        const p = packet as { clientId?: string; clean?: boolean; protocolVersion?: number }
        if (p.protocolVersion === 4 && !p.clientId && p.clean === false) {
          const conn = client.conn as { write(b: Buffer, cb: () => void): boolean; destroyed?: boolean }
          if (conn.destroyed) return done(new Error('identifier rejected'), false)
          return void conn.write(Buffer.from([0x20, 0x02, 0x00, 0x02]), () => done(new Error('identifier rejected'), false))
        }
        done(null, true)
      },
      authenticate: (client, username, password, done) => this.#authenticate(client, username, password, done),
      authorizePublish: (client, packet, done) => this.#authorizePublish(client, packet, done),
      authorizeSubscribe: (client, sub, done) => {
        const id = client.id
        const record = this.#gw.registry.get(id)
        const rights = this.#rights(client, record)
        if (rights && sub.topic.length <= MAX_TOPIC_LENGTH && maySubscribe(id, rights, record?.spec.acl, sub.topic)) return done(null, sub)
        this.#log.debug({ deviceId: id, filter: sub.topic, rights }, 'subscription denied')
        if (rights === 'wipe-only') this.#residual(client, id, `subscribe to ${sub.topic} beyond wipe-only rights`)
        done(null, null) // SUBACK 0x80 [MQTT-3.9.3]
      },
      // The receiver's rights now (PROTOCOL §4), for live, queued and retained messages alike.
      authorizeForward: (client, packet) => {
        const record = this.#gw.registry.get(client.id)
        const rights = this.#rights(client, record)
        if (!rights || !mayReceive(client.id, rights, record?.spec.acl, packet.topic)) return null
        // A retained message speaks for its publisher as it is now: one a
        // device left before it was cut (a fake reading, a setpoint) is not
        // served while that device is out of service (served again if it is released).
        if (packet.retain) {
          const by = this.retainedPublisher(packet.topic)
          if (by !== undefined && by !== client.id) {
            const publisher = this.#gw.registry.get(by)
            if (!publisher || !inService(publisher.state)) return null
          }
        }
        return packet
      },
    }
  }

  #authenticate(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
    done: (error: AuthenticateError | null, success: boolean | null) => void,
  ): void {
    const remote = remoteOf(client)
    const certificate = this.#peerCertificate(client)
    const block = this.throttle.check(client.id, remote)
    if (block && !certificate && !hasTokenShape(password) && !this.admission.judgesPasswordUnderBlock(client.id, password)) {
      // Refused before anything is parsed: a storm of garbage costs a map
      // lookup each. A password with the shape of a token, or a client
      // certificate the TLS stack already checked, is judged in full below,
      // so a valid credential gets in whoever else failed here (auth-throttle.ts).
      this.throttle.refusedBy(block)
      this.throttle.failure(client.id, remote, 'garbage')
      this.admission.noteRefusal({ protocol: 'mqtt', clientId: client.id, username, ...(remote ? { remote } : {}) }, 'throttled', `too many failed connects for this ${block.scope === 'client' ? 'client id' : 'address'} until ${block.untilS} (a valid token or certificate still gets in)`)
      // A cut identity's attempt is still residual use (PROTOCOL §4).
      this.admission.reportRefused({ protocol: 'mqtt', clientId: client.id, username, ...(remote ? { remote } : {}) }, 'throttled')
      return done(Object.assign(new Error('connect refused: throttled'), { returnCode: 5 } as const), false)
    }
    this.admission
      .admit({ protocol: 'mqtt', clientId: client.id, username, password, ...(remote ? { remote } : {}), ...(certificate ? { certificate } : {}), gone: () => (client as { closed?: boolean }).closed === true || (client.conn as { destroyed?: boolean }).destroyed === true })
      .then(
        (d) => {
          if (!d.ok) {
            const kind = failureKind(d.reason)
            if (kind) this.throttle.failure(client.id, remote, kind)
            // [MQTT-3.2.2-5]: 3 server unavailable (busy: retry), 4 bad user name or password (not a JWS), 5 not authorized (every other refusal)
            return done(Object.assign(new Error(`connect refused: ${d.reason}`), { returnCode: d.reason === 'busy' ? 3 : d.reason === 'malformed-token' ? 4 : 5 } as const), false)
          }
          this.throttle.success(client.id)
          if (certificate) this.#pki?.connectedWith(client.id, certificate)
          this.#grants.set(client, { key: d.key, rights: d.rights, acl: this.#gw.registry.get(client.id)?.spec.acl })
          // aedes registers the session a moment after this: a cut landing in
          // between would find no session to close, so check once more when
          // the connect completes (the enforcer covers every later cut).
          client.once('connected', () => {
            if (this.admission.rightsNow(client.id) === null) {
              this.#log.info({ deviceId: client.id }, 'device was cut while connecting; session closed')
              cutOff(client)
            }
          })
          done(null, true)
        },
        (err: unknown) => {
          this.#log.error({ err, deviceId: client.id }, 'admission failed')
          done(Object.assign(new Error('connect refused'), { returnCode: 5 } as const), false)
        },
      )
  }

  #authorizePublish(client: Client | null, packet: { topic: string; cmd?: string; clientId?: string }, done: (error?: Error | null) => void): void {
    // client is null only for a will aedes publishes after its client is gone: judge it by its owner.
    const id = client?.id ?? packet.clientId
    if (id === undefined) return done(new Error('publish not authorized'))
    const record = this.#gw.registry.get(id)
    const rights = this.#rights(client, record)
    if (rights && packet.topic.length <= MAX_TOPIC_LENGTH && mayPublish(id, rights, record?.spec.acl, packet.topic)) return done(null)
    const what = packet.cmd === 'publish' ? 'publish' : 'will'
    this.#log.debug({ deviceId: id, topic: packet.topic, rights, what }, 'publish denied')
    if (rights === 'wipe-only') this.#residual(client, id, `${what} to ${packet.topic} beyond wipe-only rights`)
    // PROTOCOL §5: never delivered nor retained; aedes closes the connection [MQTT-3.3.5-2]
    done(new Error(`${what} to ${packet.topic} not authorized`))
  }

  /**
   * PROTOCOL §4: whether a live session stays after its device's record
   * changed: the new record still admits it (its key valid, rights no fewer)
   * and grants at least the acl it was judged under. A kept session is then
   * judged under the new record.
   */
  keeps(client: Client, after: DeviceRecord): boolean {
    const g = this.#grants.get(client)
    if (!g) return false
    const rights = grantHolds(this.#gw, g, after)
    if (rights === null || !aclCovers(after.spec.acl, g.acl)) return false
    g.rights = rights
    g.acl = after.spec.acl
    return true
  }

  /** Whether a record change takes anything away (a key, full rights, acl filters): a stored session of the old record must go. */
  narrowed(before: DeviceRecord, after: DeviceRecord): boolean {
    const nowS = this.#gw.nowS()
    return keysRemoved(before, after, nowS) || currentRights(this.#gw, after) !== currentRights(this.#gw, before) || !aclCovers(after.spec.acl, before.spec.acl)
  }

  /**
   * A session's rights now: bound by its own certificate's expiry where it
   * was opened with one (rights.ts sessionRights); without a session (a will
   * published after its client is gone), the record's own (currentRights).
   */
  #rights(client: Client | null, record: DeviceRecord | undefined): Rights | null {
    const r = sessionRights(this.#gw, (client && this.#grants.get(client)?.key) ?? null, record, this.#gw.nowS())
    return r.ok ? r.rights : null
  }

  /** The client certificate of a TLS connection, as admission judges it; undefined without one (or on plain TCP). */
  #peerCertificate(client: Client): PeerCertificate | undefined {
    const sock = client.conn as unknown
    if (!this.#pki || !(sock instanceof TLSSocket)) return undefined
    const cert = sock.getPeerX509Certificate()
    if (!cert) return undefined
    const err = sock.authorizationError
    return { ...this.#pki.inspect(cert), chainError: sock.authorized || err === undefined || err === null ? null : typeof err === 'string' ? err : ((err as { code?: string }).code ?? String(err)) }
  }

  #residual(client: Client | null, deviceId: string, detail: string): void {
    const remote = remoteOf(client)
    this.residual.record({ deviceId, protocol: 'mqtt', detail, ...(remote ? { remote } : {}) })
  }

}

/** The peer address of a TCP or TLS connection (undefined for other streams). */
function remoteOf(client: Client | null): string | undefined {
  return (client?.conn as { remoteAddress?: string } | undefined)?.remoteAddress
}
