"""The five fault scenarios. Each trial gets a fresh database cloned from the suite's template, injects its
faults, lets the workflows finish, stops every worker, then checks the invariants (`harness.check_invariants`).

A trial starts its instances with `Trial.start` (which remembers them for the invariants) and records in its
`Tally` the faults it injected and what it observed: which failpoint killed a worker, how an in-doubt commit
ended, a late commit fenced out, the SQLSTATE of each retried failure.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgdurable import from_json, join, retry, seq
from pgdurable import sql as pgdurable_sql
from pgdurable.runtime.engine import replay
from pgdurable.runtime.events import event_from_json
from tests.fault.harness import (
    BACKOFF_MS,
    LEASE_SECONDS,
    WORKER_APP_NAME,
    Cluster,
    Conn,
    Database,
    Findings,
    Shape,
    WorkerProcess,
    Workers,
    check_invariants,
    effect,
    full_xid,
    normal_json,
    shapes,
    trial_database,
    wait_for,
    xact_status,
)

FAILPOINTS = ("after_runner", "before_commit", "after_commit_before_ack")


@dataclass
class Tally:
    """One scenario's figures over its trials."""

    scenario: str
    trials: int = 0
    faults: int = 0
    findings: Findings = field(default_factory=Findings)
    observed: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        f = self.findings
        clean = f.duplicates == 0 and f.losses == 0 and not f.problems and f.completed == f.instances
        return clean and not self.unmet()

    def unmet(self) -> list[str]:
        """The scenario's faults that did not happen as often as its trials must make them happen."""
        seen, n = self.observed, self.trials
        wanted = {
            "sigkill": {"SIGKILL (any)": (self.faults, 4 * n)},
            "pg_crash": {
                "PostgreSQL crash (immediate stop)": (seen["PostgreSQL crash (immediate stop)"], 2 * n),
                "worker connections restored": (seen["worker connections restored"], n),
            },
            "terminate": {
                "in-doubt COMMIT that committed": (seen["in-doubt COMMIT that committed"], n),
                "in-doubt COMMIT that rolled back": (seen["in-doubt COMMIT that rolled back"], n),
            },
            "fence": {"late commit rejected by the fence": (seen["late commit rejected by the fence"], n)},
            "conflicts": {"retried 40P01 or 55P03": (seen["retried 40P01"] + seen["retried 55P03"], n)},
        }[self.scenario]
        return [f"{what}: {got} < {least}" for what, (got, least) in wanted.items() if got < least]

    def report(self) -> str:
        f = self.findings
        lines = [
            f"{self.scenario}: {self.trials} trials, {self.faults} faults, {f.completed}/{f.instances} completed,"
            f" {f.steps} steps, {f.duplicates} duplicates, {f.losses} losses; observed {dict(self.observed)}"
        ]
        lines += [f"  not observed enough: {u}" for u in self.unmet()]
        lines += [f"  problem: {p}" for p in f.problems[:30]]
        return "\n".join(lines)


@dataclass
class Trial:
    cluster: Cluster
    db: Database
    workers: Workers
    rng: random.Random
    tally: Tally
    started: dict[str, Shape] = field(default_factory=dict)  # every instance started, for the invariants

    def fault(self, what: str) -> None:
        self.tally.faults += 1
        self.tally.observed[what] += 1

    def start_shapes(self, made: dict[str, Shape], copies: int = 1) -> dict[str, Shape]:
        """Start `copies` instances of each shape (as the application role); id -> shape."""
        started = {}
        for _ in range(copies):
            for shape in made.values():
                started[self.start(shape)] = shape
        return started

    def start(self, shape: Shape) -> str:
        """Start one instance of `shape`; the invariants will be checked for it."""
        instance_id = self.db.start(shape.graph, shape.name)
        self.started[instance_id] = shape
        return instance_id

    def send_signals(self, started: dict[str, Shape]) -> None:
        for instance_id, shape in started.items():
            for name in shape.signals:
                self.db.signal(instance_id, name, {"from": "fault suite"})

    def registered(self, *processes: WorkerProcess, timeout: float = 90.0) -> None:
        """Wait until the workers have registered in df.workers (they claim work from then on)."""
        pids = [p.pid for p in processes]

        def ready() -> bool:
            for process in processes:
                assert process.alive(), f"worker {process.pid} exited\n{process.output()}"
            with self.db.admin() as conn:
                row = conn.execute("SELECT count(*) FROM df.workers WHERE pid = ANY(%s)", (pids,)).fetchone()
            return row is not None and row[0] == len(pids)

        wait_for(ready, timeout=timeout, what=f"workers {pids} to register", every=0.02)

    def finish(self, *, timeout: float = 90.0, concurrency: int = 4) -> None:
        """Make sure a healthy worker runs, wait for every instance started to end, then stop all workers."""
        if not any(p.alive() and p.released and not p.failpoint for p in self.workers.started):
            self.workers.start(concurrency=concurrency)
        self.db.wait_terminal(list(self.started), timeout=timeout, workers=self.workers)
        for process in self.workers.alive():
            self.workers.stop(process)


Scenario = Callable[[Trial], None]


# -- 1. SIGKILL --------------------------------------------------------------------------------------------


def sigkill(trial: Trial, kills: int = 4) -> None:
    """The worker is SIGKILLed `kills` times: at a random moment after it registered, or by itself at one of
    its failpoints (after the runner, before COMMIT, after COMMIT before it continues). Every shape runs:
    sequences, joins, races, loops, timers and signals (sent at random points between the kills). One worker
    runs at a time; the next one is prepared (imported) while the current one works."""
    rng = trial.rng
    modes = [rng.choice(("random", *FAILPOINTS)) for _ in range(kills)]

    def prepare(mode: str) -> WorkerProcess:
        return trial.workers.prepare(concurrency=2, failpoint=None if mode == "random" else mode)

    started = trial.start_shapes(shapes(sleep_seconds=0.2))
    pending_signals = {i: rng.randrange(kills + 1) for i, s in started.items() if s.signals}
    upcoming = prepare(modes[0])
    for round_, mode in enumerate(modes):
        for instance_id in [i for i, at in pending_signals.items() if at == round_]:
            trial.send_signals({instance_id: started[instance_id]})
            del pending_signals[instance_id]
        worker = trial.workers.go(upcoming)
        upcoming = prepare(modes[round_ + 1]) if round_ + 1 < kills else trial.workers.prepare(concurrency=4)
        if mode == "random":
            trial.registered(worker)
            time.sleep(rng.uniform(0.0, 1.5))
            holding = _leases_held(trial.db, worker)
            if trial.workers.kill(worker):
                trial.fault("SIGKILL at a random moment")
                trial.tally.observed["SIGKILL at a random moment, holding a lease"] += holding > 0
            continue
        try:
            code = worker.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:  # no step reached the failpoint in time: kill it where it stands
            if trial.workers.kill(worker):
                trial.fault("SIGKILL at a random moment")
            continue
        assert code == -signal.SIGKILL, f"worker with failpoint {mode} exited with {code}\n{worker.output()}"
        trial.fault(f"failpoint {mode}")
    trial.send_signals({i: started[i] for i in pending_signals})
    trial.workers.go(upcoming)
    trial.finish()


def _leases_held(db: Database, worker: WorkerProcess) -> int:
    """How many work items the worker holds a live lease on (so many steps or transitions in flight)."""
    with db.admin() as conn:
        row = conn.execute(
            "SELECT count(*) FROM df.tasks t JOIN df.workers w ON w.id = t.lease_owner"
            " WHERE w.pid = %s AND t.lease_expires > now()",
            (worker.pid,),
        ).fetchone()
    return 0 if row is None else int(row[0])


# -- 2. PostgreSQL crash -----------------------------------------------------------------------------------


def _worker_backends(conn: Conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (WORKER_APP_NAME,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def pg_crash(trial: Trial, crashes: int = 2) -> None:
    """PostgreSQL stops as a crash does (``pg_ctl stop -m immediate``: every backend killed, no checkpoint)
    `crashes` times mid-run, stays down for a random while, and starts again (WAL recovery). Two workers
    keep running throughout: each must reconnect on its own (their slots retry on OperationalError), every
    one of their connections must come back, and no worker thread may die."""
    rng = trial.rng
    concurrency = 3
    running = [trial.workers.start(concurrency=concurrency) for _ in range(2)]
    trial.registered(*running)
    started = trial.start_shapes(shapes(sleep_seconds=0.3), copies=2)
    signalled = dict(rng.sample(sorted(started.items()), k=len(started) // 2))
    trial.send_signals({i: s for i, s in signalled.items() if s.signals})
    for _ in range(crashes):
        time.sleep(rng.uniform(0.2, 1.0))
        with trial.db.admin() as admin:
            busy = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state <> 'idle'",
                (WORKER_APP_NAME,),
            ).fetchone()
        trial.cluster.crash()
        trial.fault("PostgreSQL crash (immediate stop)")
        trial.tally.observed["worker transactions open at a crash"] += int(busy[0]) if busy else 0
        time.sleep(rng.uniform(0.1, 1.5))
        trial.cluster.restart()
    trial.send_signals({i: s for i, s in started.items() if i not in signalled and s.signals})
    trial.db.wait_terminal(list(trial.started), timeout=90, workers=trial.workers)

    dead = [p.log.name for p in running if not p.alive()]
    assert not dead, f"workers exited after the crash instead of reconnecting: {dead}\n{trial.workers.output()}"
    expected = concurrency * len(running) + len(running)  # each worker: its slots and its listener

    def reconnected() -> bool:
        with trial.db.admin() as conn:
            return _worker_backends(conn) >= expected

    wait_for(reconnected, timeout=60, what=f"all {expected} worker connections to come back", every=0.1)
    trial.tally.observed["worker connections restored"] += 1
    # A thread logs "...; reconnecting" when it loses its connection, and "... reconnected after N attempts"
    # when it is back (its waits double from the poll interval, 50 ms here, up to 5 s).
    trial.tally.observed["connections lost, as logged by the workers"] += sum(
        p.output().count("; reconnecting") for p in running
    )
    trial.tally.observed["reconnect attempts logged by the workers"] += sum(
        int(n) for p in running for n in re.findall(r"reconnected after (\d+) attempts", p.output())
    )
    for process in running:
        trial.workers.stop(process)


# -- 3. pg_terminate_backend -------------------------------------------------------------------------------


def terminate(trial: Trial, random_kills: int = 3, in_doubt: int = 4) -> None:
    """Worker connections are ended with ``pg_terminate_backend`` from an admin connection, targeting the
    backends whose application_name is the worker's:

    1. at random moments, any of them (slots and listeners, busy or idle);
    2. inside COMMIT ("in doubt": the worker sends COMMIT and sees its connection die), both ways:
       - the commit FAILS: a transaction that notified (a step that completes an instance or hands work to
         other workers) takes the notification queue's lock in COMMIT before its commit record is written;
         the admin holds that lock (its own notifying commit waits for a synchronous standby, see below), so
         the worker's COMMIT waits on it (`wait_event_type = 'Lock'`) and is terminated there. The
         transaction must end `aborted`, with no history, and the step run again;
       - the commit SUCCEEDS: `synchronous_standby_names` names a standby that never connects, so the other
         worker commits (claims excepted: they commit with synchronous_commit off) wait for it AFTER their
         commit record is flushed (`wait_event = 'SyncRep'`); terminated there, the transaction stays
         `committed` while the worker saw its connection die. Other SyncRep waits (heartbeats) are released
         with pg_cancel_backend (the commit then completes with a warning).

    The suite's own connections commit with synchronous_commit = local and so never wait. (A step cannot make
    its own COMMIT slow: the runner ends with SET CONSTRAINTS ALL IMMEDIATE, so deferred triggers fire inside
    the runner, not at COMMIT; hence the lock and the standby.)"""
    rng = trial.rng
    running = [trial.workers.start(concurrency=3) for _ in range(2)]
    trial.registered(*running)
    started = trial.start_shapes(shapes(sleep_seconds=0.2), copies=2)
    trial.send_signals(started)
    outcomes: list[tuple[int, str]] = []  # (xid of a transaction terminated in COMMIT, how it must end)
    with trial.db.admin() as admin:
        for _ in range(random_kills):
            time.sleep(rng.uniform(0.1, 0.6))
            backends = admin.execute(_WORKER_BACKENDS, (WORKER_APP_NAME,)).fetchall()
            if backends:
                pid = rng.choice(backends)[0]
                if admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,):
                    trial.fault("backend terminated at a random moment")
        # Fresh instances for the COMMIT phase (starting one notifies, which the phase blocks): sequential
        # steps commit without notifying, JOINs hand work over and completions notify.
        e = effect()
        shape = Shape("in-doubt", seq(e, join(e, e), e, e, join(e, e, e), e), (9,))
        for _ in range(6):
            trial.start(shape)
        _terminate_in_commit(trial, admin, outcomes, in_doubt)

    trial.finish()
    with trial.db.admin() as admin:
        for xid, expected in outcomes:
            status = xact_status(admin, xid)
            assert status == expected, f"in-doubt transaction {xid} ended {status}, expected {expected}"
            recorded = admin.execute("SELECT count(*) FROM df.history WHERE xid = %s::text::xid8", (str(xid),))
            row = recorded.fetchone()
            events = 0 if row is None else int(row[0])
            if expected == "committed":
                trial.tally.observed["in-doubt COMMIT that committed"] += 1
                trial.tally.observed["in-doubt COMMIT that committed history events"] += bool(events)
            else:
                assert events == 0, f"aborted transaction {xid} left {events} history events"
                trial.tally.observed["in-doubt COMMIT that rolled back"] += 1


_WORKER_BACKENDS = """
SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()
"""

# Worker backends waiting inside COMMIT: for a lock (the notification queue's) or for the standby.
_WAITING_IN_COMMIT = """
SELECT pid, query, CASE WHEN wait_event_type = 'Lock' THEN 'Lock' ELSE wait_event END, backend_xid::text::bigint
  FROM pg_stat_activity
 WHERE application_name = %s AND datname = current_database()
   AND (wait_event_type = 'Lock' OR wait_event = 'SyncRep')
"""


def _terminate_in_commit(trial: Trial, admin: Conn, outcomes: list[tuple[int, str]], count: int) -> None:
    """Terminate `count` worker backends inside COMMIT: half before their commit record (waiting for the
    notification lock), then half after it (waiting for the synchronous standby)."""
    _set_sync_standby(admin, "fault_standby_that_never_comes")
    holder = psycopg.connect(trial.db.cluster.dsn(trial.db.name, "postgres"), autocommit=True)
    holding = threading.Thread(target=_notify_and_commit, args=(holder,), name="notification-lock-holder")
    try:
        holder_pid = holder.info.backend_pid
        holding.start()

        def holds_lock() -> bool:
            # A worker's notifying commit may hold the lock while it waits for the standby: release those.
            _terminate_waiting(trial, admin, outcomes, {})
            row = admin.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (holder_pid,)).fetchone()
            return row == ("SyncRep",)

        wait_for(holds_lock, timeout=60, what="the admin's notifying COMMIT to hold the notification lock")
        wanted = {"aborted": count // 2}
        wait_for(
            lambda: not _terminate_waiting(trial, admin, outcomes, wanted),
            timeout=60,
            what="worker COMMITs waiting for the notification lock",
            every=0.005,
        )
        admin.execute("SELECT pg_cancel_backend(%s)", (holder_pid,))  # the holder's commit completes
        holding.join(10)
        wanted = {"committed": count - count // 2}
        wait_for(
            lambda: not _terminate_waiting(trial, admin, outcomes, wanted),
            timeout=60,
            what="worker COMMITs waiting for the synchronous standby",
            every=0.005,
        )
    finally:
        _set_sync_standby(admin, "")
        for _ in range(3):  # commits that began to wait before the reload took effect, the holder's too
            for (pid,) in admin.execute("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'").fetchall():
                admin.execute("SELECT pg_cancel_backend(%s)", (pid,))
            time.sleep(0.05)
        holding.join(10)
        holder.close()


def _terminate_waiting(trial: Trial, admin: Conn, outcomes: list[tuple[int, str]], wanted: dict[str, int]) -> int:
    """One pass over the worker backends waiting inside COMMIT: terminate those of a kind still `wanted`
    (a lock wait comes before the commit record: the commit will fail; a SyncRep wait after it: it has
    succeeded), release the other SyncRep waits with pg_cancel_backend. Returns how many are still wanted."""
    for pid, query, wait, xid32 in admin.execute(_WAITING_IN_COMMIT, (WORKER_APP_NAME,)).fetchall():
        outcome = {"Lock": "aborted", "SyncRep": "committed"}.get(wait)
        if query == "COMMIT" and xid32 is not None and outcome is not None and wanted.get(outcome):
            xid = full_xid(admin, xid32)
            if admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,):
                way = "fails" if outcome == "aborted" else "succeeds"
                trial.fault(f"backend terminated inside COMMIT (the commit {way})")
                outcomes.append((xid, outcome))
                wanted[outcome] -= 1
        elif wait == "SyncRep":
            admin.execute("SELECT pg_cancel_backend(%s)", (pid,))
    return sum(wanted.values())


def _notify_and_commit(conn: Conn) -> None:
    """Commit a NOTIFY with synchronous_commit on: with an absent synchronous standby, the COMMIT waits for it
    while it holds the notification queue's lock, until pg_cancel_backend releases it."""
    conn.execute("SET synchronous_commit = on")
    with contextlib.suppress(psycopg.Error), conn.transaction():
        conn.execute("CREATE TEMP TABLE fault_hold () ON COMMIT DROP")  # WAL written: a commit to wait for
        conn.execute("NOTIFY fault_hold")


def _set_sync_standby(conn: Conn, names: str) -> None:
    conn.execute(sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(names)))
    conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.1)  # backends pick the new value up at their next command


# -- 4. fencing --------------------------------------------------------------------------------------------

# A worker backend asleep inside the slow step, with the work item it holds and the worker process holding it.
_SLEEPING = """
SELECT a.pid, a.backend_xid::text::bigint, t.instance_id, t.frame, t.lease_gen, w.pid
  FROM pg_stat_activity a
  JOIN df.tasks t ON t.backend_pid = a.pid
  JOIN df.workers w ON w.id = t.lease_owner
 WHERE a.application_name = %s AND a.datname = current_database() AND a.wait_event = 'PgSleep'
   AND a.backend_xid IS NOT NULL
"""


def _state(conn: Conn, pid: int) -> str | None:
    row = conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return None if row is None else str(row[0])


def fence(trial: Trial, instances: int = 6) -> None:
    """2 to 4 workers compete; one is paused in a step that outlives its lease, and its late commit is
    OBSERVED rejected by the fence. (A worker paused after its step's fence ran holds the work item until it
    resumes, or until the server ends its idle transaction: no one else can take it over then.)

    Each instance runs `a >> slow >> join(b, c) >> d`, where `slow` records its effect, then sleeps for twice
    the lease. A worker sends a step, its fence and its instance lock in one pipeline, so its backend runs the
    fence right after the step, whatever the worker does meanwhile.
    1. W1: a worker whose backend B1 sleeps in `slow` (its transaction X1 has inserted the effect). W1 is
       SIGSTOPped: it no longer renews its lease.
    2. W1's lease (2 s) expires while B1 still sleeps; another worker W2 claims the same work item
       (lease_gen g2 > g1) and runs the step on B2 (transaction X2).
    3. B1 finishes the step, locks the instance and runs the fence, which finds g2: it waits, idle in
       transaction, for W1. Nothing but the fence now stops W1's commit: the checkpoint still has the step
       pending (X2 is still in progress).
    4. SIGCONT W1. Observed: X1 ends `aborted` while W1 and its connection B1 stay alive (no crash, no
       terminated connection: the worker rolled back on its own). Without the fence, W1 would have folded
       the step into the checkpoint and committed X1.
    5. W2 commits; at the end the step has exactly one effect, with xid X2, the xid of its StepSucceeded
       event, and X1 appears nowhere.
    The pause (about 4 s) stays below the workers' idle_in_transaction_session_timeout (60 s)."""
    rng = trial.rng
    # more slots than instances, so that a slot is free to take W1's step over while B1 still runs it
    workers = [trial.workers.start(concurrency=instances) for _ in range(rng.randint(2, 4))]
    trial.registered(*workers)
    by_pid = {w.pid: w for w in workers}
    slow = effect(sleep_seconds=2 * LEASE_SECONDS)
    shape = Shape("fence", seq(effect(), slow, join(effect(), effect()), effect()), (5,))
    for _ in range(instances):
        trial.start(shape)

    with trial.db.admin() as admin:
        b1, xid32, instance_id, frame, g1, w1_pid = wait_for(
            lambda: admin.execute(_SLEEPING, (WORKER_APP_NAME,)).fetchone(),
            timeout=60,
            what="a worker asleep in the slow step",
        )
        w1 = by_pid[w1_pid]
        trial.workers.pause(w1)
        x1 = full_xid(admin, xid32)
        trial.fault("worker paused past its lease (SIGSTOP)")

        def taken_over() -> tuple[Any, ...] | None:
            row = admin.execute(
                "SELECT t.lease_gen, w.pid FROM df.tasks t JOIN df.workers w ON w.id = t.lease_owner"
                " WHERE t.instance_id = %s AND t.frame = %s",
                (instance_id, frame),
            ).fetchone()
            return row if row is not None and row[0] > g1 and row[1] != w1_pid else None

        g2, _ = wait_for(taken_over, timeout=60, what="another worker to take the lease over")

        def b2_asleep() -> int | None:
            for _, xid, inst, fr, gen, _owner in admin.execute(_SLEEPING, (WORKER_APP_NAME,)).fetchall():
                if (inst, fr, gen) == (instance_id, frame, g2):
                    return int(xid)
            return None

        x2 = full_xid(admin, wait_for(b2_asleep, timeout=30, what="W2's backend asleep in the step"))
        wait_for(lambda: _state(admin, b1) == "idle in transaction", timeout=30, what="B1 to run its fence")
        assert xact_status(admin, x1) == "in progress", f"the late transaction {x1} is {xact_status(admin, x1)}"
        assert xact_status(admin, x2) == "in progress", "W2 committed before W1 was let go: nothing was observed"

        trial.workers.resume(w1)
        status = wait_for(
            lambda: xact_status(admin, x1) if xact_status(admin, x1) != "in progress" else None,
            timeout=30,
            what="W1's late transaction to end",
        )
        assert status == "aborted", f"the late transaction {x1} ended {status}"
        assert w1.alive(), "the paused worker died instead of rolling back"
        assert _state(admin, b1) is not None, "the paused worker's connection was terminated, not fenced"
        trial.tally.observed["late commit rejected by the fence"] += 1

    trial.finish()
    with trial.db.admin() as admin:
        succeeded = admin.execute(
            "SELECT xid::text::bigint FROM df.history WHERE instance_id = %s AND event LIKE '%%\"StepSucceeded\"%%'"
            " AND (event::json ->> 'frame') = %s",
            (instance_id, frame),
        ).fetchall()
        assert succeeded == [(x2,)], f"the fenced step's StepSucceeded xids are {succeeded}, expected [{x2}]"
        assert not admin.execute(
            "SELECT 1 FROM df.history WHERE xid = %s::text::xid8 UNION ALL"
            " SELECT 1 FROM public.fault_effects WHERE xid = %s::text::xid8",
            (str(x1), str(x1)),
        ).fetchall(), "the fenced-out transaction left rows behind"


# -- 5. deadlocks and lock conflicts ----------------------------------------------------------------------

RETRY_ON = ("40001", "40P01", "55P03")


def _transfer(first: int, second: int, *, hold: float, nowait: bool) -> str:
    return (
        f"SELECT public.fault_transfer('{{sys_idempotency_key}}', {first}, {second}, {hold}, "
        f"{'true' if nowait else 'false'})"
    )


def conflicts(trial: Trial, instances: int = 8) -> None:
    """Steps deadlock and hit lock conflicts, and retry under a policy (50 ms base backoff).

    Each instance JOINs two steps that lock the same two rows in opposite orders, holding the first for a
    while: plain UPDATEs deadlock (40P01, one of the two is the victim), and with ``FOR UPDATE NOWAIT`` on the
    second row one or both fail at once (55P03). The policy retries 40001, 40P01 and 55P03. Every instance
    must complete, each transfer must take effect exactly once, and the rows' counters must equal twice the
    number of transfers (the aborted attempts left nothing)."""
    rng = trial.rng
    running = [trial.workers.start(concurrency=4) for _ in range(2)]
    trial.registered(*running)

    def retried(step: str) -> Any:
        return retry(
            step, max_attempts=40, backoff_ms=BACKOFF_MS, max_backoff_ms=400, jitter_pct=50, retry_on=list(RETRY_ON)
        )

    for index in range(instances):
        a, b = 2 * index + 1, 2 * index + 2
        nowait = index % 2 == 1
        hold = rng.uniform(0.1, 0.25)
        # A step first: the JOIN's branches then start together, one continued by the slot that ran it and
        # one claimed by another (an instance's first step runs inside its start, alone).
        graph = seq(
            effect(),
            join(
                retried(_transfer(a, b, hold=hold, nowait=nowait)),
                retried(_transfer(b, a, hold=hold, nowait=nowait)),
            ),
            effect(),
        )
        shape = Shape("nowait" if nowait else "deadlock", graph, (4,))
        trial.start(shape)
    trial.finish(timeout=120)

    with trial.db.admin() as admin:
        for (text,) in admin.execute(
            "SELECT event FROM df.history WHERE instance_id = ANY(%s) AND event LIKE '%%\"StepFailed\"%%'",
            (list(trial.started),),
        ):
            detail = json.loads(text).get("detail") or {}
            trial.fault(f"retried {detail.get('sqlstate')}")
        counters = admin.execute("SELECT coalesce(sum(n), 0) FROM public.fault_accounts").fetchone()
    # Two transfers per instance, each adding 1 to two rows: an aborted attempt that left anything behind, or a
    # transfer applied twice, shows here as well as in the effects.
    assert counters == (4 * instances,), f"the account counters sum to {counters}, expected {4 * instances}"


SCENARIOS: dict[str, Scenario] = {
    "sigkill": sigkill,
    "pg_crash": pg_crash,
    "terminate": terminate,
    "fence": fence,
    "conflicts": conflicts,
}


def _log_dir(cluster: Cluster, database: str) -> Path:
    """Where the workers of one trial write their logs (kept with PGDURABLE_FAULT_KEEP=1)."""
    path = cluster.logs / database
    path.mkdir(exist_ok=True)
    return path


def run(cluster: Cluster, name: str, trials: int, *, seed: int = 0, log: Callable[[str], None] = print) -> Tally:
    """Run `trials` trials of scenario `name` on `cluster`; the tally (the invariants are checked per trial)."""
    scenario = SCENARIOS[name]
    tally = Tally(name)
    began = time.monotonic()
    for index in range(trials):
        rng = random.Random(f"{seed}:{name}:{index}")
        database = f"fault_{name}_{seed}_{index}"
        trial_began = time.monotonic()
        with trial_database(cluster, database) as db:
            workers = Workers(db.owner_dsn, _log_dir(cluster, database))
            trial = Trial(cluster, db, workers, rng, tally)
            failure = None
            try:
                scenario(trial)
            except AssertionError as error:  # an observation failed: record it, still check the invariants
                failure = f"trial {index + 1}: {error}"
                log(f"{name} trial {index + 1}: {error}\n{workers.output()}")
            finally:
                workers.close()
                if not cluster.running():  # a failure while PostgreSQL was down
                    cluster.restart()
            with db.admin() as conn:
                findings = check_invariants(conn, trial.started)
            if failure is not None:
                findings.problems.insert(0, failure)
            # A worker thread that died of an unexpected exception prints a traceback (and the worker runs on
            # with fewer slots): whatever the invariants say, that is a finding.
            findings.problems.extend(
                f"trial {index + 1}: {log_name} printed a traceback" for log_name in workers.tracebacks()
            )
        tally.trials += 1
        tally.findings.add(findings)
        log(
            f"{name} trial {index + 1}/{trials}: {findings.completed}/{findings.instances} completed,"
            f" {findings.duplicates} duplicates, {findings.losses} losses, {len(findings.problems)} problems"
            f" ({time.monotonic() - trial_began:.1f} s)"
        )
    tally.seconds = time.monotonic() - began
    return tally


# -- a probe: one crash after retries ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryThenCrash:
    status: str
    output: str | None
    claims_after_retries: int  # df.tasks.claims of the step's work item once its failed attempts are recorded
    failed_attempts: int


def retry_then_crash(cluster: Cluster, limit: int = 2) -> RetryThenCrash:
    """A step with a retry policy fails `limit` + 1 times (55P03: a row the admin holds locked, taken with
    NOWAIT), then its next attempt succeeds and the worker running it dies once, at `after_runner`; another
    worker takes over. With `poison_claims` = `limit`, the instance must still complete: the step crashed a
    worker once, not `limit` + 2 times."""
    failed_attempts = limit + 1
    with trial_database(cluster, "fault_retry_then_crash") as db:
        workers = Workers(db.owner_dsn, _log_dir(cluster, db.name))
        try:
            with db.admin() as admin:
                admin.execute("UPDATE df.settings SET value = %s WHERE key = 'poison_claims'", (str(limit),))
            with db.admin() as locker, db.admin() as admin:
                locker.execute("BEGIN")
                locker.execute("SELECT 1 FROM public.fault_accounts WHERE id = 2 FOR UPDATE")
                step = retry(
                    _transfer(1, 2, hold=0, nowait=True),
                    max_attempts=failed_attempts + 5,
                    backoff_ms=BACKOFF_MS,
                    max_backoff_ms=BACKOFF_MS,
                    retry_on=["55P03"],
                )
                shape = Shape("retry-then-crash", seq(effect(), step, effect()), (3,))
                first = workers.start(concurrency=1)
                instance_id = db.start(shape.graph, shape.name)

                def failures() -> int:
                    row = admin.execute(
                        "SELECT count(*) FROM df.history WHERE instance_id = %s AND event LIKE '%%\"StepFailed\"%%'",
                        (instance_id,),
                    ).fetchone()
                    return 0 if row is None else int(row[0])

                wait_for(lambda: failures() >= failed_attempts, timeout=60, what=f"{failed_attempts} failed attempts")
                workers.stop(first)
                failed = failures()
                row = admin.execute(
                    "SELECT max(claims) FROM df.tasks WHERE instance_id = %s", (instance_id,)
                ).fetchone()
                claims = 0 if row is None else int(row[0])
                crashing = workers.start(concurrency=1, failpoint="after_runner")
                locker.execute("ROLLBACK")  # the next attempt succeeds, and its worker dies after the runner
                assert crashing.popen.wait(timeout=60) == -signal.SIGKILL, crashing.output()
            workers.start(concurrency=1)
            status = db.wait_terminal([instance_id], timeout=60, workers=workers)[instance_id]
            workers.close()
            with db.admin() as admin:
                row = admin.execute("SELECT output FROM df.instances WHERE id = %s", (instance_id,)).fetchone()
            return RetryThenCrash(status, None if row is None else row[0], claims, failed)
        finally:
            workers.close()


@dataclass(frozen=True)
class FailedCommitProbe:
    """What `stale_cache_after_failed_commit` saw."""

    status: str
    aborted_xid: int  # W1's transaction, terminated in COMMIT: it recorded `first` and never committed
    recorded_xid: int | None  # the xid `first` returned in the attempt its history records
    seen_xid: int | None  # the `$first.xid` that the last step was given
    checkpoint_diverged: bool  # after the instance's next commit, its checkpoint was not its history's replay
    problems: tuple[str, ...]  # what check_invariants found (at the end)


def stale_cache_after_failed_commit(cluster: Cluster) -> FailedCommitProbe:
    """A worker survives a COMMIT that fails after it recorded a transition; the instance then advances by
    one event elsewhere; then the same worker runs another step of it.

    `first >> join(a, b) >> last`, where `first` returns its own transaction id (as `$first`), `a` sleeps
    1.5 s and `last` returns `$first.xid`.
    1. W1 alone runs `first` (inside the start); its COMMIT notifies (the JOIN hands `b` over), so it waits
       for the notification lock, which the admin holds (as in `terminate`); W1's backend is terminated there:
       the transaction X1 aborts, W1 lives on. W1 is then paused so that it cannot take the start back.
    2. W2 claims the start once W1's lease expires, runs `first` again (X2) and commits the same version,
       then continues with `a` (1.5 s).
    3. W1 resumes and claims `b`. The instance's stored checkpoint is the one W2 wrote, at the version W1
       itself tried to write; `last` must see X2, and replaying the history must give the checkpoint."""
    with trial_database(cluster, "fault_stale_cache") as db:
        workers = Workers(db.owner_dsn, _log_dir(cluster, db.name))
        try:
            first = pgdurable_sql(effect(select="e.key, txid_current() AS xid")) | "first"
            shape = Shape(
                "failed-commit",
                seq(first, join(effect(sleep_seconds=1.5), effect()), effect(select="e.key, $first.xid AS seen")),
                (4,),
            )
            instance_id = db.start(shape.graph, shape.name)
            outcomes: list[tuple[int, str]] = []
            with db.admin() as admin:
                _set_sync_standby(admin, "fault_standby_that_never_comes")
                holder = psycopg.connect(cluster.dsn(db.name, "postgres"), autocommit=True)
                holding = threading.Thread(target=_notify_and_commit, args=(holder,), name="notification-lock-holder")
                try:
                    holder_pid = holder.info.backend_pid
                    holding.start()
                    wait_for(
                        lambda: (
                            admin.execute(
                                "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (holder_pid,)
                            ).fetchone()
                            == ("SyncRep",)
                        ),
                        timeout=30,
                        what="the notification lock to be held",
                    )
                    w1 = workers.start(concurrency=1)
                    trial = Trial(cluster, db, workers, random.Random(0), Tally("terminate"))
                    wait_for(
                        lambda: not _terminate_waiting(trial, admin, outcomes, {"aborted": 1}),
                        timeout=60,
                        what="W1's COMMIT to wait for the notification lock",
                        every=0.005,
                    )
                    workers.pause(w1)
                    admin.execute("SELECT pg_cancel_backend(%s)", (holder_pid,))
                    holding.join(10)
                finally:
                    _set_sync_standby(admin, "")
                    for (pid,) in admin.execute(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                    ).fetchall():
                        admin.execute("SELECT pg_cancel_backend(%s)", (pid,))
                    holding.join(10)
                    holder.close()
                aborted_xid = outcomes[0][0]
                workers.start(concurrency=1)

                def first_recorded() -> int | None:
                    row = admin.execute(
                        "SELECT event FROM df.history WHERE instance_id = %s AND event LIKE '%%\"StepSucceeded\"%%'"
                        " ORDER BY seq LIMIT 1",
                        (instance_id,),
                    ).fetchone()
                    return None if row is None else int(_rows(json.loads(row[0])["result"])[0]["xid"])

                recorded_xid = wait_for(first_recorded, timeout=60, what="W2 to run `first` again")
                workers.resume(w1)

                def diverged() -> tuple[bool] | None:
                    """After the next commit (`b`'s, while `a` sleeps): (the checkpoint is not the replay,)."""
                    rows = admin.execute(
                        "SELECT h.event, i.graph, i.checkpoint, i.state_version FROM df.history h"
                        " JOIN df.instances i ON i.id = h.instance_id WHERE h.instance_id = %s ORDER BY h.seq",
                        (instance_id,),
                    ).fetchall()
                    if not rows or rows[0][3] < 3:
                        return None
                    state = replay(from_json(rows[0][1]), [event_from_json(r[0]) for r in rows])
                    return (normal_json(state.to_checkpoint()) != normal_json(rows[0][2]),)

                (checkpoint_diverged,) = wait_for(diverged, timeout=60, what="the next commit of the instance")
                status = db.wait_terminal([instance_id], timeout=60, workers=workers)[instance_id]
                workers.close()
                last = admin.execute(
                    "SELECT event FROM df.history WHERE instance_id = %s AND event LIKE '%%\"StepSucceeded\"%%'"
                    " AND event LIKE '%%seen%%'",
                    (instance_id,),
                ).fetchone()
                seen = None if last is None else int(_rows(json.loads(last[0])["result"])[0]["seen"])
                findings = check_invariants(admin, {instance_id: shape})
            return FailedCommitProbe(
                status, aborted_xid, recorded_xid, seen, checkpoint_diverged, tuple(findings.problems)
            )
        finally:
            workers.close()


def _rows(result: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(result)["rows"]
    return rows


@dataclass(frozen=True)
class FirstStepPoisonProbe:
    exits: tuple[int | None, ...]  # exit code of each worker with the `after_runner` failpoint (None: alive)
    status: str
    output: str | None
    claims: int | None  # of the instance's work item at the end


def first_step_poison(cluster: Cluster, limit: int = 2) -> FirstStepPoisonProbe:
    """A workflow whose FIRST step kills every worker that runs it (the `after_runner` failpoint), with
    `poison_claims` = `limit`: after `limit` deaths, the next worker (whose claim is the `limit` + 1-th) must
    fail the step as poison ("worker crashed `limit` times") and live on, instead of dying like the others.
    At most `limit` + 2 workers are tried."""
    crashes = limit + 1
    with trial_database(cluster, "fault_first_step_poison") as db:
        workers = Workers(db.owner_dsn, _log_dir(cluster, db.name))
        try:
            with db.admin() as admin:
                admin.execute("UPDATE df.settings SET value = %s WHERE key = 'poison_claims'", (str(limit),))
            instance_id = db.start(seq(effect(), effect()), "first-step-poison")
            exits: list[int | None] = []
            upcoming = workers.prepare(concurrency=1, failpoint="after_runner")
            for round_ in range(crashes + 1):
                worker = workers.go(upcoming)
                if round_ < crashes:
                    upcoming = workers.prepare(concurrency=1, failpoint="after_runner")

                def ended(worker: WorkerProcess = worker) -> bool:
                    """The worker died at the failpoint, or failed the step as poison (and lives on)."""
                    return not worker.alive() or db.statuses([instance_id])[instance_id] != "pending"

                wait_for(ended, timeout=90, what="the worker to die at the failpoint or to fail the step", every=0.05)
                exits.append(worker.popen.poll())
                if exits[-1] is None:
                    break
            with db.admin() as admin:
                row = admin.execute(
                    "SELECT i.status, i.output, (SELECT max(claims) FROM df.tasks t WHERE t.instance_id = i.id)"
                    " FROM df.instances i WHERE i.id = %s",
                    (instance_id,),
                ).fetchone()
            assert row is not None
            return FirstStepPoisonProbe(tuple(exits), row[0], row[1], row[2])
        finally:
            workers.close()
