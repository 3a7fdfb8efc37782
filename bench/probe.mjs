// Preloaded (node --expose-gc --import ./bench/probe.mjs) into a broker the
// benchmark measures: on the IPC message "memory" it collects garbage and
// answers process.memoryUsage(), so resident memory is compared after GC
// in both brokers, not at a random point of their heaps' growth. Plain JS so
// the agent starts exactly as in production (no extra loader).
import { getHeapSpaceStatistics } from 'node:v8'

if (process.send) {
  process.channel?.unref()
  process.on('message', (m) => {
    if (m !== 'memory') return
    for (let i = 0; i < 3; i++) globalThis.gc?.()
    // let freed pages go back before reading RSS
    setTimeout(() => process.send({ memory: process.memoryUsage(), spaces: Object.fromEntries(getHeapSpaceStatistics().map((s) => [s.space_name, { size: s.space_size, used: s.space_used_size }])) }), 200)
  })
  // The benchmark going away stops the broker too.
  process.on('disconnect', () => process.kill(process.pid, 'SIGTERM'))
}
