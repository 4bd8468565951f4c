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
# The image tool is expected at hack/image.sh with this interface:
#
#   hack/image.sh --rootfs DIR --name REF --entrypoint PATH
#                 [--user UID:GID] [--env KEY=VALUE]... [--expose PORT/PROTO]...
#
#   It builds an OCI image whose single layer is DIR (umoci: init, new, unpack
#   --rootless, copy DIR in, repack, config --config.entrypoint/--config.user/
#   --config.env/--config.exposedports, gc), writes it as an OCI archive under
#   the build folder, prints the archive's path on stdout, and imports it into
#   the local real nodes' containerd as REF (ctr -n k8s.io images import
#   --base-name) when such nodes run. It exits non-zero when any step fails.
#
# Without hack/image.sh this script stops after the rootfs: exit 0 with
# --rootfs-only, else exit 3 saying so.
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
tool="$repo/hack/image.sh"
if [[ ! -x "$tool" ]]; then
  echo "build-image: $tool (the image tool) is not here yet; the rootfs is ready at $rootfs" >&2
  exit 3
fi
exec "$tool" --rootfs "$rootfs" --name "$image" --entrypoint /function \
  --user 65532:65532 --expose 8080/tcp --expose 9100/tcp
