// The commands of PROTOCOL §3 that act through device actions: wipe,
// reenroll, renew (queued, answered once durably queued) and retire
// (answered when the retirement of §6 finishes, with its evidence).
import type { Act } from '../actions/action-queue.ts'
import type { Command, CommandProcessor, Op } from './processor.ts'
import type { DeviceActions } from '../actions/device-actions.ts'
import type { Retirements } from '../actions/retirement.ts'

export function registerActionCommands(processor: CommandProcessor, parts: { actions: DeviceActions; retirements: Retirements }): void {
  const { actions, retirements } = parts
  const queueing = (act: Act) => async (cmd: Command, ctx: { actor: { actor: string; jti: string } }) => {
    const id = cmd.args.deviceId as string
    const a = await actions.queue(id, act, ctx.actor)
    return { deviceId: id, evidence: { deviceId: id, actionId: a.id, act, queued: true, reachable: actions.dispatcher.isReachable(id) } }
  }
  const ops: [Op, Act][] = [
    ['device.wipe', 'wipe'],
    ['device.reenroll', 'reenroll'],
    ['device.renew', 'renew'],
  ]
  for (const [op, act] of ops) processor.register(op, queueing(act))
  processor.register('device.retire', async (cmd, ctx) => {
    const id = cmd.args.deviceId as string
    const r = await retirements.start(
      id,
      {
        receivedAt: ctx.receivedAt,
        receivedAtS: ctx.receivedAtS,
        origin: { jti: cmd.jti, command: cmd },
        ...(typeof cmd.args.wipe === 'boolean' ? { wipe: cmd.args.wipe } : {}),
        ...(typeof cmd.args.deadlineS === 'number' ? { deadlineS: cmd.args.deadlineS } : {}),
        ...(typeof cmd.args.reason === 'string' ? { reason: cmd.args.reason } : {}),
      },
      ctx.actor,
    )
    return r.done ? { deviceId: id, evidence: r.evidence } : { deviceId: id, pending: true }
  })
  retirements.onComplete((origin, deviceId, evidence) => processor.complete(origin.command as Command, { deviceId, evidence }))
}
