#!/usr/bin/env bash
# Builds the local control plane from published Go modules into a cache outside
# the work tree, keyed by version, so every clone (and CI) on this machine reuses it.
# No container registry and no binary download is needed: only the Go module proxy.
#
# Also builds a kubectl of the same release, so no kubectl needs to be installed,
# the kubelet for the real nodes (hack/real-node.sh), and helm for the chart
# (charts/pitstop: `make lint`, the in-cluster tier); for `make e2e-kind`, kubeadm and
# kube-proxy with the rest of Kubernetes, kind, and CoreDNS (its node image built here).
# Prints the bin directory. Idempotent: a component whose binaries exist is skipped.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${PITSTOP_CACHE:-$HOME/.cache/pitstop}"
bin="$cache/bin"
mkdir -p "$bin" "$cache/build"
log() { echo "[build] $*" >&2; }
# helm alone (`make lint`, `make unit`) and already built: no need to wait for the lock
# a control plane build may hold for tens of minutes.
if [[ ${1:-} == helm && -x $bin/helm-$HELM_VERSION/helm ]]; then echo "$bin"; exit 0; fi
# One build at a time per cache: `make test` and `make demo` (or two clones) started
# together would otherwise build into the same .tmp folders; the second waits, then
# finds the binaries and skips.
exec 9>"$cache/build.lock"
flock 9

# Kubernetes' staging modules, replaced by their published twins v0.<minor>.<patch>.
STAGING=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
  cloud-provider cluster-bootstrap code-generator component-base component-helpers
  controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
  endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
  kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
  sample-apiserver sample-cli-plugin sample-controller)

build_kube() {
  local out="$bin/kube-$KUBE_VERSION"
  # Only the missing binaries are built (a cache from before the kubelet was added
  # gets just the kubelet; the shared Go build cache makes that about 25 s).
  local want=() b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kubeadm kube-proxy; do
    [[ -x $out/$b ]] || want+=("k8s.io/kubernetes/cmd/$b")
  done
  ((${#want[@]})) || return 0
  log "building Kubernetes $KUBE_VERSION: ${want[*]##*/} (cold: tens of minutes on 2 cores)"
  local dir="$cache/build/kube-$KUBE_VERSION" staging_v="v0.${KUBE_VERSION#v1.}"
  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  mkdir -p "$dir"
  {
    echo "module pitstop.dev/kubebuild"
    echo
    echo "go 1.25.0"
    echo
    echo "godebug default=go1.25"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    for m in "${STAGING[@]}"; do echo "	k8s.io/$m => k8s.io/$m $staging_v"; done
    echo ")"
  } >"$dir/go.mod"
  cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
  local ver="k8s.io/component-base/version"
  local ldflags="-s -w -X $ver.gitVersion=$KUBE_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
  (cd "$dir" && GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
   cd "$dir" && GOFLAGS=-mod=mod go get "k8s.io/kubernetes@$KUBE_VERSION" >&2
   rm -rf "$out.tmp" && mkdir -p "$out.tmp"
   cd "$dir" && GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" "${want[@]}" >&2)
  mkdir -p "$out" && mv "$out.tmp"/* "$out/" && rmdir "$out.tmp"
}

build_etcd() {
  local out="$bin/etcd-$ETCD_VERSION"
  if [[ -x $out/etcd ]]; then return; fi
  log "building etcd $ETCD_VERSION"
  local dir="$cache/build/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  printf 'module pitstop.dev/etcdbuild\n\ngo 1.25.0\n' >"$dir/go.mod"
  cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  (cd "$dir" && GOFLAGS=-mod=mod go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
   mkdir -p "$out.tmp"
   cd "$dir" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3 >&2)
  rm -rf "$out" && mv "$out.tmp" "$out"
}

build_kwok() {
  local out="$bin/kwok-$KWOK_VERSION"
  if [[ -x $out/kwok ]]; then return; fi
  log "building kwok $KWOK_VERSION"
  mkdir -p "$out.tmp"
  GOBIN="$out.tmp" GOFLAGS=-trimpath go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2
  rm -rf "$out" && mv "$out.tmp" "$out"
}

# kind (make e2e-kind) and CoreDNS (the DNS of the node image hack/kind-node-image.sh
# builds where no registry answers): static Go binaries, each in bin/<name>-<version>.
go_binary() {
  local name=$1 version=$2 module=$3
  local out="$bin/$name-$version"
  if [[ -x $out/$name ]]; then return; fi
  log "building $name $version"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  GOBIN="$out.tmp" CGO_ENABLED=0 GOFLAGS=-trimpath go install -ldflags "-s -w" "$module@$version" >&2
  rm -rf "$out" && mv "$out.tmp" "$out"
}
build_kind() { go_binary kind "$KIND_VERSION" sigs.k8s.io/kind; }
build_coredns() { go_binary coredns "$COREDNS_VERSION" github.com/coredns/coredns; }

build_helm() {
  local out="$bin/helm-$HELM_VERSION"
  if [[ -x $out/helm ]]; then return; fi
  log "building helm $HELM_VERSION"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  # helm reads its version from these (`helm version`); -trimpath drops the VCS data.
  local ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
  GOBIN="$out.tmp" GOFLAGS=-trimpath go install -ldflags "$ldflags" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
  rm -rf "$out" && mv "$out.tmp" "$out"
}

case "${1:-all}" in
  etcd) build_etcd ;;
  kwok) build_kwok ;;
  kube) build_kube ;;
  helm) build_helm ;;
  kind) build_kind ;;
  coredns) build_coredns ;;
  all) build_etcd; build_kwok; build_kube; build_helm ;;
  *) echo "usage: $0 [all|etcd|kwok|kube|helm|kind|coredns]" >&2; exit 2 ;;
esac
echo "$bin"
