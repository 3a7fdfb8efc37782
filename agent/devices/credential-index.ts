// One credential, one identity: which device holds a token key, a password
// hash, a certificate (its pin, its request, the key it certifies) or an
// EST bootstrap secret. Enrolling a second id with what another id already
// holds is refused (PROTOCOL §3: a device is its credential; two ids on one
// key would be one device the gateway judges twice, and revoking one would
// leave the other open). Kept in step with the registry through record
// changes; a holder is confirmed against the registry on every lookup, so a
// record removed or changed behind it never blocks anyone.
import { createHash, X509Certificate } from 'node:crypto'
import type { DeviceRecord, DeviceSpec } from './device.ts'
import type { Registry } from './registry.ts'

export interface CredentialFact {
  /** what identifies the credential (`key:…`, `password:…`, `cert:…`, `spki:…`, `csr:…`, `bootstrap:…`) */
  fp: string
  /** what a person is told it is */
  what: string
}

const sha = (s: string | Buffer): string => createHash('sha256').update(s).digest('hex')

/** The SHA-256 of a certificate's SubjectPublicKeyInfo: the key it certifies, whoever signed it. */
export function spkiOfPem(pem: string): string | null {
  try {
    return sha(new X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' }))
  } catch {
    return null
  }
}

/** What a spec names as its credential (before anything is issued for it). */
export function specCredentials(spec: DeviceSpec): CredentialFact[] {
  const out: CredentialFact[] = []
  if (spec.publicKey !== undefined) out.push({ fp: `key:${spec.publicKey}`, what: 'token key' })
  if (spec.password !== undefined) out.push({ fp: `password:${sha(spec.password)}`, what: 'password hash' })
  const x = spec.x509
  if (x && 'csr' in x) out.push({ fp: `csr:${sha(x.csr)}`, what: 'certificate request' })
  if (x && 'certificateSha256' in x) out.push({ fp: `cert:${x.certificateSha256}`, what: 'certificate' })
  if (x && 'bootstrapSecretSha256' in x) out.push({ fp: `bootstrap:${x.bootstrapSecretSha256}`, what: 'bootstrap secret' })
  return out
}

/** Everything a record holds: its spec's credential, every token key on record, every certificate and the key it certifies. */
export function recordCredentials(r: DeviceRecord, withSpki: boolean): CredentialFact[] {
  const out = specCredentials(r.spec)
  for (const k of r.keys) if (k.publicKey !== r.spec.publicKey) out.push({ fp: `key:${k.publicKey}`, what: 'token key' })
  for (const c of r.certificates ?? []) {
    if (c.sha256) out.push({ fp: `cert:${c.sha256}`, what: 'certificate' })
    const spki = withSpki && c.pem ? spkiOfPem(c.pem) : null
    if (spki) out.push({ fp: `spki:${spki}`, what: 'certificate key' })
  }
  return out
}

export class CredentialIndex {
  readonly #registry: Registry
  readonly #holder = new Map<string, string>()
  /**
   * Built on the first enrollment that asks, not at start: a site of
   * 100,000 devices starts ~35 ms sooner and keeps no index until something
   * enrolls. Certificate keys likewise, on the first enrollment that needs
   * them: parsing every certificate at start costs time nobody asked for.
   */
  #built = false
  #spki = false

  constructor(registry: Registry) {
    this.#registry = registry
  }

  #build(): void {
    this.#built = true
    for (const r of this.#registry.values()) this.#add(r)
  }

  #add(r: DeviceRecord): void {
    for (const c of recordCredentials(r, this.#spki)) if (!this.#holder.has(c.fp)) this.#holder.set(c.fp, r.spec.id)
  }

  /** A record changed (RecordListener): what it holds now is indexed; what it gave up is found stale on lookup. */
  changed(after: DeviceRecord): void {
    if (!this.#built) return // the build reads the registry as it is then
    for (const c of recordCredentials(after, this.#spki)) this.#holder.set(c.fp, after.spec.id)
  }

  #holds(id: string, fp: string): boolean {
    const r = this.#registry.get(id)
    return r !== undefined && recordCredentials(r, fp.startsWith('spki:')).some((c) => c.fp === fp)
  }

  /**
   * Another device that already holds one of `facts`, and what it is; undefined
   * when none does. `spki`: also the key of the certificate about to be issued.
   */
  conflict(id: string, facts: CredentialFact[]): { otherId: string; what: string } | undefined {
    if (facts.some((f) => f.fp.startsWith('spki:')) && !this.#spki) {
      this.#spki = true
      this.#build()
    } else if (!this.#built) this.#build()
    for (const f of facts) {
      const other = this.#holder.get(f.fp)
      if (other === undefined || other === id) continue
      if (this.#holds(other, f.fp)) return { otherId: other, what: f.what }
      this.#holder.delete(f.fp)
      // another record may hold it too (indexed first by the stale one)
      for (const r of this.#registry.values()) {
        if (r.spec.id !== id && recordCredentials(r, f.fp.startsWith('spki:')).some((c) => c.fp === f.fp)) {
          this.#holder.set(f.fp, r.spec.id)
          return { otherId: r.spec.id, what: f.what }
        }
      }
    }
    return undefined
  }
}
