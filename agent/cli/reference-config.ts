// docs/configuration.md is generated from the OPTIONS table, so the
// reference cannot drift from what the agent accepts (a test checks it).
import { OPTIONS, envName } from '../config.ts'

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

Failed MQTT connects are counted per client id and per source address (an
IPv6 source by its /64) over \`authThrottleWindowS\`. Only credential
failures count (bad or reused token, wrong key or audience, unknown device);
refusals because of a device's state (revoked, quarantined, retired, lapsed
credential) do not, and are reported as residual use instead. Past
\`authFailuresPerClient\` a client id, past \`authFailuresPerAddress\` an
address, is refused with CONNACK 5 for \`authBlockS\` before any signature
is checked. One id's failures never block another id, and a device admitted
in the last 30 days still gets through a blocked address (its own per-id
limit applies), so a device behind the same NAT as an attacker keeps
working. At most 10,000 ids and addresses are tracked (least recently used
dropped).

## A commented file with every option

\`\`\`yaml
${yaml.join('\n\n')}
\`\`\`
`
}
