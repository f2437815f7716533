# nodemesh — run `make help` for the targets.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
NM    := $(VENV)/bin/nodemesh
PYTEST_ARGS ?=
# The packages: the core (contracts + domain), the services, and the tools built on them.
SRC   := nodemesh services meshctl localcluster conformance echoserver validation testkit cni

.DEFAULT_GOAL := help

##@ The two commands

demo: install ## Bring the mesh up on this machine (embedded NATS, 2 nodes, demo workloads) and say what to try
	$(NM) up --nodes 2 --manifests examples/demo
	@echo
	@echo "  nodemesh is up. Try:"
	@echo "    $(NM) status"
	@echo "    $(NM) get pods -A"
	@echo "    curl http://127.0.100.1:8080/a      # through the Gateway (address from the LB pool)"
	@echo "    $(NM) exec <echo-a pod> -n demo -- curl -s http://echo-b.demo/   # a Service by name, from a pod"
	@echo "    $(NM) observe --last 20"
	@echo "    $(NM) down"

test: install ## Run the whole test suite (privileged tests included: run as root)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

##@ Development

install: $(VENV)/.installed ## Install system packages, kernel headers for BCC, and the venv (idempotent)

# The venv holds exactly what pyproject.toml declares, whatever Python packages Debian has installed:
# it is made WITHOUT --system-site-packages, because with Debian's site-packages visible pip takes e.g.
# Debian's requests 2.28 as satisfying the kubernetes client and installs only a newer urllib3 next to
# it, and the suite fails at import (issue #17). The one package from Debian is BCC's bindings
# (python3-bpfcc: tied to this release's libbcc, not on PyPI). Only that package directory is linked
# into the venv; bcc imports nothing but the standard library and loads libbcc.so through ctypes.
# A venv made the old way (pyvenv.cfg says include-system-site-packages = true) forces a rebuild.
# The project is installed editable in compat mode (a plain path entry in a .pth), not through
# setuptools' import-hook finder, whose own imports cost every nodemesh process (the CLI included)
# 15-40 ms at start.
SYSTEM_SITE_VENV := $(shell grep -qsiE '^include-system-site-packages *= *true' $(VENV)/pyvenv.cfg && echo yes)

$(VENV)/.installed: pyproject.toml scripts/install-system.sh $(if $(SYSTEM_SITE_VENV),FORCE)
	bash scripts/install-system.sh
	@if grep -qsiE '^include-system-site-packages *= *true' $(VENV)/pyvenv.cfg; then \
	  echo "install: $(VENV) sees Debian's site-packages (--system-site-packages); recreating it"; \
	  rm -rf $(VENV); \
	fi
	test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	bcc="$$(/usr/bin/python3 -I -c 'import importlib.util as u; print(u.find_spec("bcc").submodule_search_locations[0])')" && \
	  site="$$($(PY) -I -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" && \
	  ln -sfn "$$bcc" "$$site/bcc"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	$(PY) -c 'import bcc, nats, envoy.config.listener.v3.listener_pb2, spiffe' # fail early if a component is missing
	touch $@

check: install ## Lint, type-check and check the layering contract (import-linter)
	$(VENV)/bin/ruff check $(SRC) tests bench
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

fmt: install ## Format the code
	$(VENV)/bin/ruff format $(SRC) tests bench
	$(VENV)/bin/ruff check --fix $(SRC) tests bench

compose: install ## Regenerate deploy/compose/compose.yaml and nats.conf from the process table and the cells
	$(PY) -m localcluster.compose > deploy/compose/compose.yaml
	$(PY) -m localcluster.deploygen compose-nats-conf > deploy/compose/nats.conf

down: ## Stop a mesh started with `make demo`
	-$(NM) down

conformance: install ## Run the 60 Gateway API conformance cases (translator + real Envoy + echo pods; root)
	$(PY) -m conformance --report docs/conformance.md --conformance-report docs/conformance-report.yaml

conformance-cluster: install ## The conformance cases against a full local cluster (nodemesh up; root)
	D=$$(mktemp -d) && $(NM) up --data-dir $$D --nodes 2 && $(PY) -m conformance --mode cluster --data-dir $$D; \
	rc=$$?; $(NM) down --data-dir $$D; exit $$rc

bench: install ## Run every benchmark (interleaved A/B, as root); then update bench/*/RESULTS.md and `make bench-doc`
	$(PY) -m bench.datapath --reps 5 --seconds 3
	$(PY) -m bench.policy
	$(PY) -m bench.identity --sets 3000 --rounds 3 --pods 300 --csrs 300
	$(PY) -m bench.auth --pairs 100 --first-connection 20
	$(PY) -m bench.xds
	$(PY) -m bench.l7policy
	$(PY) -m bench.accesslog
	$(PY) -m bench.lb --services 1000 --backends 10 --changes 300
	$(PY) -m bench.dns
	$(PY) -m bench.services --reps 5 --conns 2000
	$(PY) -m bench.footprint --pods 100 --identities 10000 --traffic-seconds 8 --settle 8
	$(PY) -m bench.cli --rounds 12

bench-doc: ## Rebuild docs/benchmarks.md from bench/*/RESULTS.md
	python3 scripts/collect-benchmarks.py

help: ## This help
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2} /^##@/ {printf "\n%s\n", substr($$0, 5)}' $(MAKEFILE_LIST)

FORCE:

.PHONY: demo test install check fmt compose down conformance conformance-cluster bench bench-doc help
