"""Exactly once, proven by observation; and two workers sharing one queue (issue 4, "Done when").

Workers run here as SUBPROCESSES (``python -m pgdurable worker``), so a test can SIGKILL one the way a crash
or an OOM killer would: no shutdown code runs, the socket just closes, and PostgreSQL rolls back whatever
transaction the dead worker's backend had open. Every subprocess is killed by a fixture finalizer, even when a
test fails; their output is kept in files and shown in failure messages.

The module's database has the loop floor at 0 (design §7); leases are 2 s and polls 50 ms, the test sizes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from pgdurable import Client, Node, join, seq, wait_for_signal

Conn = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
WORKER_APP_NAME = "pgdurable-worker%"  # LIKE pattern: the application_name worker connections set (worker.py)

STEPS = 50
KILLS = 5
INSTANCES = 200


# -- fixtures and helpers -------------------------------------------------------------------------------------


class WorkerProcesses:
    """Starts `pgdurable worker` subprocesses on one database; `close()` kills those still running."""

    def __init__(self, dsn: str, logs: Path) -> None:
        self.dsn = dsn
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []
        self.killed: set[int] = set()

    def start(self, concurrency: int) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker-{len(self.started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "pgdurable", "worker", "--dsn", self.dsn),
                    *("--concurrency", str(concurrency), "--lease", "2", "--poll", "0.05", "--log-level", "WARNING"),
                ],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.started.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL, and reap it: when this returns, the process and its sockets are gone."""
        self.killed.add(process.pid)
        process.kill()
        process.wait(timeout=10)

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):  # a zombie we can do no more about
                process.wait(timeout=10)

    def check_alive(self) -> None:
        """Fail at once if a worker this test did not kill has exited (it crashed, or could not start)."""
        dead = [p for p in self.started if p.pid not in self.killed and p.poll() is not None]
        assert not dead, f"a worker exited on its own\n{self.output()}"

    def output(self) -> str:
        """The workers' logs and df's work queue, for failure messages."""
        parts = [self._queue()]
        for index, process in enumerate(self.started):
            text = (self.logs / f"worker-{index}.log").read_text(errors="replace").strip()
            parts.append(f"--- worker {index} (pid {process.pid}, exit {process.poll()}):\n{text or '(no output)'}")
        return "\n".join(parts)

    def _queue(self) -> str:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                tasks = conn.execute(
                    "SELECT t.instance_id, t.frame, t.kind, t.wake_at, t.lease_owner, t.lease_expires - now(),"
                    " t.lease_gen, t.claims, i.status, i.waiting_for FROM df.tasks t JOIN df.instances i"
                    " ON i.id = t.instance_id ORDER BY t.wake_at LIMIT 20"
                ).fetchall()
                workers = conn.execute("SELECT id, pid, last_seen_at FROM df.workers").fetchall()
                instances = conn.execute(
                    "SELECT status, waiting_for, left(output, 300), count(*) FROM df.instances GROUP BY 1, 2, 3"
                ).fetchall()
                events = conn.execute(
                    "SELECT instance_id, seq, left(event, 300) FROM df.history ORDER BY recorded_at DESC LIMIT 3"
                ).fetchall()
        except psycopg.Error as error:
            return f"--- df.tasks: unreadable ({error})"
        return "\n".join(
            [
                *("--- df.instances (status, waiting_for, output, count):", *map(str, instances)),
                *("--- df.history (latest 3):", *map(str, events)),
                *("--- df.tasks (first 20 by wake_at):", *map(str, tasks)),
                *("--- df.workers:", *map(str, workers)),
            ]
        )


@pytest.fixture(scope="module")
def db(df_db: Any) -> Any:
    """The module's database, with the loop floor at 0 (design §7: non-conformance tests use 0)."""
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE df.settings SET value = '0' WHERE key = 'loop_floor_seconds'")
    return df_db


@pytest.fixture
def workers(db: Any, tmp_path: Path) -> Iterator[WorkerProcesses]:
    processes = WorkerProcesses(db.admin_dsn, tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def monitor(db: Any) -> Iterator[Conn]:
    """An autocommit superuser connection that watches pg_stat_activity and reads df's tables."""
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
        yield conn


def wait_for(probe: Callable[[], T | None], *, timeout: float, what: str, workers: WorkerProcesses) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` s with the workers' logs."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        workers.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{workers.output()}")
        time.sleep(0.01)


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]


def full_xid(conn: Conn, xid32: int) -> int:
    """The 64-bit transaction id (xid8) of a running transaction's 32-bit `backend_xid`: the one within 2^31 of
    a snapshot's xmax (xmax is one past the latest COMPLETED xid, so a running xid may be at or above it)."""
    xmax = int(one(conn, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))
    full = (xmax & ~0xFFFFFFFF) | xid32
    if full > xmax + (1 << 31):
        full -= 1 << 32
    elif full < xmax - (1 << 31):
        full += 1 << 32
    return full


# -- exactly once ---------------------------------------------------------------------------------------------

# One statement per step: the UPDATE runs first (the LATERAL sleep reads its row), so the step's transaction
# has its xid when it sleeps; the sleep is long enough for a kill to land inside it.
EXACTLY_ONCE_STEP = (
    "WITH u AS (UPDATE eo_counter SET n = n + 1 RETURNING n) "
    "INSERT INTO eo_effects (step, xid, n) "
    "SELECT {step}, txid_current(), u.n FROM u CROSS JOIN LATERAL (SELECT pg_sleep(0.3 + 0 * u.n)) AS s"
)

# A worker backend inside a step's pg_sleep (the runner call is the top-level statement; the step's SQL is
# its argument, so the wait event, not the query text, shows the sleep), with the step's xid.
SLEEPING_STEP = f"""
SELECT pid, backend_xid::text::bigint, query FROM pg_stat_activity
 WHERE datname = current_database() AND application_name LIKE '{WORKER_APP_NAME}'
   AND state = 'active' AND wait_event_type = 'Timeout' AND wait_event = 'PgSleep' AND backend_xid IS NOT NULL
"""


@pytest.mark.timeout(100)
def test_sql_steps_run_exactly_once_across_sigkills(db: Any, workers: WorkerProcesses, monitor: Conn) -> None:
    """A 50-step sequence, each step incrementing a counter and recording its own `txid_current()`.

    The worker subprocess is SIGKILLed at least 5 times, each time while `pg_stat_activity` shows a worker
    backend sleeping inside a step (wait event `PgSleep`; the top-level query is the runner call, the step's
    SQL being its argument), with that step's transaction id assigned. A kill counts only when it is
    CONFIRMED: after the process is reaped, the same backend is still in the same step's `pg_sleep` (same
    `backend_xid`); then, once the orphaned backend exits (it finds its client gone when the sleep ends),
    `pg_xact_status` of that xid is `aborted`. A new worker is started after each kill; it claims the step
    once the dead worker's 2 s lease has expired. At the end:
    - the counter is exactly 50 and the instance is completed;
    - there are exactly 50 effect rows, one per step, and the counter values 1..50 each once;
    - the i-th `StepSucceeded` event in history order has the xid of step i's effect: each step's side
      effects committed in the very transaction that recorded its checkpoint event (design §7);
    - no killed transaction's xid appears among the effects or the history.
    """
    monitor.execute("CREATE TABLE eo_counter (n int NOT NULL)")
    monitor.execute("INSERT INTO eo_counter VALUES (0)")
    monitor.execute("CREATE TABLE eo_effects (step int NOT NULL, xid bigint NOT NULL, n int NOT NULL)")
    monitor.execute(f'GRANT ALL ON eo_counter, eo_effects TO "{db.app_role}"')
    client = Client(db.app_dsn)
    instance = client.start(seq(*(EXACTLY_ONCE_STEP.format(step=i) for i in range(1, STEPS + 1))), label="exactly-once")

    def effects() -> int:
        return int(one(monitor, "SELECT count(*) FROM eo_effects"))

    def committed(count: int) -> bool:
        return effects() >= count

    def exited(backend: int) -> bool:
        return bool(one(monitor, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = %s", (backend,)))

    killed: list[tuple[int, int, int]] = []  # (backend pid, step xid, the step that was running)
    worker = workers.start(concurrency=2)
    attempts = 0
    while len(killed) < KILLS:
        attempts += 1
        assert attempts <= 3 * KILLS, f"only {len(killed)} of {attempts - 1} kills landed mid-step"
        # Spread the kills over the workflow: let a few steps commit between them.
        progress = 4 * len(killed)
        wait_for(
            functools.partial(committed, progress),
            timeout=20,
            what=f"{progress} steps to commit",
            workers=workers,
        )
        pid, xid32, query = wait_for(
            lambda: monitor.execute(SLEEPING_STEP).fetchone(),
            timeout=20,
            what="a worker backend sleeping inside a step",
            workers=workers,
        )
        assert "df_exec" in query, query  # the step runs through the submitter's runner
        xid = full_xid(monitor, xid32)
        running_step = effects() + 1  # sequential: the steps before it have all committed
        workers.kill(worker)
        still = monitor.execute(
            "SELECT backend_xid::text::bigint FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'", (pid,)
        ).fetchone()
        if still is not None and still[0] == xid32:  # the worker died while its step was in pg_sleep
            # The orphaned backend finds its client gone after the sleep and aborts its transaction.
            wait_for(
                functools.partial(exited, pid),
                timeout=20,
                what=f"the killed worker's backend {pid} to exit",
                workers=workers,
            )
            assert one(monitor, "SELECT pg_xact_status(%s::text::xid8)", (str(xid),)) == "aborted"
            killed.append((pid, xid, running_step))
        worker = workers.start(concurrency=2)

    assert client.wait(instance.id, timeout=60) == "completed", workers.output()
    assert one(monitor, "SELECT df.status(%s)", (instance.id,)) == "completed"
    assert one(monitor, "SELECT n FROM eo_counter") == STEPS

    rows = monitor.execute("SELECT step, xid, n FROM eo_effects ORDER BY step").fetchall()
    assert [step for step, _, _ in rows] == list(range(1, STEPS + 1))  # 50 rows, each step once
    assert sorted(n for _, _, n in rows) == list(range(1, STEPS + 1))
    effect_xids = [xid for _, xid, _ in rows]
    assert len(set(effect_xids)) == STEPS

    history = monitor.execute(
        "SELECT event, xid::text::bigint FROM df.history WHERE instance_id = %s ORDER BY seq", (instance.id,)
    ).fetchall()
    succeeded = [(json.loads(event), xid) for event, xid in history if json.loads(event)["type"] == "StepSucceeded"]
    assert len(succeeded) == STEPS
    assert len({event["frame"] for event, _ in succeeded}) == STEPS
    # Sequential steps succeed in order, so the i-th StepSucceeded event is step i's.
    assert [xid for _, xid in succeeded] == effect_xids

    killed_xids = {xid for _, xid, _ in killed}
    assert not killed_xids & set(effect_xids)
    assert not killed_xids & {xid for _, xid in history}
    assert len(killed) >= KILLS
    print(f"\nkills landed mid-step: {len(killed)} of {attempts} attempts, in steps {[s for *_, s in killed]}")


# -- two workers ----------------------------------------------------------------------------------------------


def plain_step(name: str) -> str:
    return f"INSERT INTO tw_effects (instance_id, step, pid) VALUES ('{{sys_instance_id}}', '{name}', pg_backend_pid())"


def branch_step(name: str) -> str:
    """A JOIN branch: its span runs from the runner call's start (statement_timestamp()) to after the sleep
    (the MATERIALIZED CTE is scanned, so it sleeps, before the row is built)."""
    return (
        "WITH s AS MATERIALIZED (SELECT pg_sleep(0.2)::text AS slept) "
        "INSERT INTO tw_effects (instance_id, step, pid, started, finished) "
        f"SELECT '{{sys_instance_id}}', '{name}', pg_backend_pid(), statement_timestamp(), clock_timestamp() FROM s"
    )


def two_worker_graph(*, gated: bool) -> Node:
    """`a >> b >> join(x, y) >> c`; the gated instance waits for the signal `go` before its JOIN."""
    head = seq(plain_step("a"), plain_step("b"))
    if gated:
        head = head >> wait_for_signal("go")
    return seq(head, join(branch_step("x"), branch_step("y")), plain_step("c"))


TWO_WORKER_STEPS = ("a", "b", "c", "x", "y")

# Who holds which lease, from the claims the runtime itself records: a claim (or a continued step) sets
# `lease_owner` (the worker's id in df.workers, which registers its OS pid) and `backend_pid` (the slot
# connection's backend) on the work item, and a step runs on that very backend.
LEASES = """
SELECT DISTINCT t.backend_pid, w.pid FROM df.tasks t JOIN df.workers w ON w.id = t.lease_owner
 WHERE t.backend_pid IS NOT NULL
"""


class LeaseSampler:
    """Samples df.tasks in a thread while the workers run: backend pid -> worker process pid."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.owners: dict[int, set[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-sampler", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> LeaseSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self._stop.wait(0.01):
                    for backend, worker in conn.execute(LEASES):
                        self.owners.setdefault(backend, set()).add(worker)
        except BaseException as error:  # reported by the test
            self.error = error


@pytest.mark.timeout(80)
def test_two_workers_share_200_instances(db: Any, workers: WorkerProcesses, monitor: Conn) -> None:
    """Two worker subprocesses (8 slots each) run 200 concurrent instances of `a >> b >> join(x, y) >> c`.

    Attribution. Each step records its instance, its name and `pg_backend_pid()`: the backend of the worker
    connection that ran it (the runner is a function called on the worker's own connection). Worker
    connections all set the same application_name, so a backend is attributed to a worker process from the
    runtime's own lease records instead: each claim, and each step a worker continues, stores on the work item
    the worker's id (`lease_owner`, whose `df.workers` row registers the worker's OS pid) and the claiming
    backend (`backend_pid`), and the step runs on that backend. A backend is one connection, hence one
    process. A sampler thread reads these pairs every 10 ms; the test fails rather than guess if an effect's
    backend was never seen holding a lease, or was seen under two workers.

    JOIN concurrency. Two branches overlap only if a slot is free when the JOIN starts. While the 200 instances
    saturate the 16 slots they are not: the slot that reaches the JOIN continues with the first branch, and
    the second is queued behind every work item with an older `wake_at` (all the start items), so under
    saturation it runs long after the first (observed: no overlap among the 199). So one of the 200, started
    with the others, waits for a signal after `b`; the test sends it once the other 199 are done, and its two
    branches must overlap (and so have run on different backends).

    Asserted: all 200 complete; the effects are exactly one row per (instance, step), 1,000 in all (no step
    ran twice, none was lost); each worker ran at least 25% of the steps; the gated instance's JOIN branches'
    spans overlap.
    """
    monitor.execute(
        "CREATE TABLE tw_effects (instance_id text NOT NULL, step text NOT NULL, pid int NOT NULL,"
        " started timestamptz, finished timestamptz)"
    )
    monitor.execute(f'GRANT ALL ON tw_effects TO "{db.app_role}"')
    concurrency = 8
    first, second = workers.start(concurrency), workers.start(concurrency)
    # Both registered and connected (listener and slots) before any work appears: neither gets a head start.
    wait_for(
        lambda: (
            one(
                monitor,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE %s",
                (WORKER_APP_NAME,),
            )
            >= 2 * (concurrency + 1)
            and one(monitor, "SELECT count(*) FROM df.workers WHERE pid = ANY(%s)", ([first.pid, second.pid],)) == 2
        ),
        timeout=30,
        what="both workers to register and connect",
        workers=workers,
    )

    client = Client(db.app_dsn)

    def statuses(ids: list[str]) -> dict[str, int]:
        counts: dict[str, int] = dict(
            monitor.execute(
                "SELECT status, count(*) FROM df.instances WHERE id = ANY(%s) GROUP BY status", (ids,)
            ).fetchall()
        )
        assert set(counts) <= {"pending", "running", "completed"}, counts
        return counts

    with LeaseSampler(db.admin_dsn) as sampler:
        with psycopg.connect(db.app_dsn) as conn:  # one transaction: all 200 become visible at once
            gated = client.start(two_worker_graph(gated=True), label="two-workers", conn=conn).id
            free = [
                client.start(two_worker_graph(gated=False), label="two-workers", conn=conn).id
                for _ in range(INSTANCES - 1)
            ]
        wait_for(
            lambda: statuses(free).get("completed") == len(free),
            timeout=50,
            what=f"{len(free)} instances to complete",
            workers=workers,
        )
        client.signal(gated, "go")  # buffered if its wait is not active yet (design §2)
        assert client.wait(gated, timeout=20) == "completed", workers.output()
    assert sampler.error is None, sampler.error
    workers.check_alive()
    ids = [gated, *free]
    assert statuses(ids) == {"completed": INSTANCES}

    rows = monitor.execute("SELECT instance_id, step, pid, started, finished FROM tw_effects").fetchall()
    runs = Counter((instance, step) for instance, step, *_ in rows)
    assert runs == Counter({(i, s): 1 for i in ids for s in TWO_WORKER_STEPS}), "a step ran twice or not at all"
    assert len(rows) == INSTANCES * len(TWO_WORKER_STEPS)

    unseen = {pid for _, _, pid, *_ in rows} - set(sampler.owners)
    assert not unseen, f"backends never seen holding a lease: {unseen}"
    ambiguous = {backend: owners for backend, owners in sampler.owners.items() if len(owners) > 1}
    assert not ambiguous, f"backends seen under two workers: {ambiguous}"
    per_worker = Counter(next(iter(sampler.owners[pid])) for _, _, pid, *_ in rows)
    assert set(per_worker) <= {first.pid, second.pid}, per_worker
    shares = {worker: per_worker[worker] / len(rows) for worker in (first.pid, second.pid)}
    assert all(share >= 0.25 for share in shares.values()), shares

    spans: dict[str, dict[str, tuple[int, Any, Any]]] = {}
    for instance, step, pid, started, finished in rows:
        if step in ("x", "y"):
            assert started is not None and finished is not None and started < finished
            spans.setdefault(instance, {})[step] = (pid, started, finished)

    def overlap(instance: str) -> bool:
        (_, x_start, x_end), (_, y_start, y_end) = spans[instance]["x"], spans[instance]["y"]
        return bool(x_start < y_end and y_start < x_end)

    assert overlap(gated), f"the JOIN branches ran one after the other: {spans[gated]}"
    assert spans[gated]["x"][0] != spans[gated]["y"][0]
    print(
        f"\nsteps per worker: {dict(per_worker)} of {len(rows)}; JOIN branches overlapping among the"
        f" {len(free)} saturated instances: {sum(overlap(i) for i in free)}"
    )
