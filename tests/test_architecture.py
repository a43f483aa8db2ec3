"""The layers stay apart: the engine is pure (import-linter checks the imports between packages)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PURE = ["engine.py", "state.py", "events.py", "subst.py", "truthy.py", "results.py", "lexer.py", "schedules.py"]
FORBIDDEN_MODULES = {"time", "random", "uuid", "os", "threading", "socket", "psycopg", "httpx"}


@pytest.mark.parametrize("name", PURE)
def test_pure_runtime_modules_have_no_clock_randomness_or_io(name: str) -> None:
    tree = ast.parse((Path(__file__).parent.parent / "pgdurable" / "runtime" / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {alias.name.split(".")[0] for alias in node.names} & FORBIDDEN_MODULES
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in FORBIDDEN_MODULES, node.module
        elif isinstance(node, ast.Attribute) and node.attr in ("now", "utcnow", "today"):
            raise AssertionError(f"{name} reads the clock: .{node.attr}()")
