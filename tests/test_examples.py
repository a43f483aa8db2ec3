"""Every example runs, as a user would run it: a fresh process on a fresh embedded PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgdurable import embedded

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.timeout(300)
def test_quickstart_runs_on_the_embedded_default(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGDURABLE_")}
    env["PGDURABLE_HOME"] = str(tmp_path)
    try:
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "quickstart.py")], env=env, capture_output=True, text=True, timeout=240
        )
    finally:
        embedded.stop(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Python and SQL front ends gave the same result: True" in done.stdout
    assert done.stdout.count(": completed") == 2
