"""Network namespaces as lab hosts: one namespace per host, one bridge per network.

    lab = Lab(["host1", "host2", "host3"], ["admin", "storage", "tenant"]).setup()
    lab.popen("host1", ["meshha-agent", ...])     # runs inside namespace mh-host1
    lab.cut("host2", "storage"); lab.restore("host2", "storage")
    lab.partition([["host1"], ["host2", "host3"]]); lab.heal()
    lab.impair(loss_pct=10, jitter_ms=50); lab.clear_impairment()
    lab.teardown()

Layout (prefix "mh", host i counted from 0, network n counted from 0)::

    root namespace                              namespace mh-<host>
    bridge mhbr-<net> ── veth mhv<i>n<n> ─────── <net>  10.77.<n>.<i+1>/24

Everything is made with iproute2 and nft through argv lists (no shell). Each host's
namespace has one interface per network, named after the network, and `lo`. The bridges
carry no address, so nothing in the root namespace can reach the lab and the lab cannot
reach anything else: all traffic stays on addresses made here. IPv6 is off on every lab
interface (no router solicitations or DAD in the traffic counts).

The faults, and what they look like to the hosts:

- `cut(host, net)`: `ip link set <root-side veth> down`. The host's interface loses
  carrier: its sends on that network go nowhere, nothing arrives (a pulled cable or a
  dead switch port). `restore` brings it back up.
- `partition(groups)`: packet drop *at the switch*, with an nftables table of the bridge
  family (`<prefix>lab`) whose forward chain drops every frame (ARP included) between
  ports of different groups, on every network or the ones given. Links keep carrier;
  the two sides just hear nothing from each other (a failed uplink between two racks).
  Within a group traffic flows. `heal` deletes the table.
- `impair(loss_pct, delay_ms, jitter_ms)`: on every frame delivered to a host, drop it
  with probability `loss_pct`, else delay it by delay_ms + uniform(0, jitter_ms). This
  is `tc qdisc replace dev <root-side veth> root netem loss L% delay D+J/2ms J/2ms` (a
  uniform jitter) on every root-side veth, so each frame crosses exactly one such
  impairment. When the kernel has no netem (CONFIG_NET_SCH_NETEM unset, as on this
  project's machines), the same is done in user space: the veths leave their bridges
  and a hub process (`python -m meshha.lab.netns hub`, AF_PACKET sockets, a learning
  switch per network) forwards the frames with that loss and delay; checksum offload and
  GSO are turned off on the hosts' interfaces so frames survive the trip through user
  space. `clear_impairment` undoes either. Partitions use the bridge and so are refused
  while the user-space hub is on.

Teardown deletes everything with this lab's prefix: namespaces (after killing what still
runs in them), links, the nft table; it is idempotent, and `setup` runs it first, so a
crashed earlier run with the same prefix leaves nothing behind for long. Use a prefix
of your own (tests use "mht", benchmarks "mhb") so two labs never clean up each other.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from meshha.errors import MeshhaError

NETNS_DIR = Path("/run/netns")
IFNAME_MAX = 15
CMD_TIMEOUT_S = 20.0


class LabError(MeshhaError):
    """kind: unsupported (not root, no `ip netns`) | command (iproute2/nft failed) | state"""

    kind = "lab"


def available() -> str | None:
    """None when namespace labs can run here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return f"`ip netns` does not work here: {e}"
    return None


def run(argv: Sequence[str], *, check: bool = True, input: bytes | None = None) -> str:
    """Run one command; LabError(command) with its stderr when it fails and `check`."""
    try:
        p = subprocess.run(
            list(argv), capture_output=True, input=input, timeout=CMD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LabError(f"{' '.join(argv)}: {e}", kind="command") from e
    if check and p.returncode != 0:
        raise LabError(
            f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.decode(errors='replace').strip()}",
            kind="command",
        )
    return p.stdout.decode(errors="replace")


class Lab:
    """N hosts (namespaces) on M networks (bridges). See the module doc."""

    def __init__(
        self,
        hosts: Sequence[str],
        networks: Sequence[str],
        *,
        prefix: str = "mh",
        subnet: str = "10.77",
    ) -> None:
        assert re.fullmatch(r"[a-z][a-z0-9]{0,4}", prefix), prefix
        assert len(networks) <= 250 and len(hosts) <= 250
        self.hosts = tuple(hosts)
        self.networks = tuple(networks)
        self.prefix = prefix
        self.subnet = subnet
        self.table = f"{prefix}lab"
        self.hub: subprocess.Popen[bytes] | None = None
        self.netem = False
        self.partitioned = False
        for net in self.networks:
            assert len(self.bridge(net)) <= IFNAME_MAX, f"network name too long: {net}"

    # -- names -----------------------------------------------------------------------

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def bridge(self, net: str) -> str:
        return f"{self.prefix}br-{net}"[:IFNAME_MAX]

    def veth(self, host: str, net: str) -> str:
        """The root-namespace end of `host`'s link on `net` (the switch port)."""
        return f"{self.prefix}v{self.hosts.index(host)}n{self.networks.index(net)}"

    def ifname(self, net: str) -> str:
        """The interface inside each host's namespace for `net`."""
        return net[:IFNAME_MAX]

    def address(self, host: str, net: str) -> str:
        return f"{self.subnet}.{self.networks.index(net)}.{self.hosts.index(host) + 1}"

    def addresses(self, host: str) -> dict[str, str]:
        return {net: self.address(host, net) for net in self.networks}

    # -- life cycle --------------------------------------------------------------------

    def setup(self) -> Lab:
        why = available()
        if why is not None:
            raise LabError(why, kind="unsupported")
        self.teardown()
        try:
            for net in self.networks:
                br = self.bridge(net)
                run(["ip", "link", "add", br, "type", "bridge", "stp_state", "0"])
                _no_ipv6(br)
                run(["ip", "link", "set", br, "up"])
            for host in self.hosts:
                self._add_host(host)
        except BaseException:
            self.teardown()
            raise
        return self

    def _add_host(self, host: str) -> None:
        ns = self.ns(host)
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _sysctl_ns(ns, "net.ipv6.conf.all.disable_ipv6", "1")
        _sysctl_ns(ns, "net.ipv6.conf.default.disable_ipv6", "1")
        for net in self.networks:
            port, inner = self.veth(host, net), self.ifname(net)
            run(["ip", "link", "add", port, "type", "veth", "peer", "name", inner, "netns", ns])
            _no_ipv6(port)
            run(["ip", "link", "set", port, "master", self.bridge(net), "up"])
            run(["ip", "-n", ns, "addr", "add", f"{self.address(host, net)}/24", "dev", inner])
            run(["ip", "-n", ns, "link", "set", inner, "up"])

    def teardown(self) -> None:
        """Remove everything with this prefix (this run's or a crashed one's). Idempotent."""
        self._stop_hub()
        run(["nft", "delete", "table", "bridge", self.table], check=False)
        for ns in self._our_namespaces():
            _kill_netns_pids(ns)
            run(["ip", "netns", "delete", ns], check=False)
        for link in self._our_links():
            run(["ip", "link", "delete", link], check=False)
        self.netem = self.partitioned = False

    def _our_namespaces(self) -> list[str]:
        out = run(["ip", "netns", "list"], check=False)
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if n.startswith(f"{self.prefix}-")]

    def _our_links(self) -> list[str]:
        out = run(["ip", "-o", "link", "show"], check=False)
        pattern = re.compile(rf"^({re.escape(self.prefix)}v\d+n\d+|{re.escape(self.prefix)}br-.*)$")
        links = []
        for line in out.splitlines():
            parts = line.split(":", 2)
            if len(parts) >= 2:
                name = parts[1].strip().split("@")[0]
                if pattern.match(name):
                    links.append(name)
        # veths first: deleting one end deletes its peer; bridges last.
        return sorted(links, key=lambda n: "br-" in n)

    def __enter__(self) -> Lab:
        return self.setup()

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # -- running things inside a host --------------------------------------------------

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside `host`'s namespace (`ip netns exec` execs: same pid)."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def exec(self, host: str, argv: Sequence[str], *, check: bool = True) -> str:
        return run(self.argv(host, argv), check=check)

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(host, argv), **kw)

    # -- faults ------------------------------------------------------------------------

    def cut(self, host: str, net: str) -> None:
        run(["ip", "link", "set", self.veth(host, net), "down"])

    def restore(self, host: str, net: str) -> None:
        run(["ip", "link", "set", self.veth(host, net), "up"])

    def cut_host(self, host: str) -> None:
        for net in self.networks:
            self.cut(host, net)

    def restore_host(self, host: str) -> None:
        for net in self.networks:
            self.restore(host, net)

    def link_up(self, host: str, net: str) -> bool:
        out = run(["ip", "-o", "link", "show", self.veth(host, net)])
        flags = out.split("<", 1)[1].split(">", 1)[0].split(",")
        return "UP" in flags

    def partition(
        self, groups: Sequence[Sequence[str]], networks: Iterable[str] | None = None
    ) -> None:
        """Drop every frame between hosts of different groups (see the module doc).
        Hosts in no group keep talking to everyone."""
        if self.hub is not None:
            raise LabError("partition with the user-space impairment hub on", kind="state")
        nets = list(networks or self.networks)
        seen = [h for g in groups for h in g]
        assert len(seen) == len(set(seen)), "a host is in two groups"
        rules = []
        for a, ga in enumerate(groups):
            for b, gb in enumerate(groups):
                if a == b or not ga or not gb:
                    continue
                src = ", ".join(self.veth(h, n) for h in ga for n in nets)
                dst = ", ".join(self.veth(h, n) for h in gb for n in nets)
                rules.append(f"    iifname {{ {src} }} oifname {{ {dst} }} drop")
        script = "\n".join(
            [
                f"table bridge {self.table} {{",
                "  chain forward {",
                "    type filter hook forward priority 0; policy accept;",
                *rules,
                "  }",
                "}",
            ]
        )
        run(["nft", "delete", "table", "bridge", self.table], check=False)
        run(["nft", "-f", "-"], input=script.encode())
        self.partitioned = True

    def heal(self) -> None:
        run(["nft", "delete", "table", "bridge", self.table], check=False)
        self.partitioned = False

    def impair(
        self,
        *,
        loss_pct: float = 0.0,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        seed: int = 0,
        userspace: bool | None = None,
        hosts: Sequence[str] | None = None,
    ) -> str:
        """Loss and delay on every frame delivered to a host. Returns "netem" or "hub"
        (which was used). `userspace=None`: netem if the kernel has it, else the hub.
        `hosts`: only frames from or to these hosts are impaired (all when None)."""
        self.clear_impairment()
        assert 0 <= loss_pct < 100 and delay_ms >= 0 and jitter_ms >= 0
        only = list(hosts) if hosts is not None else None
        if userspace is not True and self._try_netem(loss_pct, delay_ms, jitter_ms, only):
            self.netem = True
            return "netem"
        if userspace is False:
            raise LabError("netem is not available in this kernel", kind="unsupported")
        if self.partitioned:
            raise LabError("impairment hub while partitioned", kind="state")
        self._start_hub(loss_pct, delay_ms, jitter_ms, seed, only)
        return "hub"

    def _try_netem(
        self, loss_pct: float, delay_ms: float, jitter_ms: float, only: list[str] | None = None
    ) -> bool:
        half = jitter_ms / 2
        # netem on a root-side veth impairs what the host receives; `only` impairs just
        # that direction of those hosts (the hub does both)
        targets = only if only is not None else self.hosts
        for host in targets:
            for net in self.networks:
                argv = ["tc", "qdisc", "replace", "dev", self.veth(host, net), "root", "netem"]
                argv += ["loss", f"{loss_pct:g}%", "delay", f"{delay_ms + half:g}ms"]
                argv += [f"{half:g}ms"] if half else []
                try:
                    run(argv)
                except LabError:
                    if host == targets[0] and net == self.networks[0]:
                        return False  # no netem here at all
                    raise
        return True

    def clear_impairment(self) -> None:
        if self.netem:
            for host in self.hosts:
                for net in self.networks:
                    run(["tc", "qdisc", "del", "dev", self.veth(host, net), "root"], check=False)
            self.netem = False
        if self.hub is not None:
            self._stop_hub()
            for host in self.hosts:
                for net in self.networks:
                    run(["ip", "link", "set", self.veth(host, net), "master", self.bridge(net)])

    def _start_hub(
        self,
        loss_pct: float,
        delay_ms: float,
        jitter_ms: float,
        seed: int,
        only: list[str] | None = None,
    ) -> None:
        for host in self.hosts:
            _offloads_off(self.ns(host), [self.ifname(n) for n in self.networks])
        argv = [sys.executable, "-m", "meshha.lab.netns", "hub", "--seed", str(seed)]
        argv += ["--loss-pct", f"{loss_pct:g}", "--delay-ms", f"{delay_ms:g}"]
        argv += ["--jitter-ms", f"{jitter_ms:g}"]
        if only is not None:
            argv += ["--only", ",".join(self.veth(h, n) for h in only for n in self.networks)]
        for net in self.networks:
            ports = [self.veth(h, net) for h in self.hosts]
            for p in ports:
                run(["ip", "link", "set", p, "nomaster"])
                run(["ip", "link", "set", p, "promisc", "on"])
            argv += ["--net", ",".join(ports)]
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - the hub writes to it
        self.hub = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors)
        assert self.hub.stdout is not None
        line = self.hub.stdout.readline()  # "ready" once every socket is bound
        if line.strip() != b"ready":
            self._stop_hub()
            errors.seek(0)
            err = errors.read().decode(errors="replace")
            raise LabError(f"impairment hub did not start: {line!r} {err}", kind="command")
        errors.close()  # the hub keeps its own descriptor

    def hub_running(self) -> bool:
        """False when the user-space hub is off or has died (then frames no longer flow)."""
        return self.hub is not None and self.hub.poll() is None

    def _stop_hub(self) -> None:
        hub, self.hub = self.hub, None
        if hub is None:
            return
        with contextlib.suppress(ProcessLookupError):
            hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(timeout=10)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()

    # -- counters ----------------------------------------------------------------------

    def link_bytes(self, host: str, net: str) -> tuple[int, int]:
        """(bytes the host sent, bytes it received) on `net`, from its switch port's
        counters (the port's rx is the host's tx)."""
        base = Path("/sys/class/net") / self.veth(host, net) / "statistics"
        return int((base / "rx_bytes").read_text()), int((base / "tx_bytes").read_text())


# -- helpers -------------------------------------------------------------------------------


def _no_ipv6(link: str) -> None:
    path = Path("/proc/sys/net/ipv6/conf") / link / "disable_ipv6"
    with contextlib.suppress(OSError):
        path.write_text("1")


def _sysctl_ns(ns: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    _in_netns(ns, lambda: Path(path).write_text(value) if os.path.exists(path) else None)


def _kill_netns_pids(ns: str) -> None:
    """SIGKILL what a crashed earlier run left running in its namespace (our agents)."""
    out = run(["ip", "netns", "pids", ns], check=False)
    for word in out.split():
        if word.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(word), signal.SIGKILL)


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _in_netns(ns: str, fn: Any) -> Any:
    """Run `fn` in a short-lived thread that has entered namespace `ns` (a network
    namespace belongs to a thread in Linux, so the rest of the process stays put)."""
    result: list[Any] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as e:  # noqa: BLE001  # handed to the caller below
            error.append(e)

    t = threading.Thread(target=body, name=f"netns-{ns}")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0] if result else None


_SIOCETHTOOL = 0x8946
# ethtool commands that switch an offload off (struct ethtool_value {u32 cmd, data}).
_ETHTOOL_OFF = {"tx-checksum": 0x17, "scatter-gather": 0x19, "tso": 0x1F, "gso": 0x24}


def _offloads_off(ns: str, ifnames: Sequence[str]) -> None:
    """Checksum offload and segmentation offload off on `ifnames` inside `ns`: frames
    then leave the host complete (checksummed, MTU-sized), as a user-space forwarder
    needs. What `ethtool -K IF tx off sg off tso off gso off` does, without ethtool."""

    def body() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for name in ifnames:
                for what in ("gso", "tso", "scatter-gather", "tx-checksum"):
                    value = ctypes.create_string_buffer(struct.pack("II", _ETHTOOL_OFF[what], 0))
                    ifr = struct.pack("16sP", name.encode(), ctypes.addressof(value))
                    ifr += b"\0" * (40 - len(ifr))
                    try:
                        fcntl.ioctl(s.fileno(), _SIOCETHTOOL, ifr)
                    except OSError as e:
                        raise LabError(f"{ns} {name}: {what} off: {e}", kind="command") from e
        finally:
            s.close()

    _in_netns(ns, body)


# -- the user-space impairment hub ---------------------------------------------------------

_ETH_P_ALL = 0x0003
_PACKET_OUTGOING = 4


async def _hub_main(
    nets: Sequence[Sequence[str]],
    loss: float,
    delay_s: float,
    jitter_s: float,
    seed: int,
    only: frozenset[str] | None = None,
) -> None:
    import trio

    rng = random.Random(seed)
    async with trio.open_nursery() as nursery:
        socks_by_net = []
        for ports in nets:
            socks = {}
            for port in ports:
                s = trio.socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
                await s.bind((port, _ETH_P_ALL))
                socks[port] = s
            socks_by_net.append(socks)

        async def deliver(s: Any, frame: bytes, at: float) -> None:
            await trio.sleep_until(at)
            with contextlib.suppress(OSError):  # port down: lost, as on a wire
                await s.send(frame)

        async def forward(socks: Mapping[str, Any], port: str, macs: dict[bytes, str]) -> None:
            s = socks[port]
            while True:
                try:
                    frame, addr = await s.recvfrom(65536)
                except OSError:  # ENETDOWN once when the port is cut: keep listening
                    continue
                if addr[2] == _PACKET_OUTGOING or len(frame) < 14:
                    continue  # our own sends show up here too
                dst, src = frame[:6], frame[6:12]
                macs[src] = port
                out = macs.get(dst) if not dst[0] & 1 else None
                targets = [out] if out is not None else [p for p in socks if p != port]
                now = trio.current_time()
                hit = only is None or port in only
                for t in targets:
                    if t == port:
                        continue
                    if not hit and t not in (only or ()):  # neither end impaired
                        nursery.start_soon(deliver, socks[t], frame, now)
                        continue
                    if rng.random() * 100 < loss:
                        continue
                    at = now + delay_s + rng.random() * jitter_s
                    nursery.start_soon(deliver, socks[t], frame, at)

        for socks in socks_by_net:
            macs: dict[bytes, str] = {}
            for port in socks:
                nursery.start_soon(forward, socks, port, macs)
        print("ready", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def _hub_cli(args: Sequence[str]) -> None:
    import argparse

    import trio

    p = argparse.ArgumentParser(prog="python -m meshha.lab.netns hub")
    p.add_argument("--net", action="append", required=True, help="comma-separated ports")
    p.add_argument("--loss-pct", type=float, default=0.0)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--only", default=None, help="impair only frames from or to these ports")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(args)
    nets = [n.split(",") for n in a.net]
    only = frozenset(a.only.split(",")) if a.only else None
    trio.run(_hub_main, nets, a.loss_pct, a.delay_ms / 1000, a.jitter_ms / 1000, a.seed, only)


if __name__ == "__main__":
    if sys.argv[1:2] == ["hub"]:
        _hub_cli(sys.argv[2:])
    else:
        sys.exit("usage: python -m meshha.lab.netns hub --net P1,P2,... [--loss-pct L] ...")
