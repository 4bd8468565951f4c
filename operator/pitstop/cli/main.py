"""The `pitstop` command (also installed as the kubectl plugin `kubectl-pitstop`).

Each subcommand is one `_add_<name>` function that builds its parser and sets
`handler`, plus one entry in SUBCOMMANDS. The options every subcommand shares
(`--kubeconfig`, `--context`, `--verbose`) are accepted before the subcommand and
after it, as kubectl accepts them; every failure is one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias

from pitstop import __version__, constants
from pitstop.cli.errors import CLIError, explain
from pitstop.cluster.kubeconfig import KubeconfigError, load_configuration, resolve_source

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler: TypeAlias = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:  # generic only in typeshed, not at runtime
    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

    from pitstop.cluster.leader import ElectionConfig


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), run the subcommand, return the exit code."""
    prog = _prog_name(sys.argv[0]) if argv is None else "pitstop"
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors, --help, --version
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except (CLIError, KubeconfigError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as e:  # the client's own errors: unreachable, Forbidden, a broken watch
        if args.verbose:
            raise
        print(f"{prog}: error: {explain(e)}", file=sys.stderr)
        return EXIT_ERROR


def _add_global_options(parser: argparse.ArgumentParser, default: object) -> None:
    """The shared options; `default` is None on the top parser and SUPPRESS on each
    subcommand's, so a value given after the subcommand wins and one given before it
    is not overwritten by the subcommand's default."""
    parser.add_argument(
        "--kubeconfig",
        metavar="PATH",
        default=default,
        help=(
            "kubeconfig file (default: $KUBECONFIG; else the pod's ServiceAccount when "
            "$KUBERNETES_SERVICE_HOST is set; else ~/.kube/config)"
        ),
    )
    parser.add_argument(
        "--context",
        metavar="NAME",
        default=default,
        help="the kubeconfig context to use (default: its current-context)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if default is None else default,
        help="log at debug level; show tracebacks",
    )


def build_parser(prog: str = "pitstop") -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Take faulty nodes out of service, repair them, and put them back.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, None)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers, common)
    return parser


# --- pitstop run ---


def _add_run(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "run",
        parents=[common],
        help="run the operator",
        description="Run the operator until SIGTERM/SIGINT.",
    )
    p.add_argument(
        "--health-port",
        type=_port,
        default=constants.HEALTH_PORT,
        metavar="PORT",
        help=f"port of the liveness/readiness endpoint {constants.HEALTH_PATH} "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        default=constants.METRICS_PORT,
        metavar="PORT",
        help="port of the Prometheus endpoint /metrics (default: %(default)s)",
    )
    p.add_argument(
        "--alerts-port",
        type=_port_or_zero,
        default=constants.ALERTS_PORT,
        metavar="PORT",
        help="port of the Alertmanager receiver POST /alerts; 0 disables it (default: %(default)s)",
    )
    p.add_argument(
        "--alerts-secret",
        default=constants.ALERTS_SECRET,
        metavar="NAME/KEY",
        help="Secret (in the operator's namespace) with the receiver's bearer token, "
        "read through the API (default: %(default)s)",
    )
    p.add_argument(
        "--alerts-token-file",
        default=None,
        metavar="PATH",
        help="file with the receiver's bearer token (a mounted Secret), read again when it "
        "changes; instead of --alerts-secret",
    )
    p.add_argument(
        "--alerts-rate",
        type=_rate,
        default=constants.ALERTS_RATE,
        metavar="PER_SECOND",
        help="requests per second each client of the receiver may send on average; "
        "0 disables the limit (default: %(default)s)",
    )
    p.add_argument(
        "--alerts-burst",
        type=_burst,
        default=constants.ALERTS_BURST,
        metavar="N",
        help="requests each client of the receiver may send at once (default: %(default)s)",
    )
    p.add_argument(
        "--bind",
        default="0.0.0.0",
        metavar="ADDR",
        help="address the health and metrics endpoints listen on (default: %(default)s)",
    )
    election = p.add_argument_group(
        "leader election",
        "Of several replicas only the holder of a coordination.k8s.io Lease acts; "
        "the others stand by (serving /healthz and /metrics).",
    )
    election.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="take part in leader election (default: on; off only for a single replica)",
    )
    election.add_argument(
        "--lease-name", default="pitstop", metavar="NAME", help="(default: %(default)s)"
    )
    election.add_argument(
        "--lease-namespace",
        metavar="NS",
        help="namespace of the Lease (default: $POD_NAMESPACE, else pitstop-system)",
    )
    election.add_argument(
        "--identity",
        metavar="ID",
        help="this replica's name in the Lease, unique among replicas and stable across "
        "its restarts (default: $POD_NAME, else <hostname>-<pid>)",
    )
    for flag, default, text in (
        ("--lease-duration", 15.0, "how long an unrenewed Lease stays held"),
        ("--renew-deadline", 10.0, "the leader stops acting when it could not renew for this long"),
        ("--retry-period", 2.0, "how often the leader renews and a standby looks"),
    ):
        election.add_argument(
            flag,
            type=_seconds,
            default=default,
            metavar="SECONDS",
            help=f"{text} (default: %(default)s)",
        )
    p.set_defaults(handler=_cmd_run)


def _election(args: argparse.Namespace) -> ElectionConfig | None:
    from pitstop.cluster.leader import ElectionConfig

    if not args.leader_elect:
        return None
    env = os.environ
    identity = args.identity or env.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    namespace = args.lease_namespace or env.get("POD_NAMESPACE") or constants.OPERATOR_NAMESPACE
    try:
        return ElectionConfig(
            namespace=namespace,
            identity=identity,
            name=args.lease_name,
            lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline,
            retry_period=args.retry_period,
        )
    except ValueError as e:
        raise CLIError(str(e)) from e


def _cmd_run(args: argparse.Namespace) -> int:
    source = resolve_source(args.kubeconfig, os.environ, args.context)
    load_configuration(source)  # fail now, in one line, rather than inside kopf's login loop
    ports = [args.health_port, args.metrics_port] + ([args.alerts_port] if args.alerts_port else [])
    if len(set(ports)) != len(ports):
        twice = sorted({p for p in ports if ports.count(p) > 1})
        raise CLIError(f"port {twice[0]} given twice: health, metrics and alerts ports must differ")
    if "/" not in args.alerts_secret or args.alerts_secret.startswith("/"):
        raise CLIError(f"--alerts-secret must be NAME/KEY, not {args.alerts_secret!r}")

    # Imported late: kopf and the handlers are not needed for parsing or for errors.
    from pitstop.runner import RunOptions, run

    options = RunOptions(
        source=source,
        bind=args.bind,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        alerts_port=args.alerts_port,
        alerts_secret=args.alerts_secret,
        alerts_token_file=args.alerts_token_file,
        alerts_rate=args.alerts_rate,
        alerts_burst=args.alerts_burst,
        election=_election(args),
        verbose=args.verbose,
    )
    try:
        run(options)
    except OSError as e:  # e.g. a port already in use
        raise CLIError(_one_line(e)) from e
    except Exception as e:  # kopf has logged the traceback already
        raise CLIError(f"the operator stopped: {_one_line(e)}") from e
    return EXIT_OK


# --- pitstop repair / status / plan / done ---


def _add_repair(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "repair",
        parents=[common],
        help="create a NodeRepair for a node (and follow it with --wait)",
        description="Create a NodeRepair: cordon NODE, drain it gracefully, repair, verify, "
        "return it.",
    )
    p.add_argument("node", metavar="NODE")
    p.add_argument("--name", help="name of the NodeRepair (default: NODE-<date>-<time>)")
    p.add_argument("--reason", help="why the node is repaired (shown in Events and columns)")
    p.add_argument(
        "--strategy",
        choices=("Manual", "Job", "Webhook"),
        default="Manual",
        help="how the node is repaired (default: %(default)s: `pitstop done NAME` when fixed)",
    )
    p.add_argument("--job-file", metavar="FILE", help="the repair Job (strategy Job)")
    p.add_argument("--webhook-url", metavar="URL", help="the repair service (strategy Webhook)")
    p.add_argument(
        "--webhook-secret", metavar="NAME/KEY", help="bearer token: a Secret key in pitstop-system"
    )
    p.add_argument("--dry-run", action="store_true", help="only report the plan in status")
    p.add_argument(
        "--no-require-room",
        dest="require_room",
        action="store_false",
        help="start without waiting until the node's instances fit on other nodes",
    )
    p.add_argument("--wait", action="store_true", help="follow the repair until it ends")
    p.add_argument(
        "--timeout", type=float, default=3600, metavar="SECONDS", help="for --wait (default: 3600)"
    )
    p.set_defaults(handler=_cmd_repair)


def _cmd_repair(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from pitstop.cli import commands

    name = args.name or commands.default_name(args.node, datetime.now(UTC))
    body = commands.repair_body(
        args.node,
        name,
        args.reason,
        args.strategy,
        job_file=args.job_file,
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
        dry_run=args.dry_run,
        require_room=args.require_room,
    )
    api = commands.api(args.kubeconfig, args.context)
    commands.create_repair(api, body)
    print(f"noderepair/{name} created")
    if not args.wait:
        return EXIT_OK
    phase = commands.follow(api, name, timeout=args.timeout)
    return EXIT_OK if phase in ("Succeeded", "Pending") else EXIT_ERROR


def _add_status(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "status", parents=[common], help="list repairs: phase, instances left, tasks, age"
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="only these repairs")
    p.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        help="json or yaml (the objects, as a List), or wide (more columns)",
    )
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="after the table, print a repair's row again each time it changes",
    )
    p.set_defaults(handler=_cmd_status)


OUTPUTS = ("json", "yaml", "wide")


def _cmd_status(args: argparse.Namespace) -> int:
    from pitstop.cli import commands

    if args.watch and args.output in ("json", "yaml"):  # a usage error: before any request
        raise CLIError(f"--watch prints rows: it does not combine with -o {args.output}")
    api = commands.api(args.kubeconfig, args.context)
    repairs, version = commands.list_repairs_at(api, args.names)
    print(commands.render(repairs, args.output, one=len(args.names) == 1), flush=True)
    if args.watch:
        commands.watch_rows(api, version, args.names, wide=args.output == "wide")
    return EXIT_OK


def _add_abort(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "abort",
        parents=[common],
        help="stop a repair: delete its NodeRepair, which gives the node back",
        description="Delete the NodeRepair NAME. Its finalizer stops what runs, unmarks the "
        "instances, and uncordons the node unless it was cordoned before the repair.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--wait", action="store_true", help="return once the node is given back")
    p.add_argument(
        "--timeout", type=float, default=300, metavar="SECONDS", help="for --wait (default: 300)"
    )
    p.set_defaults(handler=_cmd_abort)


def _cmd_abort(args: argparse.Namespace) -> int:
    from pitstop.cli import commands

    api = commands.api(args.kubeconfig, args.context)
    print(commands.abort(api, args.name))
    if args.wait:
        commands.wait_gone(api, args.name, args.timeout)
        print(f"noderepair/{args.name} gone: its node is given back")
    return EXIT_OK


def _add_completion(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "completion",
        parents=[common],
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script: `source <(pitstop completion bash)`; in zsh, "
        "`source <(pitstop completion zsh)`. Completes commands, options and their choices.",
    )
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(handler=_cmd_completion)


def _cmd_completion(args: argparse.Namespace) -> int:
    from pitstop.cli.completion import script

    print(script(build_parser(), args.shell))
    return EXIT_OK


def _add_plan(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "plan",
        parents=[common],
        help="show what a repair of NODE would do now (changes nothing)",
    )
    p.add_argument("node", metavar="NODE")
    p.set_defaults(handler=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    from pitstop.cli import commands

    the_plan, found = commands.plan(commands.api(args.kubeconfig, args.context), args.node)
    print(commands.plan_text(args.node, the_plan, found))
    return EXIT_OK


def _add_done(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "done", parents=[common], help="mark a Manual repair as repaired (or --failed)"
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--failed", action="store_true", help="declare the repair failed")
    p.set_defaults(handler=_cmd_done)


def _cmd_done(args: argparse.Namespace) -> int:
    from pitstop.cli import commands

    print(commands.mark_done(commands.api(args.kubeconfig, args.context), args.name, args.failed))
    return EXIT_OK


def _add_gate(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "gate",
        parents=[common],
        help="break-glass: open the serving gate of pods while the operator is down",
        description="Gated pods (readiness gate pitstop.dev/serving) turn Ready only once "
        "pitstop sets that condition True; with the operator down, none does. `gate open` "
        "sets it with your own rights (list pods, nodes, NodeRepairs; patch pods/status). "
        "Pods on a node whose repair is past Cordoning stay closed and are listed as held: "
        "that node is being emptied (there is no override; `pitstop abort` gives it back).",
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    o = actions.add_parser(
        "open",
        parents=[common],
        help="set pitstop.dev/serving True on one gated pod, or on all (--all)",
    )
    o.add_argument("pod", nargs="?", metavar="POD", help="one pod (with -n)")
    o.add_argument("--all", action="store_true", help="every gated pod whose gate is not open")
    o.add_argument(
        "-n", "--namespace", metavar="NS", help="the pod's namespace; with --all, only this one"
    )
    o.add_argument("--dry-run", action="store_true", help="only print what would be opened")
    o.set_defaults(handler=_cmd_gate_open)


def _cmd_gate_open(args: argparse.Namespace) -> int:
    if bool(args.pod) == bool(args.all):
        raise CLIError("give one POD (with -n NS) or --all")
    if args.pod and not args.namespace:
        raise CLIError(f"pod {args.pod}: give its namespace with -n")
    from pitstop.cli import gate

    api = gate.api(args.kubeconfig, args.context)
    world = gate.read_world(api)
    if args.all:
        outcomes = gate.open_gates(api, gate.list_pods(api, args.namespace), world, args.dry_run)
        text, ok = gate.report(outcomes)
        print(text)
        return EXIT_OK if ok else EXIT_ERROR
    key = f"{args.namespace}/{args.pod}"
    pod = gate.read_pod(api, key)
    if pod is None:
        raise CLIError(f"pod {key} does not exist")
    if not gate.verdict_needed(pod):
        if gate.is_gated(pod):
            print(f"open already {key}")
            return EXIT_OK
        raise CLIError(f"pod {key} has no {constants.CONDITION_SERVING} readiness gate")
    (outcome,) = gate.open_gates(api, [pod], world, args.dry_run)
    if outcome.action in ("held", "failed", "skipped"):
        raise CLIError(f"{outcome.action} {key}: {outcome.why}")
    print(f"{outcome.action} {key}: {outcome.why}")
    return EXIT_OK


SUBCOMMANDS: tuple[Callable[[SubParsers, argparse.ArgumentParser], None], ...] = (
    _add_repair,
    _add_status,
    _add_plan,
    _add_done,
    _add_abort,
    _add_gate,
    _add_run,
    _add_completion,
)
"""One entry per subcommand, in the order `--help` lists them."""


# --- helpers ---


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {port}")
    return port


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 3600:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 3600, not {value!r}")
    return seconds


def _port_or_zero(value: str) -> int:
    return 0 if value.strip() == "0" else _port(value)


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0 <= rate <= 1e6:  # also NaN
        raise argparse.ArgumentTypeError(f"expected requests per second >= 0, not {value!r}")
    return rate


def _burst(value: str) -> int:
    try:
        burst = int(value)
    except ValueError:
        burst = 0
    if not 1 <= burst <= 1_000_000:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {value!r}")
    return burst


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _prog_name(argv0: str) -> str:
    name = os.path.basename(argv0)
    return "kubectl pitstop" if name.startswith("kubectl-pitstop") else "pitstop"
