#!/usr/bin/env bash
# The in-cluster tier (tests/incluster, unchanged) on a kind cluster: a control plane
# and two workers (labelled type=real: the function moves from the node under repair
# to the other), the operator and function images loaded, E2E_KUBECONFIG set.
#
#   make e2e-kind      KIND_CLUSTER (pitstop-e2e); KEEP=1 keeps everything running
#                      (hack/e2e-kind.sh down removes it); KIND_NODE_IMAGE overrides
#                      the stock node image (kindest/node:$KUBE_VERSION)
#
# Docker: the engine that answers (`docker info`) is used as it is. Where none does
# and this runs as root, it starts its own: Debian's docker.io (installed if missing,
# services kept from starting), `dockerd --iptables=false --ip-masq=false
# --bridge=none` with its own data root (a cache: $PITSTOP_CACHE/docker-kind), exec
# root, socket and pidfile; the host's iptables policy is never touched. Its `kind`
# network is a bridge of this script's (pitstop-kind, 172.30.240.0/24); on exit the
# cluster, the network, the routes and rules below and the daemon (by its pid) go.
#
# kind is built from its Go module (KIND_VERSION, hack/build-control-plane.sh kind).
#
# Node image: the stock kindest/node:$KUBE_VERSION when it is present or `docker pull`
# gets it ("[e2e-kind] node image: stock ..."); else, where no registry answers, the
# one hack/kind-node-image.sh builds here from the project's own binaries and Debian
# ("[e2e-kind] node image: built here ..."). That image has no kindnet (it is not on the
# Go module proxy): the cluster is created with disableDefaultCNI and this script wires
# the pod network itself: on every node a CNI bridge + host-local on the node's
# podCIDR (10.90.240.0/22, outside the local clusters' 10.90.0-199 slots), and routes
# to the other nodes' podCIDRs through their node addresses.
#
# Restricted hosts (an adaptation, never used where --privileged works): a tiny probe
# `docker run --privileged` runs first; where it is refused (here: no CAP_SYS_RESOURCE
# in the sandbox), kind runs with hack/kind-docker/docker first on its PATH, which
# starts the nodes with a capability set in place of --privileged and remounts their
# cgroup v1 controllers writable before the entrypoint. The node image's entrypoint
# turns on containerd's restrict_oom_score_adj where negative scores are refused. On
# cgroup v1 hosts the kubelet runs with failCgroupV1: false.
#
# Images: where a registry answers, `docker build` (Dockerfile, function/Dockerfile)
# and `kind load docker-image`; else the daemonless builds of `make image` and
# function/build-image.sh, imported into every node's containerd (ctr import).
#
# Pod addresses: with its own daemon the kind network is a bridge this machine made,
# so the script routes the nodes' podCIDRs on the host through the node addresses and
# sets E2E_NODES_ON_HOST=1: the tests that reach pod addresses or SIGKILL a node's
# process run too. With a user's Docker nothing on the host is changed and those
# tests skip themselves, saying why.
#
# Measured on this project's 2-CPU machine: see README.md ("The in-cluster tier on kind").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${PITSTOP_CACHE:-$HOME/.cache/pitstop}"
name="${KIND_CLUSTER:-pitstop-e2e}"
stock_image="${KIND_NODE_IMAGE:-kindest/node:$KUBE_VERSION}"
run=/run/pitstop-kind
bridge=pitstop-kind
subnet=172.30.240.0/24
pod_subnet=10.90.240.0/22
log() { echo "[e2e-kind] $(date +%T) $*" >&2; }
die() { echo "[e2e-kind] error: $*" >&2; exit 1; }
t0=$SECONDS
lap() { log "$1 after $((SECONDS - t0)) s"; }

# Everything this script made on the host, undone (also `hack/e2e-kind.sh down`).
down() {
  local docker=/usr/bin/docker r
  if [[ -S $run/docker.sock ]]; then
    export DOCKER_HOST="unix://$run/docker.sock"
    [[ -x $docker ]] || docker=docker
    timeout 120 "$docker" ps -aq --filter label=io.x-k8s.kind.cluster | xargs -r timeout 120 "$docker" rm -f -v >/dev/null 2>&1 || true
    timeout 30 "$docker" network rm kind >/dev/null 2>&1 || true
  fi
  if [[ -f $run/routes ]]; then
    while read -r r; do ip route del "$r" 2>/dev/null || true; done <"$run/routes"
    rm -f "$run/routes"
  fi
  while iptables -D FORWARD -i "$bridge" -o "$bridge" -m comment --comment pitstop-kind -j ACCEPT 2>/dev/null; do :; done
  if [[ -f $run/dockerd.pid ]]; then
    local pid; pid="$(cat "$run/dockerd.pid")"
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$run/dockerd.pid"
  fi
  ip link del "$bridge" 2>/dev/null || true
  # kind mounts /lib/modules into the nodes; Docker made it where the host had none
  if [[ -f $run/made-lib-modules ]]; then rmdir /lib/modules 2>/dev/null || true; rm -f "$run/made-lib-modules"; fi
  umount "$run/exec/netns/"* 2>/dev/null || true
  rm -rf "$run/exec" "$run/docker.sock"
}
if [[ ${1:-} == down ]]; then down; exit 0; fi

own=""
docker_() { timeout "${TIMEOUT:-600}" "$docker" "$@"; }
# One run at a time per machine: the daemon, bridge and pod ranges are fixed.
mkdir -p "$cache"
exec 8>"$cache/e2e-kind.lock"
flock -w 1800 8 || die "another make e2e-kind holds $cache/e2e-kind.lock"

docker="$(command -v docker || true)"
if [[ -n $docker ]] && timeout 20 "$docker" info >/dev/null 2>&1; then
  log "Docker: the engine that answers ($("$docker" context show 2>/dev/null || echo "${DOCKER_HOST:-default}"))"
else
  [[ $(id -u) == 0 ]] || die "no Docker engine answers (docker info), and starting one needs root: install Docker, or run make test for the same tier on the local control plane"
  own=1
  if [[ ! -x /usr/sbin/dockerd || ! -x /usr/bin/docker ]]; then
    log "installing Debian's docker.io (its services kept from starting)"
    made_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io) >&2 \
      || { [[ -z $made_policy ]] || rm -f /usr/sbin/policy-rc.d; die "apt-get install docker.io failed"; }
    [[ -z $made_policy ]] || rm -f /usr/sbin/policy-rc.d
  fi
  docker=/usr/bin/docker   # Debian's client: another one may come first on PATH
  down   # what a killed run left
  mkdir -p "$run/exec" "$cache/docker-kind"
  [[ -e /lib/modules ]] || touch "$run/made-lib-modules"
  export DOCKER_HOST="unix://$run/docker.sock"
  log "starting dockerd (own data root $cache/docker-kind, socket $run/docker.sock, no iptables)"
  dockerd --iptables=false --ip-masq=false --bridge=none --data-root "$cache/docker-kind" \
    --exec-root "$run/exec" --pidfile "$run/dockerd.pid" -H "$DOCKER_HOST" \
    >"$run/dockerd.log" 2>&1 8>&- &
fi
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  local rc=$?
  if [[ -n ${KEEP:-} ]]; then
    log "KEEP=1: cluster $name kept (kubeconfig $kubeconfig${own:+; DOCKER_HOST=$DOCKER_HOST}); hack/e2e-kind.sh down removes it"
  elif [[ -n $own ]]; then
    down
  else
    timeout 300 "$kind" delete cluster --name "$name" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
kubeconfig="$(mktemp -t pitstop-kind-XXXXXX.kubeconfig)"
kind=""
trap cleanup EXIT
trap 'exit 130' INT TERM
if [[ -n $own ]]; then
  for _ in $(seq 120); do timeout 5 "$docker" info >/dev/null 2>&1 && break; sleep 0.5; done
  timeout 5 "$docker" info >/dev/null 2>&1 || { tail -20 "$run/dockerd.log" >&2; die "dockerd did not answer within 60 s"; }
  # a killed run's nodes and network live on in the data root
  docker_ ps -aq --filter label=io.x-k8s.kind.cluster | xargs -r timeout 120 "$docker" rm -f -v >/dev/null
  docker_ network rm kind >/dev/null 2>&1 || true
  docker_ network create -d bridge --subnet "$subnet" -o com.docker.network.bridge.name="$bridge" \
    -o com.docker.network.bridge.enable_ip_masquerade=false kind >/dev/null
  # Bridged frames between the nodes pass FORWARD where br_netfilter is loaded: let
  # them through on this bridge alone (the policy stays as it is).
  iptables -I FORWARD 1 -i "$bridge" -o "$bridge" -m comment --comment pitstop-kind -j ACCEPT
  lap "dockerd up"
fi

bin="$("$here/build-control-plane.sh" kind)"
kind="$bin/kind-$KIND_VERSION/kind"
kubectl="$bin/kube-$KUBE_VERSION/kubectl"
command -v kubectl >/dev/null && kubectl="$(command -v kubectl)"

# The node image: stock where a registry answers, else built here.
if docker_ image inspect "$stock_image" >/dev/null 2>&1 || TIMEOUT=300 docker_ pull -q "$stock_image" >/dev/null 2>&1; then
  image="$stock_image" stock=1
  log "node image: stock $image (a registry answers)"
else
  stock=""
  log "node image: built here (no registry answers for $stock_image): hack/kind-node-image.sh"
  tar="$("$here/kind-node-image.sh")"
  image="localhost/pitstop-kind-node:$(basename "$tar" .tar | sed 's/^kind-node-//')"
  if ! docker_ image inspect "$image" >/dev/null 2>&1; then
    docker_ import -c 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' -c 'ENV container=docker' \
      "$tar" "$image" >/dev/null
  fi
fi
lap "node image $image ready"

# Does this host grant privileged containers? (kind's nodes are privileged.)
kind_path="$PATH"
if docker_ run --rm --privileged --entrypoint /bin/true "$image" >/dev/null 2>"$kubeconfig.probe"; then
  log "docker run --privileged works: kind runs as it is"
else
  log "docker run --privileged refused ($(grep -o 'unable to apply caps[^"]*' "$kubeconfig.probe" | head -1 || true)): restricted host, kind gets hack/kind-docker/docker first on its PATH"
  kind_path="$here/kind-docker:$PATH"
  export PITSTOP_REAL_DOCKER="$docker"
fi
rm -f "$kubeconfig.probe"

config="$(mktemp -t pitstop-kind-XXXXXX.yaml)"
{
  cat <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  podSubnet: $pod_subnet
YAML
  [[ -n $stock ]] || echo "  disableDefaultCNI: true   # no kindnet in the image built here: the script wires it"
  cat <<YAML
nodes:
  - role: control-plane
    image: $image
  - role: worker
    image: $image
    labels: {type: real}
  - role: worker
    image: $image
    labels: {type: real}
kubeadmConfigPatches:
  - |
    kind: KubeletConfiguration
    failCgroupV1: false
YAML
  [[ -n $stock ]] || cat <<YAML
  - |
    kind: ClusterConfiguration
    etcd:
      local:
        imageTag: $ETCD_VERSION
    dns:
      imageTag: $COREDNS_VERSION
YAML
} >"$config"
log "kind create cluster $name (a control plane, two workers)"
PATH="$kind_path" timeout 900 "$kind" create cluster --name "$name" --kubeconfig "$kubeconfig" \
  --config "$config" ${stock:+--wait 300s} || die "kind create cluster failed"
lap "cluster created"
kc() { timeout 330 "$kubectl" --kubeconfig "$kubeconfig" "$@"; }

mapfile -t nodes < <(PATH="$kind_path" "$kind" get nodes --name "$name")
declare -A addr cidr
for n in "${nodes[@]}"; do
  addr[$n]="$(docker_ inspect -f '{{.NetworkSettings.Networks.kind.IPAddress}}' "$n")"
  for _ in $(seq 60); do
    cidr[$n]="$(kc get node "$n" -o jsonpath='{.spec.podCIDR}')"
    [[ -n ${cidr[$n]} ]] && break
    sleep 1
  done
  [[ -n ${cidr[$n]} ]] || die "node $n got no podCIDR"
done
if [[ -z $stock ]]; then
  log "pod network: CNI bridge + host-local per node, routes between the nodes"
  for n in "${nodes[@]}"; do
    docker_ exec -i "$n" sh -c 'cat >/etc/cni/net.d/10-pitstop.conflist' <<CNI
{"cniVersion": "1.0.0", "name": "pitstop-kind", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "${cidr[$n]}"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
CNI
    for m in "${nodes[@]}"; do
      [[ $m == "$n" ]] || docker_ exec "$n" ip route replace "${cidr[$m]}" via "${addr[$m]}"
    done
  done
fi
if [[ -n $own ]]; then
  for n in "${nodes[@]}"; do
    ip route replace "${cidr[$n]}" via "${addr[$n]}" dev "$bridge"
    echo "${cidr[$n]}" >>"$run/routes"
  done
  export E2E_NODES_ON_HOST=1
fi
# What went wrong, before the trap removes it all.
diagnose() {
  kc get nodes -o wide >&2 || true
  kc get pods -A -o wide >&2 || true
  kc -n kube-system describe pods -l k8s-app=kube-dns 2>&1 | tail -40 >&2 || true
  kc -n kube-system logs -l k8s-app=kube-dns --tail 20 >&2 || true
}
kc wait --for=condition=Ready nodes --all --timeout=300s >/dev/null || { diagnose; die "nodes not Ready"; }
kc -n kube-system rollout status deployment/coredns --timeout=300s >/dev/null || { diagnose; die "CoreDNS not available"; }
lap "nodes Ready, CoreDNS available"

if [[ -n $stock ]]; then
  docker_ build -q -t localhost/pitstop:dev "$repo" >/dev/null
  docker_ build -q -t localhost/pitstop-function:dev "$repo/function" >/dev/null
  PATH="$kind_path" "$kind" load docker-image --name "$name" localhost/pitstop:dev localhost/pitstop-function:dev
  operator=localhost/pitstop:dev
else
  operator="$("$here/build-image.sh" | tail -1)"
  make -C "$repo" -s function >&2
  IMAGE=localhost/pitstop-function:dev "$repo/function/build-image.sh" >/dev/null
  tag="${operator##*:}"
  for n in "${nodes[@]}"; do
    docker_ exec -i "$n" ctr -n k8s.io images import --base-name localhost/pitstop - \
      <"$repo/build/pitstop-$tag.oci.tar" >/dev/null
    docker_ exec -i "$n" ctr -n k8s.io images import --base-name localhost/pitstop-function - \
      <"$repo/build/pitstop-function-dev.oci.tar" >/dev/null
  done
fi
lap "images $operator, localhost/pitstop-function:dev loaded"

rc=0
E2E_KUBECONFIG="$kubeconfig" PITSTOP_IMAGE="$operator" \
  "$repo/.venv/bin/pytest" -q -rs "$repo/tests/incluster" || rc=$?
lap "in-cluster tier done (exit $rc)"
exit "$rc"
