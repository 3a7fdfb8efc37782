#!/usr/bin/env bash
# Build what deploy/install.sh installs into DEST: the files the package
# ships (`npm pack`, i.e. package.json "files") and their runtime
# dependencies. Never the rest of the checkout: the README's tour writes
# device and control-plane keys, a data dir and audit exports into it, and
# none of that may end up world-readable under /opt. Needs neither root nor
# systemd, so the test suite runs it as install.sh does.
#
#   deploy/stage.sh DEST              # DEST absent or empty
#   deploy/stage.sh --no-deps DEST    # without npm ci (what ships, only)
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "stage.sh: $*" >&2; exit 1; }

DEPS=1
if [ "${1:-}" = --no-deps ]; then DEPS=0; shift; fi
[ $# = 1 ] || { echo "usage: $0 [--no-deps] DEST" >&2; exit 2; }
DEST=$1
command -v npm >/dev/null || die "npm is needed to pack the agent and install its runtime dependencies"
[ -f "$SRC/package-lock.json" ] || die "$SRC has no package-lock.json: the runtime dependencies would not be the tested ones"
mkdir -p "$DEST"
[ -z "$(ls -A "$DEST")" ] || die "$DEST is not empty"

# The package ships the compiled JavaScript in dist/, built by `npm install`
# (or `npm run build`) as the user who owns the checkout: never here, as root.
[ -f "$SRC/dist/.built" ] || die "$SRC/dist/ is not built: run npm install (or npm run build) in $SRC first, as its owner"
STALE=$(cd "$SRC" && find bin agent protocols firmware-hooks wire simulators -path '*/.*' -prune -o -name '*.ts' -newer dist/.built -print -quit 2>/dev/null || true)
[ -z "$STALE" ] || die "$SRC/dist/ is older than the sources ($STALE changed since): run npm run build in $SRC first"

PACK=$(mktemp -d)
trap 'rm -rf "$PACK"' EXIT
# --ignore-scripts: packing runs nothing from the checkout (install.sh runs this as root).
(cd "$SRC" && npm pack --ignore-scripts --pack-destination "$PACK" --loglevel=error >/dev/null)
set -- "$PACK"/*.tgz
[ $# = 1 ] && [ -f "$1" ] || die "npm pack did not make one tarball"
tar -C "$DEST" -xzf "$1" --strip-components=1 --no-same-owner
# npm never packs the lock file; npm ci installs exactly the versions it names.
cp "$SRC/package-lock.json" "$DEST/package-lock.json"
# The staged copy is built already: its own "prepare" (the build) must not run.
(cd "$DEST" && npm pkg delete scripts.prepare)
if [ "$DEPS" = 1 ]; then
  (cd "$DEST" && npm ci --omit=dev --no-audit --no-fund --loglevel=error)
fi
