"""The `pitstop` command line: parsing, defaults and the one-line error path (no cluster)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from pitstop import constants
from pitstop.cli import main as cli

VALID_KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: test
contexts:
  - name: test
    context: {cluster: test, user: test}
clusters:
  - name: test
    cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
users:
  - name: test
    user: {token: abc}
"""


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def test_run_defaults() -> None:
    args = parse("run")
    assert args.handler is cli._cmd_run
    assert args.kubeconfig is None  # resolved later: $KUBECONFIG, in-cluster, ~/.kube/config
    assert args.health_port == constants.HEALTH_PORT == 8080
    assert args.metrics_port == constants.METRICS_PORT == 9090
    assert args.bind == "0.0.0.0"
    assert args.verbose is False


def test_run_options() -> None:
    args = parse(
        "run",
        "--kubeconfig",
        "/tmp/kc",
        "--bind",
        "127.0.0.1",
        "--health-port",
        "18080",
        "--metrics-port",
        "19090",
        "--verbose",
    )
    assert (args.kubeconfig, args.bind, args.health_port, args.metrics_port, args.verbose) == (
        "/tmp/kc",
        "127.0.0.1",
        18080,
        19090,
        True,
    )


@pytest.mark.parametrize("port", ["0", "65536", "-1", "http", ""])
def test_bad_port_is_a_usage_error(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--health-port", port]) == cli.EXIT_USAGE
    assert "--health-port" in capsys.readouterr().err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert "COMMAND" in capsys.readouterr().err


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == cli.EXIT_USAGE
    assert "frobnicate" in capsys.readouterr().err


def test_help_and_version_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == cli.EXIT_OK
    assert "run" in capsys.readouterr().out
    assert cli.main(["run", "--help"]) == cli.EXIT_OK
    assert "--kubeconfig" in capsys.readouterr().out
    assert cli.main(["--version"]) == cli.EXIT_OK
    assert capsys.readouterr().out.startswith("pitstop ")


def test_every_subcommand_shares_the_common_options() -> None:
    parser = cli.build_parser()
    assert len(cli.SUBCOMMANDS) >= 1
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        options = {o for a in sub._actions for o in a.option_strings}
        assert {"--kubeconfig", "--verbose"} <= options, name


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pitstop: error: "), err
    return lines[0]


def test_missing_kubeconfig_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--kubeconfig", "/nonexistent"]) == cli.EXIT_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""
    line = one_error_line(captured.err)
    assert "/nonexistent" in line
    assert "no such file" in line


def test_kubeconfig_env_missing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/a:/nonexistent/b")
    assert cli.main(["run"]) == cli.EXIT_ERROR
    assert "$KUBECONFIG" in one_error_line(capsys.readouterr().err)


def test_no_kubeconfig_anywhere(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cli.main(["run"]) == cli.EXIT_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert "--kubeconfig" in line
    assert "~/.kube/config" in line


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("clusters: [", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("apiVersion: v1\nkind: Config\n", "current-context"),
        (VALID_KUBECONFIG.replace("current-context: test", "current-context: nope"), "nope"),
    ],
)
def test_broken_kubeconfig_is_one_clear_line(
    content: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(content)
    assert cli.main(["run", "--kubeconfig", str(path)]) == cli.EXIT_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line
    assert expected in line


def test_same_port_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(VALID_KUBECONFIG)
    argv = ["run", "--kubeconfig", str(path), "--health-port", "18080", "--metrics-port", "18080"]
    assert cli.main(argv) == cli.EXIT_ERROR
    assert "18080" in one_error_line(capsys.readouterr().err)


def test_kubectl_plugin_name() -> None:
    assert cli._prog_name("/usr/local/bin/kubectl-pitstop") == "kubectl pitstop"
    assert cli._prog_name("/venv/bin/pitstop") == "pitstop"


def test_console_script_error_path() -> None:
    """The installed entry point: exit code 1 and exactly one line on stderr."""
    pitstop = Path(sys.executable).parent / "pitstop"
    if not pitstop.exists():
        pytest.skip("the pitstop console script is not installed in this environment")
    proc = subprocess.run(
        [str(pitstop), "run", "--kubeconfig", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert one_error_line(proc.stderr) == "pitstop: error: kubeconfig /nonexistent: no such file"


def test_repair_checks_for_room_unless_told_not_to() -> None:
    """`pitstop repair` leaves requireRoom to its default (true); --no-require-room
    writes false into the NodeRepair it makes."""
    from pitstop.cli import commands
    from pitstop.models import NodeRepairSpec

    def made(*argv: str) -> NodeRepairSpec:
        args = cli.build_parser().parse_args(["repair", "n1", *argv])
        body = commands.repair_body(
            args.node, "r1", None, args.strategy, require_room=args.require_room
        )
        return NodeRepairSpec.model_validate(body["spec"])

    assert made().require_room is True
    assert made("--no-require-room").require_room is False
