#!/usr/bin/env bash
# Builds Knative Serving's queue-proxy (knative.dev/serving/cmd/queue) from the Go
# module proxy into the cache beside the control plane (hack/build-control-plane.sh),
# keyed by version, for the real-node tier's Knative test
# (tests/e2e/test_knative_real_nodes.py). No container registry, no binary download.
#
# Why KNATIVE_SERVING_VERSION is not the newest release: the proxy serves
# knative.dev/serving v0.51.0, but refuses (403) the knative.dev/pkg, networking and
# caching pseudo-versions it requires; v0.42.2's dependencies are all served
# (docs/runtime-integration.md, "Knative Serving").
# Prints the binary's path. Idempotent: an existing binary is reused.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${PITSTOP_CACHE:-$HOME/.cache/pitstop}"
out="$cache/bin/knative-serving-$KNATIVE_SERVING_VERSION"
if [[ -x $out/queue ]]; then echo "$out/queue"; exit 0; fi
mkdir -p "$cache/build"
exec 9>"$cache/build-knative.lock"
flock 9
if [[ -x $out/queue ]]; then echo "$out/queue"; exit 0; fi
echo "[build] building Knative Serving's queue-proxy $KNATIVE_SERVING_VERSION" >&2
dir="$cache/build/knative-serving-$KNATIVE_SERVING_VERSION"
mkdir -p "$dir"
# A wrapper module: serving's own go.mod has a replace directive (gorilla/websocket),
# which `go install pkg@version` refuses; the wrapper repeats it.
cat >"$dir/go.mod" <<GOMOD
module pitstop.dev/knativebuild

go 1.22

require knative.dev/serving $KNATIVE_SERVING_VERSION

replace github.com/gorilla/websocket => github.com/gorilla/websocket v1.5.0
GOMOD
cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import _ "knative.dev/serving/cmd/queue"
GO
(cd "$dir" && GOFLAGS=-mod=mod go get "knative.dev/serving@$KNATIVE_SERVING_VERSION" >&2
 rm -rf "$out.tmp" && mkdir -p "$out.tmp"
 cd "$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" \
   -o "$out.tmp/queue" knative.dev/serving/cmd/queue >&2)
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out/queue"
