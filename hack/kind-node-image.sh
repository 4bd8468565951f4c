#!/usr/bin/env bash
# A kind node image built here, for machines where no registry answers (kindest/node
# cannot be pulled): hack/e2e-kind.sh uses it only when `docker pull` of the stock
# image fails. Everything in it comes from what the project builds from Go modules
# (hack/build-control-plane.sh: kubelet, kubeadm, kubectl, kube-proxy, the control
# plane, etcd, CoreDNS) and from Debian's archive (systemd, containerd, runc, the CNI
# plugins, iptables), laid out the way kind's own node images are:
#
#   /usr/bin/{kubelet,kubeadm,kubectl}      kind runs kubeadm init/join inside the node
#   /kind/version                           the Kubernetes version kind reads
#   /etc/containerd/config.toml             config version 2: kind reads its snapshotter
#   /etc/systemd/system/kubelet.service(.d) the kubelet as kubeadm configures it
#   /var/lib/containerd                     the control-plane, kube-proxy, etcd, CoreDNS
#                                           and pause images, already in containerd's
#                                           k8s.io namespace under kubeadm's names
#   /usr/local/bin/entrypoint, /sbin/init   PID 1 is systemd, after the entrypoint
#
# What differs from kindest/node: no kindnet (not on the Go module proxy; e2e-kind.sh
# sets disableDefaultCNI and wires bridge + host-local per node itself), no local-path
# storage provisioner, no crictl, containerd 1.6 (Debian) in place of 2.x, and etcd and
# CoreDNS at the project's versions (the kind config sets kubeadm's imageTag for them).
# The entrypoint is this project's own: shared mounts, a fresh machine-id, the
# kubelet's cgroup root on cgroup v1, and restrict_oom_score_adj where this kernel
# refuses negative oom_score_adj (a sandbox without CAP_SYS_RESOURCE).
#
# Cached by content: $PITSTOP_CACHE/images/kind-node-<key>.tar (a root filesystem
# tar for `docker import`; key: versions + this script). The Debian root is cached in
# $PITSTOP_CACHE/rootfs/bookworm-kind-node.tar (delete it for the suite's current
# packages). Needs root (debootstrap, chroot) and the host's containerd (hack/install-deps.sh).
# Prints the tar's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${PITSTOP_CACHE:-$HOME/.cache/pitstop}"
mirror="${PITSTOP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
log() { echo "[kind-node] $*" >&2; }
die() { echo "[kind-node] error: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "building the node image needs root (debootstrap, chroot)"
PACKAGES=systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,iptables,iproute2,conntrack,ethtool,util-linux,mount,kmod,procps,ca-certificates,socat,libseccomp2,bash
key="$(cat "$0" "$here/versions.env" | sha256sum | cut -c1-12)"
out="$cache/images/kind-node-$KUBE_VERSION-$key.tar"
if [[ -f $out ]]; then echo "$out"; exit 0; fi

bin="$("$here/build-control-plane.sh" kube)"
"$here/build-control-plane.sh" etcd >/dev/null
"$here/build-control-plane.sh" coredns >/dev/null
kube="$bin/kube-$KUBE_VERSION" etcd="$bin/etcd-$ETCD_VERSION/etcd" coredns="$bin/coredns-$COREDNS_VERSION/coredns"
exec 9>"$cache/kind-node.lock"
flock 9
if [[ -f $out ]]; then echo "$out"; exit 0; fi

base="$cache/rootfs/bookworm-kind-node.tar"
if [[ ! -f $base || ! -f $base.packages || $(cat "$base.packages") != "$PACKAGES" ]]; then
  log "debootstrap bookworm minbase + systemd, containerd, runc, CNI plugins (once per machine; cached in $base)"
  tmp="$(mktemp -d)"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$tmp/root" "$mirror" >"$tmp/log" 2>&1 \
    || { tail -20 "$tmp/log" >&2; rm -rf "$tmp"; die "debootstrap failed"; }
  mkdir -p "$(dirname "$base")"
  tar -C "$tmp/root" -cf "$base.tmp" . && mv "$base.tmp" "$base"
  echo "$PACKAGES" >"$base.packages"
  rm -rf "$tmp"
fi

work="$(mktemp -d)"
ctrd_pid=""
cleanup() {
  [[ -z $ctrd_pid ]] || { kill "$ctrd_pid" 2>/dev/null; wait "$ctrd_pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
root="$work/root"
mkdir "$root" && tar -C "$root" -xf "$base"
log "node root: kubelet, kubeadm, kubectl $KUBE_VERSION; systemd units; containerd config"
install -m 755 "$kube/kubelet" "$kube/kubeadm" "$kube/kubectl" "$root/usr/bin/"
mkdir -p "$root/kind" "$root/etc/kubernetes/manifests" "$root/etc/cni/net.d" "$root/opt/cni" \
  "$root/etc/systemd/system/kubelet.service.d" "$root/etc/containerd"
echo "$KUBE_VERSION" >"$root/kind/version"
ln -sfn /usr/lib/cni "$root/opt/cni/bin"   # Debian's plugins, where kubelet and kind look

cat >"$root/etc/containerd/config.toml" <<'TOML'
# containerd 1.6 (Debian), CRI for the kubelet. kind reads the snapshotter here (kind
# load). The entrypoint sets restrict_oom_score_adj = true where the kernel refuses
# negative oom_score_adj (the kubelet asks -997 for static and Guaranteed pods).
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10.1"
  tolerate_missing_hugepages_controller = true
  restrict_oom_score_adj = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = true
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
TOML

# The kubelet as kubeadm drives it: kubeadm writes config.yaml, kubeadm-flags.env and
# the kubeconfigs; the unit waits for config.yaml.
cat >"$root/etc/systemd/system/kubelet.service" <<'UNIT'
[Unit]
Description=kubelet (configured by kubeadm)
ConditionPathExists=/var/lib/kubelet/config.yaml
After=containerd.service
Wants=containerd.service

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
RestartSec=1s
StartLimitInterval=0
KillMode=process
Slice=kubelet.slice
CPUAccounting=true
MemoryAccounting=true

[Install]
WantedBy=multi-user.target
UNIT
cat >"$root/etc/systemd/system/kubelet.service.d/10-kubeadm.conf" <<'UNIT'
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
# kind's kubeadm config puts the pods under cgroupRoot /kubelet (kubelet.slice): on
# cgroup v1 every controller needs it, systemd only makes it in the ones it manages.
ExecStartPre=/usr/local/bin/kubelet-cgroups
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
UNIT
cat >"$root/etc/systemd/system/kubelet.slice" <<'UNIT'
[Unit]
Description=Kubernetes pods and the kubelet
Before=slices.target

[Slice]
CPUAccounting=true
MemoryAccounting=true
UNIT
cat >"$root/usr/local/bin/kubelet-cgroups" <<'SH'
#!/bin/sh
# cgroup v1 only: kubelet.slice in every mounted controller (cpuset seeded from its parent).
[ -f /sys/fs/cgroup/cgroup.controllers ] && exit 0
for d in /sys/fs/cgroup/*/; do
  [ -L "${d%/}" ] && continue
  mkdir -p "${d}kubelet.slice" 2>/dev/null || continue
  if [ -f "${d}cpuset.cpus" ]; then
    [ -s "${d}kubelet.slice/cpuset.cpus" ] || cat "${d}cpuset.cpus" >"${d}kubelet.slice/cpuset.cpus"
    [ -s "${d}kubelet.slice/cpuset.mems" ] || cat "${d}cpuset.mems" >"${d}kubelet.slice/cpuset.mems"
  fi
done
exit 0
SH
# containerd: Debian's unit, without a negative OOMScoreAdjust where it is refused
# (systemd would fail the service); the entrypoint adds this drop-in then.
mkdir -p "$root/etc/systemd/system/containerd.service.d"

cat >"$root/usr/local/bin/entrypoint" <<'SH'
#!/bin/bash
# PID 1 of a kind node (this project's node image): prepares what systemd, containerd
# and the kubelet need inside a container, then execs the init given ($@).
set -euo pipefail
# Mount propagation for the kubelet's volumes and containerd's snapshots.
mount --make-rshared /
# Each node its own machine-id (the image carries none).
rm -f /etc/machine-id && systemd-machine-id-setup >/dev/null
if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
  echo "cgroup v2"
else
  # kind waits for this line on cgroup v1 hosts before it starts the next step.
  echo "detected cgroup v1"
fi
# Where negative oom_score_adj is refused (no CAP_SYS_RESOURCE): containerd clamps
# the kubelet's scores to its own, and runs without systemd's OOMScoreAdjust.
if ! (echo -1 >/proc/self/oom_score_adj) 2>/dev/null; then
  echo "negative oom_score_adj refused: containerd with restrict_oom_score_adj = true"
  sed -i 's/^\(\s*restrict_oom_score_adj\) = false/\1 = true/' /etc/containerd/config.toml
  printf '[Service]\nOOMScoreAdjust=0\n' >/etc/systemd/system/containerd.service.d/10-oom.conf
fi
# Docker's embedded DNS (127.0.0.11, Docker's own DNAT rules in the node's namespace)
# answers only inside the node: in a pod it is the pod's loopback (CoreDNS forwarding
# there finds itself: a fatal loop). As kindest/node does, the node's own address
# stands in for it: DNAT of port 53 there to Docker's resolver, for pods
# (PREROUTING) and host-network pods (OUTPUT); the kubelet gives pods a resolv.conf
# naming the node's address. Node names (kind's API server endpoint) resolve as before.
if grep -q '^nameserver 127\.0\.0\.11' /etc/resolv.conf; then
  node_ip="$(ip -4 -o addr show dev eth0 | awk '{print $4; exit}' | cut -d/ -f1)"
  # Docker adds its resolver's rules once the node runs, with the host's iptables
  # backend (nft or legacy): wait for them (up to 10 s), and add ours beside them.
  ipt=iptables-nft rules=""
  for _ in $(seq 50); do
    for ipt in iptables-nft iptables-legacy; do
      rules="$("$ipt-save" -t nat 2>/dev/null || true)"
      grep -q 'DOCKER_OUTPUT .*127\.0\.0\.11:' <<<"$rules" && break 2
    done
    sleep 0.2
  done
  for proto in udp tcp; do
    to="$(sed -n "s/^-A DOCKER_OUTPUT .*-p $proto .*--to-destination \(127\.0\.0\.11:[0-9]*\).*/\1/p" <<<"$rules" | head -1)"
    [[ -n $to ]] || continue
    for chain in PREROUTING OUTPUT; do
      "$ipt" -t nat -A "$chain" -d "$node_ip" -p "$proto" --dport 53 -j DNAT --to-destination "$to"
    done
  done
  sysctl -qw net.ipv4.conf.all.route_localnet=1
  { grep -v '^nameserver' /etc/resolv.conf; echo "nameserver $node_ip"; } >/kind/pod-resolv.conf
  echo 'KUBELET_EXTRA_ARGS=--resolv-conf=/kind/pod-resolv.conf' >/etc/default/kubelet
fi
# Pods of the other nodes are routed through this one (hack/e2e-kind.sh adds routes).
sysctl -qw net.ipv4.ip_forward=1 || true
exec "$@"
SH
chmod 755 "$root/usr/local/bin/entrypoint" "$root/usr/local/bin/kubelet-cgroups"

# systemd in a container: no consoles, udev, binfmt or kernel log; journald quiet.
chroot "$root" systemctl enable containerd.service kubelet.service >/dev/null 2>&1
chroot "$root" systemctl mask systemd-binfmt.service systemd-udevd.service getty.target \
  console-getty.service systemd-modules-load.service sys-kernel-config.mount \
  systemd-remount-fs.service >/dev/null 2>&1
echo "ReadKMsg=no" >>"$root/etc/systemd/journald.conf"
rm -f "$root/etc/machine-id"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* "$root"/usr/share/man/*

# The component images kubeadm runs, each a root of its binary and the C library
# (the project's builds link libc dynamically), packed by hack/image.sh.
images="$work/images"
mkdir -p "$images"
libc_root() { # $1 dir: ld.so + libc + users, like a distroless base
  mkdir -p "$1/lib64" "$1/lib/x86_64-linux-gnu" "$1/etc" "$1/tmp" "$1/usr/local/bin"
  chmod 1777 "$1/tmp"
  cp -L /lib64/ld-linux-x86-64.so.2 "$1/lib64/"
  cp -L /lib/x86_64-linux-gnu/libc.so.6 "$1/lib/x86_64-linux-gnu/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$1/etc/group"
}
with_libs() { # $1 image root, $2.. files of the node root: copied with their shared libraries
  local r=$1 f lib
  shift
  for f in "$@"; do
    mkdir -p "$r$(dirname "$f")"
    cp -a "$root$f" "$r$f"
    for lib in $(chroot "$root" ldd "$f" 2>/dev/null | grep -o '/[^ ]*\.so[^ ]*' || true); do
      mkdir -p "$r$(dirname "$lib")"
      [[ -e $r$lib ]] || cp -L "$root$lib" "$r$lib"
    done
  done
}
component() { # $1 name, $2 binary, $3 repository, $4 tag, [$5 entrypoint]
  local r="$work/img-$1"
  libc_root "$r"
  install -m 755 "$2" "$r/usr/local/bin/$1"
  [[ -z ${5:-} ]] || ln -s "/usr/local/bin/$1" "$r$5"   # CoreDNS's Deployment runs /coredns
  if [[ $1 == kube-proxy ]]; then
    # kube-proxy programs iptables (Debian's nft backend, like the node) and conntrack.
    local f
    with_libs "$r" /usr/sbin/xtables-nft-multi /usr/sbin/conntrack
    for f in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
      ln -s xtables-nft-multi "$r/usr/sbin/$f"
    done
    mkdir -p "$r/usr/lib/x86_64-linux-gnu"
    cp -a "$root/usr/lib/x86_64-linux-gnu/xtables" "$r/usr/lib/x86_64-linux-gnu/"
    for f in "$root"/usr/lib/x86_64-linux-gnu/xtables/*.so; do with_libs "$r" "${f#"$root"}"; done
    cp -a "$root/etc/ethertypes" "$root/etc/protocols" "$r/etc/" 2>/dev/null || true
  fi
  local entry=("--entrypoint" "${5:-/usr/local/bin/$1}")
  "$here/image.sh" build --rootfs "$r" --name "$1" --tag "$4" --out "$images/$1.tar" "${entry[@]}" \
    --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin >/dev/null 2>&1 \
    || die "packing the $1 image failed"
  echo "$3:$4 $images/$1.tar" >>"$images/list"
  rm -rf "$r"
}
log "component images: control plane, kube-proxy, etcd $ETCD_VERSION, CoreDNS $COREDNS_VERSION, pause"
for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
  component "$c" "$kube/$c" "registry.k8s.io/$c" "$KUBE_VERSION"
done
component etcd "$etcd" registry.k8s.io/etcd "$ETCD_VERSION"
component coredns "$coredns" registry.k8s.io/coredns/coredns "$COREDNS_VERSION" /coredns
pause="$("$here/image.sh" pause)"
echo "registry.k8s.io/pause:3.10.1 $pause" >>"$images/list"

# Into the node's containerd store, with the host's containerd (the same Debian
# release) on the node root's /var/lib/containerd; unpacked on first use.
log "importing them into the node root's containerd (k8s.io namespace)"
cat >"$work/containerd.toml" <<TOML
version = 2
root = "$root/var/lib/containerd"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
TOML
containerd --config "$work/containerd.toml" >"$work/containerd.log" 2>&1 &
ctrd_pid=$!
for _ in $(seq 50); do [[ -S $work/containerd.sock ]] && break; sleep 0.2; done
[[ -S $work/containerd.sock ]] || { cat "$work/containerd.log" >&2; die "containerd did not start"; }
ctr_() { ctr -a "$work/containerd.sock" -n k8s.io "$@"; }
while read -r ref tar; do
  ctr_ images import --no-unpack --base-name "${ref%:*}" "$tar" >/dev/null
  # the archive's own tag (the pause image's is 1): named as kubeadm expects
  imported="$(ctr_ images ls -q | awk -v p="${ref%:*}:" 'index($0, p) == 1 && !f {print; f = 1}')"
  [[ $imported == "$ref" ]] || { ctr_ images tag "$imported" "$ref" >/dev/null && ctr_ images rm "$imported" >/dev/null; }
done <"$images/list"
log "in the node's containerd: $(ctr_ images ls -q | tr '\n' ' ')"
kill "$ctrd_pid"; wait "$ctrd_pid" 2>/dev/null || true; ctrd_pid=""
rm -rf "$root/var/lib/containerd/tmpmounts" "$root/var/lib/containerd/io.containerd.runtime.v2.task"

mkdir -p "$(dirname "$out")"
tar -C "$root" -cf "$out.tmp" . && mv "$out.tmp" "$out"
log "built $out ($(du -h "$out" | cut -f1))"
echo "$out"
