// The composition root of `edgewarden control-plane`: storage, the broker
// link and its intake, the coordination of instances, the re-send loop,
// webhooks, metrics and the HTTP API, wired together and started in order.
// Nothing else builds these parts.
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Tokens } from './api/auth.ts'
import { startApiServer, type ApiServer } from './api/server.ts'
import { Coordinator } from './cluster/coordinator.ts'
import { Sender } from './commands/sender.ts'
import { CommandSigner } from './commands/signer.ts'
import { Registry } from './fleet/registry.ts'
import { BrokerLink } from './intake/broker-link.ts'
import { sweepGaps } from './intake/gap-sweep.ts'
import { Ingest } from './intake/ingest.ts'
import { StatusWatch } from './intake/status-watch.ts'
import { createMetrics, type CpMetrics } from './outward/metrics.ts'
import { WebhookDeliverer } from './outward/webhooks.ts'
import { systemClock, type Clock } from './runtime/clock.ts'
import { describeConfig, type CpConfig } from './runtime/config.ts'
import { createLogger, type Logger } from './runtime/log.ts'
import { loadSigningKey } from './runtime/keys.ts'
import { lockDataDir } from './storage/data-dir-lock.ts'
import { LOCK_CLASS, LOCK_MIGRATIONS, type Database } from './storage/database.ts'
import { migrate } from './storage/migrations.ts'
import { openPglite } from './storage/pglite.ts'
import { openPostgres } from './storage/postgres.ts'
import { VERSION } from './runtime/version.ts'

export interface RunningControlPlane {
  readonly config: CpConfig
  readonly instanceId: string
  readonly http: { host: string; port: number }
  readonly db: Database
  readonly publicKey: string
  /** where the first admin token was written, when this start made it */
  readonly adminTokenFile: string | null
  readonly metrics: CpMetrics
  isLeader(): boolean
  slots(): ReadonlySet<number>
  /** one pass of the leader's loops now (tests) */
  tick(): Promise<void>
  stop(): Promise<void>
}

export async function openDatabase(config: CpConfig): Promise<Database> {
  return config.database.kind === 'postgres' ? openPostgres(config.database.url, { applicationName: `edgewarden-cp ${config.instanceId}` }) : openPglite(config.database.dir)
}

/** The first start makes one admin token and writes it to <data-dir>/admin.token (0600); it is never logged. */
async function bootstrapAdmin(db: Database, tokens: Tokens, dataDir: string): Promise<string | null> {
  // Counted and made under one lock, in one transaction: two instances starting on an empty database make one admin token.
  const t = await db.tx(async (q) => {
    await q.query('SELECT pg_advisory_xact_lock($1::int, $2::int)', [LOCK_CLASS, LOCK_MIGRATIONS])
    if (Number((await q.query<{ n: number }>('SELECT COUNT(*) AS n FROM tokens'))[0]?.n ?? 0) > 0) return null
    return tokens.create({ name: 'admin', scopes: ['admin'] }, q)
  })
  if (!t) return null
  const file = join(dataDir, 'admin.token')
  writeFileSync(file, `${t.token}\n`, { mode: 0o600 })
  chmodSync(file, 0o600)
  return file
}

export async function startControlPlane(config: CpConfig, deps: { clock?: Clock; log?: Logger } = {}): Promise<RunningControlPlane> {
  const clock = deps.clock ?? systemClock
  const log = deps.log ?? createLogger(config.logLevel)
  const stops: (() => Promise<void> | void)[] = []
  const stopAll = async (): Promise<void> => {
    for (const s of stops.splice(0).reverse()) await Promise.resolve(s()).catch((err: unknown) => log.warn({ err }, 'stopping a part failed'))
  }
  try {
    mkdirSync(config.dataDir, { recursive: true, mode: 0o700 })
    if (config.database.kind === 'pglite') stops.push(lockDataDir(config.dataDir))
    const key = loadSigningKey(config.keyFile)
    const signer = new CommandSigner(key, { kid: config.kid, iss: config.iss, lifetimeS: config.commandLifetimeS })
    const db = await openDatabase(config)
    stops.push(() => db.close())
    const { applied } = await migrate(db, clock.nowMs())
    if (applied.length) log.info({ applied }, 'database migrated')
    const registry = new Registry(db, clock)
    const tokens = new Tokens(db, clock)
    const adminTokenFile = await bootstrapAdmin(db, tokens, config.dataDir)

    let coordinator: Coordinator | null = null
    let link: BrokerLink | null = null
    const metrics = createMetrics(db, { instanceId: config.instanceId, slots: () => link?.slotCount ?? 0, leader: () => coordinator?.leader ?? false })
    const onAlert = (kind: string): void => {
      metrics.alerts.inc({ kind })
      if (kind === 'rollback') metrics.rollbacks.inc()
    }
    const sender = new Sender({
      db,
      publisher: { get connected() { return link?.connected ?? false }, publish: (t, p) => link!.publish(t, p) },
      clock,
      log: log.child({ part: 'sender' }),
      window: config.window,
      resendAfterMs: config.resendAfterMs,
      resendMaxMs: config.resendMaxMs,
      onSent: (n, resent) => {
        metrics.commandsSent.inc(n)
        metrics.commandsResent.inc(resent)
      },
      onAlert,
    })
    const isLeader = (): boolean => coordinator?.leader === true
    let kicked = false
    const kick = (): void => {
      if (!isLeader() || kicked) return
      kicked = true
      setImmediate(() => {
        kicked = false
        void sender.tick().catch((err: unknown) => log.error({ err }, 're-send loop failed'))
      })
    }
    const statusWatch = new StatusWatch({ db, clock, log: log.child({ part: 'status' }), signer, confirmMs: config.rollbackConfirmMs, resendAfterMs: config.resendAfterMs, onAlert, onOnline: kick })
    const ingest = new Ingest({ db, registry, clock, signer, instanceId: config.instanceId, hooks: { onAlert } })
    link = new BrokerLink({
      broker: config.broker,
      shareGroup: config.shareGroup,
      shared: config.intakeMode === 'shared',
      instanceId: config.instanceId,
      log: log.child({ part: 'broker' }),
      onStatus: (topic, payload) => statusWatch.onMessage(topic, payload),
      onEvent: async (topic, payload) => {
        const end = metrics.intakeSeconds.startTimer()
        const r = await ingest.handle(topic, payload)
        end()
        if (r.kind === 'stored') {
          metrics.eventsIngested.inc({ type: r.type })
          if (r.answered || r.rollback) kick()
        } else if (r.kind === 'duplicate') metrics.eventsDuplicate.inc()
        else if (r.kind === 'invalid') metrics.eventsInvalid.inc({ reason: r.reason })
        else if (r.kind === 'unknown-gateway') metrics.eventsInvalid.inc({ reason: 'unknown-gateway' })
      },
    })
    link.start()
    stops.push(() => link!.stop())

    const webhooks = new WebhookDeliverer(db, { clock, log: log.child({ part: 'webhooks' }), timeoutMs: config.webhookTimeoutMs, maxAttempts: config.webhookAttempts, onResult: (outcome) => metrics.webhookDeliveries.inc({ outcome }) })
    let lastSweep = 0
    let delivering: Promise<void> | null = null
    const leaderPass = async (): Promise<void> => {
      if (!isLeader()) return
      statusWatch.tick()
      if (clock.nowMs() - lastSweep >= 1000) {
        lastSweep = clock.nowMs()
        await sweepGaps(db, { clock, graceMs: config.gapGraceMs, onAlert })
      }
      await sender.tick()
      // Webhooks on their own: a receiver that is slow to answer (up to --webhook-timeout) holds up neither re-sends nor the gap sweep.
      delivering ??= webhooks
        .tick()
        .catch((err: unknown) => log.error({ err }, 'webhook pass failed'))
        .finally(() => (delivering = null))
    }
    let ticking = false
    const timer = setInterval(() => {
      if (ticking) return
      ticking = true
      void leaderPass()
        .catch((err: unknown) => log.error({ err }, 'leader pass failed'))
        .finally(() => (ticking = false))
    }, config.tickMs)
    // (stopped in reverse: the timer first, then the delivery under way is waited for)
    stops.push(async () => void (await delivering))
    stops.push(() => clearInterval(timer))

    coordinator = new Coordinator(
      db,
      { instanceId: config.instanceId, slots: config.intakeSlots, heartbeatMs: Math.min(2000, Math.max(200, config.tickMs * 4)), clock, log: log.child({ part: 'cluster' }) },
      {
        slots: (held) => link!.setSlots(held),
        leader: (held) => {
          statusWatch.setLeader(held)
          if (held) kick()
        },
      },
    )
    await coordinator.start()
    stops.push(() => coordinator!.stop())

    let api: ApiServer | null = null
    let stopping = false
    api = await startApiServer(
      {
        db,
        clock,
        registry,
        tokens,
        signer,
        metrics,
        log: log.child({ part: 'api' }),
        instanceId: config.instanceId,
        kick,
        readiness: () => {
          const brokerUp = link?.connected ?? false
          return { ready: !stopping && brokerUp, detail: { broker: brokerUp ? 'connected' : 'not connected', leader: isLeader(), slots: [...(coordinator?.slots ?? [])], stopping } }
        },
      },
      config.http,
    )
    stops.push(() => api!.close())

    log.info(
      { event: 'ready', http: { host: api.host, port: api.port }, instance: config.instanceId, database: config.database.kind, kid: config.kid, publicKey: signer.publicKey, version: VERSION, ...(adminTokenFile ? { adminTokenFile } : {}), config: describeConfig(config) },
      'control plane ready',
    )
    let stopped: Promise<void> | null = null
    return {
      config,
      instanceId: config.instanceId,
      http: { host: api.host, port: api.port },
      db,
      publicKey: signer.publicKey,
      adminTokenFile,
      metrics,
      isLeader,
      slots: () => coordinator?.slots ?? new Set(),
      tick: async () => {
        await coordinator?.beat()
        await leaderPass()
        await statusWatch.settled()
      },
      stop: () => {
        stopping = true
        stopped ??= stopAll().then(() => log.info({ event: 'stopped' }, 'control plane stopped'))
        return stopped
      },
    }
  } catch (err) {
    await stopAll()
    throw err
  }
}
