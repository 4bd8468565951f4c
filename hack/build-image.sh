#!/usr/bin/env bash
# Builds the operator image without a container daemon (make image), the same image
# the Dockerfile makes for users with Docker: Debian bookworm + Debian's python3, the
# project installed with pip (a wheel of this work tree), non-root uid 65532,
# ENTRYPOINT pitstop, CMD run, bytecode precompiled (runs with a read-only root).
#
#   1. a minbase rootfs with python3 from debootstrap, cached in
#      $PITSTOP_CACHE/rootfs/<suite>-python3.tar (keyed by suite);
#   2. a wheel of the work tree; pip installs it and exactly the dependencies of
#      requirements.lock, every file checked against the lock's hashes;
#   3. hack/image.sh packs it as an OCI archive (umoci) into build/, and beside it
#      build/pitstop-<tag>.cdx.json, a CycloneDX SBOM of the image's Python
#      environment (cyclonedx-py, from the dev venv), and build/pitstop-<tag>.debs,
#      the Debian packages of the rootfs with their versions;
#   4. it is imported into the real nodes of the running local cluster, if any.
#
# The base is Debian's archive, not a registry image: it is pinned by the suite
# (bookworm), the packages debootstrap installs, and the versions recorded in the
# .debs file (Debian keeps one version per package in a suite: a point release or
# a security update changes them, and the next build's .debs shows it). The rootfs
# cache is per machine; delete it to take the suite's current packages.
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
sbom="$repo/build/pitstop-$tag.cdx.json"
debs="$repo/build/pitstop-$tag.debs"
import_it() {
  if compgen -G "$dir/real/*/containerd.sock" >/dev/null; then
    "$here/image.sh" import "$out" pitstop "$dir"
  else
    log "no local cluster with real nodes in $dir: import later with hack/image.sh import $out pitstop"
  fi
  echo "localhost/pitstop:$tag"
}
# A clean work tree's image is kept per commit: building it again gives the same.
if [[ $tag != *-dirty && -f $out && -f $sbom && -z ${PITSTOP_IMAGE_REBUILD:-} ]]; then
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
log "installing pitstop $version and the dependencies of requirements.lock into the rootfs"
# setuptools reuses build/lib: clear it, or modules since moved or deleted ship too.
rm -rf "$repo/build/lib" "$repo/build/bdist."*
python3 -m pip wheel -q --no-deps -w "$work/wheel" "$repo" >&2
wheel="$(echo "$work"/wheel/*.whl)"
# One install, every requirement hashed: the wheel just built, and the lock. pip
# refuses a dependency the lock lacks, so a stale lock fails here, not in the image.
{
  echo "pitstop @ file://$wheel --hash=sha256:$(sha256sum "$wheel" | cut -d' ' -f1)"
  cat "$repo/requirements.lock"
} >"$work/requirements.txt"
site="$root/usr/local/lib/python3.11/dist-packages"   # on Debian python3's sys.path
# --no-warn-conflicts: pip judges --target against the build host's own packages,
# which are no part of the image (the lock and its hashes are what is checked).
python3 -m pip install -q --no-compile --no-warn-script-location --no-warn-conflicts --disable-pip-version-check \
  --require-hashes --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --target "$site" -r "$work/requirements.txt" >&2
rm -rf "$site/bin"   # scripts with the build host's interpreter; ours follow
# Where the wheel lay on the build host (a temporary path) is no part of the image.
rm -f "$site"/pitstop-*.dist-info/direct_url.json
sed -i '/direct_url\.json,/d' "$site"/pitstop-*.dist-info/RECORD
for cmd in pitstop kubectl-pitstop; do
  # the console scripts of pyproject.toml ([project.scripts]: pitstop.cli.main:main)
  printf '#!/usr/bin/python3\nimport sys\nfrom pitstop.cli.main import main\nsys.exit(main())\n' >"$root/usr/local/bin/$cmd"
  chmod 755 "$root/usr/local/bin/$cmd"
done
# Bytecode now, so the read-only root filesystem never needs a write.
chroot "$root" /usr/bin/python3 -m compileall -q -j 0 /usr/lib/python3.11 /usr/local/lib/python3.11 >/dev/null || true
# What the image holds: its Debian packages, and its Python environment as an SBOM
# (cyclonedx-py reads the distributions on the rootfs python3's sys.path, mapped
# onto this host; reproducible: timestamped with the commit's time).
chroot "$root" dpkg-query -W -f '${Package}=${Version}\n' | sort >"$work/debs"
printf '#!/bin/bash\nexec chroot %q /usr/bin/python3 -c %q\n' "$root" \
  "import json,sys; json.dump(['$root' + p for p in sys.path if p], sys.stdout)" >"$work/python"
chmod 755 "$work/python"
make -C "$repo" -s venv >&2   # cyclonedx-bom is a dev tool (requirements-dev.lock)
SOURCE_DATE_EPOCH="$(git -C "$repo" log -1 --format=%ct)" "$repo/.venv/bin/cyclonedx-py" \
  environment --pyproject "$repo/pyproject.toml" --output-reproducible --of JSON \
  -o "$work/sbom.json" "$work/python" >&2
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
mv "$work/sbom.json" "$sbom"
mv "$work/debs" "$debs"
count="$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["components"]))' "$sbom")"
log "SBOM: $sbom ($count components); Debian packages: $debs"
import_it
