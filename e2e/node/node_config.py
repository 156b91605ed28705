"""The local node's addresses, names and configuration files (pure: paths in, text or dicts out)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(REPO_ROOT / "e2e" / "controlplane"))
import kcp_objects  # noqa: E402
from kcp_assets import SERVICE_CIDR  # noqa: E402

NODE_NAME = "kubellama-node"
NODE_IP = "10.253.0.1"           # a second address of the loopback interface
BRIDGE = "kubellama-br0"
POD_SUBNET = "10.244.0.0/24"     # the bridge's pods (kwok's fake pods use the rest of /16)
POD_GATEWAY = "10.244.0.1"
BLACKHOLE_ROUTES = (SERVICE_CIDR, "10.244.0.0/16")
KUBELET_PORT = 10250
RUN_DIR = Path("/run/kubellama-node")   # sockets: short paths
CONTAINERD_SOCK = RUN_DIR / "containerd.sock"
BUILDKIT_SOCK = RUN_DIR / "buildkitd.sock"
K8S_NAMESPACE = "k8s.io"
PAUSE_IMAGE = "localhost/kubellama-pause:1"
FIREWALL_COMMENT = "kubellama-node: pods stay on this machine"
BINARIES = ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "runc",
            "bridge", "host-local", "loopback", "portmap", "coredns", "buildkitd", "buildctl")


def containerd_config(bin_dir: Path, root: Path, state: Path, cni_conf: Path) -> str:
    return f"""version = 3
root = "{root}"
state = "{state}"
[grpc]
  address = "{CONTAINERD_SOCK}"
[ttrpc]
  address = "{CONTAINERD_SOCK}.ttrpc"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[plugins."io.containerd.cri.v1.runtime"]
  # This VM refuses negative oom_score_adj, even to root (the kubelet asks -998).
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{bin_dir / 'runc'}"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{bin_dir}"]
    conf_dir = "{cni_conf}"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def cni_config(ipam_dir: Path) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "kubellama",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                      "ranges": [[{"subnet": POD_SUBNET, "gateway": POD_GATEWAY}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(resolv_conf: Path) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # cgroup v1 host, no systemd (see shared notes on the local node).
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
        "address": NODE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 0,
        # Only the API server reaches this address (logs, exec, port-forward).
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDNS": [NODE_IP],
        "clusterDomain": "cluster.local",
        "resolvConf": str(resolv_conf),
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }


def kube_proxy_config(kubeconfig: Path, metrics_port: int, healthz_port: int) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": POD_SUBNET,
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        # Replies of pod -> Service -> pod on the same bridge go back through the host.
        "iptables": {"masqueradeAll": True, "syncPeriod": "5s", "minSyncPeriod": "0s"},
        "conntrack": {"maxPerCore": 0},  # leave the host's conntrack table size alone
        "nodePortAddresses": [f"{NODE_IP}/32"],
    }


def corefile(kubeconfig: Path) -> str:
    return f""".:53 {{
    bind {NODE_IP}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 10
}}
"""


def hostpath_volume(name: str, path: Path, size: str = "20Gi") -> dict:
    """A PersistentVolume backed by a folder on the node."""
    return kcp_objects.hostpath_volume(name, str(path), size, "local-node", "DirectoryOrCreate")


def cache_dir() -> Path:
    return Path(os.environ.get("KUBELLAMA_CACHE") or Path.home() / ".cache" / "kubellama")
