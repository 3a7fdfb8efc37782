// The agent under test for the runtime workloads: exactly what `edgewarden
// start` runs (the same flags, config and startAgent), plus an IPC channel
// so the benchmark can see inside without changing what it measures:
// - {op:'retire', ids}: retire every id at once (one burst, as a bulk
//   command would), answering when every wipe action is durably queued;
// - {op:'acks'}: acks recorded (settled: removed from the queue, audited,
//   event written) so far, and when the last one was;
// - {op:'waitAcks', count, timeoutMs}: answers once `count` acks are recorded;
// - {op:'accessRemoved'}: the agent's own accessRemovedMs (command received
//   to every session closed, PROTOCOL §6) of each device.revoke completed
//   since the last ask: the part of a revocation spent inside the agent;
//   and the agent's event-loop delay over the same time (a stall there
//   delays a command before the agent has it).
// Memory is answered by bench/probe.mjs (preloaded by the benchmark).
import { parseArgs } from 'node:util'
import { startAgent } from '../agent/compose.ts'
import { flagsToKeys, startFlagOptions } from '../agent/cli/start.ts'
import { loadConfig } from '../agent/runtime/config.ts'
import { createLogger } from '../agent/observe/logger.ts'
import { watchLoop, type LoopWindow } from './loop-watch.ts'

export interface AccessRemovedReply {
  accessRemovedMs: number[]
  /** per device revoked since the last ask: epoch ms (timeOrigin + now, as the load generator reads it) when its state changed and its sessions were closed */
  closedAt: Record<string, number>
  /** epoch ms when each command since the last ask reached the agent (its uplink handed it to the command processor) */
  commandsArrivedAt: number[]
  /** the event loop's delay and the garbage collections (pauses of the main thread) since the last ask (null on the first) */
  loop: LoopWindow | null
}

/** events waiting for the central broker when asked, those left at the end, and how long it took */
export interface DrainReply {
  depth: number
  left: number
  ms: number
}

export type HostRequest = { op: 'retire'; ids: string[] } | { op: 'acks' } | { op: 'waitAcks'; count: number; timeoutMs: number } | { op: 'accessRemoved' } | { op: 'drainOutbox'; timeoutMs: number }

export interface RetireReply {
  retired: number
  /** wipe actions durably queued by the end of the burst */
  queued: number
  elapsedMs: number
  failed: string[]
}

export interface AcksReply {
  acks: number
  /** epoch ms of the last recorded ack (0: none yet) */
  lastAt: number
}

const epochMs = (): number => performance.timeOrigin + performance.now()

const { values } = parseArgs({ args: process.argv.slice(2), options: startFlagOptions(), strict: true, allowPositionals: false })
const config = loadConfig({ flags: flagsToKeys(values), env: {} })
const log = createLogger(config.logLevel)
const agent = await startAgent(config, { log })
let acks = 0
let lastAt = 0
const ackWaiters = new Set<() => void>()
let accessRemoved: number[] = []
let closedAt: AccessRemovedReply['closedAt'] = {}
let commandsArrivedAt: number[] = []
/** the window since the last accessRemoved (none before the first) */
let loopWindow: ReturnType<typeof watchLoop> | null = null
// Where a revocation's time goes, read at two points of the agent's own
// path (observation only: a timestamp each): the command handed to the
// processor, which the uplink calls on the instance for every message, and
// the state change, whose listener runs after the enforcer's in the same
// synchronous step, just after the device's sessions were closed.
const commands = agent.commands
const handleCommand = commands.handle.bind(commands)
commands.handle = (payload) => {
  commandsArrivedAt.push(epochMs())
  return handleCommand(payload)
}
agent.gateway.onDeviceChange((c) => {
  if (c.to === 'revoked') closedAt[c.record.spec.id] = epochMs()
})
agent.gateway.onCommitted((change) => {
  for (const e of change.events ?? []) {
    const evidence = e.type === 'cmd.completed' && e.data.op === 'device.revoke' ? (e.data.evidence as { accessRemovedMs?: unknown } | undefined) : undefined
    if (typeof evidence?.accessRemovedMs === 'number') accessRemoved.push(evidence.accessRemovedMs)
  }
})
agent.actions.onAck(() => {
  acks++
  lastAt = epochMs()
  for (const w of [...ackWaiters]) w()
})

async function handle(req: HostRequest): Promise<unknown> {
  switch (req.op) {
    case 'retire': {
      const gw = agent.gateway
      const who = { actor: 'local:bench' }
      const started = performance.now()
      const failed: string[] = []
      const results = await Promise.all(
        req.ids.map((id) =>
          agent.retirements.start(id, { receivedAt: performance.now(), receivedAtS: gw.nowS(), reason: 'bench: bulk retire' }, who).catch((err: unknown) => {
            if (failed.length < 5) failed.push(`${id}: ${(err as Error).message}`)
            return null
          }),
        ),
      )
      const elapsedMs = performance.now() - started
      const queued = results.filter((r) => r && !r.done && r.wipeActionId).length
      return { retired: results.filter(Boolean).length, queued, elapsedMs, failed } satisfies RetireReply
    }
    case 'acks':
      return { acks, lastAt } satisfies AcksReply
    case 'accessRemoved': {
      const out: AccessRemovedReply = { accessRemovedMs: accessRemoved, closedAt, commandsArrivedAt, loop: loopWindow?.end() ?? null }
      accessRemoved = []
      closedAt = {}
      commandsArrivedAt = []
      loopWindow = watchLoop()
      return out
    }
    case 'drainOutbox': {
      // the events stored so far, all acknowledged by the central broker: how many there were, and how long that took
      const depth = agent.gateway.outbox.depth
      const t0 = performance.now()
      if (agent.uplink) {
        let timer: NodeJS.Timeout | undefined
        await Promise.race([agent.uplink.drained(), new Promise<void>((resolve) => (timer = setTimeout(resolve, req.timeoutMs)))])
        clearTimeout(timer)
      }
      return { depth, left: agent.gateway.outbox.depth, ms: performance.now() - t0 } satisfies DrainReply
    }
    case 'waitAcks':
      await new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (acks < req.count) return
          clearTimeout(timer)
          ackWaiters.delete(check)
          resolve()
        }
        const timer = setTimeout(() => {
          ackWaiters.delete(check)
          reject(new Error(`${acks} of ${req.count} acks recorded within ${req.timeoutMs} ms`))
        }, req.timeoutMs)
        ackWaiters.add(check)
        check()
      })
      return { acks, lastAt } satisfies AcksReply
  }
}

process.on('message', (msg: { id?: number; req?: HostRequest }) => {
  if (typeof msg !== 'object' || msg === null || typeof msg.id !== 'number' || !msg.req) return // 'memory' is the probe's
  const { id, req } = msg
  handle(req).then(
    (result) => process.send?.({ id, result: result ?? null }),
    (err: unknown) => process.send?.({ id, result: null, error: (err as Error).stack ?? String(err) }),
  )
})

let stopping = false
const stop = (): void => {
  if (stopping) return
  stopping = true
  setTimeout(() => process.exit(1), 5000).unref()
  agent.stop().then(
    () => process.exit(0),
    () => process.exit(1),
  )
}
process.once('SIGTERM', stop)
process.once('SIGINT', stop)
process.stdout.write(`${JSON.stringify({ event: 'ready', gateway: agent.gateway.id, publicKey: agent.gateway.key.publicKeyB64, mqtt: agent.broker.describe(), devices: agent.gateway.registry.size })}\n`)
