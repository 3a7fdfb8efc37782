// @peculiar/x509 on node's WebCrypto, loaded once, on first use, for the
// simulators that make or read certificates, requests and CRLs (the gateway
// has its own loader, agent/pki/ca.ts: simulators/ never import agent/).
import { webcrypto } from 'node:crypto'

type X509Lib = typeof import('@peculiar/x509')
let lib: Promise<X509Lib> | null = null

export function x509(): Promise<X509Lib> {
  lib ??= (async () => {
    await import('reflect-metadata')
    const m = await import('@peculiar/x509')
    m.cryptoProvider.set(webcrypto as unknown as Parameters<typeof m.cryptoProvider.set>[0])
    return m
  })()
  return lib
}
