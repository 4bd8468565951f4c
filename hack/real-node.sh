#!/usr/bin/env bash
# Real nodes beside the kwok ones: one containerd and one kubelet per node, on this
# machine, with every piece of state under the cluster folder and every host object
# (bridge, address, cgroups, iptables rules) named after a slot that is unique on
# the machine, so several clusters can run at once and each removes only its own.
#
#   hack/real-node.sh up I      start real-node-I of $PITSTOP_CLUSTER_DIR (cluster.sh up calls it)
#   hack/real-node.sh down      stop every real node of $PITSTOP_CLUSTER_DIR and remove
#                               all it made (cluster.sh down calls it)
#
# Slot S (0..199, taken atomically as /run/pitstop/slots/S) gives:
#   pod CIDR 10.90.S.0/24 on bridge pitstopS (gateway 10.90.S.1, the host's side);
#   node IP 10.91.S.1/32 on lo (kubelet serving address, the node's InternalIP);
#   cgroup root /pitstop-S in every cgroup hierarchy;
#   iptables rules commented "pitstop-S".
# The node is labelled type=real and tainted pitstop.dev/real-node=true:NoSchedule:
# only pods that tolerate it land there (the kwok tests' pods use images that exist
# nowhere and must keep to the kwok nodes).
# Neither range is routed anywhere: the host holds both, pods get no default route
# (only 10.96.0.0/16 and the pod ranges, 10.90.0.0/16), nothing is masqueraded, and
# the host forwards only between the bridges of the same cluster's real nodes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
source "$here/versions.env"
dir="${PITSTOP_CLUSTER_DIR:-$repo/.cluster}"
cache="${PITSTOP_CACHE:-$HOME/.cache/pitstop}"
kube="$cache/bin/kube-$KUBE_VERSION"
slots=/run/pitstop/slots
log() { echo "[real-node] $*" >&2; }
die() { echo "[real-node] error: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cgroup_roots() { awk '$3 ~ /^cgroup2?$/ {print $2}' /proc/mounts; }

# Takes a free slot for node folder $1: atomic mkdir; a slot whose owner folder is
# gone (a cluster killed without down) is reclaimed; a slot whose ranges the host
# already uses for something else is skipped.
take_slot() {
  local nd=$1 s owner
  mkdir -p "$slots"
  for ((s = 0; s < 200; s++)); do
    if [[ -d $slots/$s ]]; then
      owner="$(cat "$slots/$s/owner" 2>/dev/null || true)"
      [[ -n $owner && ! -d $owner ]] || continue
      log "reclaiming slot $s of vanished $owner"
      OWNER_DIR="$owner" release_host "$s"
      rm -rf "${slots:?}/$s"
    fi
    if ip -4 addr | grep -qE "inet 10\.(90|91)\.$s\." || ip -4 route | grep -qE "^10\.(90|91)\.$s\."; then continue; fi
    mkdir "$slots/$s" 2>/dev/null || continue
    echo "$nd" >"$slots/$s/owner"
    echo "$s"
    return
  done
  die "no free slot in $slots"
}

issue_node_certs() { # $1 node dir, $2 node name, $3 node ip
  local pki="$dir/pki" nd=$1
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$2" \
    -keyout "$nd/client.key" -out "$nd/client.csr" 2>/dev/null
  openssl x509 -req -in "$nd/client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -out "$nd/client.crt" -extfile <(printf 'extendedKeyUsage=clientAuth') 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$nd/serving.key" -out "$nd/serving.csr" 2>/dev/null
  openssl x509 -req -in "$nd/serving.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -out "$nd/serving.crt" \
    -extfile <(printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth' "$3" "$2") 2>/dev/null
}

up() {
  local i=$1 name="real-node-$1" nd="$dir/real/$1"
  source "$dir/ports.env"
  [[ -x $kube/kubelet ]] || die "no kubelet in $kube (hack/build-control-plane.sh builds it)"
  "$here/install-deps.sh" --check || die "run hack/install-deps.sh (as root), or PITSTOP_REAL_NODES=0"
  [[ $(id -u) == 0 ]] || die "real nodes need root (containers, mounts, bridge); or PITSTOP_REAL_NODES=0"
  mkdir -p "$nd"/{containerd/root,containerd/state,containerd/opt,runc,cni,kubelet,pod-logs}
  local s; s="$(take_slot "$nd")"
  echo "$s" >"$nd/slot"
  local br="pitstop$s" node_ip="10.91.$s.1" gw="10.90.$s.1" cidr="10.90.$s.0/24" cg="/pitstop-$s"
  log "$name: slot $s, node IP $node_ip, pods $cidr on $br"

  # Host side: the node address, the bridge with the gateway address, the cgroup root.
  ip addr add "$node_ip/32" dev lo
  ip link add "$br" type bridge
  ip addr add "$gw/24" dev "$br"
  ip link set "$br" up
  local root
  for root in $(cgroup_roots); do mkdir -p "$root$cg"; done
  if [[ -d /sys/fs/cgroup/cpuset$cg ]]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset$cg/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset$cg/cpuset.mems"
  fi
  # Pods reach the API server at the `kubernetes` Service VIP (in-cluster config):
  # there is no kube-proxy, so one DNAT rule, limited to this bridge, sends
  # 10.96.0.1:443 to the API server on 127.0.0.1 (route_localnet, on this bridge only,
  # lets a packet from the bridge reach a loopback address). Nothing is forwarded.
  sysctl -qw "net.ipv4.conf.$br.route_localnet=1"
  iptables -t nat -A PREROUTING -i "$br" -d 10.96.0.1/32 -p tcp --dport 443 \
    -m comment --comment "pitstop-$s" -j DNAT --to-destination "127.0.0.1:$API_PORT"
  iptables -A FORWARD -i "$br" -m comment --comment "pitstop-$s" -j DROP
  iptables -A FORWARD -o "$br" -m comment --comment "pitstop-$s" -j DROP
  # Pod to pod across this cluster's nodes (the Kubernetes network model: the
  # in-cluster operator reads the task counts of pods on the other node): the host
  # forwards between this cluster's own bridges, and only those. Forwarding is
  # turned on for packets that arrive on this bridge alone, not for the host; the
  # ACCEPTs come before every DROP above.
  sysctl -qw "net.ipv4.conf.$br.forwarding=1"
  # Pod to pod on this node: with br_netfilter loaded (kubelet, containerd) frames
  # bridged between two ports of the bridge pass the FORWARD chain too.
  iptables -I FORWARD 1 -i "$br" -o "$br" -m comment --comment "pitstop-$s" -j ACCEPT
  local peer t
  for peer in "$dir"/real/*/slot; do
    t="$(cat "$peer" 2>/dev/null || true)"
    [[ -n $t && $t != "$s" ]] || continue
    iptables -I FORWARD 1 -i "$br" -o "pitstop$t" -m comment --comment "pitstop-$s" -j ACCEPT
    iptables -I FORWARD 1 -i "pitstop$t" -o "$br" -m comment --comment "pitstop-$s" -j ACCEPT
  done

  # The pod network: bridge + host-local, no default route, no masquerade (the
  # 10.90.0.0/16 route reaches the other nodes' pods through the host). The bridge
  # and its gateway address are ours (isGateway false), so the plugin does not turn
  # on IP forwarding for the whole host. containerd adds lo itself.
  cat >"$nd/cni/10-pitstop.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "pitstop-$s",
  "plugins": [
    {"type": "bridge", "bridge": "$br", "isGateway": false, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$nd/cni/ipam",
              "ranges": [[{"subnet": "$cidr", "gateway": "$gw"}]],
              "routes": [{"dst": "10.96.0.0/16", "gw": "$gw"}, {"dst": "10.90.0.0/16", "gw": "$gw"}]}}
  ]
}
CNI

  local stream_port; stream_port=$(free_port)
  cat >"$nd/containerd.toml" <<TOML
version = 2
root = "$nd/containerd/root"
state = "$nd/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$nd/containerd.sock"
[ttrpc]
  address = "$nd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$nd/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pitstop-pause:1"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "$stream_port"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$nd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$nd/cni"
TOML
  nohup containerd --config "$nd/containerd.toml" >"$dir/logs/containerd-$i.log" 2>&1 &
  echo "containerd-$i $!" >>"$dir/pids"
  local deadline=$((SECONDS + 30))
  until ctr --address "$nd/containerd.sock" version >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "containerd of $name did not start (log: $dir/logs/containerd-$i.log)"
    sleep 0.2
  done
  ctr --address "$nd/containerd.sock" -n k8s.io images import --base-name localhost/pitstop-pause \
    "$("$here/image.sh" pause)" >/dev/null

  issue_node_certs "$nd" "$name" "$node_ip"
  cat >"$nd/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: pitstop-local
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: $dir/pki/ca.crt}
users:
- name: $name
  user: {client-certificate: $nd/client.crt, client-key: $nd/client.key}
contexts:
- name: pitstop-local
  context: {cluster: pitstop-local, user: $name}
current-context: pitstop-local
KC
  local kport hport; kport=$(free_port); hport=$(free_port)
  cat >"$nd/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: $kport
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $hport
tlsCertFile: $nd/serving.crt
tlsPrivateKeyFile: $nd/serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: $cg
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://$nd/containerd.sock
imageServiceEndpoint: unix://$nd/containerd.sock
podLogsDir: $nd/pod-logs
resolvConf: ""
makeIPTablesUtilChains: false
evictionHard: {nodefs.available: "1%", imagefs.available: "1%", memory.available: "100Mi"}
YAML
  echo "KUBELET_PORT_$i=$kport" >>"$dir/ports.env"
  nohup "$kube/kubelet" --config "$nd/kubelet.yaml" --kubeconfig "$nd/kubeconfig" \
    --root-dir "$nd/kubelet" --cert-dir "$nd/kubelet/pki" \
    --hostname-override "$name" --node-ip "$node_ip" \
    --node-labels "type=real,kubernetes.io/hostname=$name" \
    --register-with-taints "pitstop.dev/real-node=true:NoSchedule" --v=1 \
    >"$dir/logs/kubelet-$i.log" 2>&1 &
  echo "kubelet-$i $!" >>"$dir/pids"
  deadline=$((SECONDS + 60))
  until curl -sf "http://127.0.0.1:$hport/healthz" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "kubelet of $name is not healthy (log: $dir/logs/kubelet-$i.log)"
    sleep 0.3
  done
}

# Removes the host objects of slot $1 (idempotent; also for a vanished owner).
release_host() {
  local s=$1 br="pitstop$1" root d
  iptables -t nat -S PREROUTING 2>/dev/null | grep -- "--comment pitstop-$s " | sed 's/^-A/-D/' |
    while read -r rule; do eval iptables -t nat "$rule"; done
  iptables -S FORWARD 2>/dev/null | grep -- "--comment pitstop-$s " | sed 's/^-A/-D/' |
    while read -r rule; do eval iptables "$rule"; done
  ip link del "$br" 2>/dev/null || true
  ip addr del "10.91.$s.1/32" dev lo 2>/dev/null || true
  for root in $(cgroup_roots); do
    [[ -d $root/pitstop-$s ]] || continue
    # depth first: a cgroup folder goes once its children have
    find "$root/pitstop-$s" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

pids_using() { # PIDs (not zombies) whose command line mentions $1
  local p
  for p in /proc/[0-9]*; do
    [[ $(awk '{print $3}' "$p/stat" 2>/dev/null) == Z ]] && continue
    { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "$1" && echo "${p#/proc/}"
  done
  return 0
}

down_node() {
  local nd=$1 s; s="$(cat "$nd/slot" 2>/dev/null || true)"
  # The network namespaces of this node's sandboxes, read before their bundles go.
  local netns
  netns="$(grep -ho '/var/run/netns/cni-[0-9a-f-]*' \
    "$nd"/containerd/state/io.containerd.runtime.v2.task/k8s.io/*/config.json 2>/dev/null | sort -u || true)"
  # Containers: every process in this node's cgroups, then the shims of its containerd.
  local root pid
  if [[ -n $s ]]; then
    for root in $(cgroup_roots); do
      [[ -d $root/pitstop-$s ]] || continue
      find "$root/pitstop-$s" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -u | while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done
  fi
  for pid in $(pids_using "$nd/containerd.sock"); do kill -9 "$pid" 2>/dev/null || true; done
  sleep 0.3
  # Mounts under the node folder (kubelet volumes, overlay rootfs, sandbox shm), deepest first.
  awk -v p="$nd/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  local ns
  for ns in $netns; do umount "$ns" 2>/dev/null || true; rm -f "$ns"; done
  find /var/log/containers -maxdepth 1 -lname "$nd/*" -delete 2>/dev/null || true
  if [[ -n $s ]]; then
    release_host "$s"
    [[ $(cat "$slots/$s/owner" 2>/dev/null) == "$nd" ]] && rm -rf "${slots:?}/$s"
  fi
}

# Called by cluster.sh down after it has stopped the kubelets and containerds by PID.
down() {
  local nd
  for nd in "$dir"/real/*/; do [[ -d $nd ]] && down_node "${nd%/}"; done
  return 0
}

case "${1:-}" in
  up) up "$2" ;;
  down) down ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
