#!/usr/bin/env bash
# Install (or upgrade) edgewarden on a Debian/Ubuntu gateway as a systemd
# service. Run as root from a checkout or unpacked release of edgewarden:
#
#   sudo deploy/install.sh            # install or upgrade, do not start
#   sudo systemctl enable --now edgewarden
#
# What it does (docs/operations.md explains each step):
#   - checks Node.js >= 20.10 (and nft, for `quarantine: nftables`)
#   - creates the system user and group `edgewarden` (no login, no home)
#   - installs to /opt/edgewarden what the package ships (deploy/stage.sh:
#     the files of `npm pack`, never keys, data dirs or exports lying in the
#     checkout) and its runtime dependencies (npm ci --omit=dev)
#   - puts an `edgewarden` command in /usr/local/bin that talks to the
#     service's data dir
#   - installs /etc/edgewarden/config.yaml from the example if there is none
#     (an existing one is never overwritten)
#   - installs the hardened unit and reloads systemd
# The data dir /var/lib/edgewarden is created by systemd (StateDirectory=)
# and is never touched here.
set -euo pipefail

PREFIX=${PREFIX:-/opt/edgewarden}
CONF_DIR=/etc/edgewarden
UNIT=/etc/systemd/system/edgewarden.service
SRC=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "install.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sudo $0)"
NODE=$(command -v node) || die "Node.js 20.10 or later is needed (apt-get install nodejs, or NodeSource)"
"$NODE" -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=10)?0:1)' \
  || die "Node.js $("$NODE" --version) is too old: 20.10 or later is needed"
command -v npm >/dev/null || die "npm is needed to install the runtime dependencies"
command -v nft >/dev/null || echo "install.sh: note: nft not found; \`quarantine: nftables\` needs it (apt-get install nftables)" >&2
[ -f "$SRC/bin/edgewarden.js" ] || die "$SRC does not look like an edgewarden checkout"

if ! getent group edgewarden >/dev/null; then groupadd --system edgewarden; fi
if ! getent passwd edgewarden >/dev/null; then
  useradd --system --gid edgewarden --home-dir /var/lib/edgewarden --no-create-home --shell /usr/sbin/nologin \
    --comment "edgewarden site-gateway agent" edgewarden
fi

# The code: a fresh copy next to the old one, swapped in at the end, so an
# upgrade that fails half way leaves the running version intact.
STAGE=$(mktemp -d "${PREFIX}.new.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
bash "$SRC/deploy/stage.sh" "$STAGE"
chown -R root:root "$STAGE"
chmod -R u=rwX,go=rX "$STAGE"
if [ -d "$PREFIX" ]; then rm -rf "${PREFIX}.old" && mv "$PREFIX" "${PREFIX}.old"; fi
mv "$STAGE" "$PREFIX"
trap - EXIT

cat > /usr/local/bin/edgewarden <<WRAP
#!/bin/sh
# edgewarden CLI against the service's data dir (installed by deploy/install.sh).
# Device verbs need the admin socket: run them as root or as edgewarden.
export EDGEWARDEN_DATA_DIR="\${EDGEWARDEN_DATA_DIR:-/var/lib/edgewarden}"
exec "$NODE" "$PREFIX/bin/edgewarden.js" "\$@"
WRAP
chmod 0755 /usr/local/bin/edgewarden

install -d -m 0750 -o root -g edgewarden "$CONF_DIR"
if [ ! -e "$CONF_DIR/config.yaml" ]; then
  install -m 0640 -o root -g edgewarden "$SRC/deploy/config.example.yaml" "$CONF_DIR/config.yaml"
  echo "install.sh: wrote $CONF_DIR/config.yaml from the example: edit site, gateway, uplink and cpKey before starting"
fi

sed "s#/usr/bin/node #$NODE #" "$SRC/deploy/edgewarden.service" > "$UNIT.tmp"
chmod 0644 "$UNIT.tmp" && mv "$UNIT.tmp" "$UNIT"
if command -v systemd-analyze >/dev/null; then systemd-analyze verify "$UNIT" || die "the unit does not verify"; fi
systemctl daemon-reload
if systemctl is-active --quiet edgewarden; then
  echo "install.sh: upgraded $PREFIX; restart to run the new version: systemctl restart edgewarden"
else
  echo "install.sh: installed to $PREFIX; start with: systemctl enable --now edgewarden"
fi
