// base64url without padding (RFC 4648 §5), in plain JS so device firmware
// running in any JS runtime shares the exact codec the gateway uses.
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
const LOOKUP = new Int16Array(128).fill(-1)
for (let i = 0; i < ALPHABET.length; i++) LOOKUP[ALPHABET.charCodeAt(i)] = i
const CODES = Array.from(ALPHABET, (c) => c.charCodeAt(0))

/**
 * Node's Buffer where the runtime has one (found on globalThis, so this file
 * imports nothing of Node's): native, one allocation, the same output as the
 * JS encoder below (tests compare the two).
 */
const NativeBuffer = (globalThis as { Buffer?: { from(b: ArrayBufferLike, offset: number, length: number): { toString(enc: 'base64url'): string } } }).Buffer

export function b64urlEncode(bytes: Uint8Array): string {
  return NativeBuffer ? NativeBuffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64url') : b64urlEncodeJs(bytes)
}

/** The encoder in plain JS (runtimes without Buffer): the characters are made in chunks, not one string each. */
export function b64urlEncodeJs(bytes: Uint8Array): string {
  const codes: number[] = []
  let out = ''
  let i = 0
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!
    codes.push(CODES[n >> 18]!, CODES[(n >> 12) & 63]!, CODES[(n >> 6) & 63]!, CODES[n & 63]!)
    if (codes.length >= 4096) {
      out += String.fromCharCode(...codes)
      codes.length = 0
    }
  }
  const rest = bytes.length - i
  if (rest === 1) {
    const n = bytes[i]! << 16
    codes.push(CODES[n >> 18]!, CODES[(n >> 12) & 63]!)
  } else if (rest === 2) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8)
    codes.push(CODES[n >> 18]!, CODES[(n >> 12) & 63]!, CODES[(n >> 6) & 63]!)
  }
  return out + String.fromCharCode(...codes)
}

/** Strict decoder: returns null on any character outside the alphabet, on padding, or on an impossible length. */
export function b64urlDecode(text: string): Uint8Array | null {
  if (text.length % 4 === 1) return null
  const out = new Uint8Array(Math.floor((text.length * 3) / 4))
  let o = 0
  let acc = 0
  let bits = 0
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    const v = c < 128 ? LOOKUP[c]! : -1
    if (v < 0) return null
    acc = (acc << 6) | v
    bits += 6
    if (bits >= 8) {
      bits -= 8
      out[o++] = (acc >> bits) & 0xff
    }
  }
  // Leftover bits must be zero, so each byte string has exactly one encoding.
  if ((acc & ((1 << bits) - 1)) !== 0) return null
  return out
}

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })
export const utf8 = (s: string): Uint8Array => encoder.encode(s)
export const fromUtf8 = (b: Uint8Array): string => decoder.decode(b)
