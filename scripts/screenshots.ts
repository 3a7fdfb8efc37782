// Screenshots of the status page for docs/operations.md: a small site (10
// devices, each showing something an operator meets: live MQTT sessions, a
// Modbus PLC answering through the proxy, a historian subscribed to
// every device's telemetry, a quarantine with its reason, a
// revoked device trying to get back in, a retirement waiting for its wipe,
// a password and a certificate device, a credential about to expire) and
// the same site with 10,000 more (test/helpers/status-fleet.ts). Real
// agent, real devices, real Chromium (Debian's `chromium`, or CHROMIUM_PATH).
//
//   node --import tsx scripts/screenshots.ts [OUT_DIR]     # default docs/
//
// Writes OUT_DIR/status-page-10.png and OUT_DIR/status-page-10000.png.
import { existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { chromium } from 'playwright-core'
import { hashPassword } from '../agent/trust/password.ts'
import { keygen, publicKeyToB64 } from '../firmware-hooks/crypto.ts'
import { createLegacyModbusDevice } from '../simulators/modbus-device.ts'
import { SimulatedMqttDevice } from '../simulators/mqtt-device.ts'
import { ROOT, startTestAgent } from '../test/helpers/agent.ts'
import { mbpoll } from '../test/helpers/modbus.ts'
import { enrollFleet, plannedFleet } from '../test/helpers/status-fleet.ts'

const OUT = process.argv[2] ?? join(ROOT, 'docs')
const CHROMIUM = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/lib/chromium/chromium'].find((p) => p && existsSync(p))
const WHO = { actor: 'local:operator' }

/** What startTestAgent and the devices need to be cleaned up: run in reverse at the end. */
class Cleanup {
  readonly #fns: (() => Promise<void> | void)[] = []
  after(fn: () => Promise<void> | void): void {
    this.#fns.push(fn)
  }
  async run(): Promise<void> {
    for (const fn of this.#fns.splice(0).reverse()) await fn()
  }
}

/** The small site, on a running agent; with `fleet`, 10,000 simulated devices besides. */
async function shoot(file: string, fleet: number): Promise<void> {
  const c = new Cleanup()
  try {
    const agent = await startTestAgent(c, { flags: { httpPort: '0', modbusPort: '0', modbusHost: '127.0.0.1', site: 'plant-a', gateway: 'gw-hall-2' } })
    const gw = agent.gateway
    if (fleet) await enrollFleet(gw, plannedFleet(fleet))
    const url = `mqtt://127.0.0.1:${agent.mqttPort}`
    const mqttDevice = async (id: string, spec: Record<string, unknown>): Promise<SimulatedMqttDevice> => {
      const d = await SimulatedMqttDevice.create({ url, deviceId: id, gatewayId: gw.id, gatewayPublicKey: gw.key.publicKeyB64 })
      c.after(() => d.goOffline())
      await gw.enroll({ id, publicKey: d.runtime.publicKeyB64!, ...spec }, WHO)
      return d
    }
    const key = async (): Promise<string> => publicKeyToB64((await keygen()).publicKey)

    for (const [id, spec] of [['pump-7', { criticality: 'high', owner: 'line 2' }], ['pump-8', { criticality: 'high', owner: 'line 2' }], ['chiller-1', { criticality: 'safety', owner: 'utilities' }]] as const) {
      if (!(await (await mqttDevice(id, spec)).goOnline())) throw new Error(`${id} was not admitted`)
    }
    // a site application: subscribes to every device's telemetry (its acl), online
    if (!(await (await mqttDevice('historian', { criticality: 'medium', owner: 'it', acl: { subscribe: ['dev/+/tele/#'] } })).goOnline())) throw new Error('historian was not admitted')
    const plc = await createLegacyModbusDevice()
    await plc.device.start()
    c.after(() => plc.device.stop())
    await gw.enroll({ id: 'plc-3', publicKey: plc.publicKey, criticality: 'safety', owner: 'line 2', modbus: { host: '127.0.0.1', port: plc.device.port, unitId: 247, hookBase: null } }, WHO)
    const read = await mbpoll(agent.modbus.proxy.port!, 247, { table: 4, ref: 0, count: 4 })
    if (read.code !== 0) throw new Error(`mbpoll through the proxy failed: ${read.failure ?? read.stderr}`)
    await gw.enroll({ id: 'valve-12', publicKey: await key(), criticality: 'medium', owner: 'line 1' }, WHO)
    await gw.transition('valve-12', 'quarantine', { ...WHO, reason: 'unexpected traffic to the historian' })
    const stolen = await mqttDevice('tablet-4', { criticality: 'low', owner: 'maintenance' })
    await gw.transition('tablet-4', 'revoke', { ...WHO, reason: 'reported stolen' })
    await stolen.goOnline() // refused: a residual-use alert
    await gw.enroll({ id: 'scanner-2', publicKey: await key(), criticality: 'low', owner: 'stores' }, WHO)
    await agent.retirements.start('scanner-2', { receivedAt: performance.now(), receivedAtS: gw.nowS(), reason: 'replaced by scanner-5' }, WHO)
    await gw.enroll({ id: 'plug-9', password: await hashPassword('plug-9 secret', { ln: 10 }), criticality: 'low', owner: 'line 1' }, WHO)
    await gw.enroll({ id: 'camera-1', x509: { certificateSha256: 'a3'.repeat(32) }, criticality: 'medium', owner: 'security', credentialExpiresAt: gw.nowS() + 6 * 86400 }, WHO)

    if (!CHROMIUM) throw new Error('no Chromium (apt-get install chromium, or set CHROMIUM_PATH)')
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
    c.after(() => browser.close())
    const page = await browser.newPage({ viewport: { width: 1400, height: fleet ? 1300 : 900 } })
    await page.goto(`http://127.0.0.1:${agent.http!.port}/`)
    // the site's ten on the first page; with the fleet, the first hundred in natural order
    await page.locator(fleet ? '#devices tr[data-device-id="sim-90"]' : '#devices tr[data-device-id="tablet-4"]').waitFor({ timeout: 10_000 })
    await page.locator('#alerts tr').first().waitFor({ timeout: 10_000 })
    await page.waitForFunction(() => /modbus 1/.test((globalThis as unknown as { document: { body: { textContent: string } } }).document.body.textContent))
    await page.screenshot({ path: file, fullPage: !fleet })
    console.log(`wrote ${file}`)
  } finally {
    await c.run()
  }
}

mkdirSync(OUT, { recursive: true })
await shoot(join(OUT, 'status-page-10.png'), 0)
await shoot(join(OUT, 'status-page-10000.png'), 10_000)
