// node-opcua writes its warnings, errors and debug lines with console.log, as
// coloured text: on the agent's stdout they break "one JSON object per
// line". node-opcua-debug lets them be replaced; they go to pino instead.
// It is imported for setTraceLogger, which node-opcua does not re-export; it
// is node-opcua's own dependency (one copy in node_modules), not ours.
// Imported by driver.ts before node-opcua, so this runs before any of
// node-opcua's modules, and nothing they print at load escapes.
import { format, stripVTControlCharacters } from 'node:util'
import { setDebugLogger, setErrorLogger, setTraceLogger, setWarningLogger } from 'node-opcua-debug'
import type { Logger } from '../../agent/observe/logger.ts'

type Level = 'error' | 'warn' | 'debug' | 'trace'

/** node-opcua's own default: a warning or error from one source line is printed 100 times at most */
const PER_SOURCE = 100
const counts = new Map<string, number>()
/** lines written before a logger was given (node-opcua loading); kept until routeOpcuaLogs */
const early: [Level, string, string][] = []
let target: Logger | null = null

function write(level: Level, source: string, msg: string): void {
  if (!target) {
    if (early.length < PER_SOURCE) early.push([level, source, msg])
    return
  }
  target[level]({ source }, msg)
}

function forward(level: Level): (context?: unknown, ...args: unknown[]) => void {
  return (context, ...args) => {
    const c = (context ?? {}) as { filename?: unknown; callerline?: unknown }
    const source = `${String(c.filename ?? '?')}:${String(c.callerline ?? '?')}`
    if (level === 'error' || level === 'warn') {
      const n = (counts.get(source) ?? 0) + 1
      counts.set(source, n)
      if (n > PER_SOURCE) return
      write(level, source, `node-opcua: ${stripVTControlCharacters(format(...args)).trim()}`)
      if (n === PER_SOURCE) write(level, source, `node-opcua: this ${level === 'warn' ? 'warning' : 'error'} occurred ${PER_SOURCE} times; no more from ${source} are logged`)
      return
    }
    write(level, source, `node-opcua: ${stripVTControlCharacters(format(...args)).trim()}`)
  }
}

setWarningLogger(forward('warn'))
setErrorLogger(forward('error'))
setDebugLogger(forward('debug'))
setTraceLogger(forward('trace'))

/** node-opcua's log lines go to `log` from now on (process-wide: node-opcua's loggers are global). */
export function routeOpcuaLogs(log: Logger): void {
  target = log
  for (const [level, source, msg] of early.splice(0)) log[level]({ source }, msg)
}
