// Which endpoint of a device the gateway talks to, and what its server
// certificate is. Pure: no node-opcua, so the agent loads it without the
// 5 s import and the choice is unit-tested on plain data.
import { createHash } from 'node:crypto'

export type SecurityModeName = 'None' | 'Sign' | 'SignAndEncrypt' | 'Invalid'

/** An endpoint as GetEndpoints describes it (OPC 10000-4 §7.14), reduced to what the choice needs. */
export interface EndpointInfo {
  endpointUrl: string
  securityMode: SecurityModeName
  securityPolicyUri: string
  securityLevel: number
  /** DER; may be a chain (leaf first) */
  serverCertificate: Buffer
  /** the endpoint accepts an X509 user identity token (OPC 10000-4 §7.41.5): how the gateway authenticates for push management */
  certificateUserToken?: boolean
}

const POLICY = 'http://opcfoundation.org/UA/SecurityPolicy#'
/**
 * Policies the gateway accepts, strongest first. None, Basic128Rsa15 and
 * Basic256 are refused: deprecated by OPC 10000-7, and Basic128Rsa15's RSA
 * PKCS#1 v1.5 encryption is what Node 20 disables (CVE-2023-46809). All
 * three kept here use RSA-OAEP for the asymmetric part.
 */
export const ACCEPTED_POLICIES = [`${POLICY}Aes256_Sha256_RsaPss`, `${POLICY}Aes128_Sha256_RsaOaep`, `${POLICY}Basic256Sha256`] as const
const MODE_RANK: Record<SecurityModeName, number> = { SignAndEncrypt: 2, Sign: 1, None: -1, Invalid: -1 }

export const policyName = (uri: string): string => (uri.startsWith(POLICY) ? uri.slice(POLICY.length) : uri)

/**
 * The strongest endpoint on offer: SignAndEncrypt before Sign, then the
 * policy order above, then the server's own securityLevel. Null when the
 * device offers nothing acceptable (only None or deprecated policies).
 */
export function pickEndpoint(endpoints: readonly EndpointInfo[]): EndpointInfo | null {
  const rank = (e: EndpointInfo): number[] => [MODE_RANK[e.securityMode], -(ACCEPTED_POLICIES as readonly string[]).indexOf(e.securityPolicyUri), e.securityLevel]
  const usable = endpoints.filter((e) => MODE_RANK[e.securityMode] > 0 && (ACCEPTED_POLICIES as readonly string[]).includes(e.securityPolicyUri) && e.serverCertificate.length > 0)
  usable.sort((a, b) => {
    const ra = rank(a)
    const rb = rank(b)
    for (let i = 0; i < ra.length; i++) if (ra[i] !== rb[i]) return rb[i]! - ra[i]!
    return 0
  })
  return usable[0] ?? null
}

/**
 * The first certificate of a DER chain (OPC 10000-6 §6.2.3: the leaf, then
 * its issuers, concatenated). Throws TypeError on bytes that are not a DER
 * SEQUENCE.
 */
export function leafCertificate(chain: Buffer): Buffer {
  if (chain.length < 2 || chain[0] !== 0x30) throw new TypeError('not a DER certificate')
  const first = chain[1]!
  let len: number
  let header: number
  if (first < 0x80) {
    len = first
    header = 2
  } else {
    const n = first & 0x7f
    if (n < 1 || n > 4 || chain.length < 2 + n) throw new TypeError('bad DER length')
    len = 0
    for (let i = 0; i < n; i++) len = len * 256 + chain[2 + i]!
    header = 2 + n
  }
  if (header + len > chain.length) throw new TypeError('truncated DER certificate')
  return chain.subarray(0, header + len)
}

/** PROTOCOL §3 `certificateSha256`: hex of the SHA-256 of the certificate's DER. */
export const certificateSha256 = (der: Buffer): string => createHash('sha256').update(der).digest('hex')
