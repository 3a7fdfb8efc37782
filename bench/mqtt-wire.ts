// The few MQTT 3.1.1 packets the load generator speaks, encoded and decoded
// by hand. A full client (mqtt.js) costs more CPU per connection than the
// brokers under test spend, which would measure the load generator; raw
// packets keep it cheap enough that the broker is what saturates.
// [MQTT-2.2.3] remaining length is a variable-byte integer.

export const CONNACK = 2
export const PUBLISH = 3
export const PUBACK = 4
export const SUBACK = 9

/** MQTT variable byte integer [MQTT-1.5.5] (any value; over 4 bytes is malformed, which the fuzz tests want). Also used by test/. */
export function varint(n: number): Buffer {
  const out: number[] = []
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    out.push(b)
  } while (n > 0)
  return Buffer.from(out)
}

const str = (s: string | Buffer): Buffer => {
  const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s
  const len = Buffer.alloc(2)
  len.writeUInt16BE(b.length)
  return Buffer.concat([len, b])
}

const packet = (first: number, body: Buffer): Buffer => Buffer.concat([Buffer.from([first]), varint(body.length), body])

/**
 * CONNECT, clean session, user name and password, keep-alive off (the bench
 * holds idle sessions for minutes). Without a user name: the client id alone
 * (a certificate device on mTLS, PROTOCOL §5).
 */
export function connectPacket(clientId: string, username?: string, password?: string): Buffer {
  // [MQTT-3.1.2-1] protocol name, [MQTT-3.1.2-2] level 4; flags: user name 0x80, password 0x40 (only with a user name [MQTT-3.1.2-22]), clean session 0x02
  const flags = 0x02 | (username !== undefined ? 0x80 | (password !== undefined ? 0x40 : 0) : 0)
  const header = Buffer.concat([str('MQTT'), Buffer.from([4, flags, 0, 0])])
  const fields = [str(clientId), ...(username !== undefined ? [str(username)] : []), ...(username !== undefined && password !== undefined ? [str(password)] : [])]
  return packet(0x10, Buffer.concat([header, ...fields]))
}

/** SUBSCRIBE one filter [MQTT-3.8.1-1]: fixed header flags 0b0010. */
export function subscribePacket(packetId: number, filter: string, qos: 0 | 1): Buffer {
  const id = Buffer.alloc(2)
  id.writeUInt16BE(packetId)
  return packet(0x82, Buffer.concat([id, str(filter), Buffer.from([qos])]))
}

export function publishPacket(topic: string, payload: string | Buffer, qos: 0 | 1, packetId = 0): Buffer {
  const parts = [str(topic)]
  if (qos > 0) {
    const id = Buffer.alloc(2)
    id.writeUInt16BE(packetId)
    parts.push(id)
  }
  parts.push(typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload)
  return packet(0x30 | (qos << 1), Buffer.concat(parts))
}

export function pubackPacket(packetId: number): Buffer {
  return Buffer.from([0x40, 2, packetId >> 8, packetId & 0xff])
}

export const DISCONNECT = Buffer.from([0xe0, 0])

export interface Packet {
  type: number
  flags: number
  body: Buffer
}

/** Splits a byte stream into packets. */
export class PacketReader {
  #buf: Buffer = Buffer.alloc(0)

  push(chunk: Buffer, onPacket: (p: Packet) => void): void {
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : chunk
    for (;;) {
      const b = this.#buf
      if (b.length < 2) return
      let len = 0
      let mul = 1
      let i = 1
      for (;;) {
        if (i >= b.length) return
        const c = b[i]!
        len += (c & 0x7f) * mul
        mul *= 128
        i++
        if (!(c & 0x80)) break
        if (i > 4) throw new Error('malformed remaining length')
      }
      if (b.length < i + len) return
      const first = b[0]!
      onPacket({ type: first >> 4, flags: first & 0x0f, body: b.subarray(i, i + len) })
      this.#buf = b.subarray(i + len)
    }
  }
}

/** Topic, packet id (QoS > 0) and payload of a PUBLISH. */
export function readPublish(p: Packet): { topic: string; packetId: number; payload: Buffer } {
  const tlen = p.body.readUInt16BE(0)
  const topic = p.body.toString('utf8', 2, 2 + tlen)
  const qos = (p.flags >> 1) & 3
  let off = 2 + tlen
  let packetId = 0
  if (qos > 0) {
    packetId = p.body.readUInt16BE(off)
    off += 2
  }
  return { topic, packetId, payload: p.body.subarray(off) }
}
