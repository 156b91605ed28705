# Prometheus server and promtool for the chart's monitoring tests (charts/tests).
# Debian's `prometheus` package; installed once per machine, never started as a
# service (the tests run their own Prometheus on loopback).

PROMETHEUS_BIN ?= $(shell command -v prometheus 2>/dev/null || echo /usr/bin/prometheus)
PROMTOOL_BIN ?= $(shell command -v promtool 2>/dev/null || echo /usr/bin/promtool)
export KUBELLAMA_PROMETHEUS := $(PROMETHEUS_BIN)
export KUBELLAMA_PROMTOOL := $(PROMTOOL_BIN)

TEST_SETUP += prometheus-tool
.PHONY: prometheus-tool

prometheus-tool:
	@if [ -x "$(PROMETHEUS_BIN)" ] && [ -x "$(PROMTOOL_BIN)" ]; then exit 0; fi; \
	set -e; \
	SUDO=; if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	echo "==> installing Debian's prometheus package (server + promtool; the service is not started)"; \
	policy=/usr/sbin/policy-rc.d; added=; \
	if [ ! -e $$policy ]; then \
		printf '#!/bin/sh\nexit 101\n' | $$SUDO tee $$policy >/dev/null; $$SUDO chmod +x $$policy; added=1; \
	fi; \
	trap '[ -z "$$added" ] || $$SUDO rm -f '$$policy EXIT; \
	$$SUDO apt-get update -q; \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends prometheus; \
	[ -x "$(PROMETHEUS_BIN)" ] && [ -x "$(PROMTOOL_BIN)" ] || { echo "error: prometheus installed but $(PROMETHEUS_BIN) or $(PROMTOOL_BIN) is missing" >&2; exit 1; }
