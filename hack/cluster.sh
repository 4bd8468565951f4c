#!/usr/bin/env bash
# The local control plane: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok (simulated kubelets) as local processes on free
# loopback ports, and PITSTOP_REAL_NODES (default 1, 0 allowed) real nodes
# (kubelet + containerd, hack/real-node.sh). Binaries come from
# build-control-plane.sh (cached).
#
#   hack/cluster.sh up          start (idempotent); returns when the cluster is healthy
#   hack/cluster.sh down        stop every process and delete the state
#   hack/cluster.sh kubeconfig  print the admin kubeconfig path
#   hack/cluster.sh status      print whether it runs
#   hack/cluster.sh restart C   stop component C (etcd, kube-apiserver, kube-controller-manager,
#                               kube-scheduler, kwok, kube-apiserver-observer) and start it
#                               again with the same flags, ports and data; returns when it is
#                               healthy again (chaos tests)
#
# PITSTOP_OBSERVER_APISERVER=1 adds a second kube-apiserver on the same etcd for
# checkers (observer.kubeconfig); nothing under test talks to it.
#
# State lives in $PITSTOP_CLUSTER_DIR (default: <repo>/.cluster): certificates,
# kubeconfigs, pids, ports and one log file per component in logs/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
source "$here/versions.env"
dir="${PITSTOP_CLUSTER_DIR:-$repo/.cluster}"
nodes="${PITSTOP_NODES:-3}"
real_nodes="${PITSTOP_REAL_NODES:-1}"
# 1: a second kube-apiserver for checkers (observer.kubeconfig), see up()
observer="${PITSTOP_OBSERVER_APISERVER:-0}"
# Client rate limit of kube-controller-manager and kube-scheduler. Their defaults
# (20 QPS, burst 30; 50, burst 100) cap pod creation and binding at ~20 pods/s,
# which makes a 100,000-pod benchmark take over an hour. Raising it costs nothing
# on a small cluster: it only lifts a ceiling.
kube_api_qps="${PITSTOP_KUBE_API_QPS:-500}"
kube_api_burst="${PITSTOP_KUBE_API_BURST:-1000}"
# kwok renews each fake node's Lease every quarter of its duration: at 5,000 nodes
# and 40 s that is 500 writes/s, and a lapse past the grace period marks the node
# NotReady and its pods not Ready. The scale benchmark lengthens both.
node_lease_seconds="${PITSTOP_NODE_LEASE_SECONDS:-40}"
node_monitor_grace="${PITSTOP_NODE_MONITOR_GRACE:-20s}"
log() { echo "[cluster] $*" >&2; }
die() { echo "[cluster] error: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

running() {
  [[ -f $dir/pids ]] || return 1
  local pid
  while read -r _ pid; do kill -0 "$pid" 2>/dev/null || return 1; done <"$dir/pids"
}

kc() { kubectl --kubeconfig "$dir/admin.kubeconfig" "$@"; }

# Waits up to $1 seconds for the command that follows to succeed.
wait_for() {
  local timeout=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what (logs: $dir/logs)"
    sleep 0.2
  done
}

make_certs() {
  local pki="$dir/pki"
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=pitstop-local-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  # $1 name, $2 subject, $3 extensions (optional)
  issue() {
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 3650 -out "$pki/$1.crt" ${3:+-extfile <(printf '%s' "$3")} 2>/dev/null
  }
  issue apiserver "/CN=kube-apiserver" \
    "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
  issue admin "/O=system:masters/CN=pitstop-admin" "extendedKeyUsage=clientAuth"
  issue controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  issue scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
  issue kwok "/O=system:masters/CN=kwok-controller" "extendedKeyUsage=clientAuth"
  # kubectl logs/exec: the API server's client identity towards the kubelets
  issue apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

write_kubeconfig() { # $1 name (cert), $2 server, $3 file name (default: $1)
  cat >"$dir/${3:-$1}.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: pitstop-local
  cluster:
    server: $2
    certificate-authority: $dir/pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $dir/pki/$1.crt
    client-key: $dir/pki/$1.key
contexts:
- name: pitstop-local
  context: {cluster: pitstop-local, user: $1}
current-context: pitstop-local
KC
}

# Each component's command line is kept in cmd/<name> (shell-quoted), so `restart`
# runs exactly what `up` ran: same flags, ports, certificates and data directory.
start() { # $1 name, rest: command
  local name=$1; shift
  mkdir -p "$dir/cmd"
  printf '%q ' "$@" >"$dir/cmd/$name"
  nohup "$@" >"$dir/logs/$name.log" 2>&1 &
  echo "$name $!" >>"$dir/pids"
}

pid_of() { awk -v n="$1" '$1 == n { print $2 }' "$dir/pids"; }

healthy() { # $1 name: the same probes `up` waits for
  source "$dir/ports.env"
  case $1 in
    etcd) curl -sf "http://127.0.0.1:$ETCD_PORT/health" ;;
    kube-apiserver) curl -sf --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" \
      --key "$dir/pki/admin.key" "https://127.0.0.1:$API_PORT/readyz" ;;
    kube-apiserver-observer) curl -sf --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" \
      --key "$dir/pki/admin.key" "https://127.0.0.1:$OBSERVER_PORT/readyz" ;;
    kube-controller-manager) curl -skf "https://127.0.0.1:$KCM_PORT/healthz" ;;
    kube-scheduler) curl -skf "https://127.0.0.1:$SCHED_PORT/healthz" ;;
    kwok) kill -0 "$(pid_of kwok)" ;;
  esac
}

# Stops one component (SIGTERM, SIGKILL after 10 s) and starts it again from cmd/<name>,
# its log appended; etcd keeps its data directory. Safe to repeat, also if it had died.
restart() { # $1 name
  local name=$1 pid
  [[ -f $dir/cmd/$name ]] || die "no component '$name' in $dir (is the cluster up?)"
  pid=$(pid_of "$name")
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  fi
  local cmd; cmd=$(<"$dir/cmd/$name")
  echo "===== restart $(date -u +%FT%TZ) =====" >>"$dir/logs/$name.log"
  eval "nohup $cmd >>\"\$dir/logs/\$name.log\" 2>&1 &"
  local new=$!
  awk -v n="$name" -v p="$new" '$1 == n { $2 = p } { print }' "$dir/pids" >"$dir/pids.new"
  mv "$dir/pids.new" "$dir/pids"
  wait_for 120 "$name healthy after restart" healthy "$name"
  log "restarted $name (pid $new)"
}

create_node() { # $1 name
  kc apply -f - >/dev/null <<NODE
apiVersion: v1
kind: Node
metadata:
  name: $1
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: $1
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
NODE
}

up() {
  if running; then log "already running ($dir)"; return; fi
  [[ -e $dir ]] && down_quiet
  if ((real_nodes > 0)); then "$here/install-deps.sh" || die "real nodes need these packages"; fi
  local bin; bin="$("$here/build-control-plane.sh")"
  local kube="$bin/kube-$KUBE_VERSION" etcd="$bin/etcd-$ETCD_VERSION/etcd" kwok="$bin/kwok-$KWOK_VERSION/kwok"
  PATH="$kube:$PATH"  # the kubectl of the same release
  mkdir -p "$dir/logs" "$dir/etcd"
  : >"$dir/pids"
  make_certs
  local etcd_port etcd_peer api_port kcm_port sched_port observer_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  kcm_port=$(free_port); sched_port=$(free_port); observer_port=$(free_port)
  local server="https://127.0.0.1:$api_port" pki="$dir/pki"
  printf 'ETCD_PORT=%s\nAPI_PORT=%s\nKCM_PORT=%s\nSCHED_PORT=%s\nOBSERVER_PORT=%s\n' \
    "$etcd_port" "$api_port" "$kcm_port" "$sched_port" "$observer_port" >"$dir/ports.env"
  for n in admin controller-manager scheduler kwok; do write_kubeconfig "$n" "$server"; done
  log "starting etcd, kube-apiserver on $server (state: $dir)"
  # The audit log records every write with its user agent and source address, so
  # tests can prove from the API server's side which operator replica acted when.
  cat >"$dir/audit-policy.yaml" <<'AUDIT'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
AUDIT

  start etcd "$etcd" --name local --data-dir "$dir/etcd" --unsafe-no-fsync=true \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "local=http://127.0.0.1:$etcd_peer" --log-level warn
  wait_for 30 etcd curl -sf "http://127.0.0.1:$etcd_port/health"

  # The advertise address only fills the `kubernetes` Service's endpoints; it must
  # not be loopback, and nothing here connects to it.
  local apiserver_flags=(
    --etcd-servers "http://127.0.0.1:$etcd_port"
    --bind-address 127.0.0.1 --advertise-address 198.51.100.1
    --endpoint-reconciler-type none
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key"
    --client-ca-file "$pki/ca.crt" --authorization-mode Node,RBAC
    --service-account-issuer https://kubernetes.default.svc.cluster.local
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key"
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt"
    --kubelet-client-key "$pki/apiserver-kubelet-client.key"
    --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP
    --profiling=false --v=1
  )
  start kube-apiserver "$kube/kube-apiserver" "${apiserver_flags[@]}" --secure-port "$api_port" \
    --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/logs/audit.log" \
    --audit-log-maxsize 200 --audit-log-maxbackup 1
  if ((observer)); then
    # A second API server on the same etcd, which nothing under test uses: a checker
    # watching through it keeps its stream (and its watch cache) while the first one
    # restarts, instead of going blind and re-listing.
    start kube-apiserver-observer "$kube/kube-apiserver" "${apiserver_flags[@]}" \
      --secure-port "$observer_port"
    write_kubeconfig admin "https://127.0.0.1:$observer_port" observer
  fi
  wait_for 90 kube-apiserver kc get --raw /readyz
  if ((observer)); then
    wait_for 90 kube-apiserver-observer healthy kube-apiserver-observer
  fi

  log "starting kube-controller-manager, kube-scheduler, kwok"
  start kube-controller-manager "$kube/kube-controller-manager" \
    --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
    --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
    --use-service-account-credentials=true --controllers '*' \
    --node-monitor-grace-period "$node_monitor_grace" --profiling=false --v=1 \
    --kube-api-qps "$kube_api_qps" --kube-api-burst "$kube_api_burst"
  start kube-scheduler "$kube/kube-scheduler" \
    --kubeconfig "$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false --profiling=false --v=1 \
    --kube-api-qps "$kube_api_qps" --kube-api-burst "$kube_api_burst"
  start kwok "$kwok" --kubeconfig "$dir/kwok.kubeconfig" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds "$node_lease_seconds" --cidr 10.128.0.0/9 --node-ip 10.0.0.1 \
    -c "$here/kwok/node-stages.yaml" -c "$here/kwok/pod-stages.yaml"

  wait_for 60 kube-controller-manager curl -skf "https://127.0.0.1:$kcm_port/healthz"
  wait_for 60 kube-scheduler curl -skf "https://127.0.0.1:$sched_port/healthz"
  # Pods need the namespace's default ServiceAccount, which the controller-manager makes.
  wait_for 60 "default ServiceAccount" kc get serviceaccount default -n default
  for ((i = 0; i < nodes; i++)); do create_node "kwok-node-$i"; done
  if ((real_nodes > 0)); then
    # the kubelets authorize the API server's logs/exec/port-forward requests by webhook
    kc create clusterrolebinding pitstop:apiserver-kubelet --clusterrole system:kubelet-api-admin \
      --user kube-apiserver-kubelet-client >/dev/null
    log "starting $real_nodes real node(s): containerd + kubelet"
    for ((i = 0; i < real_nodes; i++)); do PITSTOP_CLUSTER_DIR="$dir" "$here/real-node.sh" up "$i"; done
    wait_for 90 "real nodes Ready" kc wait --for=condition=Ready node -l type=real --timeout=1s
  fi
  if ((nodes > 0)); then
    wait_for 60 "fake nodes Ready" kc wait --for=condition=Ready node -l type=kwok --timeout=1s
  fi
  log "ready: kubectl --kubeconfig $dir/admin.kubeconfig get nodes"
}

down_quiet() {
  if [[ -f $dir/pids ]]; then
    local name pid
    while read -r name pid; do kill "$pid" 2>/dev/null || true; done <"$dir/pids"
    for _ in $(seq 50); do
      local alive=0
      while read -r name pid; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$dir/pids"
      ((alive)) || break
      sleep 0.1
    done
    while read -r name pid; do kill -9 "$pid" 2>/dev/null || true; done <"$dir/pids"
  fi
  # containers, mounts, network namespaces, bridge, address, cgroups of the real nodes
  [[ -d $dir/real ]] && PITSTOP_CLUSTER_DIR="$dir" "$here/real-node.sh" down
  rm -rf "$dir"
}

case "${1:-}" in
  up) up ;;
  down) down_quiet; log "stopped" ;;
  kubeconfig) [[ -f $dir/admin.kubeconfig ]] || die "no cluster in $dir; run 'make cluster-up'"; echo "$dir/admin.kubeconfig" ;;
  restart) [[ -n ${2:-} ]] || die "usage: $0 restart COMPONENT"; restart "$2" ;;
  status) if running; then echo "running ($dir)"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 up|down|kubeconfig|status|restart COMPONENT" >&2; exit 2 ;;
esac
