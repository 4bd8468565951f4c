"""`python -m bench drain|policy|curve|sources|gate [options]`: one benchmark on a cluster of its own."""

from __future__ import annotations

import sys

from bench import curve, drain, gate, policy, sources

BENCHMARKS = {
    "drain": drain.main,
    "policy": policy.main,
    "curve": curve.main,
    "sources": sources.main,
    "gate": gate.main,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m bench {'|'.join(BENCHMARKS)} [options] (--help)", file=sys.stderr)
        return 2
    return BENCHMARKS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
