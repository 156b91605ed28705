# Benchmark against the peers (issue 6): not part of `make test`.
#   make bench-setup   build llama.cpp's llama-server and the llama-cpp-python peers (cached)
#   make bench         the full run, results in bench/results/
#   make bench BENCH_ARGS="--quick --peers kubellama,llama-server"
BENCH_ARGS ?=

.PHONY: bench bench-setup bench-profile bench-router bench-router-setup

bench-setup: install
	@KUBELLAMA_CACHE="$(KUBELLAMA_CACHE)" bash bench/build_llama_server.sh >/dev/null
	@KUBELLAMA_CACHE="$(KUBELLAMA_CACHE)" PYTHON=$(PYTHON) bash bench/setup_peers.sh >/dev/null

bench: model bench-setup
	$(BIN)/python -m bench run --model "$(DEFAULT_MODEL)" $(BENCH_ARGS)

# py-spy profile of kubellama-server, e.g. make bench-profile BENCH_ARGS="--workload completion-1"
bench-profile: model bench-setup
	$(BIN)/python -m bench profile --model "$(DEFAULT_MODEL)" $(BENCH_ARGS)

# kubellama-router's strategies on a multi-turn chat workload over 3 local replicas (issue 18),
# e.g. make bench-router BENCH_ARGS="--arms random,prefix --turns 3"
bench-router: model bench-router-setup
	$(BIN)/python -m bench.routing --model "$(DEFAULT_MODEL)" $(BENCH_ARGS)

# vllm-router from PyPI (the external arm), in a virtualenv of its own under the cache
VLLM_ROUTER_VENV := $(KUBELLAMA_CACHE)/bench/venv-vllm-router
bench-router-setup:
	@test -x "$(VLLM_ROUTER_VENV)/bin/vllm-router" || { $(PYTHON) -m venv "$(VLLM_ROUTER_VENV)" && \
	  "$(VLLM_ROUTER_VENV)/bin/pip" install -q "vllm-router==0.1.17"; }
