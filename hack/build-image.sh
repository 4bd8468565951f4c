#!/usr/bin/env bash
# Builds the operator image without a container daemon (make image), the same image
# the Dockerfile makes for users with Docker: Debian bookworm + Debian's python3, the
# project installed with pip (a wheel of this work tree), non-root uid 65532,
# ENTRYPOINT pitstop, CMD run, bytecode precompiled (runs with a read-only root).
#
#   1. a minbase rootfs with python3 from debootstrap, cached in
#      $PITSTOP_CACHE/rootfs/<suite>-python3.tar (keyed by suite);
#   2. a wheel of the work tree; pip installs it and its dependencies into the rootfs;
#   3. hack/image.sh packs it as an OCI archive (umoci) into build/;
#   4. it is imported into the real nodes of the running local cluster, if any.
#
# Prints the image reference (localhost/pitstop:<tag>). PITSTOP_IMAGE_TAG sets the
# tag (default: the work tree's short commit, +"-dirty" when it has changes); the
# image of a clean commit is reused when it exists (PITSTOP_IMAGE_REBUILD=1 rebuilds).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${PITSTOP_CACHE:-$HOME/.cache/pitstop}"
dir="${PITSTOP_CLUSTER_DIR:-$repo/.cluster}"
suite=bookworm
mirror="${PITSTOP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
log() { echo "[image] $*" >&2; }
die() { echo "[image] error: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "building the rootfs needs root (debootstrap, chroot); or use the Dockerfile"
"$here/install-deps.sh" >&2 || die "the image build needs these packages"

tag="${PITSTOP_IMAGE_TAG:-$(git -C "$repo" rev-parse --short HEAD)}"
if [[ -z ${PITSTOP_IMAGE_TAG:-} ]] && [[ -n $(git -C "$repo" status --porcelain) ]]; then tag+="-dirty"; fi
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml")"

out="$repo/build/pitstop-$tag.oci.tar"
import_it() {
  if compgen -G "$dir/real/*/containerd.sock" >/dev/null; then
    "$here/image.sh" import "$out" pitstop "$dir"
  else
    log "no local cluster with real nodes in $dir: import later with hack/image.sh import $out pitstop"
  fi
  echo "localhost/pitstop:$tag"
}
# A clean work tree's image is kept per commit: building it again gives the same.
if [[ $tag != *-dirty && -f $out && -z ${PITSTOP_IMAGE_REBUILD:-} ]]; then
  log "$out is current (PITSTOP_IMAGE_REBUILD=1 rebuilds it)"
  import_it
  exit 0
fi

base="$cache/rootfs/$suite-python3.tar"
if [[ ! -f $base ]]; then
  log "debootstrap $suite minbase + python3 (once per machine; cached in $base)"
  tmp="$(mktemp -d)"
  debootstrap --variant=minbase --include=python3-minimal,libpython3.11-stdlib,ca-certificates \
    "$suite" "$tmp/root" "$mirror" >"$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }
  mkdir -p "$(dirname "$base")"
  tar -C "$tmp/root" -cf "$base.tmp" . && mv "$base.tmp" "$base"
  rm -rf "$tmp"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir "$root" && tar -C "$root" -xf "$base"
log "installing pitstop $version and its dependencies into the rootfs"
# setuptools reuses build/lib: clear it, or modules since moved or deleted ship too.
rm -rf "$repo/build/lib" "$repo/build/bdist."*
python3 -m pip wheel -q --no-deps -w "$work/wheel" "$repo" >&2
site="$root/usr/local/lib/python3.11/dist-packages"   # on Debian python3's sys.path
python3 -m pip install -q --no-compile --no-warn-script-location --disable-pip-version-check \
  --only-binary=:all: --python-version 3.11 --implementation cp --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --target "$site" "$work"/wheel/*.whl >&2
rm -rf "$site/bin"   # scripts with the build host's interpreter; ours follow
for cmd in pitstop kubectl-pitstop; do
  # the console scripts of pyproject.toml ([project.scripts]: pitstop.cli.main:main)
  printf '#!/usr/bin/python3\nimport sys\nfrom pitstop.cli.main import main\nsys.exit(main())\n' >"$root/usr/local/bin/$cmd"
  chmod 755 "$root/usr/local/bin/$cmd"
done
# Bytecode now, so the read-only root filesystem never needs a write.
chroot "$root" /usr/bin/python3 -m compileall -q -j 0 /usr/lib/python3.11 /usr/local/lib/python3.11 >/dev/null || true
# The user, and no package manager state or docs in the image.
echo 'pitstop:x:65532:65532:pitstop:/nonexistent:/usr/sbin/nologin' >>"$root/etc/passwd"
echo 'pitstop:x:65532:' >>"$root/etc/group"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/* \
  "$root"/usr/share/locale/*

revision="$(git -C "$repo" rev-parse HEAD)"
"$here/image.sh" build --rootfs "$root" --name pitstop --tag "$tag" --out "$out" \
  --entrypoint pitstop --cmd run --user 65532:65532 --workdir /tmp \
  --env PATH=/usr/local/bin:/usr/bin:/bin --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1 \
  --label org.opencontainers.image.title=pitstop \
  --label "org.opencontainers.image.description=Kubernetes operator that repairs faulty FaaS nodes" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --label org.opencontainers.image.licenses=Apache-2.0
import_it
