// docs/configuration.md is generated from the OPTIONS table, so the
// reference cannot drift from what the agent accepts (a test checks it).
import { OPTIONS, envName } from '../runtime/config.ts'
import { ErrorCodes } from '../runtime/errors.ts'
import { FAIL_REASONS, REJECT_REASONS } from '../../wire/protocol.ts'

const shown = (d: unknown): string => (d === undefined ? '(none)' : typeof d === 'function' ? '(host name)' : String(d))

export function renderReferenceConfig(): string {
  const rows = OPTIONS.filter((o) => o.key !== 'config').map(
    (o) => `| \`${o.key}\` | \`--${o.flag}\` | \`${envName(o)}\` | ${shown(o.default)} | ${o.doc}${o.min !== undefined ? ` (at least ${o.min})` : ''}${o.secret ? ' **(secret: redacted in logs)**' : ''} |`,
  )
  const yaml = OPTIONS.filter((o) => o.key !== 'config').map((o) => {
    const value = o.default === undefined ? '' : typeof o.default === 'function' ? '' : ` ${JSON.stringify(o.default)}`
    const item = o.key === 'renewAt' ? 'high=0.3' : 'cp-2026=BASE64URL_PUBLIC_KEY'
    const example = o.type === 'list' ? `\n# ${o.key}:\n#   - ${item}` : `\n# ${o.key}:${value}`
    return `# ${o.doc}${o.default === undefined ? '' : ` (default ${shown(o.default)})`}${example}`
  })
  return `# edgewarden configuration reference

<!-- Generated from agent/config.ts by \`npm run docs\`; do not edit by hand. -->

Every option can be given in a YAML or JSON file (\`--config FILE\` or
\`EDGEWARDEN_CONFIG\`), as an \`EDGEWARDEN_*\` environment variable, or as a
flag of \`edgewarden start\`. Flags win over the environment, which wins over
the file. The whole configuration is validated at start; every problem is
reported at once and the agent exits with code 2.

| file key | flag | environment | default | meaning |
|---|---|---|---|---|
${rows.join('\n')}

List options (\`cpKey\`) take a YAML list in the file, a repeated flag, or a
comma-separated environment variable.

## Outbox bound

Events wait in the durable outbox while the uplink is down. When it holds
\`outboxMax\` events, informational events (\`alert.residual-use\`,
\`credential.expiring\`, \`action.delivered\`, \`inventory\`) are no longer
queued for the control plane: they are counted and logged (warn), and each
one is still in the audit log. Events that carry evidence of a decision
(\`cmd.*\`, \`device.state\`, \`action.queued\`, \`action.acked\`,
\`credential.expired\`) are always kept, so \`seq\` stays gapless and no
revocation's evidence is ever dropped; the agent logs an error once when it
crosses the bound.

## Authentication throttling

Failed MQTT connects are counted per source address (an IPv6 source by its
/64) and per client id over \`authThrottleWindowS\`. Against the address
counts every credential failure, garbage passwords included; against an id
only a token that named that id and failed (wrong key, replayed, expired,
wrong audience). Refusals because of a device's state (revoked,
quarantined, retired, lapsed credential) count nowhere and are reported as
residual use instead. Past \`authFailuresPerAddress\` an address, past
\`authFailuresPerClient\` an id, is blocked for \`authBlockS\`.

A block never locks out a valid credential: it decides how much work an
attempt gets. While blocked, an attempt whose password does not have the
shape of a token (three base64url parts) is refused with CONNACK 5 before
anything is parsed, which makes a storm of garbage cost almost nothing; an
attempt with a token's shape is checked in full, so a device with a valid
token gets in from a blocked address (a NAT or LAN /64 it shares with an
attacker) and under a blocked id (someone who knows its id), and a forged
token costs one signature check. At most 10,000 ids and addresses are
tracked (least recently used dropped).

## Connect storms

When a site comes back after a power cut every device connects at once.
Until the broker takes a connection, the kernel holds it, up to
\`listenBacklog\` (4096) connections a listener; Linux caps that at
net.core.somaxconn, and the start warns when it does. A connect beyond it
is dropped, and its device waits for its own retransmits (on Linux 1, 3,
7 s ... after its first try) or is reset: with Node's default of 511, 10,000 certificate devices
reconnecting over TLS, 1,000 at a time, took 30 s with 34 resets, and 19 s
with none at 4096. That wait, and the TLS handshake, come before
\`admissionMaxWaitMs\`, which counts from CONNECT. What memory alone can refuse (a password that is no token, an unknown id,
a wrong audience, an expired or replayed token, a throttled address) is
refused at once, whoever else is waiting. The rest take turns: at most
\`admissionConcurrency\` connects have their signature (or password) checked
and their token's jti written at the same time, and the others wait in
arrival order, so the first to arrive are answered first. A connect that
waits is not timed out by the broker (\`connectTimeoutMs\` ends when its
CONNECT arrives), and one whose device hung up while it waited costs no
check. Once the oldest waiting connect has waited \`admissionMaxWaitMs\`, the
queue is not draining in time, and a new connect is refused at once with
CONNACK 3 (server unavailable) so the device retries later instead of
timing out at its own end: \`edgewarden_admission_waiting\` and
\`edgewarden_connects_refused_total{reason="busy"}\` show it. Such a refusal
says nothing about the device's credential: the throttle does not count it.
Acks and action delivery yield to the connects: while connects wait, a
device's ack is checked and its pending actions are sent after them, so
the devices get in first and the acks and wipes they bring follow. Once
what yields has waited \`admissionMaxWaitMs\`, it and the connects take
every other turn (with 0, always), so a flood of connects (forged ones
too) slows a device's ack and never stops it. Only an ack whose claims
may settle a pending action has its signature checked (the rest are
refused from memory, as garbage is), a copy of one being checked gets its
answer without a check of its own, and no more of a device's acks wait for
a turn than it has actions pending (the rest are checked at once, so a
flood holds no place in the queue).
\`edgewarden_admission_background_waiting\` counts what waits,
\`edgewarden_acks_refused_total\` what was refused.

## Certificate lifetimes and renewal

The site CA issues device certificates for \`certLifetime\` by criticality
(90 days for safety and high, 180 for medium, 365 for low) and the gateway
queues a renewal when the fraction \`renewAt\` of the lifetime is left (30 %
for safety and high, 20 % for medium, 10 % for low). The renewal window is
then 27, 27, 36 and 36.5 days, and \`renewGraceS\` (30 days) adds the time
after expiry in which a device that was offline may still connect renew-only
and renew: about two months in all, longer than the longest offline time we
expect of a device on a site (a machine stored between campaigns, a ward
closed for works). A device away longer than that needs a new enrollment.
Short lifetimes for the devices that matter most keep a stolen key useful
for weeks, not years; the overlap (\`renewOverlapS\`, 7 days) keeps the old
certificate valid beside the new one until the device has connected with the
new one, so a renewal never cuts a device off.

## A commented file with every option

\`\`\`yaml
${yaml.join('\n\n')}
\`\`\`
`
}

/** docs/errors.md: every stable error code, what it means, and the cmd.failed/cmd.rejected reasons of the wire (npm run docs). */
export function renderErrorCodes(): string {
  const rows = Object.entries(ErrorCodes).map(([code, meaning]) => `| \`${code}\` | ${meaning} |`)
  return `# Error codes

<!-- Generated from agent/runtime/errors.ts and wire/protocol.ts by \`npm run docs\`; do not edit by hand. -->

Every error the agent raises on purpose carries a stable \`code\` (callers,
scripts and tests branch on it; the message may change). The CLI prints the
message as one line: exit 2 for \`USAGE\` and \`CONFIG_INVALID\`, 1 for the rest.
The admin socket answers \`{"error": {"code", "message"}}\`.

| code | meaning |
| --- | --- |
${rows.join('\n')}

## Reasons on the wire (PROTOCOL §3)

\`cmd.rejected\` (the command was refused before it ran; checked in this order):
${REJECT_REASONS.map((r) => `\`${r}\``).join(', ')}.

\`cmd.failed\` (a verified command that could not run):
${FAIL_REASONS.map((r) => `\`${r}\``).join(', ')}.
`
}
