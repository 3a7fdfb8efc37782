// Why a verified command could not run (PROTOCOL §3 `cmd.failed`): thrown by
// an op, answered by the processor with its reason (one typed set, wire/protocol.ts).
import type { FailReason } from '../../wire/protocol.ts'
import { EdgewardenError } from '../runtime/errors.ts'

/** A verified command that could not run: answered `cmd.failed` with `reason` (PROTOCOL §3, one typed set in wire/protocol.ts). */
export class CommandFailure extends EdgewardenError {
  constructor(
    readonly reason: FailReason,
    message: string,
  ) {
    super('COMMAND_FAILED', message)
    this.name = 'CommandFailure'
  }
}

