#!/usr/bin/env bash
# `npm run release`: one tarball a gateway without the npm registry installs
# from (deploy/install.sh TARBALL): what the package ships (deploy/stage.sh:
# bin/, the compiled JavaScript in dist/, docs, deploy/) with its runtime
# dependencies installed (npm ci --omit=dev from package-lock.json), a
# RELEASE manifest, and a SHA-256 checksum file beside it. Run it as the
# owner of a built checkout (npm install, or npm run build), on the platform
# the gateways run (linux-x64: the native modules ship their prebuilt
# binaries, chosen at run time).
#
#   deploy/release.sh [OUT_DIR]     # default ./release
#
# Writes OUT_DIR/edgewarden-VERSION-linux-x64.tar.gz and its .sha256
# (`sha256sum -c` format), and prints the tarball's path.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "release.sh: $*" >&2; exit 1; }
OUT=${1:-$SRC/release}
command -v node >/dev/null || die "node is needed"
command -v sha256sum >/dev/null || die "sha256sum is needed (coreutils)"

VERSION=$(node -p "require('$SRC/package.json').version")
ENGINES=$(node -p "require('$SRC/package.json').engines.node")
ARCH=$(node -p 'process.platform + "-" + process.arch')
NAME="edgewarden-$VERSION-$ARCH"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TARBALL="$OUT/$NAME.tar.gz"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# stage.sh refuses an unbuilt or stale dist/, and takes only what npm pack takes
bash "$SRC/deploy/stage.sh" "$WORK/$NAME"
COMMIT=$(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$( (git -C "$SRC" status --porcelain 2>/dev/null || true) | head -c1)
cat > "$WORK/$NAME/RELEASE" <<EOF
name=edgewarden
version=$VERSION
platform=$ARCH
node=$ENGINES
commit=$COMMIT${DIRTY:+ (with uncommitted changes)}
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
built-with-node=$(node --version)
EOF
# Owner-independent and in a stable order, so the same tree makes the same listing.
tar -C "$WORK" --owner=0 --group=0 --numeric-owner --sort=name -czf "$TARBALL.tmp" "$NAME"
mv "$TARBALL.tmp" "$TARBALL"
(cd "$OUT" && sha256sum "$NAME.tar.gz" > "$NAME.tar.gz.sha256")
echo "$TARBALL"
