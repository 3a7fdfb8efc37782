// A simulated Modbus TCP device: a modbus-serial ServerTCP with a register
// bank a SCADA client reads and writes (holding and input registers, coils
// and discrete inputs, 0..size-1), with or without the §7 hook registers
// (a legacy device has none). It can be stopped and started again on the
// same port, to play a device that is down and then comes up. Imports
// nothing from agent/.
//
// Identification: ServerTCP (modbus-serial 8) answers Read Device
// Identification (FC 43, MEI type 14) from the vector's
// readDeviceIdentification, but its TCP dispatcher has no case for Report
// Server ID (FC 17: only ServerSerial routes it), so it would answer 0x01.
// The device therefore listens through a thin front of its own: it answers
// FC 17 itself and passes every other frame to the ServerTCP behind it, on
// a loopback port of its own. The front is also where a field device's
// quirks are played (an answer under a fixed unit id, or another
// transaction id than the request's).
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { ServerTCP, type IServiceVector } from 'modbus-serial'
import { ActionRuntime, MemoryDeviceStorage, type DeviceHooks } from '../firmware-hooks/action-runtime.ts'
import { keygen, publicKeyToB64 } from '../firmware-hooks/crypto.ts'
import { hookVector, ModbusHookRegisters, ModbusRegisterError } from '../firmware-hooks/modbus-hook.ts'
import { freePort } from './ports.ts'

/** Basic device identification (Modbus App Proto §6.21, objects 0..2). */
export interface ModbusIdentification {
  vendorName: string
  productCode: string
  majorMinorRevision: string
}

/** What Report Server ID (FC 17) answers: the server id byte, the run indicator, device-specific text. */
export interface ModbusServerId {
  id: number
  running: boolean
  additional?: string
}

/** How a device's answers differ from the spec: some field devices answer with a fixed unit id, or their own transaction ids. */
export interface ModbusQuirks {
  unitId?: number
  transactionId?: (requestTransactionId: number) => number
}

export const DEFAULT_IDENTIFICATION: ModbusIdentification = { vendorName: 'edgewarden simulators', productCode: 'SIM-MB-1', majorMinorRevision: '1.0' }
export const DEFAULT_SERVER_ID: ModbusServerId = { id: 0x42, running: true, additional: 'edgewarden simulated Modbus device' }

export interface SimulatedModbusDeviceOptions {
  host?: string
  /** 0: a free port is chosen at the first start and kept for later starts */
  port?: number
  /** registers/bits in each table (default 100) */
  size?: number
  /** the hook registers; null for a legacy device */
  hook: ModbusHookRegisters | null
  /** what FC 43/14 answers (default DEFAULT_IDENTIFICATION); null: the device refuses the function as an illegal function (exception 0x01), as a device without it does */
  identification?: ModbusIdentification | null
  /** what FC 17 answers (default DEFAULT_SERVER_ID); null: the device refuses the function as an illegal function (exception 0x01), as a device without it does */
  serverId?: ModbusServerId | null
  quirks?: ModbusQuirks
}

const MBAP_HEADER_LEN = 7

export class SimulatedModbusDevice {
  readonly host: string
  readonly holding: Uint16Array
  readonly input: Uint16Array
  readonly coils: boolean[]
  readonly discrete: boolean[]
  readonly hook: ModbusHookRegisters | null
  readonly identification: ModbusIdentification | null
  readonly serverId: ModbusServerId | null
  /** may be changed while running */
  quirks: ModbusQuirks
  /** requests served while running (reads and writes of any table) */
  requests = 0
  /** Read Device Identification requests answered */
  identificationReads = 0
  /** Report Server ID requests answered */
  serverIdReads = 0
  /** connections accepted, since the first start */
  connections = 0
  /** requests received, by function code, since the first start */
  readonly requestsByFunction = new Map<number, number>()
  #port: number
  #server: ServerTCP | null = null
  #front: Server | null = null
  readonly #frontSockets = new Set<Socket>()

  constructor(opts: SimulatedModbusDeviceOptions) {
    const size = opts.size ?? 100
    this.host = opts.host ?? '127.0.0.1'
    this.#port = opts.port ?? 0
    this.holding = new Uint16Array(size)
    this.input = Uint16Array.from({ length: size }, (_, i) => 1000 + i)
    this.coils = Array.from({ length: size }, () => false)
    this.discrete = Array.from({ length: size }, (_, i) => i % 2 === 0)
    this.hook = opts.hook
    this.identification = opts.identification === undefined ? DEFAULT_IDENTIFICATION : opts.identification
    this.serverId = opts.serverId === undefined ? DEFAULT_SERVER_ID : opts.serverId
    this.quirks = opts.quirks ?? {}
  }

  get port(): number {
    return this.#port
  }

  get running(): boolean {
    return this.#server !== null
  }

  #at<T>(table: ArrayLike<T>, addr: number): T {
    this.requests++
    if (addr < 0 || addr >= table.length) throw new ModbusRegisterError(0x02, `address ${addr} is outside 0..${table.length - 1}`)
    return table[addr]!
  }

  #vector(): object {
    const ident = this.identification
    const own = {
      getHoldingRegister: (addr: number, _unit: number): number => this.#at(this.holding, addr),
      setRegister: (addr: number, value: number, _unit: number): void => {
        this.#at(this.holding, addr)
        this.holding[addr] = value
      },
      getInputRegister: (addr: number, _unit: number): number => this.#at(this.input, addr),
      getCoil: (addr: number, _unit: number): boolean => this.#at(this.coils, addr),
      setCoil: (addr: number, value: boolean, _unit: number): void => {
        this.#at(this.coils, addr)
        this.coils[addr] = value
      },
      getDiscreteInput: (addr: number, _unit: number): boolean => this.#at(this.discrete, addr),
      // ServerTCP's FC 43/14: object id -> value; without this function it answers 0x01
      ...(ident
        ? {
            readDeviceIdentification: (_unit: number): Record<number, string> => {
              this.identificationReads++
              return { 0: ident.vendorName, 1: ident.productCode, 2: ident.majorMinorRevision }
            },
          }
        : {}),
    }
    return this.hook ? hookVector(this.hook, own) : own
  }

  async start(): Promise<void> {
    if (this.#server) return
    // The front listens where it is told, or on a port the system picks
    // (port 0; read back once bound, so no other process can take it in
    // between). ServerTCP behind it takes port 0 to mean 502, so its port
    // is chosen free first, and chosen again if something took it meanwhile.
    let server: ServerTCP | undefined
    let backendPort = 0
    for (let attempt = 0; !server; attempt++) {
      backendPort = await freePort(this.host)
      const s = new ServerTCP(this.#vector() as IServiceVector, { host: this.host, port: backendPort, unitID: 255 })
      try {
        await new Promise<void>((resolve, reject) => {
          s.once('initialized', () => resolve())
          s.once('serverError', (err: Error) => reject(err))
        })
        server = s
      } catch (err) {
        await new Promise<void>((resolve) => s.close(() => resolve()))
        if ((err as { code?: string }).code !== 'EADDRINUSE' || attempt >= 4) throw err
      }
    }
    server.on('socketError', () => {}) // a client that vanishes is not the device's failure
    const front = createServer((client) => this.#serve(client, backendPort))
    try {
      await new Promise<void>((resolve, reject) => {
        front.once('error', reject)
        front.listen(this.#port, this.host, () => {
          front.off('error', reject)
          resolve()
        })
      })
    } catch (err) {
      const backend = server
      await new Promise<void>((resolve) => backend.close(() => resolve()))
      throw err
    }
    this.#port = (front.address() as AddressInfo).port
    this.#server = server
    this.#front = front
  }

  /** One client connection: FC 17 answered here, everything else through the ServerTCP behind; answers with the device's quirks. */
  #serve(client: Socket, backendPort: number): void {
    this.connections++
    this.#frontSockets.add(client)
    const backend = connect({ host: this.host, port: backendPort })
    client.setNoDelay(true)
    backend.setNoDelay(true)
    const drop = (): void => {
      client.destroy()
      backend.destroy()
    }
    client.on('error', drop)
    backend.on('error', drop)
    client.once('close', () => {
      this.#frontSockets.delete(client)
      backend.destroy()
    })
    backend.once('close', () => client.destroy())
    const answer = (frame: Buffer): void => {
      const q = this.quirks
      if (q.transactionId) frame.writeUInt16BE(q.transactionId(frame.readUInt16BE(0)) & 0xffff, 0)
      if (q.unitId !== undefined) frame.writeUInt8(q.unitId & 0xff, 6)
      if (!client.destroyed) client.write(frame)
    }
    frames(client, drop, (frame) => {
      const fc = frame[MBAP_HEADER_LEN] ?? 0
      this.requestsByFunction.set(fc, (this.requestsByFunction.get(fc) ?? 0) + 1)
      if (fc !== 17) return void backend.write(frame)
      answer(this.#reportServerId(frame))
    })
    frames(backend, drop, answer)
  }

  /** Modbus App Proto §6.13: byte count, server id, run indicator (0xFF on), device-specific data. */
  #reportServerId(request: Buffer): Buffer {
    const sid = this.serverId
    const pdu = sid ? Buffer.concat([Buffer.from([17, 0, sid.id & 0xff, sid.running ? 0xff : 0x00]), Buffer.from(sid.additional ?? '', 'latin1')]) : Buffer.from([0x91, 0x01])
    if (sid) {
      this.serverIdReads++
      pdu[1] = pdu.length - 2
    }
    const out = Buffer.alloc(MBAP_HEADER_LEN + pdu.length)
    request.copy(out, 0, 0, 4) // transaction id, protocol id
    out.writeUInt16BE(pdu.length + 1, 4)
    out[6] = request[6]!
    pdu.copy(out, MBAP_HEADER_LEN)
    return out
  }

  /** Go down: listener closed and every connection dropped. */
  async stop(): Promise<void> {
    const server = this.#server
    const front = this.#front
    if (!server || !front) return
    this.#server = null
    this.#front = null
    const socks = [...server.socks.keys()]
    await Promise.all([
      new Promise<void>((resolve) => {
        front.close(() => resolve())
        for (const s of this.#frontSockets) s.destroy()
      }),
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        for (const s of socks) s.destroy()
      }),
    ])
  }
}

/** Whole MBAP frames (header included) out of a stream; a length no MBAP frame has ends the connection, as on most devices. */
function frames(sock: Socket, drop: () => void, onFrame: (frame: Buffer) => void): void {
  let buf: Buffer = Buffer.alloc(0)
  sock.on('data', (chunk: Buffer) => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk])
    while (buf.length >= 6) {
      const length = buf.readUInt16BE(4)
      if (length < 2 || length > 254) return drop()
      if (buf.length < 6 + length) break
      onFrame(Buffer.from(buf.subarray(0, 6 + length)))
      buf = buf.subarray(6 + length)
    }
  })
}

export interface HookedDeviceOptions {
  deviceId: string
  gatewayId: string
  gatewayPublicKey: string
  hookBase?: number
  port?: number
  hooks?: Partial<DeviceHooks>
  nowS?: () => number
}

/** A device with the hook: its own key, the action runtime (in memory) and some data for a wipe to erase. */
export async function createHookedModbusDevice(opts: HookedDeviceOptions): Promise<{ device: SimulatedModbusDevice; runtime: ActionRuntime; publicKey: string }> {
  const key = await keygen()
  const runtime = await ActionRuntime.open({
    deviceId: opts.deviceId,
    gatewayId: opts.gatewayId,
    gatewayPublicKey: opts.gatewayPublicKey,
    secretKey: key.secretKey,
    storage: new MemoryDeviceStorage(),
    ...(opts.hooks ? { hooks: opts.hooks } : {}),
    ...(opts.nowS ? { nowS: opts.nowS } : {}),
  })
  await runtime.setData('recipe', 'secret process parameters')
  const hook = new ModbusHookRegisters({ runtime, ...(opts.hookBase !== undefined ? { hookBase: opts.hookBase } : {}) })
  const device = new SimulatedModbusDevice({ hook, ...(opts.port !== undefined ? { port: opts.port } : {}) })
  return { device, runtime, publicKey: runtime.publicKeyB64! }
}

/** A legacy device: registers only, no hook; it still needs a key to be enrolled. */
export async function createLegacyModbusDevice(
  opts: Partial<Pick<SimulatedModbusDeviceOptions, 'port' | 'identification' | 'serverId' | 'quirks'>> = {},
): Promise<{ device: SimulatedModbusDevice; publicKey: string }> {
  const key = await keygen()
  return { device: new SimulatedModbusDevice({ ...opts, hook: null }), publicKey: publicKeyToB64(key.publicKey) }
}
