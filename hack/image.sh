#!/usr/bin/env bash
# OCI images without a daemon or a registry: a root filesystem folder and a config
# become an OCI image archive (umoci), which is imported into the containerd of a
# local cluster's real nodes. Generic: used for the pause image, the operator image
# (make image), test images, and a static function binary alike.
#
#   hack/image.sh build --rootfs DIR --name NAME --tag TAG --out FILE.tar \
#       [--entrypoint ARG]... [--cmd ARG]... [--env K=V]... [--user UID[:GID]] \
#       [--workdir DIR] [--label K=V]...
#       Packs DIR (as one layer, owners kept) into FILE.tar, tagged TAG.
#   hack/image.sh import FILE.tar NAME [CLUSTER_DIR]
#       Imports it as localhost/NAME:TAG into every real node of the cluster
#       (default $PITSTOP_CLUSTER_DIR or <repo>/.cluster); pods use
#       image: localhost/NAME:TAG with imagePullPolicy: Never or IfNotPresent.
#   hack/image.sh pause
#       Builds (cached) the static pause image from hack/pause.c; prints its tar path.
#
# A static binary needs only itself in DIR (plus /etc/passwd if it runs as a user).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${PITSTOP_CACHE:-$HOME/.cache/pitstop}"
log() { echo "[image] $*" >&2; }
die() { echo "[image] error: $*" >&2; exit 1; }
PAUSE_TAG=1

build() {
  local rootfs="" name="" tag="" out="" cfg=()
  while (($#)); do
    case $1 in
      --rootfs) rootfs=$2 ;; --name) name=$2 ;; --tag) tag=$2 ;; --out) out=$2 ;;
      --entrypoint) cfg+=(--config.entrypoint "$2") ;;
      --cmd) cfg+=(--config.cmd "$2") ;;
      --env) cfg+=(--config.env "$2") ;;
      --user) cfg+=(--config.user "$2") ;;
      --workdir) cfg+=(--config.workingdir "$2") ;;
      --label) cfg+=(--config.label "$2") ;;
      *) die "unknown option $1" ;;
    esac
    shift 2
  done
  [[ -d $rootfs && -n $name && -n $tag && -n $out ]] || die "build needs --rootfs DIR --name --tag --out"
  command -v umoci >/dev/null || die "umoci is missing: run hack/install-deps.sh"
  local work; work="$(mktemp -d)"
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:$tag"
  umoci insert --image "$work/oci:$tag" "$rootfs" /
  umoci config --image "$work/oci:$tag" --os linux --architecture amd64 \
    --author pitstop --config.label "org.opencontainers.image.title=$name" "${cfg[@]}"
  umoci gc --layout "$work/oci"
  mkdir -p "$(dirname "$out")"
  tar -C "$work/oci" -cf "$out.tmp" . && mv "$out.tmp" "$out"
  rm -rf "$work"
  log "built $name:$tag -> $out ($(du -h "$out" | cut -f1))"
}

import() {
  local tar=$1 name=$2 dir="${3:-${PITSTOP_CLUSTER_DIR:-$repo/.cluster}}" sock n=0
  [[ -f $tar ]] || die "no image archive $tar"
  for sock in "$dir"/real/*/containerd.sock; do
    [[ -S $sock ]] || continue
    ctr --address "$sock" -n k8s.io images import --base-name "localhost/$name" "$tar" >/dev/null
    n=$((n + 1))
  done
  ((n)) || die "no real node in $dir (start it with PITSTOP_REAL_NODES>=1)"
  log "imported localhost/$name into $n real node(s) of $dir"
}

pause() {
  local sum out
  sum="$(sha256sum "$here/pause.c" | cut -c1-12)"
  out="$cache/images/pause-$sum.tar"
  if [[ ! -f $out ]]; then
    command -v gcc >/dev/null || die "gcc is missing: run hack/install-deps.sh"
    local root; root="$(mktemp -d)"
    gcc -Os -static -s -o "$root/pause" "$here/pause.c"
    build --rootfs "$root" --name pitstop-pause --tag "$PAUSE_TAG" --out "$out" --entrypoint /pause
    rm -rf "$root"
  fi
  echo "$out"
}

case "${1:-}" in
  build) shift; build "$@" ;;
  import) shift; import "$@" ;;
  pause) pause ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
