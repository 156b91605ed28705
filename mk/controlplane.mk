# A real Kubernetes control plane for operator/tests/cluster (no containers):
# kube-apiserver, kube-controller-manager, kube-scheduler, etcd and kwok, built
# once per machine from the Go module proxy at the versions pinned in
# e2e/controlplane/go.mod and cached under
# $(KUBELLAMA_CACHE)/controlplane/<version-key>/ (a no-op once cached; the
# first build shows progress and takes about 15-30 minutes on 2 cores).
# KUBEBUILDER_ASSETS holding all five binaries skips the build. Without Go the
# step says so and the control-plane tests skip with one line; with Go, a
# failed build fails `make test`.

CONTROLPLANE_BINARIES := kube-apiserver kube-controller-manager kube-scheduler etcd kwok

TEST_SETUP += controlplane
.PHONY: controlplane

controlplane:
	@if [ -n "$$KUBEBUILDER_ASSETS" ] && \
	    (cd "$$KUBEBUILDER_ASSETS" 2>/dev/null && ls $(CONTROLPLANE_BINARIES) >/dev/null 2>&1); then \
		echo "==> control plane: using KUBEBUILDER_ASSETS=$$KUBEBUILDER_ASSETS"; \
	elif command -v go >/dev/null 2>&1; then \
		e2e/controlplane/build.sh >/dev/null; \
	else \
		echo "==> control plane: 'go' is not installed; the control-plane tests (operator/tests/cluster) will skip"; \
	fi
