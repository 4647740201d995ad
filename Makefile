# cryptotune developer tasks. `make demo` and `make test` are the README's quick start.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
PROTO_SRC := $(wildcard protos/cryptotune/proto/v1/*.proto)
PROTO_OUT := client
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
ORIGINAL_PATH := $(PATH)
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo test test-slow browser netns-tools lint format typecheck protos check-protos bench clean

$(VENV)/.installed: pyproject.toml uv.lock
	@# The bootstrap uses the system's python3 (PATH without .venv/bin: the venv has no pip).
	@command -v uv >/dev/null 2>&1 || [ -x "$(HOME)/.local/bin/uv" ] || { P=$$(PATH=$(ORIGINAL_PATH) command -v python3); \
	  $$P -m pip install --quiet --user uv || $$P -m pip install --quiet uv; }
	@UV=$$(command -v uv || echo "$(HOME)/.local/bin/uv"); \
	  $$UV sync --extra daemon --extra ray --compile-bytecode --quiet || { echo "make setup: 'uv sync' failed (see above)"; exit 1; }
	@# Bytecode is compiled at install time (as pip does for wheels): with PYTHONDONTWRITEBYTECODE set,
	@# as on our CI machines, every CLI call and worker start would otherwise recompile grpc, rich,
	@# torch… from source (list-gpus went from 0.45 s to about 0.2 s).
	@$(PY) -m compileall -q client daemon >/dev/null
	@touch $@

## setup: create .venv with uv (bootstrapped with pip when missing) and install daemon + dev tools
setup: $(VENV)/.installed

## demo: train builtin:tiny-qwen3 on the bundled Chinese cryptography sample, with a live display
demo: setup
	$(VENV)/bin/cryptotune demo

## test: unit + integration tests (real daemon, real CLI) and the generated-code freshness check
test: setup check-protos
	$(PY) -m pytest -q -m "not slow"

## test-slow: the long end-to-end runs (crash recovery, cancel and resume, every parallel strategy, Ray across nodes, GPU-proof rehearsal, thin-client wheel, thorough fuzz); CI runs them too
test-slow: setup
	$(PY) -m pytest -q -m slow

## browser: install Debian's chromium for the dashboard's browser test (apt; root or sudo). CI runs it;
## without it, that one test skips and names the package.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }
	@chromium --version

## netns-tools: install what the Ray tests' loopback-only network namespace needs (util-linux's unshare
## and nsenter, iproute2's ip; apt; root). CI runs it; without them, those tests skip and name the tool.
netns-tools:
	@command -v unshare >/dev/null 2>&1 && command -v nsenter >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq util-linux iproute2; }
	@echo "netns-tools: $$(command -v unshare) $$(command -v nsenter) $$(command -v ip)"

## lint: ruff, and the import layers and forbidden imports of docs/architecture.md (import-linter)
lint: setup
	$(VENV)/bin/ruff check client daemon tests bench
	$(VENV)/bin/ruff format --check client daemon tests bench
	$(VENV)/bin/lint-imports --no-cache

format: setup
	$(VENV)/bin/ruff format client daemon tests bench
	$(VENV)/bin/ruff check --fix client daemon tests bench

typecheck: setup
	$(VENV)/bin/mypy

protos: setup
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	  --mypy_out=$(PROTO_OUT) --mypy_grpc_out=$(PROTO_OUT) $(PROTO_SRC)

## check-protos: fail when the committed generated code differs from what protoc makes now
check-protos: setup
	@tmp=$$(mktemp -d); \
	$(PY) -m grpc_tools.protoc -I protos --python_out=$$tmp --grpc_python_out=$$tmp \
	  --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTO_SRC) >$$tmp/protoc.log 2>&1 || { cat $$tmp/protoc.log; exit 1; }; \
	diff -r -x __init__.py -x __pycache__ -x '*.pyc' $$tmp/cryptotune/proto/v1 client/cryptotune/proto/v1 >/dev/null \
	  || { echo "check-protos: generated code in client/cryptotune/proto/v1 is stale; run 'make protos' and commit"; rm -rf $$tmp; exit 1; }; \
	rm -rf $$tmp; echo "check-protos: generated code is up to date"

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
