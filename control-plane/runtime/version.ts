// The control plane's version: in its ready line, its API document and its metrics.
export const VERSION = '0.1.0'
