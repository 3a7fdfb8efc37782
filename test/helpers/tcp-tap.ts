// A TCP pass-through on loopback between a peer and a server: it shows what
// the server's side of each connection sees (when it opens, when it closes)
// without changing either end, and plays network faults on demand: hold the
// bytes the server sends, cut every connection, turn new ones away. Used
// where a peer gives no view of its own connections (a Modbus device, an
// OPC UA server, the uplink's client) or a fault must land at a known moment.
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'

export interface TapConnection {
  /** 1, 2, …: in the order accepted */
  readonly n: number
  /** resolves once the connection is closed, by either side */
  readonly closed: Promise<void>
  readonly open: boolean
}

export class TcpTap {
  readonly port: number
  /** every connection accepted, in order */
  readonly connections: TapConnection[] = []
  readonly #server: Server
  readonly #target: { host: string; port: number }
  readonly #pairs = new Set<{ client: Socket; upstream: Socket; held: Buffer[] }>()
  readonly #waiters: ((c: TapConnection) => void)[] = []
  #holding = false
  #refusing = false

  private constructor(server: Server, target: { host: string; port: number }) {
    this.#server = server
    this.#target = target
    this.port = (server.address() as AddressInfo).port
  }

  /** Listen on a free loopback port; each connection is relayed to `target`. Closed by `t.after`. */
  static async open(t: { after(fn: () => Promise<void> | void): void }, target: { host?: string; port: number }): Promise<TcpTap> {
    let tap: TcpTap | null = null
    const server = createServer((sock) => {
      if (tap) tap.#accept(sock)
      else sock.destroy()
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject)
        resolve()
      })
    })
    tap = new TcpTap(server, { host: target.host ?? '127.0.0.1', port: target.port })
    const opened = tap
    t.after(() => opened.close())
    return tap
  }

  get url(): string {
    return `127.0.0.1:${this.port}`
  }

  /** Connections open now. */
  get live(): TapConnection[] {
    return this.connections.filter((c) => c.open)
  }

  /** The next connection accepted from now on, within `timeoutMs`. */
  nextConnection(timeoutMs = 10_000): Promise<TapConnection> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(take), 1)
        reject(new Error(`no connection through the tap to port ${this.#target.port} within ${timeoutMs} ms`))
      }, timeoutMs)
      const take = (c: TapConnection): void => {
        clearTimeout(timer)
        resolve(c)
      }
      this.#waiters.push(take)
    })
  }

  /** Hold what the server sends (the peer receives nothing) until release(); the peer's bytes still reach the server. */
  hold(): void {
    this.#holding = true
  }

  release(): void {
    this.#holding = false
    for (const p of this.#pairs) for (const chunk of p.held.splice(0)) p.client.write(chunk)
  }

  /** Cut every open connection at once (both ends see it closed, without a protocol goodbye). */
  cut(): void {
    for (const p of this.#pairs) {
      p.client.destroy()
      p.upstream.destroy()
    }
  }

  /** While on, new connections are accepted and closed at once (a server that is unreachable). */
  refuse(on: boolean): void {
    this.#refusing = on
  }

  async close(): Promise<void> {
    this.cut()
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }

  #accept(client: Socket): void {
    client.on('error', () => {})
    if (this.#refusing) return void client.destroy()
    client.setNoDelay(true)
    const upstream = connect(this.#target)
    upstream.setNoDelay(true)
    upstream.on('error', () => {})
    const pair = { client, upstream, held: [] as Buffer[] }
    this.#pairs.add(pair)
    let open = true
    let resolveClosed!: () => void
    const closed = new Promise<void>((resolve) => (resolveClosed = resolve))
    const conn: TapConnection = {
      n: this.connections.length + 1,
      closed,
      get open() {
        return open
      },
    }
    this.connections.push(conn)
    const end = (): void => {
      client.destroy()
      upstream.destroy()
    }
    // Bytes from the peer wait in memory until the server end is connected.
    const early: Buffer[] = []
    let upstreamReady = false
    upstream.once('connect', () => {
      upstreamReady = true
      for (const c of early.splice(0)) upstream.write(c)
    })
    client.on('data', (c: Buffer) => (upstreamReady ? upstream.write(c) : early.push(c)))
    upstream.on('data', (c: Buffer) => (this.#holding ? pair.held.push(c) : client.write(c)))
    client.once('close', end)
    upstream.once('close', end)
    client.once('close', () => {
      this.#pairs.delete(pair)
      open = false
      resolveClosed()
    })
    for (const w of this.#waiters.splice(0)) w(conn)
  }
}
