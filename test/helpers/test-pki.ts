// Certificates for tests, made by openssl (a client nobody here wrote): a
// CA, and leaf certificates named `<name>.pem`/`<name>.key` in one dir.
import { execFileSync } from 'node:child_process'
import { chmodSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

/**
 * A P-256 CA `ca.pem`/`ca.key` and one certificate per entry of `leaves`
 * (name → extension line, e.g. `subjectAltName=IP:127.0.0.1` or
 * `extendedKeyUsage=clientAuth`), valid 2 days.
 */
export function makeTestPki(dir: string, leaves: Record<string, string>): void {
  const ssl = (...args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' })
  ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=test central CA')
  for (const [name, ext] of Object.entries(leaves)) {
    ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`)
    writeFileSync(join(dir, `${name}.ext`), `${ext}\n`)
    ssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`)
  }
  // Mosquitto started as root drops to its own user before reading these: test material, readable.
  chmodSync(dir, 0o755)
  if (leaves.server !== undefined) chmodSync(join(dir, 'server.key'), 0o644)
}
