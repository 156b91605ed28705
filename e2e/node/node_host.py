"""The host side of the local node: its network set-up, and removing what a killed run left."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


from node_config import BLACKHOLE_ROUTES, BRIDGE, CONTAINERD_SOCK, FIREWALL_COMMENT, NODE_IP, RUN_DIR, cache_dir


def sh(*cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def log(message: str) -> None:
    print(f"[node {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _link_exists(name: str) -> bool:
    return sh("ip", "link", "show", name, check=False).returncode == 0


def setup_host_network() -> None:
    """The node's address (on loopback: this kernel has no dummy links), blackhole routes for
    the cluster ranges, forwarding for the bridge, and a firewall rule that keeps pod traffic
    off every interface but the bridge."""
    sh("ip", "addr", "replace", f"{NODE_IP}/32", "dev", "lo")
    for cidr in BLACKHOLE_ROUTES:
        sh("ip", "route", "replace", "blackhole", cidr)
    for key, value in (("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")):
        with contextlib.suppress(OSError):
            Path("/proc/sys", key).write_text(value)
    rule = ["FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-m", "comment", "--comment", FIREWALL_COMMENT,
            "-j", "REJECT"]
    if sh("iptables", "-C", *rule, check=False).returncode != 0:
        sh("iptables", "-I", *rule)


def _mounts_under(prefixes: list[str]) -> list[str]:
    """Mount points under one of `prefixes`, or that the kubelet made for pods' volumes
    (under any kubelet root: a run killed before its clean-up leaves them in its folder)."""
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            point = line.split()[1].replace("\\040", " ")
            if (any(point.startswith(p) for p in prefixes) or "/kubelet/pods/" in point
                    or point.endswith("/node/kubelet")):  # LocalNode's kubelet root, bind-mounted on itself
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _our_pids(markers: list[str]) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(m in cmdline for m in markers):
                pids.append(int(entry.name))
    return pids


def _container_pids() -> list[int]:
    """Processes in cgroups that containerd's runc made for the node's pods."""
    pids: set[int] = set()
    for root in Path("/sys/fs/cgroup/pids").glob("**/cgroup.procs") if Path("/sys/fs/cgroup/pids").is_dir() else []:
        if "kubepods" in str(root) or "/k8s.io/" in str(root):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in root.read_text().split())
    return sorted(pids)


def _remove_kube_chains() -> None:
    """The kubelet's and kube-proxy's iptables chains (KUBE-*), and the jumps into them."""
    for table in ("filter", "nat", "mangle"):
        rules = sh("iptables", "-t", table, "-S", check=False).stdout.splitlines()
        for rule in rules:
            parts = rule.split()
            if parts[:1] == ["-A"] and not parts[1].startswith("KUBE-") and "-j" in parts \
                    and parts[parts.index("-j") + 1].startswith("KUBE-"):
                sh("iptables", "-t", table, "-D", *parts[1:], check=False)
        chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
        for chain in chains:
            sh("iptables", "-t", table, "-F", chain, check=False)
        for chain in chains:
            sh("iptables", "-t", table, "-X", chain, check=False)


def cleanup_host(bin_dir: Path, kube_proxy: Path | None = None, also_under: Path | None = None) -> None:
    """Remove what a node run leaves: container processes and shims, mounts, pod network
    namespaces, kube-proxy's rules, the bridge. Safe to run when nothing is left."""
    for pid in _our_pids([f"-address {CONTAINERD_SOCK}", str(RUN_DIR)]) + _container_pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    runtime = cache_dir() / "node-runtime"
    for point in _mounts_under([str(RUN_DIR) + "/", "/run/netns/cni-", "/var/run/netns/cni-",
                                str(runtime / "containerd") + "/",
                                *([str(also_under) + "/"] if also_under else [])]):
        sh("umount", "-l", point, check=False)
    for netns in Path("/run/netns").glob("cni-*") if Path("/run/netns").is_dir() else []:
        sh("ip", "netns", "delete", netns.name, check=False)
    if kube_proxy is None and (bin_dir / "kube-proxy").exists():
        kube_proxy = bin_dir / "kube-proxy"
    if kube_proxy:
        sh(str(kube_proxy), "--cleanup", check=False, timeout=60)
    _remove_kube_chains()
    if _link_exists(BRIDGE):
        sh("ip", "link", "delete", BRIDGE, check=False)
    with contextlib.suppress(OSError):
        for sock in RUN_DIR.glob("*.sock*"):
            sock.unlink()
        shutil.rmtree(RUN_DIR / "containerd", ignore_errors=True)
