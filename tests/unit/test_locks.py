"""requirements.lock and requirements-dev.lock (made by `make lock`) agree with
pyproject.toml: every dependency pinned inside its range with hashes, the dev lock
holding the runtime lock's versions, so the image and the tests run the same code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.M)


def pins(path: Path) -> dict[str, str]:
    return {canonicalize_name(n): v for n, v in PIN.findall(path.read_text())}


def hashed(path: Path) -> dict[str, int]:
    """Per pinned package, how many --hash lines follow its pin."""
    counts: dict[str, int] = {}
    name = ""
    for line in path.read_text().splitlines():
        if m := PIN.match(line):
            name = canonicalize_name(m.group(1))
            counts[name] = 0
        elif "--hash=sha256:" in line and name:
            counts[name] += 1
    return counts


def project() -> dict[str, list[Requirement]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        "runtime": [Requirement(r) for r in data["dependencies"]],
        "dev": [Requirement(r) for r in data["optional-dependencies"]["dev"]],
    }


def test_the_runtime_lock_pins_every_dependency_in_its_range_with_hashes() -> None:
    lock = ROOT / "requirements.lock"
    locked = pins(lock)
    for req in project()["runtime"]:
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is not in requirements.lock: run make lock"
        assert req.specifier.contains(locked[name]), (
            f"requirements.lock has {req.name}=={locked[name]}, outside {req.specifier}: "
            "run make lock"
        )
    assert all(n > 0 for n in hashed(lock).values()), hashed(lock)


def test_the_dev_lock_has_the_runtime_versions_and_the_dev_tools() -> None:
    runtime, dev = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-dev.lock")
    assert {n: dev.get(n) for n in runtime} == runtime
    for req in project()["dev"]:
        name = canonicalize_name(req.name)
        assert name in dev and req.specifier.contains(dev[name]), f"{req}: run make lock"
    assert all(n > 0 for n in hashed(ROOT / "requirements-dev.lock").values())


def test_kopf_is_held_to_one_minor() -> None:
    """pitstop.kopf_startup patches kopf's private modules as one minor has them."""
    (kopf,) = [r for r in project()["runtime"] if r.name == "kopf"]
    assert kopf.specifier.contains("1.45.0") and not kopf.specifier.contains("1.46.0")
