// Read Device Identification (Modbus App Proto §6.21, function 0x2B with
// MEI type 0x0E): the request, the shape of an answer, and the gateway's own
// read of a device's basic identification (VendorName, ProductCode,
// MajorMinorRevision: objects 0..2, mandatory for every device that
// implements the function) for the inventory. Pure but for the request
// function it is given: it knows nothing of links or sockets.
import { EdgewardenError } from '../../agent/runtime/errors.ts'

export const FC_MEI = 0x2b
export const MEI_READ_DEVICE_ID = 0x0e
/** Read Device ID codes: 1 basic, 2 regular, 3 extended (stream access), 4 one object (individual access). */
export const READ_DEVICE_ID_CODES = [1, 2, 3, 4] as const
export type ReadDeviceIdCode = (typeof READ_DEVICE_ID_CODES)[number]

/** The basic objects, by object id (§6.21 table: category Basic, mandatory). */
export const BASIC_OBJECTS = { 0: 'vendorName', 1: 'productCode', 2: 'majorMinorRevision' } as const
export type BasicIdentification = Partial<Record<(typeof BASIC_OBJECTS)[keyof typeof BASIC_OBJECTS], string>>

export function readDeviceIdPdu(code: ReadDeviceIdCode, objectId: number): Buffer {
  return Buffer.from([FC_MEI, MEI_READ_DEVICE_ID, code, objectId & 0xff])
}

export interface DeviceIdAnswer {
  code: number
  conformityLevel: number
  moreFollows: boolean
  nextObjectId: number
  objects: { id: number; value: Buffer }[]
}

/**
 * The parts of a (non-exception) Read Device Identification answer, or
 * null when it is not one: MEI type 0x0E, a known Read Device ID code, More
 * Follows 0x00 or 0xFF, and whole objects filling the PDU to its last byte.
 * Fewer objects than Number of Objects says are accepted when the PDU ends
 * on an object's end: the example in §6.21 counts the objects of every
 * part of a stream, and devices do as the example does.
 */
export function parseDeviceIdAnswer(pdu: Buffer): DeviceIdAnswer | null {
  if (pdu.length < 7 || pdu[0] !== FC_MEI || pdu[1] !== MEI_READ_DEVICE_ID) return null
  const code = pdu[2]!
  const moreFollows = pdu[4]!
  if (!(READ_DEVICE_ID_CODES as readonly number[]).includes(code) || (moreFollows !== 0x00 && moreFollows !== 0xff)) return null
  const objects: DeviceIdAnswer['objects'] = []
  let at = 7
  for (let i = 0; i < pdu[6]! && at < pdu.length; i++) {
    if (at + 2 > pdu.length) return null
    const id = pdu[at]!
    const len = pdu[at + 1]!
    if (at + 2 + len > pdu.length) return null
    objects.push({ id, value: pdu.subarray(at + 2, at + 2 + len) })
    at += 2 + len
  }
  if (at !== pdu.length) return null
  return { code, conformityLevel: pdu[3]!, moreFollows: moreFollows === 0xff, nextObjectId: pdu[5]!, objects }
}

/**
 * An object value as text that is safe to log and print: the spec says
 * ASCII, a device may send anything (NUL padding, control characters, bytes
 * that would be terminal escapes in `device show`).
 */
export function printable(value: Buffer): string {
  return value
    .toString('latin1')
    .replace(/[\s\u0000]+$/, '')
    .replace(/[^\x20-\x7e]/g, '?')
}

/** The device answered the request with an exception: it does not implement the function, or not for us. */
export class DeviceIdRefused extends EdgewardenError {
  readonly exception: number
  constructor(exception: number) {
    super('MODBUS_REFUSED', `device answered Read Device Identification with exception 0x${exception.toString(16).padStart(2, '0')}`)
    this.name = 'DeviceIdRefused'
    this.exception = exception
  }
}

/** Requests a stream may take: a device that never stops saying "more follows" is not followed forever. */
const MAX_PARTS = 3

/**
 * Read objects 0..2 with stream access (code 1), following More Follows
 * when the answer did not fit one PDU. `request` sends one PDU to the
 * device and resolves with an answer that fits it (the link checks that).
 * Rejects with DeviceIdRefused on an exception answer, or with whatever
 * `request` rejects with.
 */
export async function readBasicIdentification(request: (pdu: Buffer) => Promise<Buffer>): Promise<BasicIdentification> {
  const found: BasicIdentification = {}
  let objectId = 0
  for (let part = 0; part < MAX_PARTS; part++) {
    const pdu = await request(readDeviceIdPdu(1, objectId))
    if (pdu[0]! & 0x80) throw new DeviceIdRefused(pdu[1] ?? 0)
    const answer = parseDeviceIdAnswer(pdu)
    if (!answer) throw new DeviceIdRefused(0)
    for (const o of answer.objects) {
      const name = BASIC_OBJECTS[o.id as keyof typeof BASIC_OBJECTS]
      if (name) found[name] = printable(o.value)
    }
    // A next object id that does not move forward would loop.
    if (!answer.moreFollows || answer.nextObjectId <= objectId || answer.nextObjectId > 2) break
    objectId = answer.nextObjectId
  }
  return found
}
