"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.function_proc import FunctionProcess, build_function


@pytest.fixture(scope="session")
def function_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The function runtime's binary: $PITSTOP_FUNCTION_BIN, or built now."""
    given = os.environ.get("PITSTOP_FUNCTION_BIN")
    if given:
        return Path(given)
    return build_function(tmp_path_factory.mktemp("function") / "function")


@pytest.fixture
def functions(function_bin: Path, tmp_path: Path) -> Iterator[Callable[..., FunctionProcess]]:
    """functions(pod, *flags, **env) starts one instance; all are killed after the test."""
    started: list[FunctionProcess] = []

    def start(pod: str, *args: str, **env: str) -> FunctionProcess:
        fp = FunctionProcess(function_bin, tmp_path, pod, *args, **env)
        started.append(fp)
        return fp

    yield start
    for fp in started:
        fp.stop()
