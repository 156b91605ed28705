# kubellama — `make run` starts the server on the default model, `make test` runs every test.
# Both install what they need first (virtualenv, cached llama-cpp-python build, model).

PYTHON ?= python3
VENV ?= .venv
export KUBELLAMA_CACHE ?= $(HOME)/.cache/kubellama
BIN := $(VENV)/bin
MODEL_DIR ?= $(KUBELLAMA_CACHE)/models
DEFAULT_MODEL := $(MODEL_DIR)/gemma-3-270m-q4_k_m.gguf
# Extra flags for `make run`, e.g. `make run ARGS="-np 4 --metrics"`.
ARGS ?=
# Extra flags for pytest, e.g. `make test PYTEST_ARGS="-k slots -x"`.
PYTEST_ARGS ?=

# Each product area adds its own set-up steps to TEST_SETUP in mk/<area>.mk.
TEST_SETUP :=
-include mk/*.mk

.PHONY: install model run test clean-venv help
.DEFAULT_GOAL := help

help:
	@echo "make run    - install and start kubellama-server on $(DEFAULT_MODEL) (127.0.0.1:8080)"
	@echo "make test   - install and run the whole test suite"

install:
	@PYTHON=$(PYTHON) VENV=$(VENV) scripts/setup-venv.sh

model: install
	@$(BIN)/python -m kubellama_server.default_model --dest "$(MODEL_DIR)"

run: model
	$(BIN)/kubellama-server -m "$(DEFAULT_MODEL)" $(ARGS)

test: model $(TEST_SETUP)
	KUBELLAMA_DEFAULT_MODEL="$(DEFAULT_MODEL)" $(BIN)/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
