"""The `pitstop` command as a user types it, without a cluster: global options on
either side of the subcommand, `--context`, one line for an unreachable API server
(a real connection refused on loopback), `-o`, and the completion script run by bash."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from pitstop.cli import commands
from pitstop.cli import main as cli
from pitstop.cli.errors import explain
from pitstop.cluster.kubeconfig import KubeconfigError, load_configuration, resolve_source

TWO_CONTEXTS = """\
apiVersion: v1
kind: Config
current-context: first
contexts:
  - {{name: first, context: {{cluster: first, user: u}}}}
  - {{name: second, context: {{cluster: second, user: u}}}}
clusters:
  - {{name: first, cluster: {{server: "https://127.0.0.1:{first}"}}}}
  - {{name: second, cluster: {{server: "https://127.0.0.1:{second}"}}}}
users:
  - {{name: u, user: {{token: abc}}}}
"""


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "config"
    path.write_text(TWO_CONTEXTS.format(first=closed_port(), second=closed_port()))
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ("--kubeconfig", "/k", "--context", "c", "-v", "status"),
        ("status", "--kubeconfig", "/k", "--context", "c", "-v"),
        ("--kubeconfig", "/k", "status", "--context", "c", "--verbose"),
    ],
)
def test_global_options_before_or_after_the_subcommand(argv: tuple[str, ...]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert (args.kubeconfig, args.context, args.verbose) == ("/k", "c", True)


def test_a_subcommand_default_does_not_erase_an_option_given_before_it() -> None:
    args = cli.build_parser().parse_args(["--kubeconfig", "/k", "plan", "n1"])
    assert (args.kubeconfig, args.context, args.verbose) == ("/k", None, False)


def test_context_chooses_the_server(kubeconfig: Path) -> None:
    first = load_configuration(resolve_source(str(kubeconfig), {}))
    second = load_configuration(resolve_source(str(kubeconfig), {}, "second"))
    assert first.host != second.host
    assert second.host.endswith(
        str(
            yaml.safe_load(kubeconfig.read_text())["clusters"][1]["cluster"]["server"].rsplit(
                ":", 1
            )[1]
        )
    )


def test_an_unknown_or_in_cluster_context_is_one_clear_error(
    kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(KubeconfigError, match="third"):
        load_configuration(resolve_source(str(kubeconfig), {}, "third"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    in_cluster = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert resolve_source(None, in_cluster).in_cluster
    with pytest.raises(KubeconfigError, match="no kubeconfig"):
        resolve_source(None, in_cluster, "second")  # a context is chosen from a kubeconfig


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "pitstop"), *argv],  # the installed script
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )


@pytest.mark.parametrize("argv", [("status",), ("abort", "r1"), ("done", "r1"), ("plan", "n1")])
def test_an_unreachable_api_server_is_one_line_and_exit_1(
    kubeconfig: Path, argv: tuple[str, ...]
) -> None:
    proc = run_cli("--kubeconfig", str(kubeconfig), *argv)
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pitstop: error: "), lines[0]
    assert "127.0.0.1" in lines[0] and "refused" in lines[0].lower(), lines[0]


def test_explain_names_the_server_and_drops_urllib3s_object_repr(kubeconfig: Path) -> None:
    api = commands.api(str(kubeconfig), None)
    api.configuration.retries = 0
    with pytest.raises(Exception) as caught:
        commands.list_repairs(api)
    line = explain(caught.value)
    assert line.startswith("cannot reach the API server at https://127.0.0.1:"), line
    assert "object at 0x" not in line and "\n" not in line


def test_explain_an_api_error_by_its_message() -> None:
    from kubernetes.client.exceptions import ApiException

    e = ApiException(status=403, reason="Forbidden")
    e.body = json.dumps({"message": 'noderepairs.pitstop.dev is forbidden: User "u"'})
    assert explain(e) == (
        'the API server answered 403 Forbidden: noderepairs.pitstop.dev is forbidden: User "u"'
    )


def repair(name: str, phase: str, created: str, policy: str = "") -> dict[str, object]:
    labels = {"pitstop.dev/policy": policy} if policy else {}
    return {
        "metadata": {"name": name, "creationTimestamp": created, "labels": labels},
        "spec": {"nodeName": f"node-{name}", "reason": "KernelDeadlock"},
        "status": {"phase": phase, "instances": {"remaining": 3, "inflightTasks": 1}},
    }


REPAIRS = [
    repair("b", "Evicting", "2026-12-06T10:00:00Z", "pool-a"),
    repair("a", "Pending", "2026-12-06T09:00:00Z"),
]


def test_output_json_and_yaml_are_the_objects() -> None:
    listed = json.loads(commands.render(REPAIRS, "json"))
    assert listed["kind"] == "List" and listed["items"] == REPAIRS
    assert yaml.safe_load(commands.render(REPAIRS, "yaml"))["items"] == REPAIRS
    assert json.loads(commands.render(REPAIRS[:1], "json", one=True)) == REPAIRS[0]


def test_output_wide_adds_reason_strategy_and_policy() -> None:
    now = datetime(2026, 12, 6, 11, tzinfo=UTC)
    narrow = commands.status_table(REPAIRS, now).splitlines()
    wide = commands.status_table(REPAIRS, now, wide=True).splitlines()
    assert narrow[0].split()[:6] == ["NAME", "NODE", "PHASE", "INSTANCES", "TASKS", "AGE"]
    assert wide[0].split()[6:9] == ["REASON", "STRATEGY", "POLICY"]
    assert [line.split()[0] for line in wide[1:]] == ["a", "b"]  # oldest first
    assert wide[2].split()[6:9] == ["KernelDeadlock", "Manual", "pool-a"]


def test_output_wide_shows_the_ladder_and_its_running_step() -> None:
    now = datetime(2026, 12, 6, 11, tzinfo=UTC)
    steps = [{"strategy": "Job"}, {"strategy": "Webhook"}, {"strategy": "Manual"}]
    repair = {
        "metadata": {"name": "l", "creationTimestamp": "2026-12-06T10:00:00Z"},
        "spec": {"nodeName": "n", "repair": {"steps": steps}},
        "status": {"phase": "Repairing", "repair": {"step": 2, "attempts": 1}},
    }
    row = commands.status_table([repair], now, wide=True).splitlines()[1].split()
    assert row[4:6] == ["Job>Webhook>Manual", "2/3:Webhook#1"], row
    one = {**repair, "spec": {"nodeName": "n", "repair": {"strategy": "Job"}}}
    one["status"] = {"phase": "Repairing", "repair": {"attempts": 2}}
    assert commands.status_table([one], now, wide=True).splitlines()[1].split()[4:6] == [
        "Job",
        "#2",
    ]


def test_watch_and_json_do_not_combine(kubeconfig: Path) -> None:
    """Refused as a usage error, before any request (the API server here is unreachable)."""
    proc = run_cli("status", "-w", "-o", "json", "--kubeconfig", str(kubeconfig))
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert proc.stderr == "pitstop: error: --watch prints rows: it does not combine with -o json\n"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("pitstop ", {"repair", "status", "plan", "done", "abort", "gate", "run", "completion"}),
        ("pitstop gate ", {"open"}),
        ("pitstop st", {"status"}),
        ("pitstop status --o", {"--output"}),
        ("pitstop status -o ", {"json", "yaml", "wide"}),
        ("pitstop repair n1 --strategy ", {"Manual", "Job", "Webhook"}),
        ("pitstop completion ", {"bash", "zsh"}),
        ("pitstop abort r1 --w", {"--wait"}),
    ],
)
def test_the_bash_completion_script_completes(line: str, expected: set[str]) -> None:
    script = cli_script("bash")
    words = line.split(" ")
    probe = (
        f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n_pitstop\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) == expected, out


def cli_script(shell: str) -> str:
    proc = run_cli("completion", shell)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
