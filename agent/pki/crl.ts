// The site CA's certificate revocation list (PROTOCOL §9): every revoked or
// held serial with its RFC 5280 reason, kept in the store; the CRL signed
// again on every change and at least daily, its CRL Number growing, its
// nextUpdate at most 7 days ahead and never in the past while the agent
// runs (a lapsed CRL locks every client of a strict verifier out). Served as
// DER at /pki/crl. Revocation decisions are the registry's: the CRL is how
// the rest of the world (Mosquitto, OpenSSL, OPC UA stacks) learns them.
import type { X509Certificate } from 'node:crypto'
import type { Store, WriteOp } from '../store/store.ts'
import { pemOf, x509, type SiteCa } from './ca.ts'

/** RFC 5280 §5.3.1 reasons the gateway uses (§9). */
export type RevocationReason = 'keyCompromise' | 'cessationOfOperation' | 'superseded' | 'certificateHold'
const REASON_CODE: Record<RevocationReason, number> = { keyCompromise: 1, superseded: 4, cessationOfOperation: 5, certificateHold: 6 }

export interface Revocation {
  serial: string
  deviceId: string
  reason: RevocationReason
  /** seconds since the epoch */
  at: number
}

/** §9: nextUpdate is this far ahead of each signing; the CRL is signed again at least once a REFRESH. */
export const CRL_VALIDITY_S = 7 * 86400
export const CRL_REFRESH_S = 86400

const REVOKED_PREFIX = 'pki!revoked!'
const CRL_KEY = 'meta!crl'

interface SignedCrl {
  number: number
  thisUpdate: number
  nextUpdate: number
  /** base64 DER */
  der: string
}

export class RevocationList {
  readonly #ca: SiteCa
  readonly #entries = new Map<string, Revocation>()
  #signed: SignedCrl | null
  /** changes since the last signing */
  #dirty = false
  #signing: Promise<void> = Promise.resolve()

  private constructor(ca: SiteCa, signed: SignedCrl | null) {
    this.#ca = ca
    this.#signed = signed
  }

  static async load(store: Store, ca: SiteCa): Promise<RevocationList> {
    const signed = (await store.getJson<SignedCrl>(CRL_KEY)) ?? null
    const crl = new RevocationList(ca, signed)
    for await (const [, v] of store.scan(REVOKED_PREFIX)) {
      const r = JSON.parse(v) as Revocation
      crl.#entries.set(r.serial, r)
    }
    return crl
  }

  /** The CRL as last signed, from a store no agent holds (`edgewarden ca show` while the agent is stopped). */
  static async stored(store: Store): Promise<(Omit<SignedCrl, 'der'> & { der: Buffer }) | null> {
    const s = await store.getJson<SignedCrl>(CRL_KEY)
    return s ? { ...s, der: Buffer.from(s.der, 'base64') } : null
  }

  /** The reason a serial is on the list, if it is. */
  reasonOf(serial: string): RevocationReason | undefined {
    return this.#entries.get(serial.toLowerCase())?.reason
  }

  entries(): IterableIterator<Revocation> {
    return this.#entries.values()
  }

  /** Put serials on the list (memory now; the ops make it durable). A hold may become a revocation; a revocation stays one. */
  revoke(items: Omit<Revocation, 'at'>[], atS: number): WriteOp[] {
    const ops: WriteOp[] = []
    for (const it of items) {
      const serial = it.serial.toLowerCase()
      const before = this.#entries.get(serial)
      if (before && before.reason !== 'certificateHold') continue
      if (before?.reason === it.reason) continue
      const r: Revocation = { ...it, serial, at: atS }
      this.#entries.set(serial, r)
      ops.push({ type: 'put', key: REVOKED_PREFIX + serial, value: JSON.stringify(r) })
      this.#dirty = true
    }
    return ops
  }

  /** Lift holds (release of a quarantine, §9): only certificateHold entries leave the list. */
  release(serials: string[]): WriteOp[] {
    const ops: WriteOp[] = []
    for (const s of serials) {
      const serial = s.toLowerCase()
      if (this.#entries.get(serial)?.reason !== 'certificateHold') continue
      this.#entries.delete(serial)
      ops.push({ type: 'del', key: REVOKED_PREFIX + serial })
      this.#dirty = true
    }
    return ops
  }

  /** Whether the CRL must be signed (again) now: never signed, changed, a day old, or its nextUpdate within a day. */
  stale(nowS: number): boolean {
    const s = this.#signed
    return s === null || this.#dirty || nowS - s.thisUpdate >= CRL_REFRESH_S || s.nextUpdate - nowS <= CRL_REFRESH_S || nowS < s.thisUpdate
  }

  /**
   * Sign the CRL for `nowS` with the next CRL Number and write it; calls
   * are serialised, so numbers grow in the order of signing.
   */
  sign(store: Store, nowS: number): Promise<void> {
    const run = this.#signing.then(async () => {
      const m = await x509()
      const { AsnConvert } = await import('@peculiar/asn1-schema')
      const { CRLNumber, id_ce_cRLNumber } = await import('@peculiar/asn1-x509')
      const { issuer, key } = await this.#ca.crlSigner()
      const number = (this.#signed?.number ?? 0) + 1
      this.#dirty = false
      const crl = await m.X509CrlGenerator.create({
        issuer: issuer.subject,
        thisUpdate: new Date(nowS * 1000),
        nextUpdate: new Date((nowS + CRL_VALIDITY_S) * 1000),
        signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
        signingKey: key,
        entries: [...this.#entries.values()].map((r) => ({ serialNumber: r.serial, revocationDate: new Date(r.at * 1000), reason: REASON_CODE[r.reason] })),
        extensions: [new m.Extension(id_ce_cRLNumber, false, AsnConvert.serialize(new CRLNumber(number))), await m.AuthorityKeyIdentifierExtension.create(issuer)],
      })
      const signed: SignedCrl = { number, thisUpdate: nowS, nextUpdate: nowS + CRL_VALIDITY_S, der: Buffer.from(crl.rawData).toString('base64') }
      await store.write([{ type: 'put', key: CRL_KEY, value: JSON.stringify(signed) }], { sync: true })
      this.#signed = signed
    })
    this.#signing = run.catch(() => {})
    return run
  }

  /** The current CRL (DER), its number and validity; null before the first signing. */
  get current(): (Omit<SignedCrl, 'der'> & { der: Buffer }) | null {
    const s = this.#signed
    return s ? { ...s, der: Buffer.from(s.der, 'base64') } : null
  }

  /** PEM of the current CRL under the label OpenSSL reads (`X509 CRL`). */
  get pem(): string | null {
    const s = this.#signed
    return s ? pemOf(s.der, 'X509 CRL') : null
  }

  /** Whether a certificate's serial is on the list (any reason, holds included). */
  lists(cert: X509Certificate): boolean {
    return this.#entries.has(cert.serialNumber.toLowerCase())
  }
}
