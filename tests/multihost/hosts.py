"""Hosts made of Linux network namespaces on a bridge of their own, for multi-host tests.

Each host is a namespace with one veth (``eth0``, an address on a private /24) whose other end
is on the bridge; the bridge has the subnet's last address, so the test process reaches every
host and no host reaches anything else (no route, no NAT). A host is isolated by taking its
bridge-side link down, and restored by bringing it up. Processes run in a host through
``ip netns exec`` (which execs the command: signals reach it by PID). ``close`` stops every
process (SIGTERM, then SIGKILL) and removes every namespace, link and the bridge, even after a
failure. Needs root and iproute2: ``why_not`` says why hosts cannot be made here.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shoal.procs import ManagedProcess


def why_not() -> str | None:
    """None when network namespaces can be made here, else the reason."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip command is missing"
    name = f"shprobe{os.getpid() % 100000}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns add failed: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.X.0/24 no interface here uses."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for _ in range(100):
        net = ipaddress.ip_network(f"10.213.{random.randrange(1, 255)}.0/24")
        if f"10.213.{net.network_address.packed[2]}." not in used:
            return net
    raise RuntimeError("no free 10.213.X.0/24 subnet")


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    link: str  # the bridge-side end of its veth
    procs: list[ManagedProcess] = field(default_factory=list)


class Hosts:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
        self.subnet = _free_subnet()
        self.bridge = f"shb{self.tag}"
        self.gateway = str(self.subnet.network_address + 254)
        self.hosts: dict[str, Host] = {}
        _ip("link", "add", self.bridge, "type", "bridge")
        try:
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except Exception:
            self.close()
            raise

    def add(self, name: str) -> Host:
        i = len(self.hosts) + 1
        ns, link = f"sh{self.tag}-{name}", f"shv{self.tag}{i}"
        host = Host(name, ns, str(self.subnet.network_address + i), link)
        self.hosts[name] = host  # registered first: close() removes what was made
        _ip("netns", "add", ns)
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", link, "master", self.bridge, "up")
        _ip("addr", "add", f"{host.ip}/24", "dev", "eth0", ns=ns)
        _ip("link", "set", "eth0", "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        return host

    def run(
        self,
        host: str,
        label: str,
        cmd: Sequence[str],
        env: Mapping[str, str],
    ) -> ManagedProcess:
        h = self.hosts[host]
        proc = ManagedProcess(
            ["ip", "netns", "exec", h.ns, *cmd], self.logs / f"{label}.log", env=dict(env)
        ).start()
        h.procs.append(proc)
        return proc

    def isolate(self, host: str) -> None:
        """Cut the host off the network (its link down): nothing in or out."""
        _ip("link", "set", self.hosts[host].link, "down")

    def restore(self, host: str) -> None:
        _ip("link", "set", self.hosts[host].link, "up")

    def kill(self, host: str) -> None:
        """The host dies: every process on it killed at once, its link down."""
        for p in self.hosts[host].procs:
            p.kill()
        self.isolate(host)

    def close(self) -> None:
        for h in self.hosts.values():
            for p in reversed(h.procs):
                p.stop(5)
        for h in self.hosts.values():
            subprocess.run(["ip", "link", "del", h.link], capture_output=True)
            subprocess.run(["ip", "netns", "del", h.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
