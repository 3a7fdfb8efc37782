// Fixed passwords of legacy devices (PROTOCOL §3 `password`, §5): the gateway
// holds only a PHC-format scrypt hash, `$scrypt$ln=…,r=…,p=…$salt$hash`, and
// compares in constant time. scrypt is slow on purpose; so that a correct
// password stays cheap to recognise while someone guesses at the same id (the
// throttle then refuses unknown ones before any scrypt, auth-throttle.ts), a
// password that verified is remembered as an HMAC under a key of this
// process, never as itself.
import { createHmac, randomBytes, scrypt, timingSafeEqual } from 'node:crypto'
import { BoundedMap } from '../runtime/bounded-map.ts'

export interface PhcScrypt {
  ln: number
  r: number
  p: number
  salt: Buffer
  hash: Buffer
}

/** Parse a PHC scrypt string; null when it is not one (the schema already checked its shape). */
export function parsePhc(phc: string): PhcScrypt | null {
  const m = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})$/.exec(phc)
  if (!m) return null
  const [ln, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])]
  if (ln < 1 || ln > 20 || r < 1 || p < 1 || p > 16) return null
  const salt = Buffer.from(m[4]!, 'base64')
  const hash = Buffer.from(m[5]!, 'base64')
  if (salt.length < 8 || hash.length < 16 || hash.length > 64) return null
  return { ln, r, p, salt, hash }
}

const derive = (password: Uint8Array | string, h: Pick<PhcScrypt, 'ln' | 'r' | 'p' | 'salt'>, length: number): Promise<Buffer> =>
  new Promise((resolve, reject) =>
    scrypt(password, h.salt, length, { N: 2 ** h.ln, r: h.r, p: h.p, maxmem: 256 * 2 ** h.ln * h.r + 1024 * 1024 }, (err, key) => (err ? reject(err) : resolve(key))),
  )

/** A PHC scrypt hash of a password (`edgewarden device add --password-stdin` makes it where the password is typed). */
export async function hashPassword(password: string, o: { ln?: number; r?: number; p?: number } = {}): Promise<string> {
  const h = { ln: o.ln ?? 14, r: o.r ?? 8, p: o.p ?? 1, salt: randomBytes(16) }
  const key = await derive(password, h, 32)
  const b64 = (b: Buffer): string => b.toString('base64').replace(/=+$/, '')
  return `$scrypt$ln=${h.ln},r=${h.r},p=${h.p}$${b64(h.salt)}$${b64(key)}`
}

/** Whether `password` is the one `phc` was made from: scrypt (off the event loop), constant-time comparison. */
export async function verifyPassword(phc: string, password: Uint8Array | string): Promise<boolean> {
  const h = parsePhc(phc)
  if (!h) return false
  const key = await derive(password, h, h.hash.length)
  return timingSafeEqual(key, h.hash)
}

/** Passwords that verified, as HMACs under a key that never leaves this process, by device and hash. */
export class KnownPasswords {
  readonly #key = randomBytes(32)
  readonly #known: BoundedMap<string, Buffer>
  constructor(max = 100_000) {
    this.#known = new BoundedMap(max)
  }
  #mac(phc: string, password: Uint8Array | string): Buffer {
    return createHmac('sha256', this.#key).update(phc).update('\0').update(password).digest()
  }
  /** Whether this password verified before for this hash (cheap: one HMAC). */
  known(deviceId: string, phc: string, password: Uint8Array | string): boolean {
    const m = this.#known.get(deviceId)
    return m !== undefined && timingSafeEqual(m, this.#mac(phc, password))
  }
  remember(deviceId: string, phc: string, password: Uint8Array | string): void {
    this.#known.set(deviceId, this.#mac(phc, password))
  }
}
