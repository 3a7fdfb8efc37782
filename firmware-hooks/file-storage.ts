// A DeviceStorage in one JSON file, for devices and simulators on Node. Kept
// apart from action-runtime.ts, which stays free of node: imports. The file
// holds the device's private key, so it is written like a key file
// (PROTOCOL §1): mode 0600, and a file readable by group or others is
// refused at load. Each save is atomic: a temporary file, fsync, rename,
// fsync of the directory; a crash leaves the old state or the new one.
// JsonFileStorage does the same for any state with its own check: a
// certificate device's key and chain (cert-device.ts validateCertDeviceState).
import { randomBytes } from 'node:crypto'
import { open, readFile, rename, stat, unlink } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { validateDeviceState, type DeviceState, type DeviceStorage } from './action-runtime.ts'

export class JsonFileStorage<T> {
  readonly path: string
  readonly #validate: (v: unknown) => T

  constructor(path: string, validate: (v: unknown) => T) {
    if (typeof path !== 'string' || path === '') throw new TypeError('path must be a non-empty string')
    if (typeof validate !== 'function') throw new TypeError('validate must be a function')
    this.path = path
    this.#validate = validate
  }

  /** null when the file does not exist; rejects on a file open to group/others or not valid state. */
  async load(): Promise<T | null> {
    let text: string
    try {
      const st = await stat(this.path)
      if ((st.mode & 0o077) !== 0) throw new Error(`${this.path} is readable by group or others (mode ${(st.mode & 0o777).toString(8)}); refusing it`)
      text = await readFile(this.path, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
      throw err
    }
    let value: unknown
    try {
      value = JSON.parse(text)
    } catch (err) {
      throw new Error(`${this.path} is not JSON`, { cause: err })
    }
    return this.#validate(value)
  }

  async save(state: T): Promise<void> {
    const dir = dirname(this.path)
    const tmp = join(dir, `.${basename(this.path)}.${randomBytes(6).toString('hex')}.tmp`)
    const fh = await open(tmp, 'wx', 0o600)
    try {
      await fh.writeFile(JSON.stringify(state))
      await fh.sync()
    } catch (err) {
      await fh.close()
      await unlink(tmp).catch(() => {})
      throw err
    }
    await fh.close()
    try {
      await rename(tmp, this.path)
    } catch (err) {
      await unlink(tmp).catch(() => {})
      throw err
    }
    // the rename itself is durable only once the directory is synced
    const d = await open(dir, 'r')
    try {
      await d.sync()
    } finally {
      await d.close()
    }
  }
}

export class FileDeviceStorage extends JsonFileStorage<DeviceState> implements DeviceStorage {
  constructor(path: string) {
    super(path, validateDeviceState)
  }
}
