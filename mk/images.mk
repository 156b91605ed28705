# Container images (images/) and the end-to-end tests on a real cluster (e2e/).
#
#   make images                       build every image with docker or podman
#   make images IMAGES="server operator" IMAGE_REPO=registry.example/me IMAGE_TAG=dev
#   make images-push                  push them
#   make e2e                          kind cluster (created if missing) + images + chart + tests
#   make e2e E2E_CLUSTER=existing     the cluster in KUBECONFIG (images must be pullable there,
#                                     or E2E_PUSH=1 to push them first)
#   make e2e-down                     delete the kind cluster
#
# The image names below are the chart's and the operator's defaults (a test checks them).

KUBELLAMA_VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
IMAGE_REPO ?= ghcr.io/kubellama
IMAGE_TAG ?= $(KUBELLAMA_VERSION)
# Which images `make images` builds (server-cuda needs the NVIDIA CUDA base images, ~10 GB).
IMAGES ?= server server-cuda operator
# docker when it is installed, else podman; override with CONTAINER_TOOL=...
CONTAINER_TOOL ?= $(or $(shell command -v docker 2>/dev/null),$(shell command -v podman 2>/dev/null))
# Extra `build` flags, e.g. IMAGE_BUILD_ARGS='--build-arg CUDA_ARCHITECTURES=89;90 --platform linux/arm64'
IMAGE_BUILD_ARGS ?=

ALL_IMAGES := server server-cuda operator
DOCKERFILE.server := images/server/Dockerfile
DOCKERFILE.server-cuda := images/server/Dockerfile.cuda
DOCKERFILE.operator := images/operator/Dockerfile
image_ref = $(IMAGE_REPO)/kubellama-$(1):$(IMAGE_TAG)

KIND ?= kind
KIND_CLUSTER ?= kubellama-e2e
# kind: use (or create) the kind cluster $(KIND_CLUSTER); existing: the cluster in KUBECONFIG.
E2E_CLUSTER ?= kind
# 1: build the images before the tests (and load them into kind); 0: use them as they are.
E2E_BUILD ?= 1
E2E_PUSH ?= 0
E2E_IMAGES := server operator
E2E_KUBECONFIG := $(if $(filter kind,$(E2E_CLUSTER)),$(KUBELLAMA_CACHE)/e2e/kubeconfig-$(KIND_CLUSTER),$(KUBECONFIG))
E2E_PYTEST_ARGS ?=
E2E_KUBECTL := $(or $(KUBELLAMA_KUBECTL),$(shell command -v kubectl 2>/dev/null),kubectl)

.PHONY: images images-push image-names container-tool e2e e2e-check e2e-cluster e2e-images e2e-down \
	$(addprefix image-,$(ALL_IMAGES)) $(addprefix push-,$(ALL_IMAGES))

images: $(addprefix image-,$(IMAGES))

images-push: $(addprefix push-,$(IMAGES))

# One reference a line, in the order server, server-cuda, operator.
image-names:
	@$(foreach i,$(ALL_IMAGES),echo "$(call image_ref,$(i))";)

container-tool:
	@if [ -z "$(CONTAINER_TOOL)" ]; then \
		echo "error: neither docker nor podman is installed; install one (or set CONTAINER_TOOL=...) to build the images" >&2; exit 1; fi
	@if ! $(CONTAINER_TOOL) info >/dev/null 2>&1; then \
		echo "error: '$(CONTAINER_TOOL)' is installed but cannot reach its engine (is the Docker daemon running?); start it, or set CONTAINER_TOOL=podman" >&2; exit 1; fi

$(addprefix image-,$(ALL_IMAGES)): image-%: container-tool
	@echo "==> building $(call image_ref,$*) from $(DOCKERFILE.$*) with $(notdir $(CONTAINER_TOOL))"
	$(CONTAINER_TOOL) build -f $(DOCKERFILE.$*) --build-arg VERSION=$(KUBELLAMA_VERSION) \
		$(IMAGE_BUILD_ARGS) -t $(call image_ref,$*) .

$(addprefix push-,$(ALL_IMAGES)): push-%: container-tool
	$(CONTAINER_TOOL) push $(call image_ref,$*)

# --- end-to-end tests -------------------------------------------------------------------
# Fails (never skips) when a tool or the cluster is missing: `make e2e` must test something.
e2e: e2e-check install helm-tool e2e-cluster e2e-images
	@echo "==> running the e2e tests against $(if $(filter kind,$(E2E_CLUSTER)),kind cluster $(KIND_CLUSTER),the cluster in KUBECONFIG)"
	E2E=1 KUBECONFIG="$(E2E_KUBECONFIG)" IMAGE_REPO="$(IMAGE_REPO)" IMAGE_TAG="$(IMAGE_TAG)" \
		$(BIN)/python -m pytest e2e/tests -m e2e -v -p no:cacheprovider $(E2E_PYTEST_ARGS)

e2e-check:
	@missing=""; \
	if [ "$(E2E_CLUSTER)" = kind ]; then \
		command -v "$(KIND)" >/dev/null 2>&1 || missing="$$missing\n  - kind ($(KIND)): https://kind.sigs.k8s.io/docs/user/quick-start/#installation"; \
	elif [ "$(E2E_CLUSTER)" != existing ]; then \
		echo "error: E2E_CLUSTER must be 'kind' or 'existing', not '$(E2E_CLUSTER)'" >&2; exit 2; \
	fi; \
	command -v "$(E2E_KUBECTL)" >/dev/null 2>&1 || [ -n "$(KUBELLAMA_KUBECTL)" ] || missing="$$missing\n  - kubectl"; \
	if [ "$(E2E_BUILD)" = 1 ]; then \
		if [ -z "$(CONTAINER_TOOL)" ]; then missing="$$missing\n  - docker or podman (or E2E_BUILD=0 with images the cluster can pull)"; \
		elif ! $(CONTAINER_TOOL) info >/dev/null 2>&1; then missing="$$missing\n  - a running $(notdir $(CONTAINER_TOOL)) engine ('$(CONTAINER_TOOL) info' fails)"; fi; \
	fi; \
	if [ -n "$$missing" ]; then \
		printf "error: make e2e needs a Kubernetes cluster and these are missing:$$missing\n" >&2; \
		echo "(make test skips the e2e tests on such machines; make e2e does not)" >&2; exit 1; fi

e2e-cluster:
ifeq ($(E2E_CLUSTER),kind)
	@mkdir -p "$(dir $(E2E_KUBECONFIG))"
	@if $(KIND) get clusters 2>/dev/null | grep -qx "$(KIND_CLUSTER)"; then \
		echo "==> using kind cluster $(KIND_CLUSTER)"; \
	else \
		echo "==> creating kind cluster $(KIND_CLUSTER) from e2e/kind-config.yaml"; \
		$(KIND) create cluster --name "$(KIND_CLUSTER)" --config e2e/kind-config.yaml --wait 180s; \
	fi
	@$(KIND) get kubeconfig --name "$(KIND_CLUSTER)" > "$(E2E_KUBECONFIG)"
else
	@echo "==> using the cluster in KUBECONFIG ($(or $(KUBECONFIG),~/.kube/config))"
	@"$(E2E_KUBECTL)" version --request-timeout=10s >/dev/null || { \
		echo "error: E2E_CLUSTER=existing but the cluster in KUBECONFIG does not answer (see above)" >&2; exit 1; }
endif

e2e-images:
ifeq ($(E2E_BUILD),1)
	@$(MAKE) --no-print-directory images IMAGES="$(E2E_IMAGES)"
ifeq ($(E2E_CLUSTER),kind)
	@echo "==> loading the images into kind cluster $(KIND_CLUSTER)"
	$(if $(findstring podman,$(notdir $(CONTAINER_TOOL))),KIND_EXPERIMENTAL_PROVIDER=podman) \
		$(KIND) load docker-image --name "$(KIND_CLUSTER)" $(foreach i,$(E2E_IMAGES),$(call image_ref,$(i)))
endif
ifeq ($(E2E_PUSH),1)
	@$(MAKE) --no-print-directory images-push IMAGES="$(E2E_IMAGES)"
endif
else
	@echo "==> E2E_BUILD=0: using $(foreach i,$(E2E_IMAGES),$(call image_ref,$(i))) as they are"
endif

e2e-down:
	$(KIND) delete cluster --name "$(KIND_CLUSTER)"

# --- actionlint for the workflow test (e2e/tests: .github/workflows/e2e.yml) ---------------
# Built once per machine from the Go module proxy (~30 s) and cached; without Go the test
# that uses it skips with a line saying so.
ACTIONLINT_VERSION := v1.7.12
ACTIONLINT := $(KUBELLAMA_CACHE)/tools/actionlint-$(ACTIONLINT_VERSION)/actionlint
export KUBELLAMA_ACTIONLINT := $(ACTIONLINT)
TEST_SETUP += actionlint-tool
.PHONY: actionlint-tool

actionlint-tool:
	@if [ ! -x "$(ACTIONLINT)" ]; then \
		if ! command -v go >/dev/null 2>&1; then \
			echo "warning: go not found: actionlint not built, the workflow lint test will skip" >&2; \
		else \
			echo "==> building actionlint $(ACTIONLINT_VERSION) from the Go module proxy (once per machine, ~30 s; cached)"; \
			tmp="$(dir $(ACTIONLINT)).tmp" && rm -rf "$$tmp" && mkdir -p "$$tmp" && \
			GOBIN="$$tmp" go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION) && \
			mkdir -p "$(dir $(ACTIONLINT))" && mv "$$tmp/actionlint" "$(ACTIONLINT)" && rm -rf "$$tmp" || \
			echo "warning: building actionlint failed: the workflow lint test will skip" >&2; \
		fi; \
	fi
