#!/usr/bin/env bash
# The in-cluster tier against a kind cluster, for anyone with Docker: builds both
# images with Docker, creates a kind cluster (two workers: the function moves from
# the node under repair to the other), loads the images, and runs tests/incluster
# with E2E_KUBECONFIG. The tests install pitstop themselves (the chart with helm,
# and manifests/ with kubectl apply -k; only the image overridden; helm is the one
# `make helm` builds). Tests that need this machine to see the nodes' processes or reach
# pod addresses (the SIGKILL of the leader's container, the function under load)
# skip themselves there and say so.
#
#   make e2e-kind            KIND_CLUSTER=pitstop-e2e  KEEP=1 keeps the cluster
#
# It cannot run on the machines this project is built on (no Docker engine there);
# the same tier runs on the local control plane in `make test`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
name="${KIND_CLUSTER:-pitstop-e2e}"
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is required" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "e2e-kind: no Docker engine answers" >&2; exit 1; }

docker build -t localhost/pitstop:dev "$repo"
docker build -t localhost/pitstop-function:dev "$repo/function"

kubeconfig="$(mktemp -t pitstop-kind-XXXXXX.kubeconfig)"
cleanup() { [[ -n ${KEEP:-} ]] || kind delete cluster --name "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
kind create cluster --name "$name" --kubeconfig "$kubeconfig" --wait 120s --config - <<'KIND'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
KIND
kind load docker-image --name "$name" localhost/pitstop:dev localhost/pitstop-function:dev

E2E_KUBECONFIG="$kubeconfig" PITSTOP_IMAGE=localhost/pitstop:dev \
  "$repo/.venv/bin/pytest" -q "$repo/tests/incluster"
