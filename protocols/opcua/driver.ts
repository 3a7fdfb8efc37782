// Everything of the OPC UA relay that needs node-opcua, behind one small
// interface: the gateway's PKI (OPCUACertificateManager layout under
// <dataDir>/opcua-pki: own/, trusted/certs, rejected/, issuers/, crl), endpoint
// discovery, and a secured session that calls EdgeWarden.Execute (PROTOCOL
// §8). The relay imports this module dynamically, only once an OPC UA device
// exists: `import 'node-opcua'` costs seconds.
import { X509Certificate } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
// before node-opcua: see log-bridge.ts
import { routeOpcuaLogs } from './log-bridge.ts'
import {
  DataType,
  makeBrowsePath,
  MessageSecurityMode,
  OPCUACertificateManager,
  OPCUAClient,
  Variant,
  type ClientSession,
  type NodeId,
  type SecurityPolicy,
} from 'node-opcua'
import type { Logger } from '../../agent/observe/logger.ts'
import { certificateSha256, type EndpointInfo, type SecurityModeName } from './security.ts'
import { OPCUA_HOOK_NAMESPACE } from '../../wire/protocol.ts'

export const HOOK_NAMESPACE = OPCUA_HOOK_NAMESPACE

export type TrustStatus = 'trusted' | 'rejected' | 'unknown'

/** A secured session with one device, bound to its EdgeWarden.Execute method. */
export interface OpcuaLink {
  readonly securityMode: SecurityModeName
  readonly securityPolicyUri: string
  /** PROTOCOL §8: the action's JWS in, the device's ack out. Rejects on a Bad status or no ack. */
  execute(envelope: string, timeoutMs: number): Promise<string>
  /** Close the session and the channel. Never rejects. */
  close(): Promise<void>
  /** Called once when the connection is lost (not after close()). */
  onLost(cb: (reason: string) => void): void
}

export interface OpcuaDriver {
  readonly pkiDir: string
  discover(endpointUrl: string, timeoutMs: number): Promise<EndpointInfo[]>
  connect(endpointUrl: string, endpoint: EndpointInfo, timeoutMs: number): Promise<OpcuaLink>
  trustStatus(cert: Buffer): Promise<TrustStatus>
  trust(cert: Buffer): Promise<void>
  reject(cert: Buffer): Promise<void>
  /** node-opcua's verdict on a certificate (trust list, validity dates, CRLs): 'Good' or a status name. */
  check(cert: Buffer): Promise<string>
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

async function readDer(file: string): Promise<Buffer | null> {
  try {
    return Buffer.from(new X509Certificate(await readFile(file)).raw)
  } catch {
    return null
  }
}

export async function createDriver(opts: DriverOptions): Promise<OpcuaDriver> {
  routeOpcuaLogs(opts.log)
  const cm = new OPCUACertificateManager({ rootFolder: opts.pkiDir, automaticallyAcceptUnknownCertificate: false, disableFileWatchers: true, keySize: 2048 })
  await cm.initialize()
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
        }))
      } finally {
        await client.disconnect().catch(() => {})
      }
    },

    async connect(endpointUrl, ep, timeoutMs) {
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
        session = await withTimeout(client.createSession(), timeoutMs, 'CreateSession', abort)
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
    async check(cert) {
      return (await cm.checkCertificate(cert)).name
    },
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
      await cm.dispose()
    },
  }
}
