// What the control-plane verbs share on the command line.

/** `--flag value` as `--flag=value` for the parseArgs `options` that take a string: a value may start with a dash (a base64url key does, one in 64). */
export function bindValues(args: readonly string[], options: Readonly<Record<string, { type: string }>>): string[] {
  const bound: string[] = []
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!
    const name = a.startsWith('--') && !a.includes('=') ? a.slice(2) : null
    if (name !== null && options[name]?.type === 'string' && i + 1 < args.length) bound.push(`${a}=${args[++i]!}`)
    else bound.push(a)
  }
  return bound
}

/** One line on standard output. */
export const out = (s: string): void => void process.stdout.write(s.endsWith('\n') ? s : `${s}\n`)
