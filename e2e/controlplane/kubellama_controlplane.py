"""A real Kubernetes control plane as plain processes, for tests (no containers).

etcd, kube-apiserver (RBAC, a service-account issuer, an audit log of service
accounts' requests), kube-controller-manager, kube-scheduler and kwok (which
plays the kubelets: fake nodes, pod lifecycle) run on loopback ports in one
folder. `ControlPlane.start()` writes an admin kubeconfig there; `stop()` ends
every process. Binaries come from `find_binaries()`.

Run by hand: `python e2e/controlplane/kubellama_controlplane.py up` starts one
with a few fake nodes and prints the `export KUBECONFIG=...` line.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import yaml

from kubellama_operator.kube import ApiError  # noqa: F401 - kcp.ApiError
from kubellama_server.testing.wait import free_port, wait_until

# the harness's parts (e2e/controlplane/kcp_*.py); their public names stay importable from here
from kcp_assets import (  # noqa: F401
    AUDIT_POLICY, BINARIES, GPU_PRODUCT_LABEL, GPU_RESOURCE, GPU_TAINT, HERE, KWOK_NODE_ANNOTATION, KWOK_STAGES,
    SERVICE_CIDR, BinariesNotFound, build_dir, find_binaries, kubeconfig, make_pki, skip_module_if_unavailable,
    unavailable_reason)
from kcp_client import Kube, ssl_context  # noqa: F401
from kcp_objects import fake_node, fake_volume, node_ready  # noqa: F401


def die_with_parent() -> None:
    """`preexec_fn`: the child is killed if the test process dies (Linux), leaving no orphans.

    SIGKILL, not SIGTERM: all children get it at once, and a terminating kube-apiserver whose
    etcd is gone waits forever."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log: Path


class Processes:
    """A group of processes started in order by `_start()` (each with `_spawn`) and stopped in
    reverse order; `start()`/`stop()` or `with`. Each logs to `workdir/<name>.log` and dies with
    this process. Needs the attributes `workdir`, `binaries`, `procs` and `startup_timeout`."""

    workdir: Path
    binaries: dict[str, Path]
    procs: list[_Proc]
    startup_timeout: float
    #: Seconds between SIGTERM and SIGKILL when stopping.
    stop_grace: float = 10.0

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop_processes()

    def _stop_processes(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=5)
        self.procs.clear()

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [str(self.binaries[name]), *args], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.workdir, preexec_fn=die_with_parent,
                env={**os.environ, **env} if env else None,
            )
        self.procs.append(_Proc(name, popen, log))

    def _check_alive(self) -> None:
        for proc in self.procs:
            code = proc.popen.poll()
            if code is not None:
                raise RuntimeError(
                    f"{proc.name} exited with code {code} while {type(self).__name__} was running;"
                    f" last lines of {proc.log}:\n{tail(proc.log)}"
                )

    def _wait(self, ready: Callable[[], Any], what: str) -> None:
        wait_until(ready, f"{type(self).__name__}: {what}", self.startup_timeout, transient=(Exception,),
                   alive=self._check_alive,
                   detail=lambda: "\n".join(f"--- {p.name} ({p.log}):\n{tail(p.log, 15)}" for p in self.procs))


@dataclass
class ControlPlane(Processes):
    """One control plane in `workdir`; `start()` then `stop()` (or use `with`)."""

    workdir: Path
    binaries: dict[str, Path] = field(default_factory=find_binaries)
    startup_timeout: float = 90.0
    #: Serve on this local address instead of loopback, so that pods reach the API server
    #: (the local node of e2e/node); it must already be assigned to an interface.
    advertise_address: str | None = None
    procs: list[_Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.pki = self.workdir / "pki"
        self.ca_file = self.pki / "ca.crt"
        self.admin_token = secrets.token_hex(16)
        self.kubeconfig_path = self.workdir / "admin.kubeconfig"
        self.audit_log = self.workdir / "audit.log"
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://{self.advertise_address or '127.0.0.1'}:{self.port}"

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        make_pki(self.pki, (self.advertise_address,) if self.advertise_address else ())
        etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        (self.workdir / "tokens.csv").write_text(
            f'{self.admin_token},kubellama-admin,kubellama-admin,"system:masters"\n'
        )
        (self.workdir / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        self._write_kubeconfig(self.kubeconfig_path, self.admin_token, "admin")

        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn("etcd", [
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync", "--log-level=warn",
        ])
        self._wait(lambda: httpx.get(f"{etcd_url}/health", timeout=2).json().get("health") == "true",
                   "etcd healthy")

        pki = self.pki
        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self.advertise_address or '127.0.0.1'}",
            f"--advertise-address={self.advertise_address or '127.0.0.1'}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={self.ca_file}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # Reach a real node's kubelet (logs, exec, port-forward) at its address, not its name.
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
            f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--v=1",
        ])
        self._wait(self._apiserver_ready, "kube-apiserver /readyz")

        self._spawn("kube-controller-manager", [
            f"--kubeconfig={self.kubeconfig_path}",
            f"--authentication-kubeconfig={self.kubeconfig_path}",
            f"--authorization-kubeconfig={self.kubeconfig_path}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={self.ca_file}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
            "--horizontal-pod-autoscaler-sync-period=2s",  # HPAs act within seconds in tests
            "--v=1",
        ])
        self._spawn("kube-scheduler", [
            f"--kubeconfig={self.kubeconfig_path}",
            f"--authentication-kubeconfig={self.kubeconfig_path}",
            f"--authorization-kubeconfig={self.kubeconfig_path}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            "--v=1",
        ])
        self._spawn("kwok", [
            f"--kubeconfig={self.kubeconfig_path}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            f"--config={KWOK_STAGES}", "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.1/16", "--node-ip=10.0.0.1",
            f"--server-address=127.0.0.1:{free_port()}",
            "--v=1",
        ])
        client = self.client()
        try:
            # The controller manager is working once it has made the default ServiceAccount.
            self._wait(lambda: client.get("/api/v1/namespaces/default/serviceaccounts/default",
                                          missing_ok=True) is not None,
                       "kube-controller-manager (default ServiceAccount)")
        finally:
            client.close()

    # The processes stop in reverse start order: etcd last (the API server needs it to stop).

    def _apiserver_ready(self) -> bool:
        r = httpx.get(f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"},
                      verify=ssl_context(self.ca_file), timeout=3)
        return r.status_code == 200

    def _write_kubeconfig(self, path: Path, token: str, user: str) -> Path:
        path.write_text(yaml.safe_dump(kubeconfig(self.url, self.ca_file, token, user)))
        return path

    def client(self, token: str | None = None) -> "Kube":
        return Kube(self.url, token or self.admin_token, self.ca_file)

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path,
                                   expiration_seconds: int = 7200) -> Path:
        """A kubeconfig holding a TokenRequest token for that ServiceAccount."""
        with self.client() as kube:
            token = kube.post(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                 "spec": {"expirationSeconds": expiration_seconds}},
            )["status"]["token"]
        return self._write_kubeconfig(path, token, f"system:serviceaccount:{namespace}:{name}")

    def audit_events(self, username: str | None = None) -> Iterator[dict]:
        """Service accounts' requests the API server answered (audit log, Metadata level)."""
        if not self.audit_log.exists():
            return
        with open(self.audit_log) as f:
            for line in f:
                event = json.loads(line)
                if username is None or event.get("user", {}).get("username") == username:
                    yield event

    def forbidden_requests(self, username: str) -> list[str]:
        """'verb URI' of each request by `username` that authorization (RBAC) refused.

        Other 403s (e.g. writing into a terminating namespace) are not authorization's."""
        return [
            f"{e['verb']} {e['requestURI']}"
            for e in self.audit_events(username)
            if (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"
        ]

    # ---- fake nodes ------------------------------------------------------------------
    def add_nodes(self, cpu_nodes: int = 2, gpu_nodes: int = 1, gpus_per_node: int = 1,
                  gpu_product: str = "NVIDIA-L4") -> list[str]:
        """Create kwok-managed Nodes and wait until they are Ready; returns their names."""
        names = []
        with self.client() as kube:
            for i in range(cpu_nodes):
                names.append(kube.create(fake_node(f"kwok-cpu-{i}"))["metadata"]["name"])
            for i in range(gpu_nodes):
                node = fake_node(f"kwok-gpu-{i}", gpus=gpus_per_node, gpu_product=gpu_product)
                names.append(kube.create(node)["metadata"]["name"])
            for name in names:
                kube.wait_for(lambda n=name: node_ready(kube.get(f"/api/v1/nodes/{n}")),
                              f"node {name} Ready (kwok)", timeout=60)
        return names

    def ensure_volumes(self, available: int = 10, make_volume: Callable[[int], dict] | None = None) -> None:
        """A default StorageClass and at least `available` unbound PersistentVolumes, the
        missing ones made by `make_volume(index)` (default: `fake_volume`, for kwok's pods).

        There is no volume provisioner, so PersistentVolumeClaims (a StatefulSet's
        volumeClaimTemplates) bind to pre-made volumes; released ones are not reused.
        """
        make_volume = make_volume or (lambda i: fake_volume(f"kwok-pv-{i}"))
        with self.client() as kube:
            kube.apply({
                "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": "standard", "annotations": {
                    "storageclass.kubernetes.io/is-default-class": "true"}},
                "provisioner": "kubernetes.io/no-provisioner",
                "volumeBindingMode": "Immediate", "reclaimPolicy": "Retain",
            })
            pvs = kube.list("v1", "PersistentVolume")
            free = sum(1 for pv in pvs if pv.get("status", {}).get("phase") in (None, "Pending", "Available")
                       and not pv["spec"].get("claimRef"))
            for i in range(len(pvs), len(pvs) + max(0, available - free)):
                kube.create(make_volume(i))


def _main(argv: list[str]) -> int:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["up", "binaries"])
    ap.add_argument("--dir", help="working folder (default: a new temporary one)")
    ap.add_argument("--cpu-nodes", type=int, default=2)
    ap.add_argument("--gpu-nodes", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        binaries = find_binaries()
    except BinariesNotFound as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.command == "binaries":
        for name, path in binaries.items():
            print(f"{name}: {path}")
        return 0
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="kubellama-cp-"))
    with ControlPlane(workdir, binaries) as cp:
        cp.add_nodes(args.cpu_nodes, args.gpu_nodes)
        print(f"control plane up; logs in {workdir}\nexport KUBECONFIG={cp.kubeconfig_path}\n"
              "Ctrl-C stops it.", flush=True)
        try:
            while True:
                time.sleep(1)
                cp._check_alive()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
