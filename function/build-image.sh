#!/usr/bin/env bash
# The function runtime's image: a FROM-scratch rootfs holding only the static
# binary, a /tmp, and /etc/passwd + /etc/group naming the non-root user, handed
# to the project's generic image tool.
#
#   function/build-image.sh [--rootfs-only] [--rootfs DIR]
#
# env: FUNCTION_BIN (default function/bin/function: `make function` builds it),
#      IMAGE (default localhost/pitstop-function:dev).
#
# It packs the rootfs with hack/image.sh (umoci) into build/NAME-TAG.oci.tar and
# imports it into the real nodes of the local cluster ($PITSTOP_CLUSTER_DIR, default
# .cluster) when one runs; prints the image reference.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
bin="${FUNCTION_BIN:-$here/bin/function}"
image="${IMAGE:-localhost/pitstop-function:dev}"
rootfs="$here/bin/rootfs"
rootfs_only=0
while (($#)); do
  case "$1" in
    --rootfs-only) rootfs_only=1 ;;
    --rootfs) rootfs="$2"; shift ;;
    *) echo "usage: $0 [--rootfs-only] [--rootfs DIR]" >&2; exit 2 ;;
  esac
  shift
done

if [[ ! -x "$bin" ]]; then
  echo "build-image: no binary at $bin (run: make function)" >&2
  exit 2
fi
if [[ "$(head -c 4 "$bin" | od -An -c | tr -d ' ')" != '177ELF' ]]; then
  echo "build-image: $bin is not an ELF binary" >&2
  exit 2
fi

rm -rf "$rootfs"
mkdir -p "$rootfs/tmp" "$rootfs/etc"
chmod 1777 "$rootfs/tmp"
install -m 0755 "$bin" "$rootfs/function"
echo 'nonroot:x:65532:65532:nonroot:/tmp:/function' >"$rootfs/etc/passwd"
echo 'nonroot:x:65532:' >"$rootfs/etc/group"
echo "build-image: rootfs at $rootfs ($(du -sh "$rootfs" | cut -f1))" >&2

if ((rootfs_only)); then
  exit 0
fi
name="${image%:*}"; name="${name#localhost/}"; tag="${image##*:}"
out="$repo/build/$name-$tag.oci.tar"
"$repo/hack/image.sh" build --rootfs "$rootfs" --name "$name" --tag "$tag" --out "$out" \
  --entrypoint /function --user 65532:65532 \
  --label org.opencontainers.image.description="pitstop's own FaaS function runtime"
cluster="${PITSTOP_CLUSTER_DIR:-$repo/.cluster}"
if compgen -G "$cluster/real/*/containerd.sock" >/dev/null; then
  "$repo/hack/image.sh" import "$out" "$name" "$cluster"
else
  echo "build-image: no local cluster with real nodes in $cluster:" \
    "import later with hack/image.sh import $out $name" >&2
fi
echo "$image"
