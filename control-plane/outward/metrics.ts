// Prometheus metrics of the service (prom-client, one registry per instance;
// each instance exposes its own at /metrics). Counters move as things
// happen here; the gauges of fleet-wide state (commands waiting, gateways
// online, open alerts) are read from the database at scrape time, so every
// instance reports the same fleet.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { Database } from '../storage/database.ts'

export interface CpMetrics {
  registry: Registry
  eventsIngested: Counter<'type'>
  eventsDuplicate: Counter
  eventsInvalid: Counter<'reason'>
  intakeSeconds: Histogram
  commandsCreated: Counter<'op'>
  commandsSent: Counter
  commandsResent: Counter
  rollbacks: Counter
  alerts: Counter<'kind'>
  webhookDeliveries: Counter<'outcome'>
  httpRequests: Counter<'route' | 'status'>
  leader: Gauge
  slots: Gauge
}

export function createMetrics(db: Database, o: { instanceId: string; slots: () => number; leader: () => boolean }): CpMetrics {
  const registry = new Registry()
  registry.setDefaultLabels({ instance_id: o.instanceId })
  collectDefaultMetrics({ register: registry, prefix: 'edgewarden_cp_process_' })
  const r = [registry]
  const m: CpMetrics = {
    registry,
    eventsIngested: new Counter({ name: 'edgewarden_cp_events_ingested_total', help: 'Gateway events verified and stored, by type', labelNames: ['type'], registers: r }),
    eventsDuplicate: new Counter({ name: 'edgewarden_cp_events_duplicate_total', help: 'Event copies already stored (same jti)', registers: r }),
    eventsInvalid: new Counter({ name: 'edgewarden_cp_events_invalid_total', help: 'Messages on an event topic refused (not stored), by reason', labelNames: ['reason'], registers: r }),
    intakeSeconds: new Histogram({ name: 'edgewarden_cp_intake_seconds', help: 'From receipt to commit of one event', buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1], registers: r }),
    commandsCreated: new Counter({ name: 'edgewarden_cp_commands_created_total', help: 'Commands stored through the API, by op', labelNames: ['op'], registers: r }),
    commandsSent: new Counter({ name: 'edgewarden_cp_commands_sent_total', help: 'First publications of commands (by this instance)', registers: r }),
    commandsResent: new Counter({ name: 'edgewarden_cp_commands_resent_total', help: 'Re-sends of unanswered commands, same jti (by this instance)', registers: r }),
    rollbacks: new Counter({ name: 'edgewarden_cp_rollbacks_total', help: 'Gateways detected as restored from an old copy', registers: r }),
    alerts: new Counter({ name: 'edgewarden_cp_alerts_total', help: 'Alerts raised (by this instance), by kind', labelNames: ['kind'], registers: r }),
    webhookDeliveries: new Counter({ name: 'edgewarden_cp_webhook_deliveries_total', help: 'Webhook delivery attempts, by outcome', labelNames: ['outcome'], registers: r }),
    httpRequests: new Counter({ name: 'edgewarden_cp_http_requests_total', help: 'API requests, by route and status', labelNames: ['route', 'status'], registers: r }),
    leader: new Gauge({ name: 'edgewarden_cp_leader', help: '1 when this instance holds the re-send loop', registers: r, collect() { this.set(o.leader() ? 1 : 0) } }),
    slots: new Gauge({ name: 'edgewarden_cp_intake_slots', help: 'Intake sessions this instance holds and has connected', registers: r, collect() { this.set(o.slots()) } }),
  }
  /** A gauge of fleet-wide counts, read at scrape time: `sql` returns rows of (k: the label's value, n). */
  const counted = (name: string, help: string, label: string, sql: string): void =>
    void new Gauge({
      name,
      help,
      labelNames: [label],
      registers: r,
      async collect() {
        this.reset()
        const rows = await db.query<{ k: string; n: number }>(sql).catch(() => [])
        for (const x of rows) this.set({ [label]: x.k }, Number(x.n))
      },
    })
  counted('edgewarden_cp_commands', 'Commands by state, fleet-wide (queued and sent are waiting for an answer)', 'state', 'SELECT state AS k, COUNT(*) AS n FROM commands GROUP BY state')
  counted(
    'edgewarden_cp_gateways',
    'Registered gateways by what their status says (online, offline, unknown)',
    'status',
    "SELECT CASE WHEN online THEN 'online' WHEN online = false THEN 'offline' ELSE 'unknown' END AS k, COUNT(*) AS n FROM gateways GROUP BY 1",
  )
  counted('edgewarden_cp_alerts_open', 'Unresolved alerts, fleet-wide, by kind', 'kind', 'SELECT kind AS k, COUNT(*) AS n FROM alerts WHERE resolved_at IS NULL GROUP BY kind')
  return m
}
