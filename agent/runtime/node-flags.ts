// The Node.js flags the agent runs with as deployed: deploy/edgewarden.service
// (ExecStart), the `edgewarden` wrapper deploy/install.sh writes, and
// `npm start` carry them (test/unit/runtime/node-flags.test.ts keeps the
// three in step), and the benchmark runs the agent with them (its anchors,
// bare aedes, on Node's defaults).
//
// One flag: V8's young generation at 32 MiB a half instead of Node's 16. In
// a connect storm the objects of each connect live across its durable jti
// write; with 16 MiB they outlive two scavenges, are promoted, and die in the
// old generation, which then holds pages that are mostly free. With 32 the
// agent admitted ~12 % more connects/s and held ~2.8 KB less resident memory
// per connected device (10,000 devices, issue 19; 64 gained nothing more and
// cost 20 MiB of resident memory at idle). It does not speed the start.
// Node 24's V8 sizes the young generation so on its own; the flag makes
// Node 22 (and 20) run the same.
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=32']
