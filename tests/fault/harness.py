"""The fault suite's machinery: its own PostgreSQL server, a database per trial, worker subprocesses, the
workflows, and the invariants checked after the faults.

Nothing here injects a fault by itself; `scenarios.py` does, with the handles this module gives it:
`Cluster.crash`/`Cluster.restart` (PostgreSQL), `Workers.kill`/`pause`/`resume` (worker processes), and
admin connections that can end any backend.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
from psycopg import sql

import pgdurable
from pgdurable import Node, embedded, from_json, join, loop, migrate, race, seq, sleep, wait_for_signal
from pgdurable.runtime.engine import replay
from pgdurable.runtime.events import event_from_json
from pgdurable.runtime.state import split_key

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

# Workers run from the directory the harness imported pgdurable from: they run the same code.
SOURCE_ROOT = Path(pgdurable.__file__).resolve().parent.parent
OWNER_ROLE = "fault_owner"  # owns df and runs the workers
APP_ROLE = "fault_app"  # submits the workflows; its steps run with its privileges
TEMPLATE = "fault_template"
LEASE_SECONDS = 2.0  # test-size leases (design §7)
POLL_SECONDS = 0.05
BACKOFF_MS = 50  # test-size retry backoff base
WORKER_APP_NAME = "pgdurable-worker"  # the application_name of every worker connection (worker.py)
TERMINAL = ("completed", "failed", "cancelled")
KEEP_ENV = "PGDURABLE_FAULT_KEEP"  # set to 1 to keep the server's home (logs, data) after a run

# Settings of the suite's own cluster. fsync is off as on the shared test server: a PostgreSQL crash (what the
# suite injects) loses nothing that the kernel already has; only a power cut would. deadlock_timeout is short
# so that deadlocks are detected in 50 ms instead of 1 s.
_SYSTEM_SETTINGS = {"fsync": "off", "full_page_writes": "off", "deadlock_timeout": "50ms"}

# The suite's own connections (admin and application role) commit with synchronous_commit = local, so that
# the `terminate` scenario can make only the WORKERS' commits wait for a synchronous standby that never comes.
_OWN_SESSION_OPTIONS = "-c synchronous_commit=local"

_SETUP = f"""
-- Every SQL step of the suite inserts one row keyed by its idempotency key (instance:node:iteration, stable
-- across attempts); no unique constraint, so a step that ran twice leaves two rows. `xid` is the inserting
-- transaction: it must be the transaction that recorded the step's StepSucceeded event.
CREATE TABLE public.fault_effects (
    key text NOT NULL,
    xid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
CREATE INDEX fault_effects_key_idx ON public.fault_effects (key);
GRANT SELECT, INSERT ON public.fault_effects TO {APP_ROLE};

-- Rows that concurrent steps lock in opposite orders (deadlocks) or with NOWAIT (lock conflicts).
CREATE TABLE public.fault_accounts (id integer PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
INSERT INTO public.fault_accounts (id) SELECT g FROM generate_series(1, 64) g;
GRANT SELECT, UPDATE ON public.fault_accounts TO {APP_ROLE};

-- One step of the `conflicts` scenario: lock row `first`, hold it `hold` seconds, then lock row `second`
-- (FOR UPDATE NOWAIT when `nowait`), update both and record the effect. SECURITY INVOKER: it runs as the
-- submitter, inside the step's transaction.
CREATE FUNCTION public.fault_transfer(p_key text, p_first integer, p_second integer, p_hold float8,
                                      p_nowait boolean) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.fault_accounts SET n = n + 1 WHERE id = p_first;
    PERFORM pg_catalog.pg_sleep(p_hold);
    IF p_nowait THEN
        PERFORM 1 FROM public.fault_accounts WHERE id = p_second FOR UPDATE NOWAIT;
    END IF;
    UPDATE public.fault_accounts SET n = n + 1 WHERE id = p_second;
    INSERT INTO public.fault_effects (key) VALUES (p_key);
    RETURN p_key;
END $$;
GRANT EXECUTE ON FUNCTION public.fault_transfer(text, integer, integer, float8, boolean) TO {APP_ROLE};

-- Test sizes (design §7): no loop floor. A step whose claims keep ending in a worker crash fails after
-- `poison_claims` claims; this suite crashes workers on purpose, many times per trial, so the limit is
-- raised here (poison steps have their own integration test).
UPDATE df.settings SET value = '0' WHERE key = 'loop_floor_seconds';
INSERT INTO df.settings (key, value, description) VALUES ('poison_claims', '1000', 'fault suite')
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
"""


def _as_root() -> bool:
    return sys.platform != "win32" and os.geteuid() == 0


def wait_for(probe: Callable[[], T | None], *, timeout: float, what: str, every: float = 0.01) -> T:
    """Poll `probe` until it returns something truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


# -- the server ---------------------------------------------------------------------------------------------


class Cluster:
    """The suite's own PostgreSQL: an embedded server in a temporary home, with df installed in a template
    database. `crash()` stops it the way a crash does (``pg_ctl stop -m immediate``: no shutdown checkpoint,
    every backend killed, WAL replayed at the next start); `restart()` starts it again on the same socket.
    `close()` stops it and removes the home, whatever state it is in."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="pgdurable-fault-"))
        self._server: embedded.EmbeddedServer | None = None
        try:
            self._server = embedded.start(self.home)
            self.pgdata = self._server.pgdata
            self.socket_dir = self._server.socket_dir
            self.logs = self.home / "logs"
            self.logs.mkdir()
            with self.admin() as conn:
                for name, value in _SYSTEM_SETTINGS.items():
                    conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
                conn.execute("SELECT pg_reload_conf()")
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
            migrate.install(self.dsn(TEMPLATE, "postgres"), owner=OWNER_ROLE, app_role=APP_ROLE)
            with self.admin(TEMPLATE) as conn:
                conn.execute(_SETUP)
        except BaseException:
            self.close()
            raise

    def dsn(self, dbname: str, user: str, *, own_session: bool = False) -> str:
        assert self._server is not None
        dsn = self._server.dsn(dbname, user)
        if own_session:
            dsn += "&options=" + quote(_OWN_SESSION_OPTIONS, safe="")
        return dsn

    def admin(self, dbname: str = "postgres") -> Conn:
        """A new autocommit superuser connection (the caller closes it)."""
        return psycopg.connect(self.dsn(dbname, "postgres", own_session=True), autocommit=True)

    # -- crash and restart --------------------------------------------------------------------------------

    def _pg_ctl(self, *args: str) -> None:
        """The wheel's pg_ctl on this cluster, as the system user that owns it when we are root (embedded.py)."""
        command = [str(embedded.bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", *args]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=90,
            cwd=self.pgdata,
            user="embedded_postgres" if _as_root() else None,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {result.stderr.strip()}")

    def running(self) -> bool:
        return embedded.is_running(self.home)

    def crash(self) -> None:
        """Stop PostgreSQL as a crash would: SIGQUIT to every process, no checkpoint; recovery at restart."""
        self._pg_ctl("-m", "immediate", "stop")

    def restart(self) -> None:
        """Start the server again with the options the embedded wheel uses: no TCP, the same socket directory."""
        assert self.socket_dir is not None
        self._pg_ctl("-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start")

    # -- trial databases ----------------------------------------------------------------------------------

    def new_database(self, name: str) -> Database:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE))
            )
        return Database(self, name)

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(psycopg.Error), self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def close(self) -> None:
        """Stop the server (if it runs) and remove the home (unless PGDURABLE_FAULT_KEEP=1)."""
        try:
            if self._server is not None:
                if not self.running() and (self.pgdata / "postmaster.pid").exists():
                    with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                        self._pg_ctl("-m", "immediate", "stop")
                embedded.stop(self.home)
                self._server.stop()
                self._server = None
        finally:
            if os.environ.get(KEEP_ENV) != "1":
                shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass
class Database:
    """One trial's database: a clone of the template (df installed, the effects table, test-size settings)."""

    cluster: Cluster
    name: str

    @property
    def owner_dsn(self) -> str:
        """What workers connect with: the df owner role."""
        return self.cluster.dsn(self.name, OWNER_ROLE)

    @property
    def app_dsn(self) -> str:
        return self.cluster.dsn(self.name, APP_ROLE, own_session=True)

    def admin(self) -> Conn:
        return self.cluster.admin(self.name)

    def app(self) -> Conn:
        return psycopg.connect(self.app_dsn, autocommit=True)

    def start(self, graph: Node, label: str) -> str:
        """Start an instance as the application role; its id."""
        with self.app() as conn:
            row = conn.execute("SELECT df.start_with(%s, %s::jsonb)", (graph.to_json(), json.dumps({"label": label})))
            value = row.fetchone()
        assert value is not None
        return str(value[0])

    def signal(self, instance_id: str, name: str, payload: Any) -> str:
        """`df.signal` as the application role (buffered if the wait is not active yet)."""
        with self.app() as conn:
            row = conn.execute("SELECT df.signal(%s, %s, %s)", (instance_id, name, json.dumps(payload))).fetchone()
        assert row is not None
        return str(row[0])

    def statuses(self, ids: Sequence[str]) -> dict[str, str]:
        with self.admin() as conn:
            return dict(conn.execute("SELECT id, status FROM df.instances WHERE id = ANY(%s)", (list(ids),)).fetchall())

    def wait_terminal(self, ids: Sequence[str], *, timeout: float, workers: Workers | None = None) -> dict[str, str]:
        """Wait until every instance is terminal; their statuses. Tolerates a server that is restarting."""

        def done() -> dict[str, str] | None:
            try:
                statuses = self.statuses(ids)
            except psycopg.OperationalError:
                return None
            return statuses if all(s in TERMINAL for s in statuses.values()) else None

        try:
            return wait_for(done, timeout=timeout, what=f"{len(ids)} instances to finish", every=0.1)
        except AssertionError as error:
            try:
                statuses = Counter(self.statuses(ids).values())
            except psycopg.OperationalError as lost:
                statuses = Counter({f"unknown ({lost})": len(ids)})
            logs = "" if workers is None else "\n" + workers.output()
            raise AssertionError(f"{error}: {dict(statuses)}{logs}") from None


# -- worker processes --------------------------------------------------------------------------------------


# `python -m pgdurable worker ARGS`, run by `python -c _LAUNCHER ARGS` once stdin says go (see Workers.prepare).
_LAUNCHER = """
import sys
from pgdurable import cli
import pgdurable.runtime.worker
if sys.stdin.readline().strip() == "go":
    sys.exit(cli.main(sys.argv[1:]))
"""


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL me when the process that started me dies (Linux), so that no worker
    outlives a suite that was itself killed."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class WorkerProcess:
    """A ``python -m pgdurable worker`` subprocess."""

    popen: subprocess.Popen[bytes]
    log: Path
    concurrency: int
    failpoint: str | None
    released: bool = False  # told to go (a prepared worker only imports, then waits)
    paused: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Workers:
    """The worker subprocesses of one trial. `close()` kills (and reaps) every one still running."""

    dsn: str
    log_dir: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def prepare(self, *, concurrency: int = 2, failpoint: str | None = None) -> WorkerProcess:
        """Spawn a worker that imports pgdurable, then waits for `go` before it runs: a slow import (seconds on
        a loaded machine) happens while the previous worker still works, and `go` starts it at once."""
        env = {k: v for k, v in os.environ.items() if k != "PGDURABLE_FAILPOINT"}
        if failpoint is not None:
            env["PGDURABLE_FAILPOINT"] = failpoint  # read when pgdurable.runtime.failpoints is imported
        log = self.log_dir / f"worker-{len(self.started)}-{failpoint or 'plain'}.log"
        arguments = [
            *("worker", "--dsn", self.dsn, "--concurrency", str(concurrency)),
            *("--lease", str(LEASE_SECONDS), "--poll", str(POLL_SECONDS), "--log-level", "WARNING"),
        ]
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, *arguments],
                cwd=SOURCE_ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        process = WorkerProcess(popen, log, concurrency, failpoint)
        self.started.append(process)
        return process

    def go(self, process: WorkerProcess) -> WorkerProcess:
        """Let a prepared worker run (`python -m pgdurable worker` with the prepared arguments)."""
        assert process.popen.stdin is not None
        process.popen.stdin.write(b"go\n")
        process.popen.stdin.close()
        process.released = True
        return process

    def start(self, *, concurrency: int = 2, failpoint: str | None = None) -> WorkerProcess:
        return self.go(self.prepare(concurrency=concurrency, failpoint=failpoint))

    def kill(self, process: WorkerProcess) -> bool:
        """SIGKILL and reap; whether it was still running (a kill that landed)."""
        alive = process.alive()
        if alive:
            process.popen.kill()
        process.popen.wait(timeout=10)
        return alive

    def pause(self, process: WorkerProcess) -> None:
        os.kill(process.pid, signal.SIGSTOP)
        process.paused = True

    def resume(self, process: WorkerProcess) -> None:
        os.kill(process.pid, signal.SIGCONT)
        process.paused = False

    def stop(self, process: WorkerProcess, timeout: float = 15.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it takes longer than `timeout`."""
        if process.alive():
            if process.paused:
                self.resume(process)
            process.popen.terminate()
            try:
                process.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill(process)

    def alive(self) -> list[WorkerProcess]:
        return [p for p in self.started if p.alive()]

    def close(self) -> None:
        for process in self.started:
            if process.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
                    process.popen.kill()
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=10)
            if process.popen.stdin is not None:
                with contextlib.suppress(OSError):
                    process.popen.stdin.close()

    def output(self, last: int = 4000) -> str:
        parts = []
        for process in self.started:
            text = process.output().strip()
            parts.append(
                f"--- {process.log.name} (pid {process.pid}, exit {process.popen.poll()}):\n"
                f"{text[-last:] or '(no output)'}"
            )
        return "\n".join(parts)

    def tracebacks(self) -> list[str]:
        """Log files of workers that printed a Python traceback (a thread died of an unexpected exception)."""
        return [p.log.name for p in self.started if "Traceback" in p.output()]


# -- workflows ----------------------------------------------------------------------------------------------


def effect(*, sleep_seconds: float = 0.0, select: str = "e.key") -> str:
    """A SQL step that records its effect: one row keyed by its idempotency key, in its own transaction.

    With `sleep_seconds`, it sleeps AFTER inserting (the LATERAL reads the inserted row, so the insert runs
    first and the transaction has its xid while it sleeps). `select` is the step's result expression over
    the inserted row `e`."""
    text = (
        "WITH e AS (INSERT INTO public.fault_effects (key) VALUES ('{sys_idempotency_key}') RETURNING key) "
        f"SELECT {select} FROM e"
    )
    if sleep_seconds:
        text += f" CROSS JOIN LATERAL (SELECT pg_catalog.pg_sleep({sleep_seconds} + 0 * length(e.key))) AS s"
    return text


def loop_condition(iterations: int) -> str:
    """A loop's while-condition that records its effect and holds for the first `iterations` - 1 runs, so the
    loop runs `iterations` times (the iteration number, from 1, ends the step's idempotency key)."""
    return effect(select=f"pg_catalog.regexp_replace(e.key, '^.*[:.]', '')::int < {iterations}")


@dataclass(frozen=True)
class Shape:
    """A workflow the scenarios start, with how many StepSucceeded events a completed instance has."""

    name: str
    graph: Node
    steps: tuple[int, ...]  # the possible numbers of StepSucceeded events (a RACE may go either way)
    signals: tuple[str, ...] = ()


def shapes(*, sleep_seconds: float = 0.0) -> dict[str, Shape]:
    """Sequences, joins, races, loops, timers and signals. Every SQL step records an effect; `sleep_seconds`
    makes some steps slow, so that faults land inside them."""

    def e(slow: bool = False) -> str:
        return effect(sleep_seconds=sleep_seconds if slow else 0.0)

    loop_iterations = 3
    made = [
        Shape("sequence", seq(e(), e(True), e()), (3,)),
        Shape("join", seq(e(), join(e(True), e(), e(True)), e()), (5,)),
        # Two SQL branches race: the slow loser is cancelled or rolled back, and its effect never commits.
        Shape("race", seq(race(effect(sleep_seconds=0.3), e()), e(True)), (2,)),
        Shape("loop", seq(loop(e(True), loop_condition(loop_iterations)), e()), (2 * loop_iterations + 1,)),
        Shape("timer", seq(e(), sleep(1), e(True)), (2,)),
        Shape("signal", seq(e(True), wait_for_signal("go"), e()), (2,), ("go",)),
        Shape(
            "mixed",
            seq(
                e(),
                join(seq(e(True), sleep(1)), race(wait_for_signal("go"), effect(sleep_seconds=3.0))),
                loop(e(), loop_condition(2)),
                e(True),
            ),
            (7, 8),  # 8 if the 3 s step beats the signal to the RACE
            ("go",),
        ),
    ]
    return {shape.name: shape for shape in made}


# -- invariants ---------------------------------------------------------------------------------------------


@dataclass
class Findings:
    """What `check_invariants` found over some instances."""

    instances: int = 0
    completed: int = 0
    steps: int = 0  # StepSucceeded events checked
    duplicates: int = 0  # a step's effect committed more than once, or without its checkpoint
    losses: int = 0  # an instance that did not complete, or a recorded step whose effect is missing
    problems: list[str] = field(default_factory=list)

    def add(self, other: Findings) -> None:
        self.instances += other.instances
        self.completed += other.completed
        self.steps += other.steps
        self.duplicates += other.duplicates
        self.losses += other.losses
        self.problems.extend(other.problems)


def normal_json(value: Any) -> Any:
    """`value` as JSON would give it back (key order and tuples do not matter when comparing)."""
    return json.loads(json.dumps(value, sort_keys=True))


def step_key(instance_id: str, frame: str) -> str:
    """The idempotency key of a step frame, as the engine renders `{sys_idempotency_key}`."""
    path, iterations = split_key(frame)
    return f"{instance_id}:{path}:{'.'.join(map(str, iterations)) or '0'}"


def check_invariants(conn: Conn, expected: dict[str, Shape]) -> Findings:
    """Check the invariants for the instances `expected` (id -> its shape), with all workers stopped:

    1. every instance is terminal; completed ones count as such, anything else is a loss;
    2. `seq` runs 1..state_version without a gap, and no frame has two StepSucceeded events (no step's
       checkpoint was committed twice); a completed instance has its shape's number of them;
    3. exactly once: each StepSucceeded step has exactly one effect row, inserted by the very transaction
       that recorded the event (same xid), and no effect row exists without its StepSucceeded event (an
       effect committed without its checkpoint, e.g. a RACE loser's or a fenced-out worker's);
    4. replaying the stored history reproduces the stored checkpoint.
    """
    found = Findings()
    ids = list(expected)
    rows = conn.execute(
        "SELECT id, status, graph, checkpoint, state_version FROM df.instances WHERE id = ANY(%s)", (ids,)
    ).fetchall()
    by_id = {r[0]: r for r in rows}
    history: dict[str, list[tuple[int, str, int]]] = {}
    for instance_id, seq_no, event, xid in conn.execute(
        "SELECT instance_id, seq, event, xid::text::bigint FROM df.history WHERE instance_id = ANY(%s)"
        " ORDER BY instance_id, seq",
        (ids,),
    ):
        history.setdefault(instance_id, []).append((seq_no, event, xid))
    effects: dict[str, list[int]] = {}
    for key, xid in conn.execute("SELECT key, xid::text::bigint FROM public.fault_effects"):
        effects.setdefault(key, []).append(xid)
    known_keys: set[str] = set()

    for instance_id, shape in expected.items():
        found.instances += 1
        where = f"instance {instance_id} ({shape.name})"
        if instance_id not in by_id:
            found.losses += 1
            found.problems.append(f"{where}: missing from df.instances")
            continue
        _, status, graph_json, checkpoint, state_version = by_id[instance_id]
        if status == "completed":
            found.completed += 1
        else:
            found.losses += 1
            found.problems.append(f"{where}: {status}, not completed")
        events = history.get(instance_id, [])
        if [s for s, _, _ in events] != list(range(1, state_version + 1)):
            found.problems.append(f"{where}: history seq {[s for s, _, _ in events]} vs state_version {state_version}")
        parsed = [(json.loads(text), xid) for _, text, xid in events]
        succeeded = [(event["frame"], xid) for event, xid in parsed if event["type"] == "StepSucceeded"]
        frames = Counter(frame for frame, _ in succeeded)
        twice = sorted(frame for frame, count in frames.items() if count > 1)
        if twice:
            found.duplicates += len(twice)
            found.problems.append(f"{where}: StepSucceeded recorded twice for {twice}")
        if status == "completed" and len(frames) not in shape.steps:
            found.problems.append(f"{where}: {len(frames)} steps succeeded, the shape has {shape.steps}")
        for frame, xid in succeeded:
            found.steps += 1
            key = step_key(instance_id, frame)
            known_keys.add(key)
            xids = effects.get(key, [])
            if not xids:
                found.losses += 1
                found.problems.append(f"{where}: step {frame} recorded but its effect is missing")
            elif len(xids) > 1:
                found.duplicates += 1
                found.problems.append(f"{where}: step {frame} took effect {len(xids)} times (xids {xids})")
            elif xids[0] != xid:
                found.problems.append(
                    f"{where}: step {frame}'s effect committed in xid {xids[0]}, its StepSucceeded in xid {xid}"
                )
        try:
            replayed = replay(from_json(graph_json), [event_from_json(text) for _, text, _ in events])
            if normal_json(replayed.to_checkpoint()) != normal_json(checkpoint):
                found.problems.append(f"{where}: replaying its history does not give its stored checkpoint")
        except Exception as error:  # any failure to replay is a finding, not a crash of the checker
            found.problems.append(f"{where}: replay failed: {error!r}")

    for key, xids in effects.items():
        if key.split(":", 1)[0] in expected and key not in known_keys:
            found.duplicates += len(xids)
            found.problems.append(f"effect {key} (xids {xids}) committed without a StepSucceeded event")
    return found


def full_xid(conn: Conn, xid32: int) -> int:
    """The 64-bit id (xid8) of a RUNNING transaction from its 32-bit `backend_xid` (the epoch from xmax)."""
    row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()
    assert row is not None
    xmax = int(row[0])
    full = (xmax & ~0xFFFFFFFF) | xid32
    if full > xmax + (1 << 31):
        full -= 1 << 32
    elif full < xmax - (1 << 31):
        full += 1 << 32
    return full


def xact_status(conn: Conn, xid: int) -> str | None:
    row = conn.execute("SELECT pg_xact_status(%s::text::xid8)", (str(xid),)).fetchone()
    return None if row is None else row[0]


@contextlib.contextmanager
def trial_database(cluster: Cluster, name: str, *, keep: bool = False) -> Iterator[Database]:
    database = cluster.new_database(name)
    try:
        yield database
    finally:
        if not keep and cluster.running():
            cluster.drop_database(name)
