// The schema, as ordered migrations: one schema for PGlite and PostgreSQL.
// migrate() applies what is missing, each in a transaction under an advisory
// transaction lock, so instances starting together against one PostgreSQL
// never race. A migration is never edited once released: add the next one.
// Times are milliseconds since the epoch (bigint) from the service's clock;
// `iat`/`exp`/credential expiry are the protocol's seconds.
import { LOCK_CLASS, LOCK_MIGRATIONS, type Database } from './database.ts'

export interface Migration {
  version: number
  name: string
  sql: string
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'fleet, commands, evidence, alerts, access, webhooks',
    sql: `
CREATE TABLE sites (
  id text PRIMARY KEY,
  name text,
  created_at bigint NOT NULL
);

-- A gateway, its pinned key, and what the control plane knows of its history (PROTOCOL §3).
CREATE TABLE gateways (
  site text NOT NULL REFERENCES sites(id),
  id text NOT NULL,
  public_key text NOT NULL,
  created_at bigint NOT NULL,
  epoch int NOT NULL DEFAULT 0,            -- bumped at each rollback: seqs start again
  baseline_seq bigint,                     -- history before this seq was never seen here
  max_seq bigint NOT NULL DEFAULT 0,       -- highest event seq stored in this epoch
  max_seq_iat bigint,
  contiguous_seq bigint NOT NULL DEFAULT 0,-- every seq up to here is stored in this epoch
  gap_since bigint,                        -- when contiguous_seq fell behind max_seq
  last_event_at bigint,
  online boolean,
  version text,
  status_seq bigint,
  audit_seq bigint,
  audit_hash text,
  status_at bigint,
  PRIMARY KEY (site, id)
);

-- Where each device lives and what its gateway last said of it.
CREATE TABLE devices (
  id text PRIMARY KEY,
  site text NOT NULL,
  gateway text NOT NULL,
  state text,
  criticality text,
  owner text,
  credential_kind text,
  credential_expires_at bigint,
  state_epoch int,
  state_seq bigint,
  retiring_since bigint,
  retired_at bigint,
  updated_at bigint NOT NULL,
  FOREIGN KEY (site, gateway) REFERENCES gateways(site, id)
);
CREATE INDEX devices_state ON devices (state);

-- Every command, stored (signed) before it is sent; its lifecycle in command_history.
CREATE TABLE commands (
  jti text PRIMARY KEY,
  seq bigserial UNIQUE,
  site text NOT NULL,
  gateway text NOT NULL,
  device_id text,
  op text NOT NULL,
  args jsonb NOT NULL,
  jws text NOT NULL,
  iat bigint NOT NULL,
  exp bigint NOT NULL,
  state text NOT NULL,
  round int NOT NULL DEFAULT 0,
  epoch int NOT NULL DEFAULT 0,
  created_at bigint NOT NULL,
  created_by text NOT NULL,
  request_key text,
  sends int NOT NULL DEFAULT 0,
  first_sent_at bigint,
  last_sent_at bigint,
  next_send_at bigint,
  delay_ms int,
  answered_at bigint,
  accepted_seq bigint,
  finished_at bigint,
  reason text,
  evidence jsonb,
  outcome_event bigint,
  duplicates int NOT NULL DEFAULT 0,
  reissue_of text,
  reissued_as text,
  FOREIGN KEY (site, gateway) REFERENCES gateways(site, id)
);
CREATE INDEX commands_open ON commands (site, gateway, seq) WHERE state IN ('queued', 'sent');
CREATE INDEX commands_device ON commands (device_id, seq);
CREATE INDEX commands_gateway ON commands (site, gateway, seq);

CREATE TABLE command_history (
  id bigserial PRIMARY KEY,
  jti text NOT NULL REFERENCES commands(jti),
  at bigint NOT NULL,
  state text NOT NULL,
  detail text,
  event_id bigint
);
CREATE INDEX command_history_jti ON command_history (jti, id);

-- Every verified event, verbatim as the gateway signed it, beside its decoded claims.
CREATE TABLE events (
  id bigserial PRIMARY KEY,
  site text NOT NULL,
  gateway text NOT NULL,
  epoch int NOT NULL,
  seq bigint NOT NULL,
  jti text NOT NULL,
  type text NOT NULL,
  iat bigint NOT NULL,
  device_id text,
  command_jti text,
  jws text NOT NULL,
  claims jsonb NOT NULL,
  received_at bigint NOT NULL,
  received_by text NOT NULL,
  UNIQUE (site, gateway, jti),
  UNIQUE (site, gateway, epoch, seq)
);
CREATE INDEX events_device ON events (device_id, id);
CREATE INDEX events_command ON events (command_jti);
CREATE INDEX events_type ON events (type, id);

CREATE TABLE alerts (
  id bigserial PRIMARY KEY,
  kind text NOT NULL,
  site text,
  gateway text,
  device_id text,
  detail jsonb NOT NULL,
  created_at bigint NOT NULL,
  resolved_at bigint,
  event_id bigint,
  dedupe text UNIQUE
);
CREATE INDEX alerts_open ON alerts (kind, created_at) WHERE resolved_at IS NULL;

-- Bearer tokens: only the SHA-256 of the secret part is kept.
CREATE TABLE tokens (
  id text PRIMARY KEY,
  name text NOT NULL,
  scopes text[] NOT NULL,
  secret_sha256 text NOT NULL,
  created_at bigint NOT NULL,
  revoked_at bigint,
  last_used_at bigint
);

CREATE TABLE idempotency (
  key text PRIMARY KEY,
  token_id text NOT NULL,
  request_sha256 text NOT NULL,
  status int NOT NULL,
  response jsonb NOT NULL,
  created_at bigint NOT NULL
);

-- HMAC secrets must be kept to sign: they are never returned after creation.
CREATE TABLE webhooks (
  id text PRIMARY KEY,
  url text NOT NULL,
  secret text NOT NULL,
  events text[] NOT NULL,
  created_at bigint NOT NULL,
  disabled_at bigint
);

CREATE TABLE webhook_deliveries (
  id bigserial PRIMARY KEY,
  webhook_id text NOT NULL REFERENCES webhooks(id),
  event text NOT NULL,
  dedupe text NOT NULL,
  body text NOT NULL,
  state text NOT NULL,
  attempts int NOT NULL DEFAULT 0,
  next_at bigint NOT NULL,
  last_status int,
  last_error text,
  created_at bigint NOT NULL,
  delivered_at bigint,
  UNIQUE (webhook_id, dedupe)
);
CREATE INDEX webhook_due ON webhook_deliveries (next_at) WHERE state = 'pending';

-- The instances running now (heartbeats), for the slot balance and the fleet page.
CREATE TABLE instances (
  id text PRIMARY KEY,
  started_at bigint NOT NULL,
  seen_at bigint NOT NULL,
  leader boolean NOT NULL DEFAULT false,
  slots int[] NOT NULL DEFAULT '{}'
);
`,
  },
]

export async function migrate(db: Database, nowMs: number): Promise<{ applied: number[] }> {
  return db.tx(async (q) => {
    await q.query('SELECT pg_advisory_xact_lock($1::int, $2::int)', [LOCK_CLASS, LOCK_MIGRATIONS])
    await q.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL)')
    const done = new Set((await q.query<{ version: number }>('SELECT version FROM schema_migrations')).map((r) => r.version))
    const applied: number[] = []
    for (const m of MIGRATIONS) {
      if (done.has(m.version)) continue
      await q.exec(m.sql)
      await q.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [m.version, m.name, nowMs])
      applied.push(m.version)
    }
    return { applied }
  })
}
