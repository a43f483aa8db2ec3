"""The benchmark command: every workload on one embedded PostgreSQL, a table, and a JSON report.

    python -m benchmarks.run [--quick] [--out report.json] [--no-dbos] [size overrides]

Workloads (issue 7), each against the floor and DBOS where that means something:

1. sequential start-to-completed latency of a 3-step workflow (SQL text, Python DSL, the Client API);
2. throughput of 500 such workflows from 8 concurrent clients, with 1 and with 2 worker processes;
3. a 10,000-iteration loop with the loop floor at 0: per-step cost early and late;
4. a JOIN of 100 branches;
5. 100,000 completed instances: worker RSS, and EXPLAIN ANALYZE of the claim and the start.

``--quick`` runs every workload small (the smoke test uses it); the default sizes are the issue's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, TypeVar

from benchmarks import dbos_peer, floor, pgd, profile, stats
from benchmarks.server import BenchServer, bench_server, next_xid, reset_statements, top_statements

T = TypeVar("T")

SECTIONS: Final = (
    "meta",
    "floor",
    "sequential",
    "throughput",
    "dbos",
    "loop",
    "join",
    "instances",
    "ratios",
    "targets",
)
SEQUENTIAL_TARGET: Final = 1.3
THROUGHPUT_TARGET: Final = 0.7
THROUGHPUT_FALLBACK: Final = 0.5
DBOS_TARGET: Final = 5.0
LOOP_TARGET: Final = 1.2


@dataclass(frozen=True)
class Sizes:
    sequential: int = 200  # measured workflows per sequential series
    warmup: int = 10
    throughput: int = 500
    clients: int = 8
    loop_iterations: int = 10_000
    loop_window: int = 100
    join_branches: int = 100
    join_runs: int = 3
    instances: int = 100_000
    instance_chunks: int = 10
    dbos_sequential: int = 200
    dbos_queued: int = 500
    rounds: int = 10  # the sequential series take turns in this many rounds


FULL: Final = Sizes()
QUICK: Final = Sizes(
    sequential=4,
    warmup=1,
    throughput=16,
    loop_iterations=50,
    loop_window=20,
    join_branches=10,
    join_runs=1,
    instances=100,
    instance_chunks=2,
    dbos_sequential=4,
    dbos_queued=16,
    rounds=2,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description="pgdurable against the floor and DBOS, on one embedded PostgreSQL."
    )
    parser.add_argument("--quick", action="store_true", help="every workload small (seconds): the smoke test")
    parser.add_argument("--out", type=Path, default=Path("benchmark-report.json"), help="where to write the JSON")
    parser.add_argument("--no-dbos", action="store_true", help="skip DBOS even when it is installed")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="sample the worker with py-spy in phases 1 and 2; stacks go to DIR"
    )
    parser.add_argument("--sequential", type=int, help="measured workflows per sequential series (default 200)")
    parser.add_argument("--throughput", type=int, help="workflows per throughput run (default 500)")
    parser.add_argument("--loop-iterations", type=int, help="iterations of the loop (default 10000)")
    parser.add_argument("--join-branches", type=int, help="branches of the JOIN (default 100)")
    parser.add_argument("--instances", type=int, help="completed instances for the memory check (default 100000)")
    return parser


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    overrides = {
        "sequential": args.sequential,
        "throughput": args.throughput,
        "loop_iterations": args.loop_iterations,
        "join_branches": args.join_branches,
        "instances": args.instances,
    }
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    if args.sequential is not None:
        sizes = dataclasses.replace(sizes, dbos_sequential=args.sequential)
    if args.throughput is not None:
        sizes = dataclasses.replace(sizes, dbos_queued=args.throughput)
    return sizes


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _timed(name: str, work: Callable[[], T]) -> T:
    _say(f"▸ {name} ...")
    t0 = time.perf_counter()
    result = work()
    _say(f"  {name}: {time.perf_counter() - t0:.1f} s")
    return result


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _meta(server: BenchServer, sizes: Sizes, quick: bool) -> dict[str, Any]:
    import pgdurable

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "sizes": dataclasses.asdict(sizes),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu, "platform": platform.platform()},
        "python": platform.python_version(),
        "pgdurable": pgdurable.__version__,
        "source": str(Path(__file__).resolve().parent.parent),
        "git": {
            "commit": _git("rev-parse", "--short", "HEAD"),
            "runtime_changes": bool(_git("status", "--porcelain", "--", "pgdurable")),
        },
        "postgres": server.settings(),
        "worker_command": "python -m pgdurable worker --dsn <owner dsn> " + " ".join(pgd.WORKER_OPTIONS),
        "load_average_at_start": _load(),
    }


# -- ratios and targets ------------------------------------------------------------------------------------------


def _get(report: dict[str, Any], *path: str) -> Any:
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return round(a / b, 3)


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """pgdurable against the floor (the floor run next to each measurement) and against DBOS.

    Latency ratios: lower is better; throughput ratios: higher is better. The ``…_floor_normalised`` DBOS
    ratios divide each system by the floor measured next to it, which cancels a drift of the disk between the
    pgdurable and DBOS parts of the run.
    """

    def g(*path: str) -> Any:
        return _get(report, *path)

    floor_seq = g("floor", "sequential", "mean_ms")
    sql_seq = g("sequential", "sql", "mean_ms")
    dbos_seq = g("dbos", "sequential", "mean_ms")
    dbos_thr = g("dbos", "queued", "wf_per_s")
    out: dict[str, Any] = {
        "sequential_sql_over_floor": _ratio(sql_seq, floor_seq),
        "sequential_python_over_floor": _ratio(g("sequential", "python", "mean_ms"), floor_seq),
        "sequential_client_api_over_floor": _ratio(g("sequential", "client_api", "mean_ms"), floor_seq),
        "sequential_sql_over_dbos": _ratio(sql_seq, dbos_seq),
        "sequential_python_over_dbos": _ratio(g("sequential", "python", "mean_ms"), dbos_seq),
        "sequential_sql_over_dbos_floor_normalised": _ratio(
            _ratio(sql_seq, floor_seq), _ratio(dbos_seq, g("dbos", "floor_adjacent", "sequential", "mean_ms"))
        ),
    }
    best: tuple[float, float] | None = None  # (pgdurable wf/s, its adjacent floor wf/s)
    for n in (1, 2):
        adjacent = g("throughput", f"workers_{n}", "floor_adjacent", "wf_per_s")
        closed = g("throughput", f"workers_{n}", "closed_loop", "wf_per_s")
        suffix = "worker" if n == 1 else "workers"
        out[f"throughput_{n}_{suffix}_over_floor"] = _ratio(closed, adjacent)
        out[f"burst_{n}_{suffix}_over_floor"] = _ratio(g("throughput", f"workers_{n}", "burst", "wf_per_s"), adjacent)
        if isinstance(closed, int | float) and isinstance(adjacent, int | float) and (best is None or closed > best[0]):
            best = (closed, adjacent)
    out["throughput_best_over_dbos"] = _ratio(best[0] if best else None, dbos_thr)
    out["throughput_best_over_dbos_closed_loop"] = _ratio(
        best[0] if best else None, g("dbos", "closed_loop", "wf_per_s")
    )
    out["throughput_best_over_dbos_floor_normalised"] = _ratio(
        _ratio(best[0], best[1]) if best else None,
        _ratio(dbos_thr, g("dbos", "floor_adjacent", "concurrent", "wf_per_s")),
    )
    out["loop_late_over_early"] = g("loop", "late_over_early")
    return out


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 7's targets, each with its value and whether it is met (None: not measured)."""
    r = report["ratios"]
    both = (r["throughput_1_worker_over_floor"], r["throughput_2_workers_over_floor"])
    best = max((v for v in both if v is not None), default=None)
    plans = _get(report, "instances", "explain", "last_chunk") or {}
    index_only = None
    if plans:
        index_only = bool(_get(plans, "claim", "index_scans_only") and _get(plans, "start", "index_scans_only"))
    sequential = r["sequential_sql_over_floor"]
    dbos = r["throughput_best_over_dbos"]
    loop = r["loop_late_over_early"]
    loop_cpu = _get(report, "loop", "late_over_early_cpu")
    rss = _get(report, "instances", "rss_last_over_first_chunk")
    fallback = r["throughput_2_workers_over_floor"]
    rows: list[tuple[str, Any, bool | None]] = [
        ("sequential latency ≤ 1.3 × floor", sequential, _le(sequential, SEQUENTIAL_TARGET)),
        ("concurrent throughput ≥ 0.7 × floor (best of 1, 2 workers)", best, _ge(best, THROUGHPUT_TARGET)),
        ("concurrent throughput ≥ 5 × DBOS (its queue)", dbos, _ge(dbos, DBOS_TARGET)),
        ("loop per-step cost, last window / first window ≤ 1.2", loop, _le(loop, LOOP_TARGET)),
        ("  the same on CPU per step (waits left out)", loop_cpu, _le(loop_cpu, LOOP_TARGET)),
        ("worker RSS flat (last ≤ 1.1 × after the first chunk)", rss, _get(report, "instances", "rss_flat")),
        ("claim and start: no Seq Scan on hot tables", None, index_only),
        ("if missed: ≥ 0.5 × floor throughput with 2 workers", fallback, _ge(fallback, THROUGHPUT_FALLBACK)),
    ]
    return [{"target": name, "value": value, "met": met} for name, value, met in rows]


def _le(value: Any, limit: float) -> bool | None:
    return None if value is None else bool(value <= limit)


def _ge(value: Any, limit: float) -> bool | None:
    return None if value is None else bool(value >= limit)


# -- the table ------------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def _times(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}×"


class _Table:
    """The rows of the comparison: floor, pgdurable (SQL, Python), DBOS, and the SQL front end's ratios."""

    HEADER: Final = (
        f"{'workload':<50}{'floor':>9}{'pgd SQL':>10}{'pgd Py':>10}{'DBOS':>9}{'SQL/floor':>11}{'SQL/DBOS':>10}"
    )

    def __init__(self) -> None:
        self.lines = [self.HEADER, "-" * len(self.HEADER)]

    def row(self, name: str, floor_v: Any, sql_v: Any, py_v: Any, dbos_v: Any, digits: int = 2) -> None:
        self.lines.append(
            f"{name:<50}{_num(floor_v, digits):>9}{_num(sql_v, digits):>10}{_num(py_v, digits):>10}"
            f"{_num(dbos_v, digits):>9}{_times(_ratio(sql_v, floor_v)):>11}{_times(_ratio(sql_v, dbos_v)):>10}"
        )


def render(report: dict[str, Any]) -> str:
    """The human table: figures per system, with ratios of pgdurable's SQL front end to the floor and DBOS."""

    def g(*path: str) -> Any:
        return _get(report, *path)

    meta = report["meta"]
    pg = meta["postgres"]
    sizes = meta["sizes"]
    dbos_note = g("dbos", "version") or g("dbos", "reason") or g("dbos", "error") or "–"
    lines = [
        f"pgdurable benchmarks — {meta['machine']['cpus']} CPUs, PostgreSQL {pg.get('server_version')}, "
        f"fsync={pg.get('fsync')}, synchronous_commit={pg.get('synchronous_commit')}"
        + (", QUICK (sizes too small to mean anything)" if meta["quick"] else ""),
        (f"git {meta['git']['commit']}" if meta["git"]["commit"] else f"source {meta['source']} (not a git checkout)")
        + (" + uncommitted runtime changes" if meta["git"]["runtime_changes"] else ""),
        f"DBOS: {dbos_note}",
        "",
    ]
    table = _Table()
    for stat in ("mean_ms", "p50_ms", "p95_ms"):
        label = f"  {stat[:-3]} (ms)"
        if stat == "mean_ms":
            label = f"1 sequential latency, mean (ms, n={sizes['sequential']})"
        floor_v, dbos_v = g("floor", "sequential", stat), g("dbos", "sequential", stat)
        table.row(label, floor_v, g("sequential", "sql", stat), g("sequential", "python", stat), dbos_v)
    client_api = _num(g("sequential", "client_api", "mean_ms"))
    table.lines.append(f"{'  Client().start(graph).wait(), mean (ms)':<50}{'':>19}{client_api:>10}")
    parts = g("sequential", "sql_breakdown_p50_ms") or {}
    if parts:
        table.lines.append(
            "  SQL p50 breakdown (ms): "
            + ", ".join(f"{name.replace('_', ' ')} {value:.1f}" for name, value in parts.items())
        )
    xids = g("sequential", "writing_transactions_per_workflow") or {}
    table.lines.append(
        f"{'  writing transactions per workflow':<50}{_num(xids.get('floor'), 1):>9}{_num(xids.get('sql'), 1):>10}"
        f"{_num(xids.get('python'), 1):>10}"
    )
    dbos_thr = g("dbos", "queued", "wf_per_s")
    for mode, label in (("closed_loop", "2 throughput, {c} clients, {w}"), ("burst", "  burst (start all, wait), {w}")):
        for workers in (1, 2):
            name = label.format(c=sizes["clients"], w=f"{workers} worker{'s' if workers > 1 else ''} (wf/s)")
            section = g("throughput", f"workers_{workers}") or {}
            floor_thr = _get(section, "floor_adjacent", "wf_per_s")
            table.row(name, floor_thr, _get(section, mode, "wf_per_s"), None, dbos_thr, 1)
    lines += table.lines
    lines.append(
        f"  ({sizes['throughput']} workflows per run; the floor column is the floor run just before each; "
        f"DBOS: its queue, worker_concurrency={sizes['clients']})"
    )
    if g("dbos", "closed_loop"):
        closed = _num(g("dbos", "closed_loop", "wf_per_s"), 1)
        lines.append(f"  (DBOS from {sizes['clients']} client threads instead of its queue: {closed} wf/s)")
    if g("dbos", "floor_adjacent"):
        seq = _num(g("dbos", "floor_adjacent", "sequential", "mean_ms"))
        thr = _num(g("dbos", "floor_adjacent", "concurrent", "wf_per_s"), 1)
        lines.append(
            f"  (the floor next to DBOS: {seq} ms, {thr} wf/s; against DBOS with each divided by its own floor: "
            f"latency {_times(g('ratios', 'sequential_sql_over_dbos_floor_normalised'))}, "
            f"throughput {_times(g('ratios', 'throughput_best_over_dbos_floor_normalised'))})"
        )
    lines.append("")
    lines += _other_lines(report)
    lines += ["", "targets:"]
    for t in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        value = "" if t["value"] is None else f"{t['value']:.2f}×"
        lines.append(f"  {t['target']:<62}{value:>9}  {verdict}")
    return "\n".join(lines)


def _other_lines(report: dict[str, Any]) -> list[str]:
    """Workloads 3 to 5, one paragraph each."""

    def g(*path: str) -> Any:
        return _get(report, *path)

    lines = []
    if g("loop", "iterations"):
        early, late = g("loop", "early") or {}, g("loop", "late") or {}
        lines.append(
            f"3 loop of {g('loop', 'iterations'):,} iterations, loop floor 0 ({g('loop', 'elapsed_s')} s, "
            f"{_num(g('loop', 'ms_per_step_overall'), 3)} ms per step overall): median ms per step at iterations "
            f"{early.get('iterations')}: {_num(early.get('median_ms_per_step'), 3)}, "
            f"at {late.get('iterations')}: {_num(late.get('median_ms_per_step'), 3)}"
        )
        series = ", ".join(f"{w['iterations'][0]}: {w['median_ms_per_step']:.2f}" for w in g("loop", "windows") or [])
        lines.append(
            f"  late/early {_times(g('loop', 'late_over_early'))} "
            f"(on means: {_times(g('loop', 'late_over_early_mean'))}); median ms per step by window start: {series}"
        )
        cpu = ", ".join(f"{w['iterations'][0]}: {w.get('cpu_ms_per_step', 0):.2f}" for w in g("loop", "windows") or [])
        lines.append(
            f"  CPU (worker + its backends) per step, last/first {_times(g('loop', 'late_over_early_cpu'))}; "
            f"ms by window start: {cpu}"
        )
        if early.get("worker_cpu_ms_per_step") is not None:
            lines.append(
                f"  of which, first window: worker process {early['worker_cpu_ms_per_step']:.2f} ms, its server "
                f"backends {early['backends_cpu_ms_per_step']:.2f} ms per step"
            )
        sizes = [w["checkpoint_bytes"] for w in g("loop", "windows") or [] if w.get("checkpoint_bytes")]
        lines.append(
            f"  trend over the run {_num(g('loop', 'trend_pct_over_run'), 1)}%; checkpoint bytes while running: "
            f"{sizes[0] if sizes else '–'} → {sizes[-1] if sizes else '–'}; "
            f"history rows at the end: {_num(g('loop', 'history_rows_at_end'), 0)}"
        )
    if g("join", "branches"):
        lines.append(
            f"4 JOIN of {g('join', 'branches')} branches: {_num(g('join', 'mean_s'), 3)} s start to completed "
            f"({_num(g('join', 'ms_per_branch'))} ms per branch)"
        )
    if g("instances", "instances"):
        samples = g("instances", "rss_samples")
        rate = _num(g("instances", "completed_per_s"), 1)
        lines.append(
            f"5 {g('instances', 'instances'):,} completed instances ({rate}/s): worker RSS "
            f"{samples[1]['rss_kib'] / 1024:.1f} → {samples[-1]['rss_kib'] / 1024:.1f} MiB "
            f"({_times(g('instances', 'rss_last_over_first_chunk'))}, "
            f"{_num(g('instances', 'rss_bytes_per_instance'), 1)} B per instance)"
        )
        for when in ("first_chunk", "last_chunk"):
            plans = g("instances", "explain", when)
            if not plans:
                continue
            claim, start = plans["claim"], plans["start"]
            rows = plans["table_rows"]
            hot = claim["seq_scans_on_hot_tables"] + start["seq_scans_on_hot_tables"]
            lines.append(
                f"  EXPLAIN at the {when.replace('_', ' ')}: df.tasks {rows.get('tasks', 0):,} rows, "
                f"df.instances {rows.get('instances', 0):,} rows; Seq Scan on hot tables: {', '.join(hot) or 'none'}"
            )
            lines.append(f"    claim ({_num(claim['execution_ms'], 3)} ms): {'; '.join(claim['scans']) or 'no scan'}")
            lines.append(
                f"    start ({_num(start.get('server_ms'), 3)} ms a call, rolled back; "
                f"{start['statements']} statements): {'; '.join(start['scans']) or 'no scan'}"
            )
    return lines


# -- main ---------------------------------------------------------------------------------------------------------


def _transactions_per_workflow(server: BenchServer, running: Sequence[pgd.WorkerProcess], count: int) -> dict[str, Any]:
    """Transaction ids taken per workflow (writing transactions, durable or not: the worker's claims commit
    asynchronously but take one too), for the floor (4 by construction) and for pgdurable's front ends."""

    def per_workflow(run: Callable[[int], None]) -> float:
        before = next_xid(server.admin_dsn)
        for i in range(count):
            run(1 + i)
        return round((next_xid(server.admin_dsn) - before) / count, 2)

    out: dict[str, Any] = {"workflows": count}
    with floor.sequential_run(server.floor_dsn) as floor_run, pgd.paused(running):
        out["floor"] = per_workflow(floor_run)
    with pgd.sequential_runs(server.app_dsn, server.owner_dsn, {}) as runs:
        out["sql"] = per_workflow(runs["sql"])
        out["python"] = per_workflow(runs["python"])
    return out


def run(sizes: Sizes, *, quick: bool, with_dbos: bool, profile_dir: Path | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {}
    profiles: dict[str, Any] = {}

    @contextmanager
    def sampled(name: str, pid: int) -> Iterator[None]:
        """py-spy on the worker and pg_stat_statements on the server while a phase runs, when asked for."""
        if profile_dir is None:
            yield
            return
        found: dict[str, Any] = {}
        if profile.available():
            found["file"] = str(profile_dir / f"worker-{name}.txt")
            spy: AbstractContextManager[None] = profile.recording(pid, Path(found["file"]))
        else:
            found["error"] = "py-spy is not installed (pip install py-spy)"
            spy = nullcontext()
        reset_statements(server.admin_dsn)
        with spy:
            yield
        found["statements"] = top_statements(server.admin_dsn)
        profiles[name] = found

    t0 = time.perf_counter()
    _say("▸ embedded PostgreSQL in a temporary directory ...")
    with bench_server(statements=profile_dir is not None) as server:
        report["meta"] = _meta(server, sizes, quick)
        base: dict[str, Any] = {"commits_per_workflow": floor.STEPS + 1}
        concurrent_runs: list[dict[str, Any]] = []

        def floor_concurrent(running: Sequence[pgd.WorkerProcess]) -> dict[str, Any]:
            with pgd.paused(running):
                result = floor.concurrent(server.floor_dsn, sizes.throughput, sizes.clients)
            concurrent_runs.append(result)
            return result

        def throughput(running: Sequence[pgd.WorkerProcess], profiled: str | None = None) -> dict[str, Any]:
            adjacent = floor_concurrent(running)
            # py-spy attaches after the floor's run: it cannot attach to a paused (stopped) worker
            with sampled(profiled, running[0].pid) if profiled else nullcontext():
                measured = pgd.throughput(server.app_dsn, sizes.throughput, sizes.clients, running)
            return {
                "floor_adjacent": adjacent,
                **measured,
            }

        report["throughput"] = {}
        breakdown: dict[str, Any] = {}
        with pgd.workers(server, 1, "one-worker") as one:
            with (
                floor.sequential_run(server.floor_dsn) as floor_run,
                pgd.sequential_runs(server.app_dsn, server.owner_dsn, breakdown, sizes.warmup) as runs,
                sampled("sequential", one[0].pid),
            ):
                latencies = _timed(
                    "sequential latency: floor, pgdurable SQL / Python / Client API, interleaved",
                    lambda: stats.interleaved(
                        {"floor": floor_run, **runs},
                        sizes.sequential,
                        sizes.warmup,
                        sizes.rounds,
                        quiet={"floor": lambda: pgd.paused(one)},
                    ),
                )
            base["sequential"] = latencies.pop("floor")
            report["sequential"] = {**latencies, "sql_breakdown_p50_ms": breakdown}
            report["sequential"]["writing_transactions_per_workflow"] = _timed(
                "writing transactions per workflow",
                lambda: _transactions_per_workflow(server, one, min(20, sizes.sequential)),
            )
            report["throughput"]["workers_1"] = _timed(
                "throughput, 1 worker (and the floor)", lambda: throughput(one, "throughput")
            )
            report["loop"] = _timed(
                f"pgdurable loop of {sizes.loop_iterations}",
                lambda: pgd.long_loop(server, one[0], sizes.loop_iterations, sizes.loop_window),
            )
            report["join"] = _timed(
                f"pgdurable JOIN of {sizes.join_branches}",
                lambda: pgd.wide_join(server, sizes.join_branches, sizes.join_runs),
            )
        with pgd.workers(server, 2, "two-workers") as two:
            report["throughput"]["workers_2"] = _timed("throughput, 2 workers (and the floor)", lambda: throughput(two))
        report["instances"] = _timed(
            f"pgdurable {sizes.instances} instances",
            lambda: pgd.many_instances(server, sizes.instances, sizes.instance_chunks),
        )
        if with_dbos and dbos_peer.available():

            def dbos() -> dict[str, Any]:
                with floor.sequential_run(server.floor_dsn) as floor_run:
                    floor_seq = stats.interleaved({"floor": floor_run}, min(50, sizes.sequential), sizes.warmup, 1)
                adjacent = {"sequential": floor_seq["floor"], "concurrent": floor_concurrent([])}
                result = dbos_peer.run(
                    server.dbos_dsn,
                    sequential=sizes.dbos_sequential,
                    queued=sizes.dbos_queued,
                    clients=sizes.clients,
                    warmup=sizes.warmup,
                )
                return {**result, "floor_adjacent": adjacent}

            report["dbos"] = _timed("DBOS (and the floor next to it)", dbos)
        elif with_dbos:
            report["dbos"] = {"available": False, "reason": dbos_peer.ABSENT}
        else:
            report["dbos"] = {"available": dbos_peer.available(), "reason": "skipped (--no-dbos)"}
        if not report["dbos"].get("available", False) or "reason" in report["dbos"]:
            _say(f"  DBOS: {report['dbos'].get('reason')}")
        elif "error" in report["dbos"]:
            _say(f"  DBOS: {report['dbos']['error']}")
        rates = [r["wf_per_s"] for r in concurrent_runs[:2]]
        base["concurrent"] = {
            "clients": sizes.clients,
            "workflows": concurrent_runs[0]["workflows"],
            "wf_per_s": round(sum(rates) / len(rates), 2),
            "runs": concurrent_runs,
        }
        report["floor"] = base
    report["meta"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
    report["meta"]["load_average_at_end"] = _load()
    report["ratios"] = ratios(report)
    report["targets"] = targets(report)
    ordered = {key: report[key] for key in SECTIONS}
    if profiles:
        ordered["profiles"] = {
            name: {**p, **profile.summary(Path(p["file"]))} if "file" in p else p for name, p in profiles.items()
        }
    return ordered


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: workers are stopped, the server stopped, its directory removed


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sizes = _sizes(args)
    report = run(sizes, quick=args.quick, with_dbos=not args.no_dbos, profile_dir=args.profile)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(render(report))
    for name, found in report.get("profiles", {}).items():
        print(
            f"\nworker profile, {name} phase: {found.get('samples', 0)} samples, {found.get('idle_pct')}% idle slots; "
            f"shares of the busy samples ({found.get('file')}):"
        )
        if "error" in found:
            print(f"  {found['error']}")
        for function, pct in found.get("busy_top_self_pct", [])[:8]:
            print(f"  {pct:5.1f}% self    {function}")
        for function, pct in found.get("busy_pgdurable_total_pct", [])[:12]:
            print(f"  {pct:5.1f}% total   {function}")
        print(f"  server statements of the {name} phase (pg_stat_statements, by total time):")
        for st in found.get("statements", [])[:12]:
            level = "" if st["toplevel"] else "nested "
            print(
                f"  {st['total_ms']:9.1f} ms {st['calls']:6d} calls {st['mean_ms']:7.3f} ms  {level}{st['query'][:90]}"
            )
    print(f"\nreport: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
