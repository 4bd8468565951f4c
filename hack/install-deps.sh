#!/usr/bin/env bash
# Installs the Debian packages the real nodes and the image build need:
#   containerd, runc, containernetworking-plugins (bridge, host-local, loopback),
#   umoci (OCI images without a daemon), busybox-static (a shell and wget in test
#   images), debootstrap (the Debian rootfs of the operator image), gcc and
#   libc6-dev (the static pause program), iproute2 and iptables.
# Nothing is started or enabled: hack/real-node.sh runs its own containerd.
#
#   hack/install-deps.sh          install what is missing (apt-get update once first)
#   hack/install-deps.sh --check  exit 1 listing what is missing, install nothing
set -euo pipefail
log() { echo "[deps] $*" >&2; }

# command or file that proves the package is there : Debian package
NEEDS=(
  containerd:containerd
  runc:runc
  /usr/lib/cni/bridge:containernetworking-plugins
  umoci:umoci
  /bin/busybox:busybox-static
  debootstrap:debootstrap
  gcc:gcc
  /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev
  ip:iproute2
  iptables:iptables
  curl:curl
  openssl:openssl
)

missing=()
for n in "${NEEDS[@]}"; do
  probe="${n%%:*}" pkg="${n#*:}"
  if [[ $probe == /* ]]; then [[ -e $probe ]] && continue
  else command -v "$probe" >/dev/null 2>&1 && continue; fi
  missing+=("$pkg")
done
((${#missing[@]})) || exit 0
if [[ ${1:-} == --check ]]; then log "missing: ${missing[*]}"; exit 1; fi

if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  log "error: these Debian packages are needed and cannot be installed here"
  log "       (apt-get needs root on Debian/Ubuntu): ${missing[*]}"
  log "       install them (sudo apt-get install ${missing[*]}), or run with"
  log "       PITSTOP_REAL_NODES=0 to start the control plane with kwok nodes only"
  exit 1
fi
log "installing: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
