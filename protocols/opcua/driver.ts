// Everything of the OPC UA relay that needs node-opcua, behind one small
// interface: the gateway's PKI (OPCUACertificateManager layout under
// <dataDir>/opcua-pki: own/, trusted/certs, rejected/, issuers/, crl), endpoint
// discovery, and a secured session that calls EdgeWarden.Execute (PROTOCOL
// §8) and, for devices with push management, the ServerConfiguration
// methods of OPC 10000-12 §7.7 and the TrustList file of §7.8.2. The relay
// imports this module dynamically, only once an OPC UA device exists:
// `import 'node-opcua'` costs seconds.
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readdir, readFile, rename, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
// before node-opcua: see log-bridge.ts
import { routeOpcuaLogs } from './log-bridge.ts'
import {
  BinaryStream,
  DataType,
  makeBrowsePath,
  MessageSecurityMode,
  OPCUACertificateManager,
  OPCUAClient,
  resolveNodeId,
  Variant,
  VariantArrayType,
  type ClientSession,
  type NodeId,
  UserTokenType,
  type SecurityPolicy,
  type UserIdentityInfo,
} from 'node-opcua'
// node-opcua's own dependency (one copy in node_modules, as node-opcua-debug in log-bridge.ts): the standard encoding of the TrustList file
import { TrustListDataType } from 'node-opcua-types'
import type { Logger } from '../../agent/observe/logger.ts'
import { certificateSha256, type EndpointInfo, type SecurityModeName } from './security.ts'
import { OPCUA_HOOK_NAMESPACE } from '../../wire/protocol.ts'

export const HOOK_NAMESPACE = OPCUA_HOOK_NAMESPACE

export type TrustStatus = 'trusted' | 'rejected' | 'unknown'

/** A device answered a method call with a Bad status (the call arrived: it is the device's verdict, not a lost link). */
export class OpcuaStatusError extends Error {
  readonly status: string
  constructor(what: string, status: string) {
    super(`${what} answered ${status}`)
    this.name = 'OpcuaStatusError'
    this.status = status
  }
}

/** The four lists of a TrustList (OPC 10000-12 §7.8.2.7 TrustListDataType), DER each. */
export interface TrustListContent {
  trustedCertificates: Buffer[]
  trustedCrls: Buffer[]
  issuerCertificates: Buffer[]
  issuerCrls: Buffer[]
}

/**
 * OPC 10000-12 push management on the device's ServerConfiguration, for its
 * DefaultApplicationGroup and RsaSha256ApplicationCertificateType. Each
 * rejects with OpcuaStatusError on a Bad status, with another error when the
 * call did not get through.
 */
export interface PushManagement {
  /** §7.7.6 CreateSigningRequest: the server's PKCS#10 request (DER); with regeneratePrivateKey, for a new key (nonce: 32 bytes at least) */
  createSigningRequest(o: { regeneratePrivateKey: boolean; nonce: Buffer }, timeoutMs: number): Promise<Buffer>
  /** §7.7.4 UpdateCertificate with the issuer chain (DER each); resolves applyChangesRequired */
  updateCertificate(certificate: Buffer, issuerCertificates: Buffer[], timeoutMs: number): Promise<boolean>
  /** §7.8.2 the TrustList as the device holds it (Open for reading, Read, Close) */
  readTrustList(timeoutMs: number): Promise<TrustListContent>
  /** §7.8.2 the whole TrustList replaced (Open with EraseExisting, Write, CloseAndUpdate); resolves applyChangesRequired */
  writeTrustList(t: TrustListContent, timeoutMs: number): Promise<boolean>
  /** §7.7.5 ApplyChanges: the server takes the new certificate and trust list into use (it may close this session to do so) */
  applyChanges(timeoutMs: number): Promise<void>
}

/** A secured session with one device, bound to its EdgeWarden.Execute method. */
export interface OpcuaLink {
  readonly securityMode: SecurityModeName
  readonly securityPolicyUri: string
  /** PROTOCOL §8: the action's JWS in, the device's ack out. Rejects on a Bad status or no ack. */
  execute(envelope: string, timeoutMs: number): Promise<string>
  /** PROTOCOL §8: Part 12 push management over this session */
  readonly push: PushManagement
  /** Close the session and the channel. Never rejects. */
  close(): Promise<void>
  /** Called once when the connection is lost (not after close()). */
  onLost(cb: (reason: string) => void): void
}

export interface OpcuaDriver {
  readonly pkiDir: string
  discover(endpointUrl: string, timeoutMs: number): Promise<EndpointInfo[]>
  /**
   * A secured session. `certificateUser`: activate it with the gateway's own
   * application certificate as X509 user identity (OPC 10000-4 §7.41.5), the
   * credential a device maps to SecurityAdmin for push management (OPC
   * 10000-12 §7.7); otherwise anonymous.
   */
  connect(endpointUrl: string, endpoint: EndpointInfo, timeoutMs: number, o?: { certificateUser?: boolean }): Promise<OpcuaLink>
  trustStatus(cert: Buffer): Promise<TrustStatus>
  trust(cert: Buffer): Promise<void>
  reject(cert: Buffer): Promise<void>
  /** node-opcua's verdict on a certificate or a chain (DER, concatenated): trust list, issuers, validity dates, CRLs. 'Good' or a status name. */
  check(cert: Buffer): Promise<string>
  /**
   * PROTOCOL §8: the site CA (issuers and trusted: what it issued is trusted
   * through it) and its current CRL (issuers/crl, replacing the one held
   * before: a lifted hold is lifted here too). Checks wait for it.
   */
  setSiteTrust(t: { cas: Buffer[]; crl: Buffer | null }): Promise<void>
  /** A device certificate held in the trusted or rejected store, by the SHA-256 of its DER. */
  find(sha256: string): Promise<Buffer | null>
  /** The gateway's own application certificate (DER), made on first use. */
  certificate(): Promise<Buffer>
  dispose(): Promise<void>
}

export interface DriverOptions {
  pkiDir: string
  applicationName: string
  applicationUri: string
  /** where node-opcua's own warnings, errors and debug lines go */
  log: Logger
  /**
   * PROTOCOL §8: the gateway's own application certificate from the site CA,
   * for the key of this PKI (SPKI DER): a PEM chain to store, or null when
   * `currentPem` is still good. Absent: node-opcua makes a self-signed one.
   */
  ownCertificate?: (o: { spkiDer: Buffer; applicationUri: string; hosts: string[]; currentPem?: string }) => Promise<string | null>
}

// OPC 10000-5 / 10000-12: the standard nodes of the Server's ServerConfiguration
const SERVER_CONFIGURATION = resolveNodeId('ns=0;i=12637')
const CREATE_SIGNING_REQUEST = resolveNodeId('ns=0;i=12737')
const UPDATE_CERTIFICATE = resolveNodeId('ns=0;i=13737')
const APPLY_CHANGES = resolveNodeId('ns=0;i=12740')
const DEFAULT_APPLICATION_GROUP = resolveNodeId('ns=0;i=14156')
const RSA_SHA256_APPLICATION_CERTIFICATE_TYPE = resolveNodeId('ns=0;i=12560')
/** OPC 10000-12 §7.8.2.8 TrustListMasks */
const ALL_LISTS = 15
/** OPC 10000-5 §C.2.1 FileType Open modes: Read, and Write + EraseExisting */
const OPEN_READ = 1
const OPEN_WRITE_ERASE = 6
const READ_CHUNK = 32 * 1024
const TRUST_LIST_MAX = 4 * 1024 * 1024

/** The TrustList file: a TrustListDataType in the OPC UA binary encoding (OPC 10000-12 §7.8.2.1). */
export function encodeTrustList(t: TrustListContent): Buffer {
  const tl = new TrustListDataType({ specifiedLists: ALL_LISTS, ...t })
  const stream = new BinaryStream(tl.binaryStoreSize())
  tl.encode(stream)
  return Buffer.from(stream.buffer)
}

export function decodeTrustList(data: Buffer): TrustListContent {
  const tl = new TrustListDataType()
  tl.decode(new BinaryStream(data))
  const list = (l: (Buffer | null)[] | null): Buffer[] => (l ?? []).filter((b): b is Buffer => Buffer.isBuffer(b) && b.length > 0)
  return { trustedCertificates: list(tl.trustedCertificates), trustedCrls: list(tl.trustedCrls), issuerCertificates: list(tl.issuerCertificates), issuerCrls: list(tl.issuerCrls) }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string, onTimeout: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout()
      reject(new Error(`${what} timed out after ${ms} ms`))
    }, ms)
  })
  return Promise.race([p, t]).finally(() => clearTimeout(timer))
}

const modeName = (m: MessageSecurityMode): SecurityModeName => (MessageSecurityMode[m] as SecurityModeName | undefined) ?? 'Invalid'

async function pemFiles(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).filter((f) => /\.(pem|der)$/.test(f)).map((f) => join(dir, f))
  } catch {
    return []
  }
}

/** The DER of every PEM block of a file's text. */
const pemBlocksDer = (text: string): Buffer[] => [...text.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]+?)-----END CERTIFICATE-----/g)].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'))

async function readDer(file: string): Promise<Buffer | null> {
  try {
    return Buffer.from(new X509Certificate(await readFile(file)).raw)
  } catch {
    return null
  }
}

/**
 * The gateway's own application certificate, from the site CA, for the key
 * node-opcua keeps in own/private (OPC 10000-6 §6.2.2; written with its CA
 * chain, so that a device can build the path to the site CA it trusts).
 */
async function ensureOwnCertificate(cm: OPCUACertificateManager, opts: DriverOptions): Promise<void> {
  if (!opts.ownCertificate) return
  const file = join(cm.rootDir, 'own', 'certs', 'client_certificate.pem')
  const spkiDer = Buffer.from(createPublicKey(createPrivateKey(await readFile(cm.privateKey))).export({ type: 'spki', format: 'der' }))
  const currentPem = existsSync(file) ? await readFile(file, 'utf8') : undefined
  const pem = await opts.ownCertificate({ spkiDer, applicationUri: opts.applicationUri, hosts: [hostname()], ...(currentPem ? { currentPem } : {}) })
  if (pem === null) return
  await writeFile(`${file}.tmp`, pem, { mode: 0o644 })
  await rename(`${file}.tmp`, file)
}

export async function createDriver(opts: DriverOptions): Promise<OpcuaDriver> {
  routeOpcuaLogs(opts.log)
  const cm = new OPCUACertificateManager({ rootFolder: opts.pkiDir, automaticallyAcceptUnknownCertificate: false, disableFileWatchers: true, keySize: 2048 })
  await cm.initialize()
  await ensureOwnCertificate(cm, opts)
  // Checks and CRL swaps one at a time: a check never sees the store between the old CRL's removal and the new one's arrival.
  let pkiOps: Promise<unknown> = Promise.resolve()
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = pkiOps.then(fn)
    pkiOps = run.catch(() => {})
    return run
  }
  const base = {
    applicationName: opts.applicationName,
    applicationUri: opts.applicationUri,
    clientCertificateManager: cm,
    endpointMustExist: false,
    // The relay does its own probing with backoff; node-opcua must not retry behind its back.
    connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
  }

  const lookup = async (sha256: string): Promise<{ der: Buffer; where: TrustStatus } | null> => {
    for (const [where, dir] of [['trusted', cm.trustedFolder], ['rejected', cm.rejectedFolder]] as const) {
      for (const f of await pemFiles(dir)) {
        const der = await readDer(f)
        if (der && certificateSha256(der) === sha256) return { der, where }
      }
    }
    return null
  }

  return {
    pkiDir: opts.pkiDir,

    async discover(endpointUrl, timeoutMs) {
      // GetEndpoints runs on an unsecured channel (OPC 10000-4 §5.4.4); nothing
      // learnt here is trusted until the certificate is checked against the pin.
      const client = OPCUAClient.create({ ...base, securityMode: MessageSecurityMode.None })
      try {
        await withTimeout(client.connect(endpointUrl), timeoutMs, 'connect', () => void client.disconnect().catch(() => {}))
        const eps = await withTimeout(client.getEndpoints(), timeoutMs, 'GetEndpoints', () => {})
        return eps.map((e) => ({
          endpointUrl: e.endpointUrl ?? endpointUrl,
          securityMode: modeName(e.securityMode),
          securityPolicyUri: e.securityPolicyUri ?? '',
          securityLevel: e.securityLevel,
          serverCertificate: e.serverCertificate ? Buffer.from(e.serverCertificate) : Buffer.alloc(0),
          certificateUserToken: (e.userIdentityTokens ?? []).some((u) => u.tokenType === UserTokenType.Certificate),
        }))
      } finally {
        await client.disconnect().catch(() => {})
      }
    },

    async connect(endpointUrl, ep, timeoutMs, o = {}) {
      // the certificate with its CA chain: a device builds the path to the CA it trusts from it
      const identity: UserIdentityInfo = o.certificateUser
        ? {
            type: UserTokenType.Certificate,
            certificateData: Buffer.concat(pemBlocksDer(await readFile(join(cm.rootDir, 'own', 'certs', 'client_certificate.pem'), 'utf8'))),
            privateKey: await readFile(cm.privateKey, 'utf8'),
          }
        : { type: UserTokenType.Anonymous }
      const client = OPCUAClient.create({
        ...base,
        securityMode: MessageSecurityMode[ep.securityMode as keyof typeof MessageSecurityMode],
        securityPolicy: ep.securityPolicyUri as SecurityPolicy,
        // The certificate already checked against the pin: the channel is
        // encrypted to it, so only the holder of its private key can answer.
        serverCertificate: ep.serverCertificate,
        keepSessionAlive: true,
        requestedSessionTimeout: 60_000,
      })
      let session: ClientSession | null = null
      const lostListeners: ((reason: string) => void)[] = []
      let closed = false
      let lost = false
      const shut = async (): Promise<void> => {
        if (closed) return
        closed = true
        // bounded: closing a session over a dead channel must not hang the relay
        if (session) await withTimeout(session.close(true), 2000, 'CloseSession', () => {}).catch(() => {})
        await withTimeout(client.disconnect(), 2000, 'disconnect', () => {}).catch(() => {})
      }
      const fireLost = (reason: string): void => {
        if (closed || lost) return
        lost = true
        for (const l of lostListeners) l(reason)
        // node-opcua would try to reconnect on its own; the relay probes instead.
        void shut()
      }
      const abort = (): void => void client.disconnect().catch(() => {})
      try {
        await withTimeout(client.connect(endpointUrl), timeoutMs, 'secure channel', abort)
        session = await withTimeout(client.createSession(identity), timeoutMs, 'CreateSession', abort)
        const ns = (await session.readNamespaceArray()).indexOf(HOOK_NAMESPACE)
        if (ns < 0) throw new Error(`namespace ${HOOK_NAMESPACE} not on the device`)
        // PROTOCOL §8: Objects/EdgeWarden, method Execute, both in the hook namespace.
        const [obj, method] = await session.translateBrowsePath([
          makeBrowsePath('ObjectsFolder', `/${ns}:EdgeWarden`),
          makeBrowsePath('ObjectsFolder', `/${ns}:EdgeWarden.${ns}:Execute`),
        ])
        const objectId: NodeId | undefined = obj?.targets?.[0]?.targetId
        const methodId: NodeId | undefined = method?.targets?.[0]?.targetId
        if (!objectId || !methodId) throw new Error('EdgeWarden.Execute not found by browse path under Objects')
        const push = pushManagement(session, fireLost)
        client.on('connection_lost', () => fireLost('connection lost'))
        client.on('close', () => fireLost('connection closed'))
        session.on('keepalive_failure', () => fireLost('keep-alive failed'))
        session.on('session_closed', () => fireLost('session closed by the server'))
        const s = session
        return {
          securityMode: ep.securityMode,
          securityPolicyUri: ep.securityPolicyUri,
          async execute(envelope, ms) {
            const r = await withTimeout(
              s.call({ objectId, methodId, inputArguments: [new Variant({ dataType: DataType.String, value: envelope })] }),
              ms,
              'Execute',
              () => fireLost('Execute timed out'),
            )
            if (!r.statusCode.isGood()) throw new Error(`Execute answered ${r.statusCode.name}`)
            const ack: unknown = r.outputArguments?.[0]?.value
            if (typeof ack !== 'string' || ack.length === 0) throw new Error('Execute returned no ack')
            return ack
          },
          push,
          close: shut,
          onLost(cb) {
            lostListeners.push(cb)
          },
        }
      } catch (err) {
        await shut()
        throw err
      }
    },

    async trustStatus(cert) {
      return (await lookup(certificateSha256(cert)))?.where ?? 'unknown'
    },
    trust: (cert) => cm.trustCertificate(cert),
    reject: (cert) => cm.rejectCertificate(cert),
    check: (cert) => serial(async () => (await cm.checkCertificate(cert)).name),
    setSiteTrust: (t) =>
      serial(async () => {
        for (const ca of t.cas) {
          await cm.addIssuer(ca, false, false)
          await cm.trustCertificate(ca)
        }
        if (t.crl) {
          for (const ca of t.cas) await cm.removeRevocationListsForIssuer(ca, 'all')
          const status = await cm.addRevocationList(t.crl, 'issuers')
          if (status !== 'Good') throw new Error(`the site CRL was not taken by the OPC UA PKI: ${status}`)
        }
      }),
    async find(sha256) {
      return (await lookup(sha256))?.der ?? null
    },
    async certificate() {
      for (const f of await pemFiles(join(opts.pkiDir, 'own', 'certs'))) {
        const der = await readDer(f)
        if (der) return der
      }
      throw new Error('the gateway has no OPC UA application certificate yet (made on first connect)')
    },
    async dispose() {
      await pkiOps
      await cm.dispose()
    },
  }
}

/** OPC 10000-12 push management over one session (the calls of PushManagement). */
function pushManagement(session: ClientSession, fireLost: (reason: string) => void): PushManagement {
  const call = async (what: string, objectId: NodeId, methodId: NodeId, inputArguments: Variant[], ms: number): Promise<Variant[]> => {
    const r = await withTimeout(session.call({ objectId, methodId, inputArguments }), ms, what, () => fireLost(`${what} timed out`))
    if (!r.statusCode.isGood()) throw new OpcuaStatusError(what, r.statusCode.name)
    return r.outputArguments ?? []
  }
  const v = (dataType: DataType, value: unknown, arrayType?: VariantArrayType): Variant => new Variant({ dataType, value, ...(arrayType !== undefined ? { arrayType } : {}) })
  let trustList: { object: NodeId; open: NodeId; read: NodeId; write: NodeId; close: NodeId; closeAndUpdate: NodeId } | null = null
  const trustListNodes = async (ms: number): Promise<NonNullable<typeof trustList>> => {
    if (trustList) return trustList
    const names = ['', '.Open', '.Read', '.Write', '.Close', '.CloseAndUpdate']
    const results = await withTimeout(
      session.translateBrowsePath(names.map((n) => makeBrowsePath(DEFAULT_APPLICATION_GROUP, `/TrustList${n}`))),
      ms,
      'TranslateBrowsePath',
      () => {},
    )
    const ids = results.map((r) => r.targets?.[0]?.targetId)
    if (ids.some((id) => !id)) throw new Error('the device has no TrustList with Open, Read, Write, Close and CloseAndUpdate under DefaultApplicationGroup')
    const [object, open, read, write, close, closeAndUpdate] = ids as NodeId[]
    trustList = { object: object!, open: open!, read: read!, write: write!, close: close!, closeAndUpdate: closeAndUpdate! }
    return trustList
  }
  return {
    async createSigningRequest(o, ms) {
      const out = await call(
        'CreateSigningRequest',
        SERVER_CONFIGURATION,
        CREATE_SIGNING_REQUEST,
        [v(DataType.NodeId, DEFAULT_APPLICATION_GROUP), v(DataType.NodeId, RSA_SHA256_APPLICATION_CERTIFICATE_TYPE), v(DataType.String, null), v(DataType.Boolean, o.regeneratePrivateKey), v(DataType.ByteString, o.nonce)],
        ms,
      )
      const csr: unknown = out[0]?.value
      if (!Buffer.isBuffer(csr) || csr.length === 0) throw new Error('CreateSigningRequest returned no request')
      return csr
    },
    async updateCertificate(certificate, issuers, ms) {
      const out = await call(
        'UpdateCertificate',
        SERVER_CONFIGURATION,
        UPDATE_CERTIFICATE,
        [
          v(DataType.NodeId, DEFAULT_APPLICATION_GROUP),
          v(DataType.NodeId, RSA_SHA256_APPLICATION_CERTIFICATE_TYPE),
          v(DataType.ByteString, certificate),
          v(DataType.ByteString, issuers, VariantArrayType.Array),
          v(DataType.String, ''),
          v(DataType.ByteString, Buffer.alloc(0)),
        ],
        ms,
      )
      return out[0]?.value === true
    },
    async readTrustList(ms) {
      const n = await trustListNodes(ms)
      const handle = (await call('TrustList.Open', n.object, n.open, [v(DataType.Byte, OPEN_READ)], ms))[0]?.value as number
      const chunks: Buffer[] = []
      let size = 0
      try {
        for (;;) {
          const chunk = (await call('TrustList.Read', n.object, n.read, [v(DataType.UInt32, handle), v(DataType.Int32, READ_CHUNK)], ms))[0]?.value
          const b = Buffer.isBuffer(chunk) ? chunk : Buffer.alloc(0)
          chunks.push(b)
          size += b.length
          if (size > TRUST_LIST_MAX) throw new Error(`the device's TrustList is larger than ${TRUST_LIST_MAX} bytes`)
          if (b.length < READ_CHUNK) break
        }
      } finally {
        await call('TrustList.Close', n.object, n.close, [v(DataType.UInt32, handle)], ms).catch(() => {})
      }
      return decodeTrustList(Buffer.concat(chunks))
    },
    async writeTrustList(t, ms) {
      const n = await trustListNodes(ms)
      const data = encodeTrustList(t)
      const handle = (await call('TrustList.Open', n.object, n.open, [v(DataType.Byte, OPEN_WRITE_ERASE)], ms))[0]?.value as number
      let updated = false
      try {
        for (let at = 0; at < data.length; at += READ_CHUNK) {
          await call('TrustList.Write', n.object, n.write, [v(DataType.UInt32, handle), v(DataType.ByteString, data.subarray(at, at + READ_CHUNK))], ms)
        }
        const out = await call('TrustList.CloseAndUpdate', n.object, n.closeAndUpdate, [v(DataType.UInt32, handle)], ms)
        updated = true
        return out[0]?.value === true
      } finally {
        if (!updated) await call('TrustList.Close', n.object, n.close, [v(DataType.UInt32, handle)], ms).catch(() => {})
      }
    },
    async applyChanges(ms) {
      await call('ApplyChanges', SERVER_CONFIGURATION, APPLY_CHANGES, [], ms)
    },
  }
}
