"""pgdurable's workloads: the same 3-step work as the floor, written in SQL and in Python, run by worker
processes (``python -m pgdurable worker``), plus a long loop, a wide JOIN and many instances.

Clients start workflows as the application role on a kept connection that LISTENs on ``df_done``, and wait
for the worker's completion notice (a status check every second covers a lost notice). Every measured
instance is checked to have completed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import psycopg

from benchmarks import stats
from benchmarks.concurrency import Ready, timed_clients
from benchmarks.explain import explain_claim, explain_start
from benchmarks.server import BenchServer
from pgdurable import Client, Node, Step, join

WORKER_OPTIONS: Final = ("--concurrency", "8", "--lease", "30", "--poll", "0.05", "--log-level", "WARNING")
TERMINAL: Final = ("completed", "failed", "cancelled")
_START_SQL: Final = "SELECT df.start(%s::text ~> %s::text ~> %s::text)"


class BenchmarkError(RuntimeError):
    """A workload could not run as measured (an instance failed, a worker died, a wait timed out)."""


def step_sql(counter_id: int) -> str:
    """The unit of work of every workflow here, as in the floor."""
    return f"UPDATE counters SET n = n + 1 WHERE id = {counter_id} RETURNING n"


def python_graph(counter_id: int) -> Node:
    """The 3-step workflow in the Python DSL."""
    return Step(step_sql(counter_id)) >> Step(step_sql(counter_id)) >> Step(step_sql(counter_id))


# -- worker processes ---------------------------------------------------------------------------------------


class WorkerProcess:
    """``python -m pgdurable worker`` as a subprocess: started, seen registered, sampled, paused, stopped."""

    def __init__(self, server: BenchServer, name: str) -> None:
        self.server = server
        self.name = name
        self.log_path = server.home / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "pgdurable", "worker", "--dsn", self.server.owner_dsn, *WORKER_OPTIONS]

    @property
    def pid(self) -> int:
        assert self.process is not None, "worker not started"
        return self.process.pid

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.server.owner_dsn, autocommit=True) as conn:
            while not conn.execute("SELECT 1 FROM df.workers WHERE pid = %s", (self.pid,)).fetchone():
                if self.process.poll() is not None:
                    raise BenchmarkError(f"worker {self.name} exited with {self.process.returncode}{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise BenchmarkError(f"worker {self.name} did not register within {timeout} s{self.log_tail()}")
                time.sleep(0.05)
        return self

    def rss_kib(self) -> int:
        """The worker's resident set size (VmRSS of /proc/<pid>/status), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BenchmarkError(f"no VmRSS for worker {self.name} (pid {self.pid})")

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()  # a paused process would not handle SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def errors(self) -> list[str]:
        """Lines of the worker's log that report an error or a traceback."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line][:20]

    def log_tail(self, lines: int = 20) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return ("\n" + "\n".join(tail)) if tail else ""

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def workers(server: BenchServer, count: int, prefix: str) -> Iterator[list[WorkerProcess]]:
    with ExitStack() as stack:
        yield [stack.enter_context(WorkerProcess(server, f"{prefix}-{k + 1}")) for k in range(count)]


@contextmanager
def paused(running: Sequence[WorkerProcess]) -> Iterator[None]:
    """Stop idle workers from polling while the floor is measured on the same server (SIGSTOP/SIGCONT)."""
    for process in running:
        process.pause()
    try:
        yield
    finally:
        for process in running:
            process.resume()


# -- clients --------------------------------------------------------------------------------------------------


class AppSession:
    """One application-role connection that starts workflows and waits for them on LISTEN ``df_done``."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("LISTEN df_done")
        self.client = Client(dsn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> AppSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start_sql(self, counter_id: int) -> str:
        """``'UPDATE ...' ~> '...' ~> '...'`` evaluated by PostgreSQL and started with ``df.start``."""
        step = step_sql(counter_id)
        row = self.conn.execute(_START_SQL, (step, step, step)).fetchone()
        assert row is not None
        return str(row[0])

    def start(self, graph: Node | str) -> str:
        """A graph object or SQL DSL text, started through `Client.start` on this connection."""
        return self.client.start(graph, conn=self.conn).id

    def wait(self, instance_id: str, timeout: float = 60.0) -> None:
        self.wait_all([instance_id], timeout)

    def wait_all(self, instance_ids: Sequence[str], timeout: float = 60.0) -> None:
        """Return once every instance has finished (its completion notice arrived, or its status says so)."""
        pending = set(instance_ids)
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            heard = False
            for note in self.conn.notifies(timeout=max(0.0, min(1.0, left)), stop_after=1):
                heard = True
                pending.discard(note.payload)
            if pending and not heard:  # a quiet second: ask, in case a notice was missed
                rows = self.conn.execute(
                    "SELECT id FROM df.instances WHERE id = ANY(%s) AND status = ANY(%s)",
                    (list(pending), list(TERMINAL)),
                ).fetchall()
                pending.difference_update(r[0] for r in rows)
                if pending and time.monotonic() >= deadline:
                    raise BenchmarkError(
                        f"{len(pending)} instance(s) still running after {timeout} s, e.g. {min(pending)}"
                    )


def check_completed(dsn: str, instance_ids: Sequence[str]) -> None:
    """Raise unless every instance completed (names the first failure and its output)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, status, output FROM df.instances WHERE id = ANY(%s) AND status <> 'completed' LIMIT 1",
            (list(instance_ids),),
        ).fetchall()
        found = conn.execute("SELECT count(*) FROM df.instances WHERE id = ANY(%s)", (list(instance_ids),)).fetchone()
    if rows:
        raise BenchmarkError(f"instance {rows[0][0]} is {rows[0][1]}: {rows[0][2]}")
    if found is None or found[0] != len(set(instance_ids)):
        raise BenchmarkError(f"only {found} of {len(set(instance_ids))} instances were found")


# -- 1. sequential latency ----------------------------------------------------------------------------------


@contextmanager
def sequential_runs(
    app_dsn: str, owner_dsn: str, breakdown: dict[str, Any], warmup: int = 0
) -> Iterator[dict[str, Callable[[int], None]]]:
    """One 3-step workflow, start to completed, per call: SQL text and the Python DSL on a kept LISTENing
    connection, and the Client API as an application writes it (a connection per call, and Instance.wait's
    own). Checks on exit that every instance completed, and fills `breakdown` with where the SQL series'
    time went after its first `warmup` workflows (see `latency_breakdown`)."""
    ids: list[str] = []
    timed: list[tuple[str, float, float, float]] = []  # SQL series: id, call, start returned, done (epoch s)
    with AppSession(app_dsn) as session:

        def sql_text(counter_id: int) -> None:
            called = time.time()
            ids.append(session.start_sql(counter_id))
            started = time.time()
            session.wait(ids[-1])
            timed.append((ids[-1], called, started, time.time()))

        def python_dsl(counter_id: int) -> None:
            ids.append(session.start(python_graph(counter_id)))
            session.wait(ids[-1])

        def client_api(counter_id: int) -> None:
            instance = Client(app_dsn).start(python_graph(counter_id))
            instance.wait(timeout=60)
            ids.append(instance.id)

        yield {"sql": sql_text, "python": python_dsl, "client_api": client_api}
    check_completed(app_dsn, ids)
    breakdown.update(latency_breakdown(owner_dsn, timed[warmup:]))


def latency_breakdown(owner_dsn: str, timed: Sequence[tuple[str, float, float, float]]) -> dict[str, Any]:
    """Medians (ms) of the phases of a sequential 3-step workflow, from client clocks and df.history's
    ``recorded_at`` (same machine, same clock): the ``df.start`` call with its commit; from the start's
    transaction to step 1's event (the worker's wake-up, claim and step 1), between step events, and from
    step 3's event to the client's return (step 3's commit, the completion NOTIFY, the client's wake-up)."""
    if not timed:
        return {}
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT i.id, extract(epoch FROM i.created_at)::float8,
                   array_agg(extract(epoch FROM h.recorded_at)::float8 ORDER BY h.seq)
                       FILTER (WHERE h.event LIKE '{"type":"StepSucceeded"%%')
              FROM df.instances i JOIN df.history h ON h.instance_id = i.id
             WHERE i.id = ANY(%s) GROUP BY i.id
            """,
            ([t[0] for t in timed],),
        ).fetchall()
    server = {r[0]: (r[1], r[2] or []) for r in rows}
    phases: dict[str, list[float]] = {
        "start_call": [],
        "start_to_step_1": [],
        "step_1_to_step_2": [],
        "step_2_to_step_3": [],
        "step_3_to_client": [],
    }
    for instance_id, called, started, done in timed:
        created, steps = server.get(instance_id, (None, []))
        if created is None or len(steps) != 3:
            continue
        phases["start_call"].append(started - called)
        phases["start_to_step_1"].append(steps[0] - created)
        phases["step_1_to_step_2"].append(steps[1] - steps[0])
        phases["step_2_to_step_3"].append(steps[2] - steps[1])
        phases["step_3_to_client"].append(done - steps[2])
    return {name: round(1000 * stats.percentile(v, 50), 3) for name, v in phases.items() if v}


# -- 2. throughput -------------------------------------------------------------------------------------------


def closed_loop(app_dsn: str, count: int, clients: int) -> dict[str, Any]:
    """`clients` connections, each starting a workflow and waiting for it before the next (like the floor)."""
    per_client = max(1, count // clients)
    ids: list[list[str]] = [[] for _ in range(clients)]

    def client(k: int, ready: Ready) -> None:
        first = 1 + k * per_client
        with AppSession(app_dsn) as session:
            session.wait(session.start_sql(first))  # warm-up, not measured
            ready()
            for i in range(first, first + per_client):
                instance_id = session.start_sql(i)
                session.wait(instance_id)
                ids[k].append(instance_id)

    elapsed = timed_clients(clients, client)
    check_completed(app_dsn, [i for part in ids for i in part])
    return {"clients": clients, **stats.throughput(per_client * clients, elapsed)}


def burst(app_dsn: str, count: int, clients: int) -> dict[str, Any]:
    """`clients` connections start their share at once, then wait for all of it (a backlog, like a queue)."""
    per_client = max(1, count // clients)
    ids: list[list[str]] = [[] for _ in range(clients)]

    def client(k: int, ready: Ready) -> None:
        first = 1 + k * per_client
        with AppSession(app_dsn) as session:
            ready()
            ids[k] = [session.start_sql(i) for i in range(first, first + per_client)]
            session.wait_all(ids[k], timeout=600)

    elapsed = timed_clients(clients, client)
    check_completed(app_dsn, [i for part in ids for i in part])
    return {"clients": clients, **stats.throughput(per_client * clients, elapsed)}


def throughput(app_dsn: str, count: int, clients: int, running: Sequence[WorkerProcess]) -> dict[str, Any]:
    """Closed-loop and burst throughput with the `running` worker processes."""
    return {
        "workers": len(running),
        "closed_loop": closed_loop(app_dsn, count, clients),
        "burst": burst(app_dsn, count, clients),
        "worker_errors": [line for p in running for line in p.errors()],
    }


# -- 3. a long loop ------------------------------------------------------------------------------------------


def _iteration_times(conn: psycopg.Connection[Any], instance_id: str, newest: int) -> dict[int, tuple[int, datetime]]:
    """Iteration number -> (seq, recorded_at) of the loop body's step, from the `newest` events of df.history.
    The body returns the counter, which numbers the iteration."""
    rows = conn.execute(
        "SELECT seq, recorded_at, event FROM df.history WHERE instance_id = %s ORDER BY seq DESC LIMIT %s",
        (instance_id, newest),
    ).fetchall()
    out: dict[int, tuple[int, datetime]] = {}
    for seq, recorded_at, text in rows:
        event = json.loads(text)
        if event.get("type") != "StepSucceeded":
            continue
        result = json.loads(event["result"])
        first = (result.get("rows") or [{}])[0]
        if isinstance(first, dict) and "v" in first:
            out[int(first["v"])] = (int(seq), recorded_at)
    return out


def _window(
    times: dict[int, tuple[int, datetime]], first: int, last: int, steps_per_iteration: int
) -> dict[str, Any] | None:
    """The cost of iterations first..last: mean (end to end) and median (of single iterations, which a slow
    fsync now and then does not move), per iteration and per step."""
    if any(k not in times for k in range(first, last + 1)):
        return None
    (seq_a, t_a), (seq_b, t_b) = times[first], times[last]
    per_iteration = (t_b - t_a).total_seconds() / (last - first)
    singles = [(times[k + 1][1] - times[k][1]).total_seconds() for k in range(first, last)]
    median = stats.percentile(singles, 50)
    return {
        "iterations": [first, last],
        "events_per_iteration": round((seq_b - seq_a) / (last - first), 2),
        "ms_per_iteration": round(1000 * per_iteration, 3),
        "ms_per_step": round(1000 * per_iteration / steps_per_iteration, 3),
        "median_ms_per_step": round(1000 * median / steps_per_iteration, 3),
    }


def _checkpoint_bytes(conn: psycopg.Connection[Any], instance_id: str) -> int | None:
    """The size of the instance's stored checkpoint: a state that grew with iterations would show here."""
    row = conn.execute(
        "SELECT octet_length(checkpoint::text) FROM df.instances WHERE id = %s", (instance_id,)
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def _trend(windows: Sequence[dict[str, Any]], iterations: int) -> float | None:
    """The least-squares slope of the median step cost against the iteration, as the change over the whole
    run in percent of the mean: a growing cost shows as a clear positive trend, noise scatters around 0."""
    points = [((w["iterations"][0] + w["iterations"][1]) / 2, w["median_ms_per_step"]) for w in windows]
    if len(points) < 3:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if not spread or not mean_y:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    return round(float(100 * slope * iterations / mean_y), 1)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (``/proc/<pid>/stat``), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker_cpu(conn: psycopg.Connection[Any], worker: WorkerProcess) -> tuple[float, float]:
    """CPU seconds used so far by the worker process, and by the server backends of its connections."""
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'pgdurable-worker'").fetchall()
    return _cpu_seconds(worker.pid), sum(_cpu_seconds(r[0]) for r in rows)


def long_loop(server: BenchServer, worker: WorkerProcess, iterations: int, window: int) -> dict[str, Any]:
    """(With `worker` running.) A do-while loop of `iterations`, loop floor 0: the per-step cost along the run.

    ``df.loop('UPDATE loopctr SET v = v + 1 ... RETURNING v', 'SELECT v < N ...')`` runs 2 SQL steps per
    iteration. Windows of `window` iterations (from iteration 10, at every tenth of the run, and the last ones)
    are read from df.history while the loop runs, so that a compaction of old iterations cannot hide them.
    ``late_over_early`` compares the last window with the first, on the median step (the mean is reported too).
    Each window also gets the CPU time per step of the worker and its server backends (``/proc``), which
    waiting (a slow fsync, a loaded machine) does not inflate: a replay of a growing history would.
    """
    first_start = 10
    if iterations < first_start + 2 * window:
        raise ValueError(f"the loop needs at least {first_start + 2 * window} iterations for windows of {window}")
    steps_per_iteration = 2
    body = "UPDATE loopctr SET v = v + 1 WHERE id = 1 RETURNING v"
    condition = f"SELECT v < {iterations} FROM loopctr WHERE id = 1"
    last_start = iterations - window
    starts = sorted({first_start, *(iterations * k // 10 for k in range(1, 10)), last_start})
    starts = [s for s in starts if first_start <= s <= last_start]
    windows: dict[int, dict[str, Any] | None] = {}
    # window start -> [(v, (worker cpu s, backends cpu s)) at its two ends]
    cpu: dict[int, list[tuple[int, tuple[float, float]]]] = {s: [] for s in starts}

    def mark(v: int, now: tuple[float, float]) -> None:
        for begin, marks in cpu.items():
            if (not marks and v >= begin) or (len(marks) == 1 and v >= begin + window):
                marks.append((v, now))

    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute("UPDATE loopctr SET v = 0 WHERE id = 1")
        with AppSession(server.app_dsn) as session:
            t0 = time.perf_counter()
            instance_id = session.start(f"df.loop('{body}', '{condition}')")
            timeout = max(120.0, 0.5 * iterations)
            pending = [s for s in starts if s != last_start]
            v = 0
            while v < iterations:
                row = admin.execute("SELECT v FROM loopctr WHERE id = 1").fetchone()
                v = int(row[0]) if row else 0
                mark(v, _worker_cpu(admin, worker))
                while pending and v >= pending[0] + window + 2:
                    begin = pending.pop(0)
                    times = _iteration_times(admin, instance_id, (v - begin + 10) * (steps_per_iteration + 2))
                    measured = _window(times, begin, begin + window, steps_per_iteration)
                    if measured is not None:
                        measured["checkpoint_bytes"] = _checkpoint_bytes(admin, instance_id)
                    windows[begin] = measured
                if time.perf_counter() - t0 > timeout:
                    raise BenchmarkError(f"the loop was at iteration {v} of {iterations} after {timeout} s")
                time.sleep(0.1)
            session.wait(instance_id, timeout=timeout)
            elapsed = time.perf_counter() - t0
            mark(iterations + window, _worker_cpu(admin, worker))  # closes the last window
            times = _iteration_times(admin, instance_id, (window + 10) * (steps_per_iteration + 2))
            windows[last_start] = _window(times, last_start, iterations, steps_per_iteration)
            history = admin.execute("SELECT count(*) FROM df.history WHERE instance_id = %s", (instance_id,)).fetchone()
        check_completed(server.app_dsn, [instance_id])
    for begin, measured in windows.items():
        marks = cpu.get(begin, [])
        if measured is not None and len(marks) == 2 and marks[1][0] > marks[0][0]:
            (v_a, (worker_a, server_a)), (v_b, (worker_b, server_b)) = marks
            steps = (min(v_b, iterations) - v_a) * steps_per_iteration
            measured["cpu_ms_per_step"] = round(1000 * (worker_b - worker_a + server_b - server_a) / steps, 3)
            measured["worker_cpu_ms_per_step"] = round(1000 * (worker_b - worker_a) / steps, 3)
            measured["backends_cpu_ms_per_step"] = round(1000 * (server_b - server_a) / steps, 3)
    early, late = windows.get(first_start), windows.get(last_start)
    series = [w for _, w in sorted(windows.items()) if w is not None]

    def ratio(key: str) -> float | None:
        if not early or not late or not early.get(key) or late.get(key) is None:
            return None
        return round(float(late[key]) / float(early[key]), 3)

    return {
        "iterations": iterations,
        "steps_per_iteration": steps_per_iteration,
        "graph": f"df.loop('{body}', '{condition}')",
        "elapsed_s": round(elapsed, 3),
        "ms_per_step_overall": round(1000 * elapsed / (iterations * steps_per_iteration), 3),
        "history_rows_at_end": history[0] if history else None,
        "early": early,
        "late": late,
        "windows": series,
        "trend_pct_over_run": _trend(series, iterations),
        "late_over_early": ratio("median_ms_per_step"),
        "late_over_early_mean": ratio("ms_per_step"),
        "late_over_early_cpu": ratio("cpu_ms_per_step"),
    }


# -- 4. a wide JOIN ------------------------------------------------------------------------------------------


def wide_join(server: BenchServer, branches: int, runs: int) -> dict[str, Any]:
    """(Needs a running worker.) ``join(*[Step(...) for 100 branches])``: start to completed."""
    times: list[float] = []
    ids: list[str] = []
    with AppSession(server.app_dsn) as session:
        session.wait(session.start(join(*[Step(step_sql(1 + i)) for i in range(2)])))  # warm-up
        for run in range(runs):
            graph = join(*[Step(step_sql(1 + run * branches + i)) for i in range(branches)])
            t0 = time.perf_counter()
            instance_id = session.start(graph)
            session.wait(instance_id, timeout=max(60.0, branches * 1.0))
            times.append(time.perf_counter() - t0)
            ids.append(instance_id)
    check_completed(server.app_dsn, ids)
    mean = sum(times) / len(times)
    return {
        "branches": branches,
        "runs_s": [round(t, 3) for t in times],
        "mean_s": round(mean, 3),
        "ms_per_branch": round(1000 * mean / branches, 3),
    }


# -- 5. many instances: worker memory and hot query plans -----------------------------------------------------


def _bulk_start(app_dsn: str, first: int, count: int, batch: int = 500) -> None:
    """Start `count` one-step workflows, `batch` per transaction (each ``df.start`` in the caller's transaction)."""
    query = (
        "SELECT df.start('UPDATE counters SET n = n + 1 WHERE id = ' || (mod(g, 100000) + 1) || ' RETURNING n')"
        " FROM generate_series(%s::bigint, %s::bigint) g"
    )
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        for low in range(first, first + count, batch):
            high = min(first + count, low + batch) - 1
            with conn.transaction():
                conn.execute(query, (low, high))


def _wait_drained(owner_dsn: str, worker: WorkerProcess, timeout: float) -> int:
    """Wait until no instance is pending or running; returns the number of completed instances."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM df.instances WHERE status IN ('pending', 'running')").fetchone()
            if row is not None and row[0] == 0:
                break
            if worker.process is not None and worker.process.poll() is not None:
                raise BenchmarkError(f"worker {worker.name} died{worker.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{row[0] if row else '?'} instances still unfinished after {timeout} s")
            time.sleep(0.2)
        done = conn.execute("SELECT count(*) FROM df.instances WHERE status = 'completed'").fetchone()
        failed = conn.execute("SELECT count(*) FROM df.instances WHERE status <> 'completed'").fetchone()
    if failed and failed[0]:
        raise BenchmarkError(f"{failed[0]} instance(s) did not complete")
    return int(done[0]) if done else 0


def _table_sizes(owner_dsn: str) -> dict[str, int]:
    """Exact row counts of the hot tables."""
    out: dict[str, int] = {}
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        for table in ("instances", "nodes", "tasks", "history"):
            row = conn.execute(f"SELECT count(*) FROM df.{table}").fetchone()
            out[table] = int(row[0]) if row else 0
    return out


def many_instances(server: BenchServer, total: int, chunks: int) -> dict[str, Any]:
    """Complete `total` one-step instances in `chunks`, sampling the worker's RSS after each; EXPLAIN the claim
    and the start with a backlog of one chunk, at the first chunk (small tables) and the last (full tables)."""
    per_chunk = max(1, total // chunks)
    samples: list[dict[str, Any]] = []
    plans: dict[str, Any] = {}
    with WorkerProcess(server, "instances") as worker:
        _bulk_start(server.app_dsn, 1, 50)  # warm-up: imports, caches, prepared plans
        before = _wait_drained(server.owner_dsn, worker, 120)
        samples.append({"completed": before, "rss_kib": worker.rss_kib(), "elapsed_s": 0.0})
        t0 = time.perf_counter()
        for chunk in range(chunks):
            first = before + 1 + chunk * per_chunk
            explain_here = chunk in (0, chunks - 1)
            if explain_here:
                worker.pause()  # a backlog of one chunk waits while the hot queries are explained
                try:
                    _bulk_start(server.app_dsn, first, per_chunk)
                    plans["first_chunk" if chunk == 0 else "last_chunk"] = {
                        "table_rows": _table_sizes(server.owner_dsn),
                        "claim": explain_claim(server.owner_dsn),
                        "start": explain_start(server.admin_dsn, step_sql(1)),
                    }
                finally:
                    worker.resume()
            else:
                _bulk_start(server.app_dsn, first, per_chunk)
            done = _wait_drained(server.owner_dsn, worker, max(600.0, per_chunk * 0.5))
            samples.append(
                {"completed": done, "rss_kib": worker.rss_kib(), "elapsed_s": round(time.perf_counter() - t0, 2)}
            )
            print(
                f"    instances: {done - before}/{per_chunk * chunks} done, worker RSS {samples[-1]['rss_kib']} KiB",
                file=sys.stderr,
                flush=True,
            )
        elapsed = time.perf_counter() - t0
        errors = worker.errors()
    baseline = samples[1]["rss_kib"] if len(samples) > 1 else samples[0]["rss_kib"]
    last = samples[-1]["rss_kib"]
    completed = samples[-1]["completed"] - samples[0]["completed"]
    per_instance = (
        (last - baseline) * 1024 / max(1, samples[-1]["completed"] - samples[1]["completed"])
        if len(samples) > 2
        else 0.0
    )
    return {
        "instances": completed,
        "chunks": chunks,
        "workflow": "one step: UPDATE counters SET n = n + 1 WHERE id = k RETURNING n",
        "elapsed_s": round(elapsed, 2),
        "completed_per_s": round(completed / elapsed, 1) if elapsed > 0 else None,
        "rss_samples": samples,
        "rss_growth_kib": last - baseline,
        "rss_last_over_first_chunk": round(last / baseline, 3),
        "rss_bytes_per_instance": round(per_instance, 1),
        "rss_flat": last <= 1.10 * baseline,
        "table_rows_at_end": _table_sizes(server.owner_dsn),
        "explain": plans,
        "worker_errors": errors,
    }
