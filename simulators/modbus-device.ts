// A simulated Modbus TCP device: a modbus-serial ServerTCP with a register
// bank a SCADA client reads and writes (holding and input registers, coils
// and discrete inputs, 0..size-1), with or without the §7 hook registers
// (a legacy device has none). It can be stopped and started again on the
// same port, to play a device that is down and then comes up. Imports
// nothing from agent/.
import { ServerTCP, type IServiceVector } from 'modbus-serial'
import { ActionRuntime, MemoryDeviceStorage, type DeviceHooks } from '../firmware-hooks/action-runtime.ts'
import { keygen, publicKeyToB64 } from '../firmware-hooks/crypto.ts'
import { hookVector, ModbusHookRegisters, ModbusRegisterError } from '../firmware-hooks/modbus-hook.ts'
import { freePort } from './ports.ts'

export interface SimulatedModbusDeviceOptions {
  host?: string
  /** 0: a free port is chosen at the first start and kept for later starts */
  port?: number
  /** registers/bits in each table (default 100) */
  size?: number
  /** the hook registers; null for a legacy device */
  hook: ModbusHookRegisters | null
}

export class SimulatedModbusDevice {
  readonly host: string
  readonly holding: Uint16Array
  readonly input: Uint16Array
  readonly coils: boolean[]
  readonly discrete: boolean[]
  readonly hook: ModbusHookRegisters | null
  /** requests served while running (reads and writes of any table) */
  requests = 0
  #port: number
  #server: ServerTCP | null = null

  constructor(opts: SimulatedModbusDeviceOptions) {
    const size = opts.size ?? 100
    this.host = opts.host ?? '127.0.0.1'
    this.#port = opts.port ?? 0
    this.holding = new Uint16Array(size)
    this.input = Uint16Array.from({ length: size }, (_, i) => 1000 + i)
    this.coils = Array.from({ length: size }, () => false)
    this.discrete = Array.from({ length: size }, (_, i) => i % 2 === 0)
    this.hook = opts.hook
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
    }
    return this.hook ? hookVector(this.hook, own) : own
  }

  async start(): Promise<void> {
    if (this.#server) return
    if (this.#port === 0) this.#port = await freePort(this.host) // ServerTCP takes port 0 to mean 502
    const server = new ServerTCP(this.#vector() as IServiceVector, { host: this.host, port: this.#port, unitID: 255 })
    await new Promise<void>((resolve, reject) => {
      server.once('initialized', () => resolve())
      server.once('serverError', (err: Error) => reject(err))
    })
    server.on('socketError', () => {}) // a client that vanishes is not the device's failure
    this.#server = server
  }

  /** Go down: listener closed and every connection dropped. */
  async stop(): Promise<void> {
    const server = this.#server
    if (!server) return
    this.#server = null
    const socks = [...server.socks.keys()]
    await new Promise<void>((resolve) => {
      server.close(() => resolve())
      for (const s of socks) s.destroy()
    })
  }
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
export async function createLegacyModbusDevice(opts: { port?: number } = {}): Promise<{ device: SimulatedModbusDevice; publicKey: string }> {
  const key = await keygen()
  return { device: new SimulatedModbusDevice({ hook: null, ...(opts.port !== undefined ? { port: opts.port } : {}) }), publicKey: publicKeyToB64(key.publicKey) }
}
