#!/usr/bin/env bash
# Install real Nova (and Placement) into a dedicated virtualenv for meshha's lab and
# integration tests. The meshha agent never imports nova: only meshha/lab/nova_box.py runs
# inside this venv, as a separate process.
#
# Idempotent: a venv that already imports the pinned versions is left alone.
#
#   MESHHA_NOVA_VENV   where to put the venv   (default /opt/meshha/nova-venv)
#   MESHHA_NOVA_PYTHON the python to build it from (default python3)
set -euo pipefail

VENV="${MESHHA_NOVA_VENV:-/opt/meshha/nova-venv}"
PYTHON="${MESHHA_NOVA_PYTHON:-python3}"
NOVA_VERSION="34.0.0"
PLACEMENT_VERSION="16.0.0"

check() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$NOVA_VERSION" "$PLACEMENT_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version

import sqlalchemy

assert version("nova") == sys.argv[1], version("nova")
assert version("openstack-placement") == sys.argv[2]
assert sqlalchemy.__version__.startswith("2.0."), sqlalchemy.__version__
for mod in ("oslotest", "fixtures", "testtools", "wsgi_intercept", "testresources",
            "testscenarios", "nova.tests.functional.integrated_helpers"):
    __import__(mod)
PY
}

if check; then
    echo "nova venv ready: $VENV (nova $NOVA_VERSION)"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install --quiet \
    "nova==$NOVA_VERSION" \
    "openstack-placement==$PLACEMENT_VERSION" \
    "SQLAlchemy>=2.0,<2.1" \
    oslotest fixtures testtools wsgi-intercept testresources testscenarios

if ! check; then
    echo "nova venv at $VENV does not import the pinned nova; see the pip output above" >&2
    exit 1
fi
echo "nova venv ready: $VENV (nova $NOVA_VERSION)"
