"""Real nodes (hack/real-node.sh): a kubelet and containerd on this machine beside
the kwok nodes. Proves what the in-cluster tests rely on: the node is Ready, a pod
from a locally built image serves HTTP that the host reaches on the pod IP,
`kubectl logs` and `kubectl exec` work, a pod reaches the API server with its
ServiceAccount token (in-cluster config, CA verified), and `cluster.sh down` leaves
nothing behind on the machine.

Skipped when the cluster has no real node (PITSTOP_REAL_NODES=0).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.kube import REPO, Cluster, wait_until

pytestmark = pytest.mark.e2e

POD_NETWORK = ipaddress.ip_network("10.90.0.0/16")  # real-node pod CIDRs, on this machine only
TOLERATE_REAL = [{"key": "pitstop.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]


def real_nodes(cluster: Cluster) -> list[str]:
    return [n.metadata.name for n in cluster.core.list_node(label_selector="type=real").items]


@pytest.fixture(scope="module")
def real_node(cluster: Cluster) -> str:
    names = real_nodes(cluster)
    if not names:
        pytest.skip("the cluster has no real node (started with PITSTOP_REAL_NODES=0)")
    return names[0]


def build_image(cluster_dir: Path, name: str, rootfs: Path, *config: str) -> str:
    out = rootfs.parent / f"{name}.oci.tar"
    subprocess.run(
        [
            str(REPO / "hack/image.sh"),
            "build",
            "--rootfs",
            str(rootfs),
            "--name",
            name,
            "--tag",
            "1",
            "--out",
            str(out),
            *config,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [str(REPO / "hack/image.sh"), "import", str(out), name, str(cluster_dir)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return f"localhost/{name}:1"


@pytest.fixture(scope="module")
def images(cluster: Cluster, real_node: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A busybox image (shell, httpd) and the static apicheck program, built here
    with hack/image.sh and imported into the real nodes' containerd."""
    cluster_dir = Path(cluster.kubeconfig).parent
    if not (cluster_dir / "real").is_dir():
        pytest.skip(f"no real-node state in {cluster_dir} to import images into")
    work = tmp_path_factory.mktemp("images")
    box = work / "box"
    (box / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", box / "bin/busybox")
    for applet in ("sh", "cat", "echo", "httpd", "mkdir", "hostname"):
        (box / "bin" / applet).symlink_to("busybox")
    check = work / "check"
    check.mkdir()
    subprocess.run(
        ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(check / "apicheck"), "."],
        cwd=Path(__file__).parent / "apicheck",
        env={**os.environ, "CGO_ENABLED": "0"},
        check=True,
        capture_output=True,
        timeout=300,
    )
    return {
        "box": build_image(cluster_dir, "e2e-box", box, "--entrypoint", "/bin/sh"),
        "apicheck": build_image(
            cluster_dir, "e2e-apicheck", check, "--entrypoint", "/apicheck", "--user", "65532:65532"
        ),
    }


def pod(name: str, node: str, image: str, container: dict | None = None, **spec: object) -> dict:
    """A pod pinned to the real node (tolerating its taint), image from its containerd."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": TOLERATE_REAL,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "c", "image": image, "imagePullPolicy": "Never", **(container or {})}
            ],
            **spec,
        },
    }


def test_real_node_ready(cluster: Cluster, real_node: str) -> None:
    node = cluster.core.read_node(real_node)
    assert cluster.node_ready(real_node)
    assert node.metadata.labels["type"] == "real"
    assert "kwok.x-k8s.io/node" not in (node.metadata.annotations or {})  # kwok keeps off
    internal = [a.address for a in node.status.addresses if a.type == "InternalIP"]
    assert internal and ipaddress.ip_address(internal[0]) in ipaddress.ip_network("10.91.0.0/16")
    assert node.status.node_info.kubelet_version.startswith("v1.35")


def test_pod_serves_http_logs_and_exec(
    cluster: Cluster, namespace: str, real_node: str, images: dict
) -> None:
    script = (
        "mkdir -p /tmp/www && hostname > /tmp/www/index.html && echo serving $(hostname) "
        "&& exec httpd -f -p 8080 -h /tmp/www"
    )
    body = pod(
        "web",
        real_node,
        images["box"],
        container={
            "args": ["-c", script],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        },
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod/web", "--timeout=90s")
    ip = cluster.core.read_namespaced_pod("web", namespace).status.pod_ip
    # Only ever send traffic to the real nodes' own pod network on this machine.
    assert ipaddress.ip_address(ip) in POD_NETWORK, ip
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as answer:
        assert answer.read().decode().strip() == "web"
    logs = cluster.kubectl("logs", "-n", namespace, "web").stdout
    assert "serving web" in logs
    out = cluster.kubectl("exec", "-n", namespace, "web", "--", "cat", "/tmp/www/index.html")
    assert out.stdout.strip() == "web"


def test_pod_reaches_api_server_with_its_token(
    cluster: Cluster, namespace: str, real_node: str, images: dict
) -> None:
    body = pod("apicheck", real_node, images["apicheck"], restartPolicy="Never")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    phase = wait_until(
        "apicheck pod finished",
        lambda: (
            cluster.core.read_namespaced_pod("apicheck", namespace).status.phase
            in ("Succeeded", "Failed")
            and cluster.core.read_namespaced_pod("apicheck", namespace).status.phase
        ),
        timeout=60,
    )
    logs = cluster.kubectl("logs", "-n", namespace, "apicheck").stdout
    assert phase == "Succeeded", logs
    review = json.loads(logs)
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:default"


@pytest.fixture
def throwaway_cluster() -> Iterator[tuple[Path, dict[str, str]]]:
    if os.geteuid() != 0:
        pytest.skip("real nodes need root")
    state = Path(tempfile.mkdtemp(prefix="pitstop-down-"))
    env = {
        **os.environ,
        "PITSTOP_CLUSTER_DIR": str(state),
        "PITSTOP_NODES": "0",
        "PITSTOP_REAL_NODES": "1",
    }
    try:
        yield state, env
    finally:
        subprocess.run([str(REPO / "hack/cluster.sh"), "down"], env=env, timeout=120)


def leftovers(state: Path, slot: str, netns: list[str]) -> list[str]:
    """Everything of one cluster that could outlive it on the machine."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(state) in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.append(f"process {proc.name}: {cmdline}")
    found += [
        f"mount {m}" for m in Path("/proc/self/mounts").read_text().split("\n") if str(state) in m
    ]
    if (
        subprocess.run(["ip", "link", "show", f"pitstop{slot}"], capture_output=True).returncode
        == 0
    ):
        found.append(f"bridge pitstop{slot}")
    if (
        f"10.91.{slot}.1/"
        in subprocess.run(["ip", "addr", "show", "lo"], capture_output=True, text=True).stdout
    ):
        found.append(f"address 10.91.{slot}.1 on lo")
    found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/pitstop-{slot}")]
    for table in ("nat", "filter"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
        found += [f"iptables {r}" for r in rules.stdout.splitlines() if f"pitstop-{slot} " in r]
    found += [f"netns {n}" for n in netns if Path(n).exists()]
    if state.exists():
        found.append(f"folder {state}")
    return found


def test_cluster_down_leaves_nothing(throwaway_cluster: tuple[Path, dict[str, str]]) -> None:
    """Its own cluster with one real node and one running pod (so there are
    mounts, a netns, cgroups and a veth), then `down`; another cluster may run."""
    state, env = throwaway_cluster
    subprocess.run(
        [str(REPO / "hack/cluster.sh"), "up"], env=env, check=True, timeout=600, capture_output=True
    )
    other = Cluster(str(state / "admin.kubeconfig"))
    body = pod("p", "real-node-0", "localhost/pitstop-pause:1")  # every real node has it
    other.kubectl("apply", "-n", "default", "-f", "-", input=json.dumps(body))
    other.kubectl("wait", "-n", "default", "--for=condition=Ready", "pod/p", "--timeout=90s")
    slot = (state / "real/0/slot").read_text().strip()
    bundles = state.glob(
        "real/0/containerd/state/io.containerd.runtime.v2.task/k8s.io/*/config.json"
    )
    netns = sorted(
        {
            ns["path"]
            for b in bundles
            for ns in json.loads(b.read_text())["linux"]["namespaces"]
            if ns["type"] == "network" and "path" in ns
        }
    )
    assert netns, "the pod should have a network namespace"
    assert leftovers(state, slot, netns), "the probe must see the running cluster"
    subprocess.run([str(REPO / "hack/cluster.sh"), "down"], env=env, check=True, timeout=120)
    assert leftovers(state, slot, netns) == []
