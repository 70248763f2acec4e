#!/usr/bin/env bash
# meshha: install everything on a fresh Debian 12 / Ubuntu machine (as root), then run
#   demo  - the main job: a simulated 5-host segment losing a host, as a timeline
#   test  - lint, then the whole test suite (unit, simulation, contract, integration)
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
if [ "$MODE" = test ] && [ -f scripts/install-lab-system.sh ]; then
    echo "== lab components (libvirtd, QEMU, OpenIPMI, iproute2, nftables)"
    bash scripts/install-lab-system.sh
fi

PYTHON="${MESHHA_PYTHON:-python3}"
echo "== python environment in $VENV ($($PYTHON --version))"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
"$VENV/bin/pip" install -q -e ".[test]"

if [ "$MODE" = test ] && [ -f scripts/install-nova-venv.sh ]; then
    echo "== real Nova in its own virtualenv (for integration tests)"
    MESHHA_NOVA_PYTHON="$PYTHON" bash scripts/install-nova-venv.sh
fi

export PATH="$VENV/bin:$PATH"
case "$MODE" in
demo)
    echo "== demo: a 5-host segment, host2 loses power (simulated time)"
    meshctl sim --hosts 5 --scenario host-power-off --seed 1 --no-observations
    ;;
test)
    echo "== lint"
    ruff check .
    ruff format --check .
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
