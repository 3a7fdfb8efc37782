// `edgewarden ca show`: the site CA (PROTOCOL §9) and its CRL. Through the
// admin socket while the agent runs (it knows which CA it signs with, an
// enterprise intermediate included); straight from <data-dir>/pki and the
// store when it is stopped.
import { X509Certificate } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pemBlocks, x509 } from '../pki/ca.ts'
import { RevocationList } from '../pki/crl.ts'
import type { PkiFacts } from '../observe/admin-server.ts'
import { EdgewardenError } from '../runtime/errors.ts'
import { adminRequest, expectOk } from './admin-client.ts'
import { dataDirOf, fmtTime, out, withStore } from './common.ts'
import { parseVerbArgs } from './main.ts'
import { didYouMean } from './suggest.ts'
import { UsageError } from './usage.ts'

interface CertSummary {
  subject: string
  issuer: string
  /** SHA-256 of the DER, hex pairs with colons (as `openssl x509 -fingerprint -sha256`) */
  fingerprint: string
  /** seconds since the epoch */
  notBefore: number
  notAfter: number
}

export interface CaView extends CertSummary {
  origin: PkiFacts['origin']
  /** read from the running agent, or from the data dir of a stopped one */
  source: 'agent' | 'data-dir'
  /** PEM, the signing CA first */
  chainPem: string
  chain: CertSummary[]
  /** CAs still trusted beside it during a rollover (<data-dir>/pki/previous-ca.pem) */
  previous: CertSummary[]
  crl: PkiFacts['crl']
  /** something that does not add up (a stopped agent whose CRL another CA signed) */
  warning?: string
}

const oneLine = (name: string): string => name.split('\n').join(', ')

function summary(pem: string): CertSummary {
  const c = new X509Certificate(pem)
  return {
    subject: oneLine(c.subject),
    issuer: oneLine(c.issuer),
    fingerprint: c.fingerprint256,
    notBefore: Math.floor(Date.parse(c.validFrom) / 1000),
    notAfter: Math.floor(Date.parse(c.validTo) / 1000),
  }
}

export function describeCa(facts: PkiFacts, source: CaView['source']): CaView {
  const chain = facts.chain.map(summary)
  return { ...chain[0]!, origin: facts.origin, source, chainPem: facts.chain.join(''), chain, previous: facts.previous.map(summary), crl: facts.crl }
}

function readChain(file: string, what: string): string[] {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new EdgewardenError('PKI', `cannot read ${what} ${file}: ${(err as Error).message}`, { cause: err })
  }
  const chain = pemBlocks(text)
  if (chain.length === 0) throw new EdgewardenError('PKI', `${what} ${file} holds no PEM certificate`)
  return chain
}

/**
 * The facts of a stopped agent's CA: the enterprise chain given with
 * --ca-cert, else <data-dir>/pki/ca.pem; the CRL from the store. Null when
 * an agent holds the store (ask it instead).
 */
async function stoppedFacts(dataDir: string, caCertFile: string | undefined): Promise<{ facts: PkiFacts; crlIssuer: string | null } | null> {
  let signed: Awaited<ReturnType<typeof RevocationList.stored>> = null
  // no db: the agent never started here, and opening one would create it
  if (existsSync(join(dataDir, 'db'))) {
    const read = await withStore(dataDir, async (store) => ({ signed: await RevocationList.stored(store) }))
    if (read === null) return null
    signed = read.signed
  }
  const dir = join(dataDir, 'pki')
  let chain: string[]
  let origin: PkiFacts['origin']
  if (caCertFile !== undefined) {
    chain = readChain(caCertFile, '--ca-cert')
    origin = 'enterprise'
  } else if (existsSync(join(dir, 'ca.pem'))) {
    chain = readChain(join(dir, 'ca.pem'), 'the site CA')
    origin = 'loaded'
  } else {
    throw new EdgewardenError('PKI', `no site CA in ${dir}: the agent creates one on its first start (an enterprise intermediate: give its chain with --ca-cert FILE)`)
  }
  const previousFile = join(dir, 'previous-ca.pem')
  const previous = existsSync(previousFile) ? pemBlocks(readFileSync(previousFile, 'utf8')) : []
  const crl = signed ? { number: signed.number, thisUpdate: signed.thisUpdate, nextUpdate: signed.nextUpdate } : null
  let crlIssuer: string | null = null
  if (signed) {
    const m = await x509()
    crlIssuer = new m.X509Crl(signed.der).issuer
  }
  return { facts: { origin, chain, previous, crl }, crlIssuer }
}

const ORIGIN: Record<PkiFacts['origin'], string> = {
  created: 'created in the data dir on this start',
  loaded: 'the site CA of the data dir',
  enterprise: 'an enterprise intermediate (--ca-cert)',
}

export async function runCa(args: string[]): Promise<number> {
  const [sub, ...rest] = args
  if (sub !== 'show') throw new UsageError(sub ? `unknown ca verb "${sub}"${didYouMean(sub, ['show'])}` : 'ca needs a verb: show')
  const { values, positionals } = parseVerbArgs(rest, { 'ca-cert': { type: 'string' }, json: { type: 'boolean' } })
  if (positionals.length) throw new UsageError('ca show takes no arguments')
  const dataDir = dataDirOf(values['data-dir'])
  const stopped = await stoppedFacts(dataDir, typeof values['ca-cert'] === 'string' ? values['ca-cert'] : undefined)
  let view: CaView
  if (stopped) {
    view = describeCa(stopped.facts, 'data-dir')
    const m = await x509()
    const subject = new m.X509Certificate(stopped.facts.chain[0]!).subject
    if (stopped.crlIssuer !== null && stopped.crlIssuer !== subject) {
      view.warning = `the CRL in the store was last signed by "${stopped.crlIssuer}", not by this CA: the agent last ran with another CA (an enterprise intermediate? give its chain with --ca-cert FILE)`
    }
  } else {
    view = describeCa(expectOk(await adminRequest(dataDir, 'GET', '/v1/pki')) as unknown as PkiFacts, 'agent')
  }
  if (values.json) {
    out(JSON.stringify(view))
    return 0
  }
  if (view.warning) process.stderr.write(`edgewarden: warning: ${view.warning}\n`)
  const lines = [
    `subject       ${view.subject}`,
    ...(view.issuer !== view.subject ? [`issuer        ${view.issuer}`] : []),
    `origin        ${ORIGIN[view.origin]}${view.source === 'data-dir' ? ' (the agent is stopped: read from the data dir)' : ''}`,
    `fingerprint   SHA256 ${view.fingerprint}`,
    `not after     ${fmtTime(view.notAfter)}`,
    `chain         ${view.chain.length} certificate${view.chain.length === 1 ? '' : 's'}`,
    ...view.previous.map((p) => `previous      ${p.subject} (SHA256 ${p.fingerprint}), still trusted during the rollover`),
    `CRL           ${view.crl ? `number ${view.crl.number}, signed ${fmtTime(view.crl.thisUpdate)}, next update ${fmtTime(view.crl.nextUpdate)}` : 'not signed yet'}`,
  ]
  out(`${lines.join('\n')}\n\n${view.chainPem}`)
  return 0
}
