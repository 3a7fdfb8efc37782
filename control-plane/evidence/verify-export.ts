// Offline re-verification of an export (JSON lines): each line's JWS against
// the gateway's public key, and the line's fields against the signed claims,
// with nothing but the file (and, better, keys the auditor pinned
// independently: a key read from the file itself only proves the file is
// self-consistent).
import { parseJws } from '../../wire/jws.ts'
import { publicKeyFromB64, verifyEd25519 } from '../runtime/keys.ts'

export interface ExportVerdict {
  lines: number
  verified: number
  /** keys taken from the file, not pinned by the auditor */
  selfAsserted: number
  failures: { line: number; reason: string }[]
}

export function verifyExport(text: string, pinned: ReadonlyMap<string, string> = new Map()): ExportVerdict {
  const v: ExportVerdict = { lines: 0, verified: 0, selfAsserted: 0, failures: [] }
  const lines = text.split('\n')
  for (const [i, line] of lines.entries()) {
    if (!line.trim()) continue
    v.lines++
    const n = i + 1
    let row: Record<string, unknown>
    try {
      row = JSON.parse(line) as Record<string, unknown>
    } catch {
      v.failures.push({ line: n, reason: 'not JSON' })
      continue
    }
    const gw = `${String(row.site)}/${String(row.gateway)}`
    const keyText = pinned.get(gw) ?? row.gatewayPublicKey
    if (!pinned.has(gw)) v.selfAsserted++
    const key = publicKeyFromB64(keyText)
    if (!key) {
      v.failures.push({ line: n, reason: `no usable public key for ${gw}` })
      continue
    }
    let jws
    try {
      jws = parseJws(String(row.jws))
    } catch (err) {
      v.failures.push({ line: n, reason: `jws: ${(err as Error).message}` })
      continue
    }
    if (!verifyEd25519(key, jws.signingInput, jws.signature)) {
      v.failures.push({ line: n, reason: `signature does not verify with the key of ${gw}` })
      continue
    }
    const c = jws.payload
    const mismatch = (['seq', 'type', 'jti', 'iat'] as const).find((k) => c[k] !== row[k]) ?? (c.iss !== row.gateway ? 'iss' : null)
    if (mismatch) {
      v.failures.push({ line: n, reason: `the line's ${mismatch} is not what the gateway signed` })
      continue
    }
    v.verified++
  }
  return v
}
