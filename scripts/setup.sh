#!/usr/bin/env bash
# meshha: install everything on a fresh Debian 12 / Ubuntu machine (as root), then run
#   demo  - the main job: `meshha-lab demo`, a real 5-host lab (namespaces, ipmi_sim BMCs,
#           libvirt/QEMU VMs, real Nova, one meshha agent per host) losing a host and a
#           VM, as a live timeline; then the lab is taken down
#   test  - lint (ruff), types (mypy; strict for the pure core), then the whole test suite
#           (unit, simulation, contract, integration, lab)
# Idempotent: safe to run again. Everything it installs is listed here or in the
# scripts it calls; nothing is assumed to be on the machine beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-test}"
VENV="${MESHHA_VENV:-$PWD/.venv}"
export DEBIAN_FRONTEND=noninteractive

apt_packages=(python3 python3-venv python3-dev gcc pkg-config libvirt-dev git ca-certificates)
echo "== system packages: ${apt_packages[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null

if [ "$MODE" = test ]; then
    # systemd-analyze verifies the unit file (config/meshha-agent.service); PID 1 is untouched.
    apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
if { [ "$MODE" = test ] || [ "$MODE" = demo ]; } && [ -f scripts/install-lab-system.sh ]; then
    echo "== lab components (libvirtd, QEMU, OpenIPMI, iproute2, nftables)"
    bash scripts/install-lab-system.sh
fi

PYTHON="${MESHHA_PYTHON:-python3}"
echo "== python environment in $VENV ($($PYTHON --version))"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
"$VENV/bin/pip" install -q -e ".[test]"

if { [ "$MODE" = test ] || [ "$MODE" = demo ]; } && [ -f scripts/install-nova-venv.sh ]; then
    echo "== real Nova in its own virtualenv (for the lab and the integration tests)"
    MESHHA_NOVA_PYTHON="$PYTHON" bash scripts/install-nova-venv.sh
fi

export PATH="$VENV/bin:$PATH"
case "$MODE" in
demo)
    echo "== demo: a real 5-host lab; a host loses power, a VM crashes, the host comes back"
    meshha-lab demo
    ;;
test)
    echo "== lint"
    ruff check .
    ruff format --check .
    echo "== types"
    mypy meshha
    echo "== tests"
    set +e
    python -m pytest -p no:cacheprovider --durations=15 tests
    rc=$?
    set -e
    # 5 = no tests collected: never acceptable for the whole suite.
    exit $rc
    ;;
*)
    echo "usage: $0 demo|test" >&2
    exit 2
    ;;
esac
