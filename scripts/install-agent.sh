#!/usr/bin/env bash
# Install meshha on a compute host (as root), where config/meshha-agent.service expects it:
#   /opt/meshha/venv                     meshha and its Python dependencies (own virtualenv)
#   /usr/local/bin/meshha-agent, meshctl links into that virtualenv (the unit's ExecStart)
#   /etc/systemd/system/meshha-agent.service
#   /etc/meshha/segment.toml             the example, if no segment file is there yet (0600)
#   /etc/meshha/secrets/                 (0700) for `meshctl config secrets`
#   /var/lib/meshha                      (0700) Raft journal and event ledger
# It does not enable or start the agent: write the segment file first. Idempotent.
#
#   bash scripts/install-agent.sh            from this checkout
#   bash scripts/install-agent.sh --root D   into D instead of / (packaging, tests)
#   bash scripts/install-agent.sh --no-apt   skip the Debian/Ubuntu packages
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
ROOT=""
APT=1
while [ $# -gt 0 ]; do
    case "$1" in
    --root) ROOT="$(realpath -m "$2")"; shift 2 ;;
    --no-apt) APT=0; shift ;;
    *) echo "usage: $0 [--root DIR] [--no-apt]" >&2; exit 2 ;;
    esac
done
VENV="$ROOT/opt/meshha/venv"
PYTHON="${MESHHA_PYTHON:-python3}"

if [ "$APT" = 1 ]; then
    echo "== system packages (python3-venv, and what libvirt-python builds against)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-venv python3-dev gcc \
        pkg-config libvirt-dev >/dev/null
fi

echo "== meshha into $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
"$VENV/bin/pip" install -q "$SRC"

echo "== commands, unit, directories"
install -d -m 0755 "$ROOT/usr/local/bin" "$ROOT/etc/systemd/system"
# Relative links: they resolve inside --root too.
ln -sfn ../../../opt/meshha/venv/bin/meshha-agent "$ROOT/usr/local/bin/meshha-agent"
ln -sfn ../../../opt/meshha/venv/bin/meshctl "$ROOT/usr/local/bin/meshctl"
install -m 0644 "$SRC/config/meshha-agent.service" "$ROOT/etc/systemd/system/meshha-agent.service"
install -d -m 0700 "$ROOT/etc/meshha" "$ROOT/etc/meshha/secrets" "$ROOT/var/lib/meshha"
if [ ! -e "$ROOT/etc/meshha/segment.toml" ]; then
    install -m 0600 "$SRC/config/segment.example.toml" "$ROOT/etc/meshha/segment.toml"
    echo "   /etc/meshha/segment.toml: the example; replace it (meshctl config init) or edit it"
else
    echo "   /etc/meshha/segment.toml: exists, left as it is"
fi
install -d -m 0755 "$ROOT/usr/local/share/doc/meshha"
install -m 0644 "$SRC/config/clouds.yaml.example" "$SRC/docs/nova-permissions.md" \
    "$ROOT/usr/local/share/doc/meshha/"

cat <<NEXT
== installed. Next, on one host:
   meshctl config init --cloud CLOUD --name SEGMENT --aggregate AGG --out /etc/meshha/segment.toml
   meshctl config secrets /etc/meshha/segment.toml   # then copy /etc/meshha to every host
   meshctl config check /etc/meshha/segment.toml
 and on every host: the Nova credentials in /etc/openstack/clouds.yaml
 (/usr/local/share/doc/meshha/clouds.yaml.example), then
   systemctl daemon-reload && systemctl enable --now meshha-agent && meshctl status
NEXT
