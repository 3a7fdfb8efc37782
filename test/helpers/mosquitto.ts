// A real Mosquitto as the central broker, on a free loopback port, with its
// own config and persistence in a temp dir. Restartable on the same port.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { freePort, tempDir } from './agent.ts'
import { stderrReady } from './wait.ts'

const CANDIDATES = ['/usr/sbin/mosquitto', '/usr/bin/mosquitto', '/usr/local/sbin/mosquitto']
export const MOSQUITTO = CANDIDATES.find((p) => existsSync(p)) ?? 'mosquitto'

export class Mosquitto {
  readonly port: number
  readonly dir: string
  #proc: ChildProcess | null = null
  #log = ''

  private constructor(port: number, dir: string) {
    this.port = port
    this.dir = dir
  }

  /**
   * `extra` (listener options: TLS, password file, allow_anonymous) replaces
   * `allow_anonymous true`. `settings` replace the default line of the same
   * name, e.g. `max_queued_messages 100` to get the per-client queue limit
   * a production broker has (unlimited here by default).
   */
  static async start(t: { after(fn: () => Promise<void> | void): void }, extra: string[] = [], opts: { settings?: string[] } = {}): Promise<Mosquitto> {
    const dir = tempDir(t)
    const m = new Mosquitto(await freePort(), dir)
    const secured = extra.length > 0
    const settings = opts.settings ?? []
    const name = (line: string): string => line.trim().split(/\s+/)[0]!
    const overridden = new Set(settings.map(name))
    const defaults = [
      // As root Mosquitto would drop to its own user, which cannot write the
      // persistence file in this private temp dir: queued messages would
      // then not survive a restart. (Ignored when not run as root.)
      'user root',
      'persistence true',
      `persistence_location ${dir}/`,
      'autosave_interval 0',
      'max_queued_messages 0',
      'max_inflight_messages 0',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'log_type notice',
      'log_type information',
    ]
    writeFileSync(
      join(dir, 'mosquitto.conf'),
      [
        `listener ${m.port} 127.0.0.1`,
        ...(secured ? extra : ['allow_anonymous true']),
        ...defaults.filter((l) => !overridden.has(name(l))),
        ...settings,
        '',
      ].join('\n'),
    )
    t.after(() => m.stop('SIGKILL'))
    await m.#spawn()
    return m
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`
  }

  get tlsUrl(): string {
    return `mqtts://127.0.0.1:${this.port}`
  }

  async #spawn(): Promise<void> {
    const proc = spawn(MOSQUITTO, ['-c', join(this.dir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] })
    this.#proc = proc
    proc.stderr!.on('data', (c: Buffer) => (this.#log += c.toString()))
    // Mosquitto logs "mosquitto version … running" once its listeners are open.
    await stderrReady(proc, /mosquitto version \S+ running/, () => this.#log, 'mosquitto', 10_000)
  }

  /** Stop it (SIGTERM saves its persistence; SIGKILL loses what is not saved). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const p = this.#proc
    this.#proc = null
    if (!p || p.exitCode !== null || p.signalCode !== null) return
    const done = new Promise<void>((resolve) => p.once('exit', () => resolve()))
    p.kill(signal)
    await done
  }

  async restart(): Promise<void> {
    await this.stop('SIGTERM')
    await this.#spawn()
  }
}
