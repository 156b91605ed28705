# The local Kubernetes node (e2e/node): kubelet, kube-proxy, containerd, runc, the CNI
# plugins, CoreDNS and BuildKit built once per machine from the Go module proxy into
# $(KUBELLAMA_CACHE)/node/<version-key>/, and a Debian base image made from Debian's
# packages (mmdebstrap). A no-op once cached; the first build shows progress and takes
# about 20 minutes on 2 cores. `make test` runs the e2e suite on this node.
#
#   make node      build (or find) the node's binaries and base image
#   make cluster   start the test control plane with the local node, build the images,
#                  print `export KUBECONFIG=...`; Ctrl-C stops it

TEST_SETUP += node
.PHONY: node cluster

node: controlplane
	@if [ "$$(id -u)" != 0 ] || ! command -v go >/dev/null 2>&1; then \
		echo "==> local node: needs root and Go; the e2e tests will skip (or fail with KUBELLAMA_REQUIRE_CLUSTER=1)"; \
	else \
		if ! pkg-config --exists libseccomp 2>/dev/null || ! command -v iptables >/dev/null 2>&1 \
		    || ! command -v mmdebstrap >/dev/null 2>&1 || ! command -v conntrack >/dev/null 2>&1; then \
			echo "==> installing the local node's Debian packages (libseccomp-dev, iptables, conntrack, mmdebstrap)"; \
			apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				libseccomp-dev pkg-config iptables conntrack mmdebstrap iproute2 >/dev/null; \
		fi && \
		e2e/node/build.sh >/dev/null && e2e/node/base.sh >/dev/null; \
	fi

cluster: model node helm-tool
	@$(BIN)/python e2e/node/kubellama_node.py up
