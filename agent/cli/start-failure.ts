// What a failed `edgewarden start` leaves behind: one line saying why, and
// nothing half-made. A first start that cannot bind its port would otherwise
// leave a fresh gateway key and an empty store that a later start adopts as
// this gateway's identity.
import { existsSync, readdirSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import type { AgentConfig } from '../runtime/config.ts'
import { EdgewardenError, isEdgewardenError } from '../runtime/errors.ts'

export interface DataDirSnapshot {
  /** Remove what the failed start added to the data dir (or the data dir itself if the start made it). */
  undo(err: unknown): void
}

/** Taken before the agent starts: which of the data dir (and its parents) exists already. */
export function snapshotDataDir(dataDir: string): DataDirSnapshot {
  // Store.open makes the data dir with every missing parent: the highest one made is what to remove.
  let made: string | null = null
  for (let dir = dataDir; !existsSync(dir); dir = dirname(dir)) {
    made = dir
    if (dirname(dir) === dir) break
  }
  let before: Set<string> | null = null
  if (made === null) {
    try {
      before = new Set(readdirSync(dataDir))
    } catch {
      // unreadable: the start fails on it too, and nothing here may be touched
    }
  }
  return {
    undo(err) {
      // Locked: another agent holds this data dir, and anything new in it is that agent's.
      if (isEdgewardenError(err, 'STORE_LOCKED')) return
      if (made !== null) {
        rmSync(made, { recursive: true, force: true })
        return
      }
      if (before === null) return
      let now: string[]
      try {
        now = readdirSync(dataDir)
      } catch {
        return
      }
      for (const name of now) if (!before.has(name)) rmSync(join(dataDir, name), { recursive: true, force: true })
    },
  }
}

interface ListenError {
  code: string
  syscall: string
  address?: string
  port: number
}

function listenError(err: unknown): ListenError | null {
  for (let e = err, depth = 0; e && typeof e === 'object' && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const x = e as Partial<ListenError>
    if (x.syscall === 'listen' && typeof x.code === 'string' && typeof x.port === 'number') return x as ListenError
  }
  return null
}

/** The listeners a start binds, with the flag that sets each port. */
function listeners(config: AgentConfig): { flag: string; host: string; port: number }[] {
  return [
    ...(config.mqtt.port !== null ? [{ flag: 'mqtt-port', host: config.mqtt.host, port: config.mqtt.port }] : []),
    ...(config.mqtt.tls ? [{ flag: 'mqtts-port', host: config.mqtt.host, port: config.mqtt.tls.port }] : []),
    ...(config.modbus ? [{ flag: 'modbus-port', host: config.modbus.host, port: config.modbus.port }] : []),
    ...(config.http ? [{ flag: 'http-port', host: config.http.host, port: config.http.port }] : []),
    ...(config.pki.est ? [{ flag: 'est-port', host: config.pki.est.host, port: config.pki.est.port }] : []),
  ]
}

/**
 * A port that cannot be bound as one line naming the port and the option
 * that set it (so the operator knows what to change); any other error as it is.
 */
export function describeStartFailure(err: unknown, config: AgentConfig): unknown {
  const e = listenError(err)
  if (!e || (e.code !== 'EADDRINUSE' && e.code !== 'EACCES')) return err
  const byPort = listeners(config).filter((l) => l.port === e.port)
  const byHost = byPort.filter((l) => l.host === e.address)
  const named = (byHost.length ? byHost : byPort).map((l) => `--${l.flag}`)
  if (named.length === 0) return err
  const where = `port ${e.port}${e.address ? ` on ${e.address}` : ''}`
  if (named.length > 1) {
    return new EdgewardenError('PORT_IN_USE', `${where} is named by ${named.join(' and ')}: give each its own port`, { cause: err })
  }
  const flag = named[0]!
  if (e.code === 'EACCES') {
    return new EdgewardenError('PORT_DENIED', `${where} may not be bound by this user (${flag}; ports below 1024 need root or CAP_NET_BIND_SERVICE); pick another with ${flag}`, { cause: err })
  }
  return new EdgewardenError('PORT_IN_USE', `${where} is already in use (${flag}); pick another with ${flag}`, { cause: err })
}
