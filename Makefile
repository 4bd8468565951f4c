# pitstop — every entry point a developer or CI needs.
# `make test` and (later) `make demo` set up everything themselves.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
include hack/versions.env
PITSTOP_CACHE ?= $(HOME)/.cache/pitstop
# The kubectl built with the control plane comes first: same release as the server;
# then the helm built beside it (hack/build-control-plane.sh helm).
export PATH := $(CURDIR)/$(BIN):$(PITSTOP_CACHE)/bin/kube-$(KUBE_VERSION):$(PITSTOP_CACHE)/bin/helm-$(HELM_VERSION):$(PATH)
CHART := charts/pitstop

.PHONY: help venv lock build helm knative deps image monitoring e2e-chaos e2e-checkers e2e-incluster e2e-kind cluster-up cluster-down kubeconfig crds crds-check lint unit sim sim-long e2e test bench bench-curve bench-drain bench-gate bench-policy bench-scale bench-sources demo clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# Only what requirements-dev.lock names, each file checked against its hash; then
# pitstop itself, without resolving anything more.
$(BIN)/.installed: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(BIN)/.installed ## create the virtualenv in .venv with the dev tools (from requirements-dev.lock)

UV_VERSION := 0.13.8
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes -q
lock: ## regenerate requirements.lock and requirements-dev.lock (hashes) from pyproject.toml
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	build/lock-venv/bin/uv pip compile pyproject.toml $(LOCK_FLAGS) -o requirements.lock
	build/lock-venv/bin/uv pip compile pyproject.toml --extra dev -c requirements.lock \
	  $(LOCK_FLAGS) -o requirements-dev.lock

build: ## build (or reuse from the cache) etcd, Kubernetes (with the kubelet), kwok and helm
	hack/build-control-plane.sh >/dev/null

helm: ## build (or reuse from the cache) helm, for the chart in charts/pitstop
	hack/build-control-plane.sh helm >/dev/null

knative: ## build (or reuse from the cache) Knative Serving's queue-proxy, for the real-node tier
	hack/build-knative.sh >/dev/null

deps: ## install the Debian packages of the real nodes and the image build (root)
	hack/install-deps.sh

image: ## build the operator image (and its SBOM) without a daemon; import it into the local cluster
	hack/build-image.sh

cluster-up: ## start the local control plane, PITSTOP_REAL_NODES (1) real nodes (idempotent)
	hack/cluster.sh up

cluster-down: ## stop the local control plane and delete its state
	hack/cluster.sh down

kubeconfig: ## print the admin kubeconfig path of the running cluster
	@hack/cluster.sh kubeconfig

crds: venv ## regenerate crds/ and the chart's copy from the pydantic models
	$(BIN)/python -m pitstop.crdgen crds/
	$(BIN)/python -m pitstop.crdgen --chart $(CHART)/crds/

crds-check: venv ## fail when crds/ or the chart's copy is stale
	$(BIN)/python -m pitstop.crdgen --check crds/
	$(BIN)/python -m pitstop.crdgen --check --chart $(CHART)/crds/

# The chart rendered with its defaults and with every optional object on.
CHART_FLAGS := serviceMonitor.enabled=true,prometheusRule.enabled=true,dashboard.enabled=true
RULES := $(CHART)/files/pitstop.rules.yaml

lint: venv helm ## ruff, mypy, promtool on the alerting rules, helm lint / helm template of the chart
	$(BIN)/ruff check operator tests hack bench
	$(BIN)/ruff format --check operator tests hack bench
	$(BIN)/mypy
	@command -v promtool >/dev/null || { echo "lint: promtool is missing:" \
	  "apt-get install prometheus (Debian's package has prometheus and promtool)" >&2; exit 1; }
	promtool check rules $(RULES)
	promtool test rules tests/promtool/pitstop.rules.test.yaml
	helm lint --strict $(CHART)
	helm lint --strict $(CHART) --set $(CHART_FLAGS)
	helm template pitstop $(CHART) -n pitstop-system --include-crds >/dev/null
	helm template pitstop $(CHART) -n pitstop-system --set $(CHART_FLAGS) >/dev/null

monitoring: venv ## regenerate manifests/monitoring/ (PrometheusRule, dashboard ConfigMap) from charts/pitstop/files/
	$(BIN)/python hack/monitoring.py

unit: venv helm ## unit tests (no cluster; the chart test needs helm and kubectl)
	$(BIN)/pytest -q tests/unit
	cd function && go test -count=1 ./...

sim: venv ## the deterministic simulation: fixed seeds, >= 50,000 steps, invariants after every step
	$(BIN)/pytest -q tests/sim

SIM_STEPS ?= 1000000
sim-long: venv ## the simulation's long run: fresh seeds until SIM_STEPS (1,000,000) steps ran
	$(BIN)/python -m tests.sim --seed 10000 --steps 5000 --total $(SIM_STEPS)

E2E_WORKERS ?= 2
e2e: venv build knative ## e2e tests, each of E2E_WORKERS (2) on its own fresh local control plane (PITSTOP_KEEP_CLUSTER=1 keeps them)
	$(BIN)/pytest -q $(if $(filter-out 0 1,$(E2E_WORKERS)),-n $(E2E_WORKERS) --dist loadfile) tests/e2e

e2e-chaos: venv build ## chaos soak: 20 repairs / 50 nodes under load, 10 operator SIGKILLs, apiserver+etcd restarts (~5 min; CHAOS_* for the long run)
	$(BIN)/pytest -q tests/chaos

e2e-checkers: venv build ## the real Cluster API MachineHealthCheck drives pitstop (builds its controller once: minutes)
	PITSTOP_REAL_CHECKERS=1 $(BIN)/pytest -q tests/e2e/test_remediation_capi.py

e2e-incluster: venv build ## pitstop installed with helm (and kubectl apply -k) as two Pods on real nodes, a function repaired under load
	$(BIN)/pytest -q tests/incluster

e2e-kind: venv helm ## the in-cluster tier on kind: the Docker that answers, or (root) a dockerd of its own; kind and, without a registry, a node image built here (docs/kind.md)
	hack/e2e-kind.sh

test: lint unit sim e2e e2e-incluster e2e-chaos ## everything CI runs

bench: bench-drain bench-policy bench-sources bench-gate $(if $(BENCH_CURVE),bench-curve) ## all benchmarks, each on its own cluster (BENCH_CURVE=1: and the cost curve, ~45 min more)

BENCH_LOAD ?= 0
bench-drain: venv build ## drain vs kubectl drain (default, tuned QPS) and a bare evictor, no PDB and one 10% PDB; latencies (~15 min); BENCH_LOAD=2: all again beside 2 CPU spinners
	$(BIN)/python -m bench drain --load $(BENCH_LOAD)

bench-sources: venv build ## task sources on a real node: pod writes per task, last task -> eviction (~4 min)
	$(BIN)/python -m bench sources

bench-gate: venv build ## serving gate: pod -> pitstop.dev/serving True at rest, burst of 1,000, takeovers (~6 min; BENCH_GATE_FLAGS=--full: 1,000 nodes / 20,000 pods)
	$(BIN)/python -m bench gate $(BENCH_GATE_FLAGS)

BENCH_NODES ?= 1000
BENCH_PODS ?= 20000
bench-policy: venv build ## BENCH_NODES (1,000) nodes / BENCH_PODS (20,000) pods: RSS, idle CPU, detection, burst, API requests by verb
	$(BIN)/python -m bench policy --nodes $(BENCH_NODES) --pods $(BENCH_PODS)

bench-curve: venv build ## the cost curve: bench-policy at 250, 500, 1,000 and 2,000 nodes (20 pods each), election on, the Deployment's limits; fits and extrapolates to 5,000 nodes (~45 min; BENCH_CURVE_FLAGS=--sizes 250,500)
	$(BIN)/python -m bench curve $(BENCH_CURVE_FLAGS)

bench-scale: venv build ## issue 11's size: bench-policy at 5,000 nodes / 100,000 pods (more than 2 CPUs; see bench/README.md)
	$(BIN)/python -m bench policy --nodes 5000 --pods 100000

demo: venv build ## a fault, and a full repair shown live, on its own local control plane
	$(BIN)/python hack/demo.py

clean: cluster-down ## remove the virtualenv and caches (not the binary cache)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# --- function/: the project's own function runtime (Go, a static binary) ---
.PHONY: function function-image
FUNCTION_GOFLAGS := -trimpath -buildvcs=false -ldflags='-s -w'

function: ## build the function runtime into function/bin/function (static)
	cd function && CGO_ENABLED=0 go build $(FUNCTION_GOFLAGS) -o bin/function .

function-image: function ## the function runtime's image localhost/pitstop-function:dev (needs hack/image.sh)
	function/build-image.sh
