// A simulated OPC UA device: a node-opcua server with its own application
// certificate (made by node-opcua in its PKI folder on first start, the same
// one every start after), the EdgeWarden hook of PROTOCOL §8 backed by the
// real device runtime, and stop()/start() on a fixed port to play a device
// that goes down and comes back. Imports nothing from agent/.
//
// With `pushManagement`, the server also does OPC UA Part 12 push
// management (PROTOCOL §8) on the standard nodes of its address space:
// ServerConfiguration's CreateSigningRequest, UpdateCertificate,
// ApplyChanges and GetRejectedList, and the TrustList file of its
// DefaultApplicationGroup (Open, Read, Write, Close, CloseAndUpdate). These
// are bound here rather than by node-opcua-server-configuration: its latest
// release (2.157.0) pins node-opcua 2.157.0 packages, and with our 2.186.x
// server its PushCertificateManagerServerImpl refuses our
// OPCUACertificateManager (`instanceof CertificateManager` fails across the
// two copies of node-opcua-pki).
import { createHash, createPrivateKey, createPublicKey, generateKeyPair, webcrypto, X509Certificate, type KeyObject } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdir, readdir, readFile, rename, rm, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  BinaryStream,
  DataType,
  MessageSecurityMode,
  OPCUACertificateManager,
  OPCUAServer,
  resolveNodeId,
  SecurityPolicy,
  StatusCodes,
  Variant,
  VariantArrayType,
  type AddressSpace,
  type CallMethodResultOptions,
  type ISessionContext,
  type StatusCode,
  type UAMethod,
  type UAVariable,
  type VariantLike,
  WellKnownRoles,
} from 'node-opcua'
// node-opcua's own dependency (one copy in node_modules): the standard TrustListDataType
import { TrustListDataType } from 'node-opcua-types'
import { ActionRuntime, MemoryDeviceStorage, type DeviceHooks, type DeviceStorage, type HandleResult } from '../firmware-hooks/action-runtime.ts'
import { keygen } from '../firmware-hooks/crypto.ts'
import { installEdgeWardenHook, type EnvelopeHandler } from '../firmware-hooks/opcua-hook.ts'
import { x509 } from './x509-lib.ts'

export interface SimulatedOpcuaDeviceOptions {
  deviceId: string
  gatewayId: string
  gatewayPublicKey: string
  /** the device's PKI folder: its certificate lives there across restarts; another folder is another certificate */
  pkiDir: string
  port: number
  host?: string
  /** the server's applicationUri, also in its certificate (default urn:edgewarden:device:<deviceId>); keep one per pkiDir */
  applicationUri?: string
  /** default: SignAndEncrypt only */
  securityModes?: MessageSecurityMode[]
  /** default: Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss */
  securityPolicies?: SecurityPolicy[]
  /** accept any client certificate (default true, as a device in commissioning); false: only those trusted in its PKI */
  acceptUnknownClients?: boolean
  storage?: DeviceStorage
  hooks?: Partial<DeviceHooks>
  /** replace how envelopes are handled (tests: an ack re-signed by another key) */
  wrapHandler?: (runtime: ActionRuntime) => EnvelopeHandler
  /** OPC UA Part 12 push management on ServerConfiguration (default false) */
  pushManagement?: boolean
}

/** The four lists of a TrustList, DER each (OPC 10000-12 §7.8.2.7). */
export interface DeviceTrustList {
  trustedCertificates: Buffer[]
  trustedCrls: Buffer[]
  issuerCertificates: Buffer[]
  issuerCrls: Buffer[]
}

// The standard nodes (OPC 10000-5, 10000-12) the push methods are bound on
const NODE = {
  createSigningRequest: 'ns=0;i=12737',
  applyChanges: 'ns=0;i=12740',
  getRejectedList: 'ns=0;i=12777',
  updateCertificate: 'ns=0;i=13737',
  supportedPrivateKeyFormats: 'ns=0;i=12639',
  defaultApplicationGroup: 'ns=0;i=14156',
  certificateTypes: 'ns=0;i=14161',
  trustList: { open: 'ns=0;i=12647', close: 'ns=0;i=12650', read: 'ns=0;i=12652', write: 'ns=0;i=12655', closeAndUpdate: 'ns=0;i=12666' },
} as const
const RSA_SHA256_APPLICATION_CERTIFICATE_TYPE = 'ns=0;i=12560'
const RSA = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as const
/** OPC 10000-12 §7.8.2.8 TrustListMasks */
const MASK = { trustedCertificates: 1, trustedCrls: 2, issuerCertificates: 4, issuerCrls: 8 } as const
/** where each list lives in a node-opcua PKI folder */
const LIST_DIRS: Record<keyof DeviceTrustList, string> = { trustedCertificates: 'trusted/certs', trustedCrls: 'trusted/crl', issuerCertificates: 'issuers/certs', issuerCrls: 'issuers/crl' }


const pem = (der: Buffer, label: string): string => `-----BEGIN ${label}-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '')}\n-----END ${label}-----\n`
const pemBlocksDer = (text: string): Buffer[] => [...text.matchAll(/-----BEGIN [A-Z0-9 ]+-----([\s\S]+?)-----END [A-Z0-9 ]+-----/g)].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'))
const sha1 = (der: Buffer): string => createHash('sha1').update(der).digest('hex')

/** The DER items of a PKI folder's files (PEM or DER). */
async function readDerDir(dir: string): Promise<Buffer[]> {
  let files: string[]
  try {
    files = await readdir(dir)
  } catch {
    return []
  }
  const out: Buffer[] = []
  for (const f of files.sort()) {
    if (!/\.(pem|der|crt|crl)$/i.test(f)) continue
    const data = await readFile(join(dir, f))
    const text = data.toString('latin1')
    out.push(...(text.includes('-----BEGIN') ? pemBlocksDer(text) : [data]))
  }
  return out
}

async function writeAtomically(file: string, data: string | Buffer, mode = 0o644): Promise<void> {
  await writeFile(`${file}.tmp`, data, { mode })
  await rename(`${file}.tmp`, file)
}

/** A Part 12 subject name (`CN=x/O=y`) or an X509Certificate subject (lines) as @peculiar/x509 reads names (`CN=x, O=y`). */
function subjectOf(name: string): string {
  return name
    .split(/\n|\/(?=[A-Za-z.]+=)/)
    .map((p) => p.trim())
    .filter(Boolean)
    .join(', ')
}

export class SimulatedOpcuaDevice {
  readonly runtime: ActionRuntime
  readonly opts: SimulatedOpcuaDeviceOptions
  /** Execute calls answered, by outcome */
  readonly calls: { status: string; result: HandleResult | null }[] = []
  /** push management calls answered: method and status */
  readonly pushCalls: { method: string; status: string }[] = []
  /**
   * 'apply-failed' (message): the server could not start again after ApplyChanges.
   * 'applied' (sha256 of the certificate now served): ApplyChanges took a new
   * certificate and the server is up again with it; 'trust-list': a TrustList
   * was written (CloseAndUpdate).
   */
  readonly events = new EventEmitter()
  #server: OPCUAServer | null = null
  #certificate: Buffer | null = null
  /** what ApplyChanges will take into use: a key made by CreateSigningRequest, a certificate chain from UpdateCertificate */
  #staged: { key?: KeyObject; pendingKey?: KeyObject; chain?: Buffer[] } = {}
  readonly #files = new Map<number, { mode: 'read' | 'write'; data: Buffer; position: number }>()
  #nextHandle = 1
  #restarting: Promise<void> | null = null
  #userCm: OPCUACertificateManager | null = null

  private constructor(opts: SimulatedOpcuaDeviceOptions, runtime: ActionRuntime) {
    this.opts = opts
    this.runtime = runtime
  }

  /** Open the device's runtime (a fresh key unless the storage holds one); the server is not started. */
  static async create(opts: SimulatedOpcuaDeviceOptions): Promise<SimulatedOpcuaDevice> {
    const storage = opts.storage ?? new MemoryDeviceStorage()
    const existing = await storage.load()
    const runtime = await ActionRuntime.open({
      deviceId: opts.deviceId,
      gatewayId: opts.gatewayId,
      gatewayPublicKey: opts.gatewayPublicKey,
      storage,
      ...(existing ? {} : { secretKey: (await keygen()).secretKey }),
      ...(opts.hooks ? { hooks: opts.hooks } : {}),
    })
    return new SimulatedOpcuaDevice(opts, runtime)
  }

  get endpoint(): string {
    return `opc.tcp://${this.opts.host ?? '127.0.0.1'}:${this.opts.port}`
  }

  /** Sessions open on the device's server right now. */
  get sessionCount(): number {
    return this.#server?.engine.currentSessionCount ?? 0
  }

  get running(): boolean {
    return this.#server !== null
  }

  /** The server's certificate (DER), known once it has started once. */
  get certificate(): Buffer {
    if (!this.#certificate) throw new Error('start the device once to make its certificate')
    return this.#certificate
  }

  get certificateSha256(): string {
    return createHash('sha256').update(this.certificate).digest('hex')
  }

  get #privateKeyFile(): string {
    return join(this.opts.pkiDir, 'own', 'private', 'private_key.pem')
  }

  get #certificateFile(): string {
    return join(this.opts.pkiDir, 'own', 'certs', 'certificate.pem')
  }

  get applicationUri(): string {
    return this.opts.applicationUri ?? `urn:edgewarden:device:${this.opts.deviceId}`
  }

  /**
   * A PKCS#10 request (DER) for the server's current key, as an operator
   * would export it to have the site CA sign it (start the device once first).
   */
  async requestCertificate(): Promise<Buffer> {
    return this.#makeRequest(createPrivateKey(await readFile(this.#privateKeyFile)), `CN=${this.opts.deviceId}, O=edgewarden simulator`)
  }

  /** Install a certificate for the server's current key (DER, then its issuers), as provisioning would; a running server restarts with it. */
  async installCertificate(certificate: Buffer, issuers: Buffer[] = []): Promise<void> {
    await this.#writeChain([certificate, ...issuers])
    if (this.#server) {
      await this.stop()
      await this.start()
    }
  }

  /** The server's certificate file (the certificate, then its issuers), and each issuer in issuers/certs. */
  async #writeChain(chain: Buffer[]): Promise<void> {
    await writeAtomically(this.#certificateFile, chain.map((d) => pem(d, 'CERTIFICATE')).join(''))
    const issuers = join(this.opts.pkiDir, 'issuers', 'certs')
    await mkdir(issuers, { recursive: true })
    for (const issuer of chain.slice(1)) await writeAtomically(join(issuers, `issuer_${sha1(issuer)}.pem`), pem(issuer, 'CERTIFICATE'))
  }

  /** The TrustList as the server's PKI holds it now. */
  async trustList(): Promise<DeviceTrustList> {
    const out = { trustedCertificates: [], trustedCrls: [], issuerCertificates: [], issuerCrls: [] } as DeviceTrustList
    for (const k of Object.keys(LIST_DIRS) as (keyof DeviceTrustList)[]) out[k] = await readDerDir(join(this.opts.pkiDir, LIST_DIRS[k]))
    return out
  }

  /** Resolves once a restart that ApplyChanges began is over. */
  async settled(): Promise<void> {
    while (this.#restarting) await this.#restarting
  }

  async start(): Promise<void> {
    if (this.#server) return
    // a store lock left by the last run of this device's server is no one's now (#releaseStoreLocks)
    await this.#releaseStoreLocks()
    const host = this.opts.host ?? '127.0.0.1'
    let userCertificateManager: OPCUACertificateManager | null = null
    const serverCertificateManager = new OPCUACertificateManager({
      rootFolder: this.opts.pkiDir,
      automaticallyAcceptUnknownCertificate: this.opts.acceptUnknownClients ?? true,
      disableFileWatchers: true,
    })
    const server = new OPCUAServer({
      port: this.opts.port,
      host,
      hostname: host,
      serverCertificateManager,
      securityModes: this.opts.securityModes ?? [MessageSecurityMode.SignAndEncrypt],
      securityPolicies: this.opts.securityPolicies ?? [SecurityPolicy.Basic256Sha256, SecurityPolicy.Aes128_Sha256_RsaOaep, SecurityPolicy.Aes256_Sha256_RsaPss],
      allowAnonymous: true,
      ...(this.opts.pushManagement
        ? {
            // OPC 10000-12 §7.7: push management is for SecurityAdmin. A client that authenticates with an X509
            // certificate the device's user PKI accepts (in commissioning: any) is SecurityAdmin; anonymous is not.
            userCertificateManager: (userCertificateManager = new OPCUACertificateManager({
              rootFolder: join(this.opts.pkiDir, 'user-pki'),
              automaticallyAcceptUnknownCertificate: this.opts.acceptUnknownClients ?? true,
              disableFileWatchers: true,
            })),
            userManager: {
              isValidUser: () => false,
              getUserRoles: (user: string) => (user === 'anonymous' ? [resolveNodeId(WellKnownRoles.Anonymous)] : [resolveNodeId(WellKnownRoles.SecurityAdmin), resolveNodeId(WellKnownRoles.AuthenticatedUser)]),
            },
          }
        : {}),
      serverInfo: { applicationUri: this.applicationUri, productUri: 'urn:edgewarden:simulator' },
      buildInfo: { productName: `edgewarden simulated OPC UA device ${this.opts.deviceId}` },
    })
    await server.initialize()
    if (this.opts.pushManagement) this.#installPushManagement(server, serverCertificateManager)
    installEdgeWardenHook(server.engine.addressSpace!, {
      handler: this.opts.wrapHandler ? this.opts.wrapHandler(this.runtime) : this.runtime,
      onCall: (c) => void this.calls.push(c),
    })
    await server.start()
    this.#certificate = Buffer.from(server.getCertificate())
    this.#server = server
    this.#userCm = userCertificateManager
  }

  /**
   * node-opcua-pki serialises changes of a certificate store on a lock
   * directory (`<store>/mutex.lock`). A certificate moved into trusted/ for
   * a client that was connecting when the server stopped can leave it
   * behind, and the next start then waits for it to go stale (a minute and
   * more). Both stores are this device's own and its managers are disposed:
   * what is left a moment after is no one's.
   */
  async #releaseStoreLocks(): Promise<void> {
    for (const dir of [this.opts.pkiDir, join(this.opts.pkiDir, 'user-pki')]) {
      const lock = join(dir, 'mutex.lock')
      for (let i = 0; i < 40 && existsSync(lock); i++) await new Promise((r) => setTimeout(r, 50))
      if (existsSync(lock)) await rm(lock, { recursive: true, force: true })
    }
  }

  /** Stop the server: sessions and channels drop, the port closes. */
  async stop(): Promise<void> {
    const server = this.#server
    if (!server) return
    this.#server = null
    this.#files.clear()
    await server.shutdown(0)
    await server.serverCertificateManager.dispose().catch(() => {})
    await this.#userCm?.dispose().catch(() => {})
    this.#userCm = null
  }

  async #makeRequest(key: KeyObject, subject: string): Promise<Buffer> {
    const m = await x509()
    const privateKey = await webcrypto.subtle.importKey('pkcs8', key.export({ type: 'pkcs8', format: 'der' }), RSA, false, ['sign'])
    const publicKey = await webcrypto.subtle.importKey('spki', createPublicKey(key).export({ type: 'spki', format: 'der' }), RSA, true, ['verify'])
    const host = this.opts.host ?? '127.0.0.1'
    const csr = await m.Pkcs10CertificateRequestGenerator.create({
      name: subject,
      keys: { privateKey, publicKey } as webcrypto.CryptoKeyPair,
      signingAlgorithm: RSA,
      extensions: [new m.SubjectAlternativeNameExtension([{ type: 'url', value: this.applicationUri }, /^[0-9.]+$|:/.test(host) ? { type: 'ip', value: host } : { type: 'dns', value: host }])],
    })
    return Buffer.from(csr.rawData)
  }

  /**
   * OPC 10000-12 §7.7 and §7.8.2 on the standard nodes: the calls need a
   * SignAndEncrypt channel and a client the server trusts (its certificate
   * trusted, or issued by a CA on the trust list with a CRL that does not
   * list it); the simulator has no user roles (a real server asks for
   * SecurityAdmin).
   */
  #installPushManagement(server: OPCUAServer, cm: OPCUACertificateManager): void {
    const as: AddressSpace = server.engine.addressSpace!
    const method = (id: string): UAMethod => {
      const m = as.findNode(id)
      if (!m) throw new Error(`the address space has no ${id}`)
      return m as UAMethod
    }
    ;(as.findNode(NODE.certificateTypes) as UAVariable | null)?.setValueFromSource({ dataType: DataType.NodeId, arrayType: VariantArrayType.Array, value: [resolveNodeId(RSA_SHA256_APPLICATION_CERTIFICATE_TYPE)] })
    ;(as.findNode(NODE.supportedPrivateKeyFormats) as UAVariable | null)?.setValueFromSource({ dataType: DataType.String, arrayType: VariantArrayType.Array, value: ['PEM'] })
    const bind = (id: string, name: string, fn: (args: VariantLike[]) => Promise<CallMethodResultOptions>): void => {
      // Two parameters: node-opcua treats the function as async (bindMethod).
      method(id).bindMethod(async (args: VariantLike[], context: ISessionContext): Promise<CallMethodResultOptions> => {
        const refusal = await this.#mayConfigure(cm, context)
        const result = refusal ? { statusCode: refusal } : await fn(args).catch((): CallMethodResultOptions => ({ statusCode: StatusCodes.BadInternalError }))
        this.pushCalls.push({ method: name, status: (result.statusCode as StatusCode | undefined)?.name ?? 'Good' })
        return result
      })
    }
    const good = (outputArguments: Variant[] = []): CallMethodResultOptions => ({ statusCode: StatusCodes.Good, outputArguments })
    const bad = (statusCode: StatusCode): CallMethodResultOptions => ({ statusCode })
    const groupOk = (v: unknown): boolean => v === null || v === undefined || String(v) === 'ns=0;i=0' || String(v) === NODE.defaultApplicationGroup
    const typeOk = (v: unknown): boolean => v === null || v === undefined || String(v) === 'ns=0;i=0' || String(v) === RSA_SHA256_APPLICATION_CERTIFICATE_TYPE

    bind(NODE.createSigningRequest, 'CreateSigningRequest', async (args) => {
      const [group, type, subjectName, regenerate, nonce] = args.map((a) => a?.value)
      if (!groupOk(group)) return bad(StatusCodes.BadInvalidArgument)
      if (!typeOk(type)) return bad(StatusCodes.BadNotSupported)
      if (regenerate === true && (!Buffer.isBuffer(nonce) || nonce.length < 32)) return bad(StatusCodes.BadInvalidArgument)
      let key: KeyObject
      if (regenerate === true) {
        key = await new Promise<KeyObject>((resolve, reject) => generateKeyPair('rsa', { modulusLength: 2048 }, (err, _pub, priv) => (err ? reject(err) : resolve(priv))))
        this.#staged.pendingKey = key
      } else {
        key = createPrivateKey(await readFile(this.#privateKeyFile))
      }
      const subject = typeof subjectName === 'string' && subjectName !== '' ? subjectOf(subjectName) : subjectOf(new X509Certificate(this.certificate).subject)
      return good([new Variant({ dataType: DataType.ByteString, value: await this.#makeRequest(key, subject) })])
    })

    bind(NODE.updateCertificate, 'UpdateCertificate', async (args) => {
      const [group, type, certificate, issuers, keyFormat, key] = args.map((a) => a?.value)
      if (!groupOk(group)) return bad(StatusCodes.BadInvalidArgument)
      if (!typeOk(type)) return bad(StatusCodes.BadCertificateInvalid)
      // only the request flow: a private key sent along is not taken
      if ((typeof keyFormat === 'string' && keyFormat !== '') || (Buffer.isBuffer(key) && key.length > 0)) return bad(StatusCodes.BadNotSupported)
      if (!Buffer.isBuffer(certificate)) return bad(StatusCodes.BadInvalidArgument)
      const issuerDers = Array.isArray(issuers) ? (issuers as unknown[]).filter((b): b is Buffer => Buffer.isBuffer(b)) : []
      let cert: X509Certificate
      let chain: X509Certificate[]
      try {
        cert = new X509Certificate(certificate)
        chain = issuerDers.map((d) => new X509Certificate(d))
      } catch {
        return bad(StatusCodes.BadCertificateInvalid)
      }
      const now = Date.now()
      if (Date.parse(cert.validFrom) > now || Date.parse(cert.validTo) <= now) return bad(StatusCodes.BadCertificateTimeInvalid)
      // the issuer chain verifies, link by link
      let child = cert
      for (const issuer of chain) {
        if (!child.checkIssued(issuer) || !child.verify(issuer.publicKey)) return bad(StatusCodes.BadSecurityChecksFailed)
        child = issuer
      }
      if (!(cert.subjectAltName ?? '').includes(`URI:${this.applicationUri}`)) return bad(StatusCodes.BadCertificateUriInvalid)
      const current = createPrivateKey(await readFile(this.#privateKeyFile))
      const pending = this.#staged.pendingKey
      const matches = (k: KeyObject | undefined): boolean => !!k && createPublicKey(k).equals(cert.publicKey)
      if (!matches(pending) && !matches(current)) return bad(StatusCodes.BadSecurityChecksFailed)
      this.#staged = { ...(matches(pending) ? { key: pending! } : {}), chain: [Buffer.from(cert.raw), ...issuerDers] }
      return good([new Variant({ dataType: DataType.Boolean, value: true })])
    })

    bind(NODE.applyChanges, 'ApplyChanges', async () => {
      const staged = this.#staged
      if (!staged.chain) return bad(StatusCodes.BadNothingToDo)
      this.#staged = {}
      if (staged.key) await writeAtomically(this.#privateKeyFile, staged.key.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600)
      await this.#writeChain(staged.chain)
      // OPC 10000-12 §7.7.5: the answer leaves first, then the server takes the new certificate (its channels end)
      const restart = (async () => {
        await new Promise((r) => setTimeout(r, 50))
        await this.stop()
        // The port is taken again at once; on a busy machine the old listener may not have let go yet: try again, a while.
        for (let attempt = 1; ; attempt++) {
          try {
            await this.start()
            break
          } catch (err) {
            if (attempt >= 30) {
              this.events.emit('apply-failed', (err as Error).message)
              throw err
            }
            await new Promise((r) => setTimeout(r, 200))
          }
        }
        this.events.emit('applied', this.certificateSha256)
      })().finally(() => {
        this.#restarting = null
      })
      this.#restarting = restart
      restart.catch(() => {})
      return good()
    })

    bind(NODE.getRejectedList, 'GetRejectedList', async () => {
      const rejected = await readDerDir(join(this.opts.pkiDir, 'rejected'))
      return good([new Variant({ dataType: DataType.ByteString, arrayType: VariantArrayType.Array, value: rejected })])
    })

    // The TrustList file (OPC 10000-12 §7.8.2, FileType of 10000-5 Annex C)
    bind(NODE.trustList.open, 'TrustList.Open', async (args) => {
      const mode = args[0]?.value
      if (mode !== 1 && mode !== 6) return bad(StatusCodes.BadInvalidArgument)
      if (mode === 6 && [...this.#files.values()].some((f) => f.mode === 'write')) return bad(StatusCodes.BadInvalidState)
      const data = mode === 1 ? encodeTrustList(await this.trustList()) : Buffer.alloc(0)
      const handle = this.#nextHandle++
      this.#files.set(handle, { mode: mode === 1 ? 'read' : 'write', data, position: 0 })
      return good([new Variant({ dataType: DataType.UInt32, value: handle })])
    })
    bind(NODE.trustList.read, 'TrustList.Read', async (args) => {
      const f = this.#files.get(Number(args[0]?.value))
      const length = Number(args[1]?.value)
      if (!f || f.mode !== 'read') return bad(StatusCodes.BadInvalidArgument)
      if (!Number.isInteger(length) || length < 0) return bad(StatusCodes.BadInvalidArgument)
      const chunk = f.data.subarray(f.position, f.position + length)
      f.position += chunk.length
      return good([new Variant({ dataType: DataType.ByteString, value: Buffer.from(chunk) })])
    })
    bind(NODE.trustList.write, 'TrustList.Write', async (args) => {
      const f = this.#files.get(Number(args[0]?.value))
      const data = args[1]?.value
      if (!f || f.mode !== 'write' || !Buffer.isBuffer(data)) return bad(StatusCodes.BadInvalidArgument)
      f.data = Buffer.concat([f.data, data])
      return good()
    })
    bind(NODE.trustList.close, 'TrustList.Close', async (args) => {
      return this.#files.delete(Number(args[0]?.value)) ? good() : bad(StatusCodes.BadInvalidArgument)
    })
    bind(NODE.trustList.closeAndUpdate, 'TrustList.CloseAndUpdate', async (args) => {
      const handle = Number(args[0]?.value)
      const f = this.#files.get(handle)
      if (!f || f.mode !== 'write') return bad(StatusCodes.BadInvalidArgument)
      this.#files.delete(handle)
      let tl: TrustListDataType
      try {
        tl = new TrustListDataType()
        tl.decode(new BinaryStream(f.data))
      } catch {
        return bad(StatusCodes.BadInvalidArgument)
      }
      // every list the mask names is replaced; the others stay
      for (const k of Object.keys(LIST_DIRS) as (keyof DeviceTrustList)[]) {
        if ((tl.specifiedLists & MASK[k]) === 0) continue
        const dir = join(this.opts.pkiDir, LIST_DIRS[k])
        await mkdir(dir, { recursive: true })
        for (const old of await readdir(dir)) if (/\.(pem|der|crt|crl)$/i.test(old)) await unlink(join(dir, old))
        const label = k.endsWith('Crls') ? 'X509 CRL' : 'CERTIFICATE'
        for (const der of (tl[k] ?? []) as (Buffer | null)[]) if (der?.length) await writeFile(join(dir, `${k.endsWith('Crls') ? 'crl' : 'cert'}_${sha1(der)}.pem`), pem(der, label))
      }
      // taken into use at once (applyChangesRequired false): new channels are checked against it
      await cm.reloadCertificates()
      this.events.emit('trust-list')
      return good([new Variant({ dataType: DataType.Boolean, value: false })])
    })
  }

  /** null when the caller may configure the server; else the refusal. */
  async #mayConfigure(cm: OPCUACertificateManager, context: ISessionContext): Promise<StatusCode | null> {
    const channel = context.session?.channel
    if (!channel || channel.securityMode !== MessageSecurityMode.SignAndEncrypt) return StatusCodes.BadSecurityModeInsufficient
    const chain = channel.clientCertificate
    if (!chain) return StatusCodes.BadUserAccessDenied
    const leaf = firstCertificate(chain)
    if (!leaf) return StatusCodes.BadUserAccessDenied
    // trusted one by one (commissioning accepted it), or through a trusted CA and its CRL
    // (node-opcua's store may hold a whole chain as one item: its first certificate is what was trusted)
    if ((await readDerDir(join(this.opts.pkiDir, 'trusted', 'certs'))).some((d) => firstCertificate(d)?.equals(leaf))) return null
    const verdict = await cm.verifyCertificate(chain, { acceptCertificateWithValidIssuerChain: true })
    return verdict === 'Good' ? null : StatusCodes.BadUserAccessDenied
  }
}

/** The DER of the first certificate of a chain (DER, concatenated); null when it does not start with one. */
function firstCertificate(der: Buffer): Buffer | null {
  try {
    return Buffer.from(new X509Certificate(der).raw)
  } catch {
    return null
  }
}

/** A TrustList in the OPC UA binary encoding, every list specified. */
function encodeTrustList(t: DeviceTrustList): Buffer {
  const tl = new TrustListDataType({ specifiedLists: 15, ...t })
  const stream = new BinaryStream(tl.binaryStoreSize())
  tl.encode(stream)
  return Buffer.from(stream.buffer)
}
