// Colour for the CLI's human output: only on a terminal, and the common
// conventions win over that guess: FORCE_COLOR (as Node reads it: 0 or false
// is off, anything else on) before NO_COLOR (https://no-color.org: set and
// not empty is off), then TERM=dumb. Machine output (--json) never has any.

export function colourEnabled(stream: { isTTY?: boolean } = process.stdout, env: NodeJS.ProcessEnv = process.env): boolean {
  const force = env.FORCE_COLOR
  if (force !== undefined) return force !== '0' && force.toLowerCase() !== 'false'
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false
  return stream.isTTY === true && env.TERM !== 'dumb'
}

export type Paint = (s: string) => string

export interface Palette {
  enabled: boolean
  bold: Paint
  dim: Paint
  red: Paint
  green: Paint
  yellow: Paint
  cyan: Paint
}

const SGR = { bold: 1, dim: 2, red: 31, green: 32, yellow: 33, cyan: 36 } as const

/** Colour functions for a stream: identity when colour is off. */
export function palette(stream: { isTTY?: boolean } = process.stdout, env: NodeJS.ProcessEnv = process.env): Palette {
  const enabled = colourEnabled(stream, env)
  const paint = (code: number): Paint => (enabled ? (s) => `\x1b[${code}m${s}\x1b[0m` : (s) => s)
  return {
    enabled,
    bold: paint(SGR.bold),
    dim: paint(SGR.dim),
    red: paint(SGR.red),
    green: paint(SGR.green),
    yellow: paint(SGR.yellow),
    cyan: paint(SGR.cyan),
  }
}

/** Any ANSI escape sequence (CSI or a bare ESC). */
export const ANSI_ESCAPE = /\x1b\[[0-9;?]*[A-Za-z]|\x1b/
