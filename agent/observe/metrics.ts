// Prometheus metrics for the HTTP endpoint, in a registry of their own.
// Levels (devices, sessions, queue, outbox, uplink) are read from live state
// at scrape time, so they cannot drift from what the gateway holds; what
// happens (commands, revocation latency, alerts) is counted from the one
// place every change passes, the gateway's commit. docs/operations.md
// explains each metric; a test checks every documented name is here.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import { ACTS } from '../actions/action-queue.ts'
import type { ProtocolAdapter, Protocol } from '../adapter.ts'
import type { AuditInput } from '../store/audit.ts'
import { DEVICE_STATES } from '../devices/device.ts'
import { noSessions } from '../trust/enforcer.ts'
import { VERSION, type Change, type Gateway } from '../gateway.ts'

export interface MetricSources {
  gateway: Gateway
  adapters: readonly ProtocolAdapter[]
  /** null: no uplink configured */
  uplink: { readonly connected: boolean } | null
  /** the CRL's nextUpdate (seconds since the epoch), where the site PKI runs */
  crlNextUpdate?: () => number | null
  /** residual-use attempts of a device since start (the residual-use monitor) */
  residualAttempts(deviceId: string): number
  /** refused device connects since start, by protocol and reason (DeviceAdmission.refusals) */
  connectRefusals?: () => readonly { protocol: string; reason: string; count: number }[]
  /** device connects waiting their turn at the admission gate now, and how long the oldest has waited (DeviceAdmission.gate) */
  admissionWaiting?: () => { waiting: number; oldestWaitMs: number; backgroundWaiting: number }
  /** device acks refused since start: bad or stray (checked), repeated (unchecked: a copy of one being checked, or of one settled) (DeviceActions) */
  acksRefused?: () => { bad: number; repeated: number }
}

export const PROTOCOLS: readonly Protocol[] = ['mqtt', 'opcua', 'modbus']

/** Credential expiry buckets of active devices, by upper bound in seconds (disjoint). */
export const EXPIRY_BUCKETS: readonly { label: string; maxS: number }[] = [
  { label: 'expired', maxS: 0 },
  { label: '1d', maxS: 86400 },
  { label: '7d', maxS: 7 * 86400 },
  { label: '30d', maxS: 30 * 86400 },
  { label: 'later', maxS: Infinity },
]

/** Operations whose time to cut access is measured (PROTOCOL §6 `accessRemovedMs`). */
const LATENCY_OPS: Record<string, string> = { 'device.revoke': 'revoke', 'device.quarantine': 'quarantine' }

export function expiryBucket(expiresAtS: number | null | undefined, nowS: number): string {
  if (expiresAtS === null || expiresAtS === undefined) return 'none'
  const left = expiresAtS - nowS
  return EXPIRY_BUCKETS.find((b) => left <= b.maxS)!.label
}

export interface AgentMetrics {
  registry: Registry
  /** stop counting (unhooks from the gateway) */
  close(): void
}

export function createMetrics(src: MetricSources): AgentMetrics {
  const gw = src.gateway
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const m = { registers: [registry] }

  new Gauge({
    name: 'edgewarden_info',
    help: 'Always 1; labels say which agent this is',
    labelNames: ['version', 'site', 'gateway'],
    ...m,
    collect() {
      this.set({ version: VERSION, site: gw.site, gateway: gw.id }, 1)
    },
  })
  new Gauge({
    name: 'edgewarden_devices',
    help: 'Enrolled devices by state',
    labelNames: ['state'],
    ...m,
    collect() {
      const c = Object.fromEntries(DEVICE_STATES.map((s) => [s, 0])) as Record<string, number>
      for (const d of gw.registry.values()) c[d.state] = (c[d.state] ?? 0) + 1
      for (const [state, n] of Object.entries(c)) this.set({ state }, n)
    },
  })
  new Gauge({
    name: 'edgewarden_sessions',
    help: 'Live device sessions by protocol',
    labelNames: ['protocol'],
    ...m,
    collect() {
      const c = noSessions()
      for (const d of gw.registry.values()) for (const a of src.adapters) c[a.protocol] += a.sessionCount(d.spec.id)
      for (const p of PROTOCOLS) this.set({ protocol: p }, c[p])
    },
  })
  new Gauge({
    name: 'edgewarden_pending_actions',
    help: 'Device actions queued and not yet settled, by kind',
    labelNames: ['act'],
    ...m,
    collect() {
      const c = gw.actions.countByAct()
      for (const act of ACTS) this.set({ act }, c[act])
    },
  })
  new Gauge({
    name: 'edgewarden_credentials_expiring',
    help: 'Active devices by time left on their credential (disjoint buckets: expired, within 1d, 7d, 30d, later, none)',
    labelNames: ['within'],
    ...m,
    collect() {
      const now = gw.nowS()
      const c: Record<string, number> = Object.fromEntries([...EXPIRY_BUCKETS.map((b) => b.label), 'none'].map((l) => [l, 0]))
      for (const d of gw.registry.values()) if (d.state === 'active') c[expiryBucket(d.credentialExpiresAt, now)]!++
      for (const [within, n] of Object.entries(c)) this.set({ within }, n)
    },
  })
  new Gauge({
    name: 'edgewarden_crl_next_update_seconds',
    help: 'Seconds until the nextUpdate of the CRL the site CA serves (signed again daily and on every change; a strict verifier refuses every client once it lapses)',
    ...m,
    collect() {
      const next = src.crlNextUpdate?.()
      this.set(next === null || next === undefined ? 0 : next - gw.nowS())
    },
  })
  new Gauge({
    name: 'edgewarden_uplink_connected',
    help: '1 while the control-plane uplink is connected, else 0 (also 0 with no uplink configured)',
    ...m,
    collect() {
      this.set(src.uplink?.connected ? 1 : 0)
    },
  })
  new Gauge({
    name: 'edgewarden_uplink_configured',
    help: '1 when an uplink is configured',
    ...m,
    collect() {
      this.set(src.uplink ? 1 : 0)
    },
  })
  new Gauge({
    name: 'edgewarden_outbox_depth',
    help: 'Signed events stored and not yet acknowledged by the central broker',
    ...m,
    collect() {
      this.set(gw.outbox.depth)
    },
  })
  new Counter({
    name: 'edgewarden_outbox_dropped_total',
    help: 'Informational events left out at the outbox bound (still in the audit log)',
    ...m,
    collect() {
      this.reset()
      this.inc(gw.eventsDroppedAtBound)
    },
  })
  new Counter({
    name: 'edgewarden_residual_use_attempts_total',
    help: 'Attempts by a revoked, quarantined, retiring or retired identity to use access it no longer has',
    ...m,
    collect() {
      let n = 0
      for (const d of gw.registry.values()) n += src.residualAttempts(d.spec.id)
      this.reset()
      this.inc(n)
    },
  })

  new Counter({
    name: 'edgewarden_connects_refused_total',
    help: 'Device connects refused, by protocol and reason (wrong-audience, replayed, expired, not-yet-valid, wrong-key, unknown-device, throttled, ...; the log says why at info, once a minute per device and reason)',
    labelNames: ['protocol', 'reason'],
    ...m,
    collect() {
      this.reset()
      for (const r of src.connectRefusals?.() ?? []) this.inc({ protocol: r.protocol, reason: r.reason }, r.count)
    },
  })

  new Gauge({
    name: 'edgewarden_admission_waiting',
    help: 'Device connects waiting their turn to be checked (signature or password, and the token jti written); above zero only in a storm',
    ...m,
    collect() {
      this.set(src.admissionWaiting?.().waiting ?? 0)
    },
  })
  new Gauge({
    name: 'edgewarden_admission_background_waiting',
    help: 'Acks to check and action deliveries waiting their turn: after the device connects waiting, and every other turn once they have waited admissionMaxWaitMs; above zero only while every slot is taken (a storm)',
    ...m,
    collect() {
      this.set(src.admissionWaiting?.().backgroundWaiting ?? 0)
    },
  })
  new Counter({
    name: 'edgewarden_acks_refused_total',
    help: 'Device acks refused, changing nothing: bad (malformed, forged, stray; checked, each a warn log line) or repeated (unchecked: a copy of an ack being checked, or of one already settled)',
    labelNames: ['reason'],
    ...m,
    collect() {
      this.reset()
      const r = src.acksRefused?.() ?? { bad: 0, repeated: 0 }
      this.inc({ reason: 'bad' }, r.bad)
      this.inc({ reason: 'repeated' }, r.repeated)
    },
  })
  new Gauge({
    name: 'edgewarden_admission_oldest_wait_seconds',
    help: 'How long the oldest waiting device connect has waited its turn; at admissionMaxWaitMs new connects are refused with CONNACK 3 (retry)',
    ...m,
    collect() {
      this.set((src.admissionWaiting?.().oldestWaitMs ?? 0) / 1000)
    },
  })

  const commands = new Counter({
    name: 'edgewarden_commands_total',
    help: 'Control-plane commands by outcome (accepted, completed, failed, rejected, duplicate) and reason',
    labelNames: ['outcome', 'reason'],
    ...m,
  })
  const alerts = new Counter({ name: 'edgewarden_residual_use_alerts_total', help: 'alert.residual-use raised (attempts within a window are folded into one)', ...m })
  const latency = new Histogram({
    name: 'edgewarden_revocation_latency_seconds',
    help: 'From a revoke, quarantine or retire request to every session closed and the network rule in force',
    labelNames: ['op'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    ...m,
  })
  // Start every labelled series at 0, so a rate() works from the first event.
  for (const outcome of ['accepted', 'completed']) commands.inc({ outcome, reason: '' }, 0)
  for (const op of ['revoke', 'quarantine', 'retire']) latency.zero({ op })

  const onAudit = (a: AuditInput): void => {
    const data = (a.data ?? {}) as Record<string, unknown>
    // Retirement measures its own (local or control-plane) in one entry.
    if (a.action === 'retire.access-removed' && typeof data.accessRemovedMs === 'number') latency.observe({ op: 'retire' }, data.accessRemovedMs / 1000)
    if (a.action === 'command.completed') {
      const op = LATENCY_OPS[String(data.op)]
      const ev = data.evidence as Record<string, unknown> | undefined
      if (op && ev?.changed === true && typeof ev.accessRemovedMs === 'number') latency.observe({ op }, ev.accessRemovedMs / 1000)
    }
  }
  const onCommit = (change: Change): void => {
    for (const a of change.audit ?? []) onAudit(a)
    for (const e of change.events ?? []) {
      if (e.type === 'alert.residual-use') alerts.inc()
      else if (e.type === 'cmd.rejected' && typeof e.data.count === 'number') {
        // one report for a burst of junk: each message counted, by its own reason (the audit entry holds them)
        const burst = (change.audit ?? []).find((a) => a.action === 'command.rejected' && (a.data as { reasons?: unknown } | undefined)?.reasons !== undefined)
        const reasons = ((burst?.data as { reasons?: Record<string, number> } | undefined)?.reasons ?? { [String(e.data.reason)]: e.data.count }) as Record<string, number>
        for (const [reason, n] of Object.entries(reasons)) commands.inc({ outcome: 'rejected', reason }, n)
      } else if (e.type.startsWith('cmd.')) {
        const reason = e.type === 'cmd.duplicate' ? String(e.data.state ?? '') : typeof e.data.reason === 'string' ? e.data.reason : ''
        commands.inc({ outcome: e.type.slice(4), reason })
      }
    }
  }
  const off = gw.onCommitted(onCommit)
  return { registry, close: off }
}
