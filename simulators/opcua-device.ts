// A simulated OPC UA device: a node-opcua server with its own application
// certificate (made by node-opcua in its PKI folder on first start, the same
// one every start after), the EdgeWarden hook of PROTOCOL §8 backed by the
// real device runtime, and stop()/start() on a fixed port to play a device
// that goes down and comes back. Imports nothing from agent/.
import { createHash } from 'node:crypto'
import { MessageSecurityMode, OPCUACertificateManager, OPCUAServer, SecurityPolicy } from 'node-opcua'
import { ActionRuntime, MemoryDeviceStorage, type DeviceHooks, type DeviceStorage, type HandleResult } from '../firmware-hooks/action-runtime.ts'
import { keygen } from '../firmware-hooks/crypto.ts'
import { installEdgeWardenHook, type EnvelopeHandler } from '../firmware-hooks/opcua-hook.ts'

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
}

export class SimulatedOpcuaDevice {
  readonly runtime: ActionRuntime
  readonly opts: SimulatedOpcuaDeviceOptions
  /** Execute calls answered, by outcome */
  readonly calls: { status: string; result: HandleResult | null }[] = []
  #server: OPCUAServer | null = null
  #certificate: Buffer | null = null

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

  async start(): Promise<void> {
    if (this.#server) return
    const host = this.opts.host ?? '127.0.0.1'
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
      serverInfo: { applicationUri: this.opts.applicationUri ?? `urn:edgewarden:device:${this.opts.deviceId}`, productUri: 'urn:edgewarden:simulator' },
      buildInfo: { productName: `edgewarden simulated OPC UA device ${this.opts.deviceId}` },
    })
    await server.initialize()
    installEdgeWardenHook(server.engine.addressSpace!, {
      handler: this.opts.wrapHandler ? this.opts.wrapHandler(this.runtime) : this.runtime,
      onCall: (c) => void this.calls.push(c),
    })
    await server.start()
    this.#certificate = Buffer.from(server.getCertificate())
    this.#server = server
  }

  /** Stop the server: sessions and channels drop, the port closes. */
  async stop(): Promise<void> {
    const server = this.#server
    if (!server) return
    this.#server = null
    await server.shutdown(0)
    await server.serverCertificateManager.dispose().catch(() => {})
  }
}
