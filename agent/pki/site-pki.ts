// The site PKI at work (PROTOCOL §9): issuing device certificates (enroll
// with a CSR, EST, renewal with an ack's CSR), keeping the CRL in step with
// the registry (revoke and retire revoke, quarantine holds, release lifts
// the hold, a replaced certificate is superseded), the overlap of a renewal
// (the old certificate valid beside the new one until the device connects
// with the new one or renewOverlapS passes), and the CRL's freshness. The
// registry is the truth: a certificate's `revoked`/`held` in the record is
// what admission reads; the CRL is how the rest of the world learns it.
import { X509Certificate } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { CertificateRecord, Criticality, DeviceRecord } from '../devices/device.ts'
import type { Change, Gateway } from '../gateway.ts'
import type { Logger } from '../observe/logger.ts'
import { EdgewardenError } from '../runtime/errors.ts'
import { readPrivateKeyFile, writePrivateKeyFile } from '../store/keys.ts'
import type { WriteOp } from '../store/store.ts'
import { certificateFacts, DEVICE_URI_PREFIX, deviceIdOf, pemBlocks, SiteCa, x509, type CsrInfo, type IssuedCertificate } from './ca.ts'
import { RevocationList, type RevocationReason } from './crl.ts'

/** How a certificate came to be (`certificate.issued` via, PROTOCOL §3). */
export type IssuedVia = 'enroll' | 'est-enroll' | 'est-reenroll' | 'mqtt-renew' | 'opcua-push'

/** A revoke whose reason says the key may be in other hands is keyCompromise (§9); any other, cessationOfOperation. */
const COMPROMISE = /compromis|stolen|theft|lost|leak|tamper/i

export interface PkiOptions {
  log: Logger
}

export class SitePki {
  readonly ca: SiteCa
  readonly crl: RevocationList
  /** CAs of other issuers whose pinned certificates are admitted (--device-ca) */
  readonly deviceCaPem: string[]
  readonly #gw: Gateway
  readonly #log: Logger
  #chain: Promise<void> = Promise.resolve()
  readonly #pending = new Set<Promise<unknown>>()
  readonly #crlListeners: (() => void)[] = []

  private constructor(gw: Gateway, ca: SiteCa, crl: RevocationList, deviceCaPem: string[], log: Logger) {
    this.#gw = gw
    this.ca = ca
    this.crl = crl
    this.deviceCaPem = deviceCaPem
    this.#log = log
  }

  static async open(gw: Gateway, o: PkiOptions): Promise<SitePki> {
    const c = gw.config
    const ca = await SiteCa.open({
      dataDir: c.dataDir,
      ...(c.pki.caCertFile ? { caCertFile: c.pki.caCertFile } : {}),
      ...(c.pki.caKeyFile ? { caKeyFile: c.pki.caKeyFile } : {}),
      site: c.site,
      gateway: c.gateway,
      nowS: gw.nowS(),
    })
    const deviceCaPem: string[] = []
    for (const file of c.pki.deviceCaFiles) {
      let text: string
      try {
        text = readFileSync(file, 'utf8')
      } catch (err) {
        throw new EdgewardenError('PKI', `cannot read deviceCa ${file}: ${(err as Error).message}`, { cause: err })
      }
      const blocks = pemBlocks(text)
      if (blocks.length === 0) throw new EdgewardenError('PKI', `deviceCa ${file} holds no PEM certificate`)
      deviceCaPem.push(...blocks)
    }
    const crl = await RevocationList.load(gw.store, ca)
    const pki = new SitePki(gw, ca, crl, deviceCaPem, o.log)
    if (ca.origin === 'created') o.log.info({ fingerprint: ca.fingerprint }, 'site CA created')
    gw.onRecordChange((before, after) => pki.#track(before, after))
    return pki
  }

  /** Every CA a device's client certificate may chain to (the TLS listener's `ca`). */
  get trustPem(): string[] {
    return [...this.ca.trustPem, ...this.deviceCaPem]
  }

  /** Lifetime of a certificate issued now for a device of this criticality. */
  lifetimeFor(criticality: Criticality | undefined): number {
    return this.#gw.config.pki.certLifetimeS[criticality ?? 'medium']
  }

  /** Check a request (DER) and issue its certificate for `deviceId` (whatever the request names). */
  async issue(deviceId: string, csrDer: Uint8Array, criticality: Criticality | undefined): Promise<{ cert: IssuedCertificate; csr: CsrInfo }> {
    const csr = await this.ca.parseCsr(csrDer)
    const cert = await this.ca.issueDevice({ deviceId, csr, lifetimeS: this.lifetimeFor(criticality), nowS: this.#gw.nowS() })
    return { cert, csr }
  }

  /** The record and event of a certificate just issued. */
  record(cert: IssuedCertificate, via: IssuedVia): CertificateRecord {
    return { serial: cert.serial, sha256: cert.sha256, notBefore: cert.notBefore, notAfter: cert.notAfter, issuer: 'site', role: 'current', via, pem: cert.pem }
  }

  issuedEvent(deviceId: string, c: CertificateRecord): Change['events'] {
    return [{ type: 'certificate.issued', data: { deviceId, serial: c.serial, sha256: c.sha256, notAfter: c.notAfter, via: c.via ?? 'enroll' } }]
  }

  /** The chain a device installs: its certificate, then the CA chain. */
  chainFor(cert: { pem?: string }): string[] {
    return [...(cert.pem ? [cert.pem] : []), ...this.ca.chainPem]
  }

  /**
   * A renewal or re-enrollment (§9): `cert` becomes the device's current
   * certificate; the one it replaces stays valid beside it as `previous`
   * (until the device connects with the new one, or renewOverlapS). Older
   * ones are superseded now. `replacing`: the certificate the device holds
   * now, when that is not simply the current one (an OPC UA push, §8: the
   * one its server presented; a pinned certificate of its own is recorded
   * as `external`, so that it is refused once the overlap ends).
   */
  async install(
    deviceId: string,
    cert: IssuedCertificate,
    via: IssuedVia,
    extra: Change = {},
    opts: { replacing?: { sha256: string; serial?: string; notBefore?: number; notAfter?: number; issuerName?: string }; actionId?: string } = {},
  ): Promise<CertificateRecord> {
    const gw = this.#gw
    const fresh: CertificateRecord = { ...this.record(cert, via), ...(opts.actionId !== undefined ? { actionId: opts.actionId } : {}) }
    const replacing = opts.replacing?.sha256.toLowerCase()
    await gw.updateDevice(
      deviceId,
      (r) => {
        const old = (r.certificates ?? []).filter((c) => !c.revoked)
        const held = replacing === undefined ? undefined : old.find((c) => c.sha256 === replacing)
        const current: CertificateRecord | undefined =
          replacing === undefined
            ? old.find((c) => c.role === 'current')
            : (held ?? {
                serial: opts.replacing?.serial ?? '',
                sha256: replacing,
                notBefore: opts.replacing?.notBefore ?? 0,
                notAfter: opts.replacing?.notAfter ?? 0,
                issuer: 'external',
                ...(opts.replacing?.issuerName ? { issuerName: opts.replacing.issuerName } : {}),
                role: 'previous',
              })
        const rest = (r.certificates ?? []).filter((c) => c !== current)
        // with `replacing`, every other valid certificate is gone from the record: #track supersedes it
        const kept = replacing === undefined ? rest.filter((c) => c.role !== 'previous' || c.revoked) : rest.filter((c) => c.revoked)
        r.certificates = [fresh, ...(current ? [{ ...current, role: 'previous' as const }] : []), ...kept]
        r.credentialExpiresAt = fresh.notAfter
        r.credentialIssuedAt = gw.nowS()
        delete r.credentialNotice
        if (r.bootstrap && r.bootstrap.spentAt === undefined) r.bootstrap = { ...r.bootstrap, spentAt: gw.nowS() }
        return r
      },
      {
        ...extra,
        audit: [{ actor: 'gateway', action: 'certificate.issued', subject: deviceId, data: { serial: fresh.serial, sha256: fresh.sha256, notAfter: fresh.notAfter, via } }, ...(extra.audit ?? [])],
        events: [...(this.issuedEvent(deviceId, fresh) ?? []), ...(extra.events ?? [])],
      },
    )
    return fresh
  }

  /**
   * A device connected with its current certificate: the overlap has done
   * its job, and the certificate it replaced goes on the CRL as superseded.
   */
  connectedWith(deviceId: string, peer: { sha256: string; serial: string; notBefore: number; notAfter: number; issuerName: string }): void {
    const r = this.#gw.registry.get(deviceId)
    const entry = r?.certificates?.find((c) => c.sha256 === peer.sha256)
    if (!r || !entry) return
    // A pinned certificate of another CA is known by its hash only until it is first seen: learn the rest (for the inventory and the revocation event).
    if (entry.issuer === 'external' && entry.serial === '') {
      this.#serially(async () => {
        await this.#gw.updateDevice(deviceId, (d) => ({
          ...d,
          certificates: (d.certificates ?? []).map((c) => (c.sha256 === peer.sha256 ? { ...c, serial: peer.serial, notBefore: peer.notBefore, notAfter: peer.notAfter, issuerName: peer.issuerName } : c)),
          credentialExpiresAt: peer.notAfter,
        }))
      })
    }
    if (entry.role !== 'current' || !r.certificates!.some((c) => c.role === 'previous' && !c.revoked)) return
    this.#serially(() => this.#supersedePrevious(deviceId, 'the device connected with its new certificate'))
  }

  /**
   * The gateway's TLS server certificate (mqtts, EST), issued by the site
   * CA for `sans` and kept in <data-dir>/pki/server.*: issued again when
   * missing, for other SANs, or within 30 days of its end. PEM chain and key.
   */
  async serverCertificate(sans: string[]): Promise<{ cert: string; key: string }> {
    const dir = join(this.#gw.config.dataDir, 'pki')
    const certFile = join(dir, 'server.pem')
    const keyFile = join(dir, 'server.key')
    const nowS = this.#gw.nowS()
    const want = [...sans].sort().join(',')
    if (existsSync(certFile) && existsSync(keyFile)) {
      const certPem = readFileSync(certFile, 'utf8')
      const leaf = new X509Certificate(certPem)
      const sansNow = (leaf.subjectAltName ?? '').split(/,\s*/).map((e) => e.replace(/^(DNS|IP Address):/, '')).filter(Boolean).sort().join(',')
      const fresh = Date.parse(leaf.validTo) / 1000 - nowS > 30 * 86400
      if (fresh && sansNow === want && this.ca.issued(leaf)) return { cert: certPem, key: readPrivateKeyFile(keyFile).export({ format: 'pem', type: 'pkcs8' }) as string }
    }
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    const issued = await this.ca.issueServer({ sans, lifetimeS: 365 * 86400, nowS, commonName: `${this.#gw.site}/${this.#gw.id}` })
    const chain = [issued.certPem, ...this.ca.chainPem].join('')
    rmSync(keyFile, { force: true })
    writePrivateKeyFile(keyFile, issued.keyPem)
    writeFileSync(`${certFile}.tmp`, chain, { mode: 0o644 })
    renameSync(`${certFile}.tmp`, certFile)
    this.#log.info({ sans, serial: issued.facts.serial, notAfter: issued.facts.notAfter }, 'TLS server certificate issued by the site CA')
    return { cert: chain, key: issued.keyPem }
  }

  /** Maintenance: overlaps past renewOverlapS end (superseded), external certificates learnt, the CRL signed when stale. */
  async tick(nowS: number): Promise<void> {
    const overlap = this.#gw.config.renewOverlapS
    for (const r of [...this.#gw.registry.mayHoldProtocolOrCertificate()]) {
      const cur = r.certificates?.find((c) => c.role === 'current')
      if (!cur || !r.certificates!.some((c) => c.role === 'previous' && !c.revoked)) continue
      const since = r.credentialIssuedAt ?? cur.notBefore
      // Not while the device has yet to receive its new certificate: ending the overlap then would leave it with neither.
      // (An OPC UA push, §8, installs before the device applies it: its renew is settled only once ApplyChanges answered.)
      const push = r.spec.opcua?.pushManagement === true
      if (this.#gw.actions.pending(r.spec.id).some((a) => a.act === 'install-cert' || (push && a.act === 'renew'))) continue
      if (nowS - since >= overlap) await this.#serially(() => this.#supersedePrevious(r.spec.id, `the ${overlap} s overlap of the renewal ended`))
    }
    if (this.crl.stale(nowS)) await this.signCrl()
  }

  /** Sign the CRL now (the maintenance pass and every change call this). */
  signCrl(): Promise<void> {
    return this.crl.sign(this.#gw.store, this.#gw.nowS()).then(
      () => {
        for (const l of this.#crlListeners) {
          try {
            l()
          } catch (err) {
            this.#log.error({ err }, 'a CRL listener failed')
          }
        }
      },
      (err: unknown) => this.#log.error({ err }, 'signing the CRL failed'),
    )
  }

  /**
   * Called after every signing of the CRL (a revoke, retire, quarantine,
   * release, supersede, or the daily signing): stores that hold a copy of
   * it (the OPC UA relay's issuer store, §8) replace theirs. Returns the
   * unsubscribe.
   */
  onCrlSigned(listener: () => void): () => void {
    this.#crlListeners.push(listener)
    return () => {
      const i = this.#crlListeners.indexOf(listener)
      if (i >= 0) this.#crlListeners.splice(i, 1)
    }
  }

  /** Whether a CRL (DER) is one this site CA signed (an older one of the site's, on a device's trust list). */
  async issuedCrl(der: Buffer): Promise<boolean> {
    const m = await x509()
    try {
      const crl = new m.X509Crl(der)
      const { issuer } = await this.ca.crlSigner()
      return crl.issuer === issuer.subject && (await crl.verify({ publicKey: issuer.publicKey }))
    } catch {
      return false
    }
  }

  /** DER of the site CA and the CAs device certificates may also chain to (a rollover's previous CA). */
  caCertificatesDer(): Buffer[] {
    return this.ca.trustPem.map((pem) => Buffer.from(new X509Certificate(pem).raw))
  }

  /**
   * PROTOCOL §8: the application certificate of an OPC UA device, from the
   * request its server made (CreateSigningRequest). The gateway sets the
   * names: the applicationUri the request asks for (unless it claims an
   * edgewarden identity other than this device's), the device's own
   * `urn:edgewarden:device:<id>`, and the host the record's endpoint names;
   * host names and addresses the request claims are dropped (a device must
   * not get a site certificate for another host).
   */
  async issueOpcua(deviceId: string, csrDer: Uint8Array, o: { criticality: Criticality | undefined; host: string }): Promise<IssuedCertificate> {
    const csr = await this.ca.parseOpcuaCsr(csrDer)
    const own = `${DEVICE_URI_PREFIX}${deviceId}`
    for (const u of csr.uris) {
      if ((u.startsWith(DEVICE_URI_PREFIX) || u.startsWith('urn:edgewarden:gateway:')) && u !== own) {
        throw new EdgewardenError('CSR_INVALID', `the request names ${u}: an OPC UA device's certificate names no edgewarden identity but its own (${own})`)
      }
    }
    const applicationUri = csr.uris.find((u) => u !== own) ?? own
    return this.ca.issueOpcuaApplication({
      commonName: deviceId,
      applicationUri,
      uris: [own],
      hosts: [o.host],
      publicKey: csr.publicKey,
      lifetimeS: this.lifetimeFor(o.criticality),
      nowS: this.#gw.nowS(),
    })
  }

  /**
   * The gateway's own OPC UA application certificate (the client of every
   * device session, §8), issued by the site CA for the key its OPC UA PKI
   * holds (`spkiDer`): a PEM chain (the certificate, then the CA chain) to
   * store, or null when `currentPem` is still good (issued by this CA for
   * this key and URI, more than 30 days left).
   */
  async opcuaClientCertificate(o: { spkiDer: Buffer; applicationUri: string; hosts: string[]; currentPem?: string }): Promise<string | null> {
    const nowS = this.#gw.nowS()
    if (o.currentPem) {
      try {
        const leaf = new X509Certificate(o.currentPem)
        const uris = (leaf.subjectAltName ?? '').split(/,\s*/).filter((e) => e.startsWith('URI:')).map((e) => e.slice(4))
        const sameKey = Buffer.from(leaf.publicKey.export({ type: 'spki', format: 'der' })).equals(o.spkiDer)
        // issued by the signing CA (after a rollover, the new one issues it again)
        const bySigningCa = leaf.checkIssued(this.ca.certificate) && leaf.verify(this.ca.certificate.publicKey)
        if (sameKey && uris[0] === o.applicationUri && bySigningCa && Date.parse(leaf.validTo) / 1000 - nowS > 30 * 86400) return null
      } catch {}
    }
    const issued = await this.ca.issueOpcuaApplication({
      commonName: `${this.#gw.site}/${this.#gw.id}`,
      applicationUri: o.applicationUri,
      hosts: o.hosts,
      publicKey: o.spkiDer,
      lifetimeS: 365 * 86400,
      nowS,
    })
    this.#log.info({ serial: issued.serial, notAfter: issued.notAfter }, 'OPC UA client certificate issued by the site CA')
    return [issued.pem, ...this.ca.chainPem].join('')
  }

  /**
   * PROTOCOL §8: an OPC UA device presented a certificate of the site CA
   * that names it and that its record does not hold yet (one provisioned
   * with the site CA before enrollment): it is recorded as the device's
   * current certificate, so that a revoke, quarantine or retire puts it on
   * the CRL. For a device with push management it is also the credential
   * the renewal schedule follows.
   */
  async learnOpcua(deviceId: string, der: Buffer): Promise<void> {
    const x = new X509Certificate(der)
    if (!this.ca.issued(x) || deviceIdOf(x) !== deviceId) throw new TypeError(`not a site certificate of ${deviceId}`)
    const f = certificateFacts(x)
    await this.#serially(async () => {
      const r = this.#gw.registry.get(deviceId)
      if (!r || r.certificates?.some((c) => c.sha256 === f.sha256)) return
      const push = r.spec.opcua?.pushManagement === true
      await this.#gw.updateDevice(
        deviceId,
        (d) => {
          const others = (d.certificates ?? []).map((c) => (c.role === 'current' && !c.revoked ? { ...c, role: 'previous' as const } : c))
          d.certificates = [{ ...f, issuer: 'site', role: 'current', pem: x.toString() }, ...others]
          if (push) {
            d.credentialExpiresAt = f.notAfter
            d.credentialIssuedAt = f.notBefore
            delete d.credentialNotice
          }
          return d
        },
        { audit: [{ actor: 'gateway', action: 'opcua.certificate-learned', subject: deviceId, data: { serial: f.serial, sha256: f.sha256, notAfter: f.notAfter } }] },
      )
    })
  }

  /** At start: the CRL and every record's certificates in step (a crash between a state change and its CRL write is carried on), and a fresh CRL. */
  async reconcile(): Promise<void> {
    for (const r of [...this.#gw.registry.mayHoldProtocolOrCertificate()]) if (r.certificates?.length) await this.#serially(() => this.#apply(undefined, r.spec.id))
    if (this.crl.stale(this.#gw.nowS())) await this.signCrl()
  }

  /** PROTOCOL §6: once the CRL is in step with a retired device, the serials of its site certificates on it for its retirement. */
  async revokedAtRetirement(deviceId: string): Promise<string[]> {
    await this.idle()
    const r = this.#gw.registry.get(deviceId)
    return (r?.certificates ?? []).filter((c) => c.issuer === 'site' && c.serial && c.revoked?.reason === 'cessationOfOperation').map((c) => c.serial)
  }

  /** Resolves once every CRL change asked for so far is written and signed. */
  async idle(): Promise<void> {
    await this.#chain
    while (this.#pending.size) await Promise.all([...this.#pending])
  }

  /**
   * What a TLS client certificate is, for admission: the device id its SAN
   * names, its facts, and whether it chains to a CA devices may use.
   */
  inspect(cert: X509Certificate): { deviceId: string | null; sha256: string; serial: string; notBefore: number; notAfter: number; siteIssued: boolean; issuerName: string } {
    const f = certificateFacts(cert)
    return { deviceId: deviceIdOf(cert), ...f, siteIssued: this.ca.issued(cert), issuerName: cert.issuer.replace(/\n/g, ', ') }
  }

  #track(before: DeviceRecord | undefined, after: DeviceRecord): void {
    if (!before?.certificates?.length && !after.certificates?.length) return
    if (before && before.state === after.state && sameCertificates(before, after)) return
    const id = after.spec.id
    const gone = (before?.certificates ?? []).filter((c) => !c.revoked && !(after.certificates ?? []).some((n) => n.sha256 === c.sha256))
    this.#serially(() => this.#apply(gone, id))
  }

  #serially(fn: () => Promise<void>): Promise<void> {
    const run = this.#chain.then(fn).catch((err: unknown) => this.#log.error({ err }, 'keeping the CRL in step failed'))
    this.#chain = run
    this.#pending.add(run)
    void run.finally(() => this.#pending.delete(run))
    return run
  }

  /** Bring the CRL and the record's certificate flags to what the device's state calls for; `gone`: certificates the record no longer holds (superseded). */
  async #apply(gone: CertificateRecord[] | undefined, deviceId: string): Promise<void> {
    const gw = this.#gw
    const r = gw.registry.get(deviceId)
    if (!r) return
    const nowS = gw.nowS()
    const revokeReason: RevocationReason | null =
      r.state === 'revoked' ? (COMPROMISE.test(r.stateReason ?? '') ? 'keyCompromise' : 'cessationOfOperation') : r.state === 'retired' ? 'cessationOfOperation' : null
    const hold = r.state === 'quarantined'
    const ops: WriteOp[] = []
    const events: NonNullable<Change['events']> = []
    const audit: NonNullable<Change['audit']> = []
    const toRevoke: { serial: string; deviceId: string; reason: RevocationReason }[] = []
    const report = (c: CertificateRecord, reason: RevocationReason): void => {
      const external = c.issuer === 'external'
      const data = { deviceId, serial: c.serial, reason, ...(external ? { issuer: 'external', issuerName: c.issuerName ?? 'unknown (never seen)', sha256: c.sha256 } : {}) }
      events.push({ type: 'certificate.revoked', data })
      audit.push({ actor: 'gateway', action: 'certificate.revoked', subject: deviceId, data })
      if (!external && c.serial) toRevoke.push({ serial: c.serial, deviceId, reason })
    }
    for (const c of gone ?? []) report(c, 'superseded')
    let changed = false
    const certificates = (r.certificates ?? []).map((c) => {
      if (c.revoked) return c
      if (revokeReason) {
        report(c, revokeReason)
        changed = true
        return { ...c, revoked: { reason: revokeReason as Exclude<RevocationReason, 'certificateHold'>, at: nowS }, held: false }
      }
      if (hold && !c.held) {
        report(c, 'certificateHold')
        changed = true
        return { ...c, held: true }
      }
      if (!hold && c.held) {
        changed = true
        return { ...c, held: false }
      }
      return c
    })
    const releases = (r.certificates ?? []).filter((c) => c.held && !hold && !revokeReason && c.serial).map((c) => c.serial)
    const holds = hold ? certificates.filter((c) => c.held && !c.revoked && c.issuer === 'site' && c.serial).map((c) => ({ serial: c.serial, deviceId, reason: 'certificateHold' as const })) : []
    ops.push(...this.crl.revoke([...toRevoke.filter((x) => x.reason !== 'certificateHold'), ...holds], nowS), ...this.crl.release(releases))
    if (!changed && ops.length === 0 && events.length === 0) return
    if (changed) {
      await gw.updateDevice(deviceId, (d) => ({ ...d, certificates }), { ops, events, audit })
    } else {
      await gw.commit({ ops, events, audit })
    }
    if (ops.length) await this.signCrl()
  }

  async #supersedePrevious(deviceId: string, why: string): Promise<void> {
    const gw = this.#gw
    const r = gw.registry.get(deviceId)
    const prev = r?.certificates?.filter((c) => c.role === 'previous' && !c.revoked) ?? []
    if (!r || prev.length === 0) return
    const nowS = gw.nowS()
    const ops = this.crl.revoke(
      prev.filter((c) => c.serial && c.issuer === 'site').map((c) => ({ serial: c.serial, deviceId, reason: 'superseded' as const })),
      nowS,
    )
    await gw.updateDevice(
      deviceId,
      (d) => ({ ...d, certificates: (d.certificates ?? []).map((c) => (c.role === 'previous' && !c.revoked ? { ...c, revoked: { reason: 'superseded' as const, at: nowS } } : c)) }),
      {
        ops,
        audit: prev.map((c) => ({ actor: 'gateway', action: 'certificate.revoked', subject: deviceId, data: { serial: c.serial, reason: 'superseded', why, ...externalOf(c) } })),
        events: prev.map((c) => ({ type: 'certificate.revoked', data: { deviceId, serial: c.serial, reason: 'superseded', ...externalOf(c) } })),
      },
    )
    this.#log.info({ deviceId, serials: prev.map((c) => c.serial), why }, 'previous certificate superseded')
    await this.signCrl()
  }
}

/** §9: the revocation of another CA's certificate names it as such, so the control plane revokes it where it was issued. */
function externalOf(c: CertificateRecord): Record<string, string> {
  return c.issuer === 'external' ? { issuer: 'external', issuerName: c.issuerName ?? 'unknown (never seen)', sha256: c.sha256 } : {}
}

function sameCertificates(a: DeviceRecord, b: DeviceRecord): boolean {
  return JSON.stringify(a.certificates ?? []) === JSON.stringify(b.certificates ?? [])
}

