"""Statistics: latency summaries in milliseconds, throughput, and interleaved latency series."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) of `values`, linearly interpolated between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency(seconds: Sequence[float]) -> dict[str, Any]:
    """Mean, p50, p95, min and max of durations given in seconds, reported in milliseconds."""
    ms = [1000 * s for s in seconds]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "mean_ms": round(statistics.fmean(ms), 3),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
    }


def throughput(count: int, elapsed: float) -> dict[str, Any]:
    """Workflows per second for `count` workflows completed in `elapsed` seconds."""
    return {
        "workflows": count,
        "elapsed_s": round(elapsed, 3),
        "wf_per_s": round(count / elapsed, 2) if elapsed > 0 else math.nan,
    }


def interleaved(
    runs: Mapping[str, Callable[[int], None]],
    count: int,
    warmup: int,
    rounds: int,
    quiet: Mapping[str, Callable[[], AbstractContextManager[object]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Latency of each of `runs` (a callable doing one workflow for a counter id), measured in `rounds` rounds
    that take turns, so that a drift of the machine (the disk's fsync time varies a lot) hits every system
    alike. The order rotates each round. `quiet[name]` is a context entered around that system's turns (the
    harness pauses idle workers around the floor's)."""
    quiet = quiet or {}
    names = list(runs)
    for name in names:
        with quiet.get(name, nullcontext)():
            for i in range(warmup):
                runs[name](1 + i)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    per_round = max(1, math.ceil(count / max(1, rounds)))
    done = 0
    turn = 0
    while done < count:
        n = min(per_round, count - done)
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            with quiet.get(name, nullcontext)():
                for k in range(n):
                    t0 = time.perf_counter()
                    runs[name](1 + done + k)
                    seconds[name].append(time.perf_counter() - t0)
        done += n
        turn += 1
    return {name: latency(values) for name, values in seconds.items()}
