// Preloaded (node --expose-gc --import ./bench/probe.mjs) into a broker the
// benchmark measures: on the IPC message "memory" it collects garbage and
// answers process.memoryUsage(), so resident memory is compared after GC
// in both brokers, not at a random point of their heaps' growth; on
// "profile-start" and "profile-stop" it runs V8's sampling CPU profiler over
// a window of the run (through node:inspector, in this process) and answers
// the profile, which the benchmark summarises (bench/profile.ts). Plain JS
// so the agent starts exactly as in production (no extra loader).
import { Session } from 'node:inspector'
import { getHeapSpaceStatistics } from 'node:v8'

/** V8's sampling interval, µs: a sample a millisecond, as `--cpu-prof` takes */
const PROFILE_INTERVAL_US = 1000
let session = null

const post = (method, params = {}) =>
  new Promise((resolve, reject) => session.post(method, params, (err, result) => (err ? reject(err) : resolve(result))))

async function profile(m) {
  if (m === 'profile-start') {
    // one left running by a window that failed is dropped
    if (session) session.disconnect()
    session = new Session()
    session.connect()
    await post('Profiler.enable')
    await post('Profiler.setSamplingInterval', { interval: PROFILE_INTERVAL_US })
    await post('Profiler.start')
    return { profiling: true }
  }
  if (!session) throw new Error('no profile started')
  const { profile } = await post('Profiler.stop')
  session.disconnect()
  session = null
  return { profile }
}

if (process.send) {
  process.channel?.unref()
  process.on('message', (m) => {
    if (m === 'profile-start' || m === 'profile-stop') {
      profile(m).then(
        (r) => process.send(r),
        (err) => process.send({ profileError: String(err) }),
      )
      return
    }
    if (m !== 'memory') return
    for (let i = 0; i < 3; i++) globalThis.gc?.()
    // Let freed pages go back before reading RSS, with the main thread held
    // (V8's threads that unmap pages run meanwhile; the broker's own timers
    // do not): a pass that ran in that window would be read as memory held,
    // as its young garbage (a maintenance pass writing 5,000 last-seen
    // times made ~22 MiB of it) touches pages the GC had given back.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200)
    const memory = process.memoryUsage()
    const spaces = Object.fromEntries(getHeapSpaceStatistics().map((s) => [s.space_name, { size: s.space_size, used: s.space_used_size }]))
    process.send({ memory, spaces })
  })
  // The benchmark going away stops the broker too.
  process.on('disconnect', () => process.kill(process.pid, 'SIGTERM'))
}
