"""The control plane's binaries (found in the build cache or KUBEBUILDER_ASSETS) and its PKI and kubeconfigs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


HERE = Path(__file__).resolve().parent
KWOK_STAGES = HERE / "kwok-stages.yaml"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.96.0.0/16"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


class BinariesNotFound(RuntimeError):
    """No complete set of control-plane binaries on this machine."""


def build_dir() -> Path | None:
    """The cache folder `e2e/controlplane/build.sh` builds into (for the pinned versions)."""
    try:
        out = subprocess.run(
            ["bash", str(HERE / "build.sh"), "--print-dir"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def find_binaries() -> dict[str, Path]:
    """Each binary from KUBEBUILDER_ASSETS, else the build cache, else PATH."""
    folders = [Path(p) for p in (os.environ.get("KUBEBUILDER_ASSETS"), build_dir()) if p]
    found: dict[str, Path] = {}
    for name in BINARIES:
        for folder in folders:
            if os.access(folder / name, os.X_OK):
                found[name] = folder / name
                break
        else:
            on_path = shutil.which(name)
            if on_path:
                found[name] = Path(on_path)
    missing = [n for n in BINARIES if n not in found]
    if missing:
        raise BinariesNotFound(
            f"control-plane binaries not found ({', '.join(missing)}): run `make controlplane` "
            "(builds them once from the Go module proxy, needs Go) or set KUBEBUILDER_ASSETS"
        )
    return found


def unavailable_reason() -> str | None:
    """Why no control plane can start here (one line), or None."""
    try:
        find_binaries()
    except BinariesNotFound as exc:
        return str(exc)
    if not shutil.which("openssl"):
        return "control plane: `openssl` is needed to make its certificates (apt-get install openssl)"
    return None


def skip_module_if_unavailable() -> None:
    """In a pytest module: skip it, with the reason on one line, when no control plane can start."""
    reason = unavailable_reason()
    if reason:
        import pytest

        pytest.skip(reason, allow_module_level=True)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path, extra_ips: tuple[str, ...] = ()) -> None:
    """A CA, an API-server serving cert for loopback (and `extra_ips`), and the service-account key pair."""
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("ca.key", "apiserver.key", "sa.key"):
        _openssl("genrsa", "-out", key, "2048", cwd=folder)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=folder)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=kubellama-test-ca", "-days", "3",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", "ca.crt", cwd=folder,
    )
    _openssl("req", "-new", "-key", "apiserver.key", "-subj", "/CN=kube-apiserver",
             "-out", "apiserver.csr", cwd=folder)
    (folder / "apiserver.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        f"subjectAltName=IP:127.0.0.1,IP:10.96.0.1,{''.join(f'IP:{ip},' for ip in extra_ips)}"
        "DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
    )
    _openssl(
        "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "3", "-extfile", "apiserver.ext", "-out", "apiserver.crt",
        cwd=folder,
    )


def kubeconfig(server: str, ca_file: Path, token: str, user: str = "user") -> dict:
    """A kubeconfig for one bearer token (admin or a service account's)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubellama-test", "cluster": {
            "server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kubellama-test", "context": {"cluster": "kubellama-test", "user": user}}],
        "current-context": "kubellama-test",
    }


AUDIT_POLICY = {
    # Every request a service account makes (the operator under test runs as one);
    # nothing else, so the log stays small.
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}
