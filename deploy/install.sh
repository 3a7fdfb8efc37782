#!/usr/bin/env bash
# Install (or upgrade) edgewarden on a Debian/Ubuntu gateway as a systemd
# service. Run as root, either from a checkout (built: npm install) or from a
# release tarball (`npm run release`), which needs no npm registry at all:
#
#   sudo deploy/install.sh                          # from this checkout
#   sudo deploy/install.sh edgewarden-0.1.0-linux-x64.tar.gz   # offline, from a release
#   sudo systemctl enable --now edgewarden
#
#   deploy/install.sh --no-system --prefix DIR TARBALL
#                       only the code, into DIR (no root needed): checksum,
#                       unpack, check it runs, swap in; no user, unit, config
#
# What it does (docs/operations.md explains each step):
#   - checks Node.js (22.13 or later, 24 LTS recommended; 20.10 still runs,
#     with a warning: it is past its end of life) and nft, for
#     `quarantine: nftables`
#   - a tarball: checks it against TARBALL.sha256 (sha256sum -c), unpacks it
#     and uses it as it is (its dependencies are in it: nothing is fetched);
#     a checkout: installs what the package ships (deploy/stage.sh: the files
#     of `npm pack`, never keys, data dirs or exports lying in the checkout)
#     and its runtime dependencies (npm ci --omit=dev)
#   - runs `edgewarden --version` from the new copy, then swaps it in; the
#     previous version stays in PREFIX.old (roll back: docs/operations.md)
#   - creates the system user and group `edgewarden` (no login, no home)
#   - puts an `edgewarden` command in /usr/local/bin that talks to the
#     service's data dir
#   - installs /etc/edgewarden/config.yaml from the example if there is none
#     (an existing one is never overwritten)
#   - installs the hardened unit and reloads systemd
# The data dir /var/lib/edgewarden is created by systemd (StateDirectory=)
# and is never touched here: the agent migrates its store at start.
set -euo pipefail

PREFIX=${PREFIX:-/opt/edgewarden}
SYSTEM=1
CONF_DIR=/etc/edgewarden
UNIT=/etc/systemd/system/edgewarden.service
SRC=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "install.sh: $*" >&2; exit 1; }
usage() { echo "usage: $0 [--prefix DIR] [--no-system] [TARBALL]" >&2; exit 2; }

TARBALL=
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || usage; PREFIX=$2; shift 2 ;;
    --prefix=*) PREFIX=${1#--prefix=}; shift ;;
    --no-system) SYSTEM=0; shift ;;
    -h|--help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "install.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$TARBALL" ] || usage; TARBALL=$1; shift ;;
  esac
done
case $PREFIX in /*) ;; *) die "--prefix must be an absolute path (got $PREFIX)" ;; esac
PREFIX=${PREFIX%/}

[ "$SYSTEM" = 0 ] || [ "$(id -u)" = 0 ] || die "run as root (sudo $0), or give --no-system --prefix DIR to install only the code"
NODE=$(command -v node) || die "Node.js 22.13 or later is needed (24 LTS recommended; apt-get install nodejs, or NodeSource)"
# node_at_least MAJOR MINOR: whether $NODE is that version or later
node_at_least() {
  "$NODE" -e 'const [a,b]=process.versions.node.split(".").map(Number); const [x,y]=process.argv.slice(1).map(Number); process.exit(a>x||(a===x&&b>=y)?0:1)' "$1" "$2"
}
node_at_least 20 10 || die "Node.js $("$NODE" --version) is too old: 22.13 or later is needed (24 LTS recommended)"
node_at_least 22 13 \
  || echo "install.sh: warning: Node.js $("$NODE" --version) is past its end of life and not supported: install 22.13 or later (24 LTS recommended); it still runs" >&2
[ "$SYSTEM" = 0 ] || command -v nft >/dev/null || echo "install.sh: note: nft not found; \`quarantine: nftables\` needs it (apt-get install nftables)" >&2

mkdir -p "$(dirname "$PREFIX")"
# The code: a fresh copy next to the old one, swapped in at the end, so an
# upgrade that fails half way leaves the running version intact.
STAGE=$(mktemp -d "${PREFIX}.new.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
if [ -n "$TARBALL" ]; then
  [ -f "$TARBALL" ] || die "$TARBALL: no such file"
  SUM="$TARBALL.sha256"
  [ -f "$SUM" ] || die "$SUM is missing: the checksum file npm run release writes beside the tarball (copy both)"
  command -v sha256sum >/dev/null || die "sha256sum is needed to check $TARBALL (coreutils)"
  # the checksum names the tarball as release.sh wrote it: checked against the file given, whatever it is called now
  want=$(awk 'NR==1 {print $1}' "$SUM")
  [ "${#want}" = 64 ] || die "$SUM does not hold a SHA-256"
  have=$(sha256sum "$TARBALL" | awk '{print $1}')
  [ "$have" = "$want" ] || die "$TARBALL does not match $SUM (sha256 $have, expected $want): damaged or not the release it claims; nothing was installed"
  tar -C "$STAGE" -xzf "$TARBALL" --strip-components=1 --no-same-owner || die "$TARBALL could not be unpacked"
  for f in RELEASE bin/edgewarden.js dist/agent/cli/main.js node_modules/aedes/package.json deploy/edgewarden.service; do
    [ -e "$STAGE/$f" ] || die "$TARBALL is not an edgewarden release ($f missing)"
  done
else
  [ -f "$SRC/bin/edgewarden.js" ] || die "$SRC does not look like an edgewarden checkout"
  command -v npm >/dev/null || die "npm is needed to install the runtime dependencies (or install from a release tarball: no npm needed)"
  bash "$SRC/deploy/stage.sh" "$STAGE"
fi
# It runs before it replaces anything.
ERR=$(mktemp)
"$NODE" "$STAGE/bin/edgewarden.js" --version >/dev/null 2>"$ERR" || die "the new copy does not run: $(head -c 500 "$ERR")"
rm -f "$ERR"
if [ "$(id -u)" = 0 ]; then chown -R root:root "$STAGE"; fi
chmod -R u=rwX,go=rX "$STAGE"
if [ -d "$PREFIX" ]; then rm -rf "${PREFIX}.old" && mv "$PREFIX" "${PREFIX}.old"; fi
mv "$STAGE" "$PREFIX"
trap - EXIT
VERSION=$("$NODE" "$PREFIX/bin/edgewarden.js" --version)

if [ "$SYSTEM" = 0 ]; then
  echo "install.sh: installed edgewarden $VERSION to $PREFIX (code only)${TARBALL:+, offline from $(basename "$TARBALL")}"
  exit 0
fi

if ! getent group edgewarden >/dev/null; then groupadd --system edgewarden; fi
if ! getent passwd edgewarden >/dev/null; then
  useradd --system --gid edgewarden --home-dir /var/lib/edgewarden --no-create-home --shell /usr/sbin/nologin \
    --comment "edgewarden site-gateway agent" edgewarden
fi

cat > /usr/local/bin/edgewarden <<WRAP
#!/bin/sh
# edgewarden CLI against the service's data dir (installed by deploy/install.sh).
# Device verbs need the admin socket: run them as root or as edgewarden.
export EDGEWARDEN_DATA_DIR="\${EDGEWARDEN_DATA_DIR:-/var/lib/edgewarden}"
exec "$NODE" --max-semi-space-size=32 "$PREFIX/bin/edgewarden.js" "\$@"
WRAP
chmod 0755 /usr/local/bin/edgewarden

install -d -m 0750 -o root -g edgewarden "$CONF_DIR"
if [ ! -e "$CONF_DIR/config.yaml" ]; then
  install -m 0640 -o root -g edgewarden "$PREFIX/deploy/config.example.yaml" "$CONF_DIR/config.yaml"
  echo "install.sh: wrote $CONF_DIR/config.yaml from the example: edit site, gateway, uplink and cpKey before starting"
fi

# the unit of the version being installed (the release's own, not the checkout's)
sed -e "s#/usr/bin/node #$NODE #" -e "s#/opt/edgewarden/#$PREFIX/#g" "$PREFIX/deploy/edgewarden.service" > "$UNIT.tmp"
chmod 0644 "$UNIT.tmp" && mv "$UNIT.tmp" "$UNIT"
if command -v systemd-analyze >/dev/null; then systemd-analyze verify "$UNIT" || die "the unit does not verify"; fi
systemctl daemon-reload
if systemctl is-active --quiet edgewarden; then
  echo "install.sh: upgraded $PREFIX to $VERSION (the previous one is in ${PREFIX}.old); restart to run it: systemctl restart edgewarden"
else
  echo "install.sh: installed $VERSION to $PREFIX; start with: systemctl enable --now edgewarden"
fi
