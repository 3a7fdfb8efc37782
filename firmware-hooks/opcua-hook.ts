// The device side of PROTOCOL §8: an `EdgeWarden` object under Objects, in
// namespace `urn:edgewarden:hooks`, with `Execute(envelope: String) -> (ack:
// String)`. The envelope goes to the action runtime (verify against the
// gateway key, run the hook once, sign the ack); the ack is the method's
// output. What follows the ack (key switch, key erasure) runs once the call
// has returned; should the answer be lost, the gateway calls again with the
// same action id and gets the stored ack back, nothing run twice.
import { DataType, MessageSecurityMode, StatusCodes, Variant, type AddressSpace, type CallMethodResultOptions, type ISessionContext, type StatusCode, type UAMethod, type UAObject, type VariantLike } from 'node-opcua'
import type { HandleResult, IgnoreReason } from './action-runtime.ts'
import { OPCUA_HOOK_NAMESPACE } from '../wire/protocol.ts'

export const HOOK_NAMESPACE = OPCUA_HOOK_NAMESPACE

/** What Execute needs: ActionRuntime, or a wrapper of it. */
export interface EnvelopeHandler {
  handle(envelope: string): Promise<HandleResult>
}

export interface OpcuaHookOptions {
  handler: EnvelopeHandler
  /** accept calls over unsecured channels too (default false: Sign or SignAndEncrypt only) */
  allowInsecure?: boolean
  /** told of every call's outcome (simulators count and log) */
  onCall?: (outcome: { result: HandleResult | null; status: string }) => void
}

export interface InstalledHook {
  namespaceIndex: number
  object: UAObject
  method: UAMethod
}

/** An envelope that was not acted on answers a Bad status and no ack. */
const REFUSAL: Record<IgnoreReason, StatusCode> = {
  malformed: StatusCodes.BadInvalidArgument,
  'bad-alg': StatusCodes.BadUserAccessDenied,
  'unknown-key': StatusCodes.BadUserAccessDenied,
  'bad-signature': StatusCodes.BadUserAccessDenied,
  'wrong-issuer': StatusCodes.BadUserAccessDenied,
  'wrong-audience': StatusCodes.BadUserAccessDenied,
  wiped: StatusCodes.BadInvalidState,
  'no-key': StatusCodes.BadInvalidState,
}

/** Add the EdgeWarden object and its Execute method to a server's address space. */
export function installEdgeWardenHook(addressSpace: AddressSpace, opts: OpcuaHookOptions): InstalledHook {
  const namespace = addressSpace.getNamespace(HOOK_NAMESPACE) ?? addressSpace.registerNamespace(HOOK_NAMESPACE)
  const object = namespace.addObject({ browseName: 'EdgeWarden', organizedBy: addressSpace.rootFolder.objects })
  const method = namespace.addMethod(object, {
    browseName: 'Execute',
    inputArguments: [{ name: 'envelope', dataType: DataType.String, description: 'the action, a JWS signed by the gateway (PROTOCOL §5)' }],
    outputArguments: [{ name: 'ack', dataType: DataType.String, description: 'the ack, a JWS signed by the device (PROTOCOL §5)' }],
  })
  const answer = (statusCode: StatusCode, result: HandleResult | null, ack?: string): CallMethodResultOptions => {
    opts.onCall?.({ result, status: statusCode.name })
    return { statusCode, ...(ack !== undefined ? { outputArguments: [new Variant({ dataType: DataType.String, value: ack })] } : {}) }
  }
  // Two parameters: node-opcua treats the function as async (bindMethod).
  method.bindMethod(async (inputArguments: VariantLike[], context: ISessionContext): Promise<CallMethodResultOptions> => {
    const mode = context.session?.channel?.securityMode
    if (!opts.allowInsecure && mode !== MessageSecurityMode.Sign && mode !== MessageSecurityMode.SignAndEncrypt) {
      return answer(StatusCodes.BadSecurityModeInsufficient, null)
    }
    const envelope: unknown = inputArguments[0]?.value
    if (typeof envelope !== 'string' || envelope.length === 0) return answer(StatusCodes.BadInvalidArgument, null)
    let result: HandleResult
    try {
      result = await opts.handler.handle(envelope)
    } catch {
      return answer(StatusCodes.BadInternalError, null)
    }
    if (result.kind === 'ignored') return answer(REFUSAL[result.reason], result)
    const after = result.after
    // The ack leaves with this call's response: what follows it runs after.
    if (after) setImmediate(() => void after().catch(() => {}))
    return answer(StatusCodes.Good, result, result.ack)
  })
  return { namespaceIndex: namespace.index, object, method }
}
