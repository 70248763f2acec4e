#!/usr/bin/env bash
# Install and prepare the system side of meshha's lab and integration tests on Debian 12,
# as root: libvirtd + QEMU (VMs), OpenIPMI's ipmi_sim + ipmitool (BMCs), nftables and
# iproute2 (network namespaces and cuts). See /work/shared/reference/environment.md for
# why each step is there.
#
# Idempotent: installs only what is missing, and rewrites files only when they differ.
# It starts no daemon: meshha.lab.libvirt_setup starts libvirtd (a private one per
# simulated host, or the system one) when a test or the lab needs it.
#
# Python packages are not installed here (pip install -e '.[test]' libvirt-python does);
# gcc and python3-dev are, because libvirt-python is published as source only and builds
# against libvirt-dev with pkg-config.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root" >&2
    exit 1
fi

PACKAGES=(
    libvirt-daemon            # libvirtd
    libvirt-daemon-driver-qemu
    libvirt-clients           # virsh, for people poking at the lab
    libvirt-dev               # libvirt-python builds against it
    pkg-config
    gcc
    python3-dev
    qemu-system-x86
    openipmi                  # ipmi_sim
    ipmitool
    nftables
    iproute2
)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "system packages: all present"
fi

# The QEMU driver does not initialise without the group kvm and the user and group
# libvirt-qemu, even though qemu.conf below runs QEMU as root.
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
if ! getent passwd libvirt-qemu >/dev/null; then
    useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
fi

# QEMU as root, unconfined, without namespaces or cgroups: how a lab machine without
# systemd runs it. (meshha.lab.libvirt_setup writes the same file for private libvirtds.)
QEMU_CONF=/etc/libvirt/qemu.conf
WANTED=$(cat <<'EOF'
# Written by meshha scripts/install-lab-system.sh: QEMU runs as root without confinement,
# the way this lab machine (no systemd, no cgroups, no device namespaces) can run it.
user = "root"
group = "root"
security_driver = "none"
namespaces = []
cgroup_controllers = []
dynamic_ownership = 0
remember_owner = 0
EOF
)
mkdir -p /etc/libvirt
if [ ! -f "$QEMU_CONF" ] || [ "$(cat "$QEMU_CONF")" != "$WANTED" ]; then
    [ -f "$QEMU_CONF" ] && [ ! -f "$QEMU_CONF.meshha-orig" ] && cp "$QEMU_CONF" "$QEMU_CONF.meshha-orig"
    printf '%s\n' "$WANTED" > "$QEMU_CONF"
    echo "wrote $QEMU_CONF"
fi

mkdir -p /var/log/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt \
    /var/cache/meshha-lab/libvirt

if [ -e /dev/kvm ]; then
    echo "KVM: /dev/kvm present"
else
    echo "KVM: no /dev/kvm; lab domains fall back to TCG (type='qemu')"
fi
echo "lab system ready"
