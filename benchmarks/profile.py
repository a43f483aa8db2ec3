"""Optional sampling profiles of a worker process with py-spy (``--profile DIR``; ``pip install py-spy``).

py-spy attaches to the running ``python -m pgdurable worker`` subprocess, samples only threads that are on
a CPU or holding the GIL (idle waits are left out), and writes collapsed stacks (``*.txt``, for
flamegraph.pl, speedscope or inferno) and a speedscope JSON. `summary` turns the collapsed stacks into the
functions with the most samples, on top of the stack (self) and anywhere on it (total).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _py_spy() -> str | None:
    """py-spy on the PATH, else beside this interpreter (a virtualenv that is not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def available() -> bool:
    return _py_spy() is not None


@contextmanager
def recording(pid: int, path: Path, rate: int = 250) -> Iterator[None]:
    """Sample `pid` into `path` (collapsed stacks) while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        _py_spy() or "py-spy",
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "-o",
        str(path),
    ]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


_IDLE = ("Condition.wait (threading.py)", "Event.wait (threading.py)")


def _frame(frame: str) -> str:
    """``function (/path/to/module.py:line)`` -> ``function (module.py)``, or ``(pgdurable/.../module.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    module = path[path.index("pgdurable/") :] if "pgdurable/" in path else path.rsplit("/", 1)[-1]
    return f"{name} ({module})" if module else name


def summary(path: Path, top: int = 15) -> dict[str, Any]:
    """Where a worker's busy threads spend their samples: the `top` functions on top of the stack (self), and
    pgdurable's functions anywhere on it (total), as percentages of the busy samples. Samples of slots waiting
    for work (a threading wait on top) count as idle. Time waiting for PostgreSQL (psycopg's
    ``Connection.wait``) is busy: it is the round trips and commits of the work item in hand."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = idle = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"file": str(path), "samples": 0}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        if frames[-1] in _IDLE:
            idle += count
            continue
        own[frames[-1]] += count
        for name in set(frames):
            if "(pgdurable/" in name:
                total[name] += count
    busy = samples - idle

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / busy, 1)] for name, n in counter.most_common(top)] if busy else []

    return {
        "file": str(path),
        "samples": samples,
        "idle_pct": round(100 * idle / samples, 1) if samples else None,
        "busy_top_self_pct": share(own),
        "busy_pgdurable_total_pct": share(total),
    }
