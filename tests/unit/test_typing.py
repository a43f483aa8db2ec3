"""mypy --strict accepts well-formed compositions and rejects ill-typed ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

HERE = Path(__file__).resolve().parent.parent / "typing"


def _mypy(path: Path) -> str:
    stdout, _, _ = api.run(["--strict", "--no-incremental", "--cache-dir=/dev/null", str(path)])
    return stdout


def test_well_typed_compositions_pass() -> None:
    output = _mypy(HERE / "well_typed.py")
    assert "Success" in output, output


def test_each_ill_typed_line_is_an_error() -> None:
    path = HERE / "ill_typed.py"
    expected = {n for n, line in enumerate(path.read_text().splitlines(), 1) if line.endswith("# error")}
    reported = {int(m) for m in re.findall(rf"{re.escape(path.name)}:(\d+): error", _mypy(path))}
    assert reported == expected
