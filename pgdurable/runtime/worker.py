"""The worker: claims work items, runs steps, and records each transition in one transaction.

It owns the effects — connections, transactions, leases and fences, LISTEN/NOTIFY with a polling fallback,
the replay cache and shutdown — and no workflow semantics: those live in `engine`, and every SQL statement
lives in `store`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any, Final

import psycopg
from attrs import evolve, frozen

from pgdurable.dsl.codec import from_json
from pgdurable.dsl.nodes import Node
from pgdurable.migrate import check_version
from pgdurable.runtime import store
from pgdurable.runtime.engine import (
    Decision,
    NodeUpdate,
    Transition,
    begin,
    decide,
    execution_stamp,
    idempotency_key,
    step,
    step_timeout,
)
from pgdurable.runtime.events import (
    Aborted,
    CancelRequested,
    Event,
    SignalArrived,
    Started,
    StepFailed,
    StepSucceeded,
    TimerFired,
    event_to_json,
)
from pgdurable.runtime.executors.http import HttpExecutor, HttpPolicy
from pgdurable.runtime.executors.python import CallContext, FunctionDef, FunctionRegistry, registered
from pgdurable.runtime.executors.sql import SqlExecutor, StepError
from pgdurable.runtime.failpoints import failpoint
from pgdurable.runtime.state import Leaf, LoopFrame, State

__all__ = ["Worker", "WorkerConfig"]

log = logging.getLogger("pgdurable.worker")

_SETTINGS: Final = "SELECT key, value FROM df.settings"
_RECONNECT_MAX_WAIT: Final = 5.0  # seconds between attempts to reconnect, at most


@frozen
class WorkerConfig:
    """How a worker behaves. Test suites shorten `lease_seconds` and `poll_seconds`."""

    concurrency: int = 4
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    max_result_bytes: int = 16 * 1024 * 1024  # unless df.settings sets max_result_bytes
    poison_claims: int = 5  # unless df.settings sets poison_claims: a step claimed more often fails
    prune_seconds: float = 60.0  # how often the worker deletes instances past their retention
    idle_in_transaction_timeout_ms: int = 60_000


class _Reconnect:
    """When a thread's connection is lost: waits that double from the poll interval up to a cap, with
    jitter (so that a restarted server is not hit by every worker at once), and one log line when the
    connection is lost and one when it is back."""

    def __init__(self, who: str, first_wait: float) -> None:
        self.who = who
        self.first_wait = first_wait
        self.attempts = 0

    def lost(self, error: Exception) -> float:
        """How long to wait before the next attempt."""
        if self.attempts == 0:
            log.warning("%s lost its connection (%s); reconnecting", self.who, error)
        self.attempts += 1
        return random.uniform(0.5, 1.0) * min(_RECONNECT_MAX_WAIT, self.first_wait * 2.0 ** (self.attempts - 1))

    def connected(self) -> None:
        if self.attempts:
            log.warning("%s reconnected after %d attempts", self.who, self.attempts)
        self.attempts = 0


@frozen
class _Written:
    """A transition sent for commit: its state (cached once committed) and the step this slot continues with."""

    state: State
    continue_with: str | None
    leases: store.Pending[dict[str, int]]


@frozen
class _Context:
    """What a worker keeps about an instance between steps: its snapshot and node ids by path."""

    row: store.InstanceRow
    graph: Node
    node_ids: dict[str, str]


class Worker:
    """Runs workflow instances of one database. Use it as a context manager, or call `run()` to block.

    >>> # with Worker(dsn): ...   # runs in background threads until the block ends
    """

    def __init__(
        self,
        dsn: str,
        *,
        config: WorkerConfig | None = None,
        functions: Iterable[Callable[..., Any] | FunctionDef | str] = (),
    ) -> None:
        """`functions`: the `@pgdurable.function`s this worker runs; only it claims their CALL steps."""
        self.dsn = dsn
        self.config = config or WorkerConfig()
        self.id = uuid.uuid4()
        self._stopping = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._contexts: dict[str, _Context] = {}
        self._states: dict[str, State] = {}
        self._cache_lock = threading.Lock()
        self._settings: dict[str, Any] = {}
        self._in_flight: dict[int, store.Claim] = {}  # by slot thread id; their leases are kept alive
        self._executor = SqlExecutor(dsn, max_result_bytes=self.config.max_result_bytes)
        self._functions = FunctionRegistry(functions)
        self._http_executor: tuple[HttpPolicy, HttpExecutor] | None = None
        self._role = ""  # the role this worker connects as (who may call its functions by default)
        self.steps_run = 0

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> Worker:
        with self._connect() as conn:
            version = check_version(conn)
            self._role = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
            store.register_worker(
                conn, worker_id=self.id, hostname=socket.gethostname(), pid=os.getpid(), schema_version=version
            )
            self._load_settings(conn)
        self._spawn(self._listen, "pgdurable-listener")
        for slot in range(self.config.concurrency):
            self._spawn(self._slot, f"pgdurable-slot-{slot}")
        log.info("worker %s started with %d slots", self.id, self.config.concurrency)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, let the steps in flight finish (or roll back), and unregister."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        try:
            with self._connect() as conn:
                store.unregister_worker(conn, worker_id=self.id)
        except psycopg.Error:
            log.warning("worker %s could not unregister", self.id)
        self._executor.close()
        if self._http_executor is not None:
            self._http_executor[1].close()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def run(self) -> None:
        """Run until `request_stop()` (the command line wires SIGTERM and SIGINT to it), then shut down."""
        self.start()
        try:
            while not self._stopping.wait(1.0):
                pass
        finally:
            self.stop()

    def request_stop(self) -> None:
        """Ask a running worker to stop claiming and shut down (safe from a signal handler)."""
        self._stopping.set()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.dsn,
            autocommit=True,
            prepare_threshold=0,
            application_name="pgdurable-worker",
            # a pinned search_path: the worker's own statements resolve names and operators in pg_catalog only
            # (the runner gives steps the role's or the database's search_path)
            options=f"-c idle_in_transaction_session_timeout={self.config.idle_in_transaction_timeout_ms}"
            " -c search_path=pg_catalog,pg_temp",
        )

    def _load_settings(self, conn: psycopg.Connection[Any]) -> None:
        self._settings = {key: value for key, value in conn.execute(_SETTINGS).fetchall()}

    # -- threads ---------------------------------------------------------------------------------------

    def _listen(self) -> None:
        """Wake a slot per NOTIFY, and one every quiet poll interval (due timers, lost notifications): idle
        slots do not poll on their own, which on a busy machine takes CPU from the slots that work."""
        reconnect = _Reconnect("listener", self.config.poll_seconds)
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    reconnect.connected()
                    conn.execute(f"LISTEN {store.WORK_CHANNEL}")
                    renewed = pruned = time.monotonic()
                    while not self._stopping.is_set():
                        notices = sum(1 for _ in conn.notifies(timeout=self.config.poll_seconds, stop_after=1))
                        with self._wake:
                            self._wake.notify(max(notices, 1))
                        if time.monotonic() - renewed >= self.config.lease_seconds / 3:
                            self._renew(conn)
                            renewed = time.monotonic()
                        if time.monotonic() - pruned >= self.config.prune_seconds:
                            store.prune(conn)
                            pruned = time.monotonic()
            except psycopg.OperationalError as error:
                self._stopping.wait(reconnect.lost(error))

    def _renew(self, conn: psycopg.Connection[Any]) -> None:
        """Heartbeat, refresh settings, and extend the leases of the steps in flight."""
        store.heartbeat(conn, worker_id=self.id)
        self._load_settings(conn)
        with self._cache_lock:
            in_flight = list(self._in_flight.values())
        if in_flight:
            store.extend_leases(conn, worker_id=self.id, tasks=in_flight, lease_seconds=self.config.lease_seconds)

    def _slot(self) -> None:
        reconnect = _Reconnect("slot", self.config.poll_seconds)
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    reconnect.connected()
                    self._work(conn)
            except psycopg.OperationalError as error:
                self._stopping.wait(reconnect.lost(error))

    def _work(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stopping.is_set():
            task, more = store.claim(
                conn, worker_id=self.id, lease_seconds=self.config.lease_seconds, functions=self._functions.names
            )
            if task is None:
                with self._wake:  # the listener wakes it; waking on its own too is for a listener that reconnects
                    self._wake.wait(self.config.poll_seconds * self.config.concurrency)
                continue
            if more:  # a backlog spreads over the slots
                with self._wake:
                    self._wake.notify()
            slot = threading.get_ident()
            try:
                while task is not None and not self._stopping.is_set():
                    current = task
                    with self._cache_lock:
                        self._in_flight[slot] = current
                    try:
                        task = self._handle(conn, current)
                    except BaseException:
                        # a transaction that did not commit may have left a state that was never stored
                        self._forget(current.instance_id)
                        raise
                if task is not None:  # stopping: hand the next step back instead of sitting on its lease
                    store.release(conn, task=task, wake_at=None)
            finally:
                with self._cache_lock:
                    self._in_flight.pop(slot, None)

    # -- one work item ---------------------------------------------------------------------------------

    def _handle(self, conn: psycopg.Connection[Any], task: store.Claim) -> store.Claim | None:
        """Process a work item; returns the next one of the same instance to continue with, if any."""
        context = self._context(conn, task.instance_id)
        if context is None:
            return None
        if task.refusal is not None:
            reason = f"pgdurable worker refused to run instance {task.instance_id}: {task.refusal}"
            return self._transition(conn, task, context, lambda state, now: [Aborted(now, reason)])
        poison_limit = int(self._settings.get("poison_claims") or self.config.poison_claims)
        if task.kind == "sql" and task.claims > poison_limit:
            crashed = StepError(f"worker crashed {task.claims - 1} times on node {task.frame.partition('#')[0]}")
            return self._fail(conn, task, context, task.frame, crashed)
        if task.kind == "sql":
            return self._run_sql(conn, task, context)
        if task.kind in ("http", "http_multipart"):
            return self._run_http(conn, task, context)
        if task.kind == "call":
            return self._run_call(conn, task, context)
        if task.kind == "timer":
            return self._transition(conn, task, context, lambda state, now: [TimerFired(now, task.frame)])
        if task.kind == "inbox":
            return self._transition(conn, task, context, self._inbox_events(conn, task))
        return self._start(conn, task, context)

    def _start(self, conn: psycopg.Connection[Any], task: store.Claim, context: _Context) -> store.Claim | None:
        """Begin an instance. Its first SQL step runs in the same transaction, so that a workflow of S steps
        costs S + 1 commits (the start, then one per step)."""
        first = decide(context.graph, begin(context.graph, self._started(context)).state).steps
        poison_limit = int(self._settings.get("poison_claims") or self.config.poison_claims)
        if first and first[0].kind == "sql" and task.claims > poison_limit:
            node = first[0].frame.partition("#")[0]
            crashed = StepError(f"worker crashed {task.claims - 1} times on node {node}")
            return self._fail(conn, task, context, first[0].frame, crashed)
        if first and first[0].kind == "sql" and context.row.database is None:
            return self._run_sql(conn, task, context, frame=first[0].frame, query=first[0].payload)
        return self._transition(conn, task, context, lambda state, now: [])

    def _run_sql(
        self,
        conn: psycopg.Connection[Any],
        task: store.Claim,
        context: _Context,
        *,
        frame: str | None = None,
        query: str | None = None,
    ) -> store.Claim | None:
        """The exactly-once lane: the step, its fence and its checkpoint commit together, or not at all.

        `frame` and `query` name the step when the work item is not the step's own (a 'start' item)."""
        frame = frame or task.frame
        query = query or self._query(conn, task, context)
        if query is None:
            self._drop(conn, task)
            return None
        reset = False
        try:
            if context.row.database is not None:
                raise StepError("use the autocommit lane", needs_autocommit=True)
            runner = self._executor.runner(conn, context.row)
            # two round trips: the step, the fence and the locks; then the transition, COMMIT and the reset
            with _transaction(conn, then=store.reset_session) as pipeline:
                sent = self._executor.send(
                    conn,
                    runner,
                    query,
                    timeout_seconds=step_timeout(context.graph, frame),
                    max_bytes=int(self._settings.get("max_result_bytes") or self.config.max_result_bytes),
                )
                with self._executor.failures(conn, sent):
                    locks = store.lock(conn, task=task, worker_id=self.id)
                    pipeline.sync()
                result = self._executor.receive(sent)
                failpoint("after_runner")
                written = self._record(
                    conn, task, context, lambda state, now: [StepSucceeded(now, frame, result)], locks
                )
                failpoint("before_commit")
            reset = True
            failpoint("after_commit_before_ack")
            return self._committed(task, written)
        except _LeaseLost:
            return None
        except _NotLive:  # a RACE loser or a cancelled instance: its effects were rolled back
            self._drop(conn, task)
            return None
        except StepError as error:
            if error.needs_autocommit:
                return self._run_autocommit(conn, task, context, frame, query)
            return self._fail(conn, task, context, frame, error)
        finally:
            if not reset:
                store.reset_session(conn)

    def _run_autocommit(
        self, conn: psycopg.Connection[Any], task: store.Claim, context: _Context, frame: str, query: str
    ) -> store.Claim | None:
        """The at-least-once lane: statements that cannot run in a transaction, and other databases."""
        try:
            result = self._executor.run_autocommit(context.row, query)
        except StepError as error:
            return self._fail(conn, task, context, frame, error)
        return self._transition(conn, task, context, lambda state, now: [StepSucceeded(now, frame, result)])

    def _fail(
        self, conn: psycopg.Connection[Any], task: store.Claim, context: _Context, frame: str, error: StepError
    ) -> store.Claim | None:
        def failed(state: State, now: datetime) -> list[Event]:
            return [StepFailed(now, frame, error.message, error.detail)]

        return self._transition(conn, task, context, failed)

    def _query(self, conn: psycopg.Connection[Any], task: store.Claim, context: _Context) -> str | None:
        """The step's rendered SQL, from the cached state or else from the stored checkpoint."""
        query = _payload(self._cached_state(task.instance_id), task.frame)
        if query is None:
            checkpoint = store.read_checkpoint(conn, instance_id=task.instance_id)
            if checkpoint is not None:
                query = _payload(State.from_checkpoint(context.graph, checkpoint), task.frame)
        return query

    def _run_call(self, conn: psycopg.Connection[Any], task: store.Claim, context: _Context) -> store.Claim | None:
        """A Python function step: at-least-once outside the transaction, or exactly-once inside it when the
        function is declared transactional."""
        query = self._query(conn, task, context)
        if query is None:
            self._drop(conn, task)
            return None
        state = self._cached_state(task.instance_id)
        leaf = state.frames.get(task.frame) if state is not None else None
        call_context = CallContext(
            instance_id=task.instance_id,
            node=task.frame.partition("#")[0],
            idempotency_key=idempotency_key(state, task.frame) if state is not None else task.frame,
            attempt=leaf.attempt if isinstance(leaf, Leaf) else 1,
        )
        transactional = registered(json.loads(query)["function"]).transactional
        try:
            secrets = store.secrets_of(conn, role_oid=context.row.submitter_oid)
            if not transactional:
                result = self._functions.call(
                    query,
                    submitter=context.row.submitted_by,
                    worker_role=self._role,
                    context=call_context,
                    secrets=secrets,
                )
                return self._transition(
                    conn, task, context, lambda state, now: [StepSucceeded(now, task.frame, result)]
                )
            with conn.transaction():
                result = self._functions.call(
                    query,
                    submitter=context.row.submitted_by,
                    worker_role=self._role,
                    context=evolve(call_context, connection=conn),
                    secrets=secrets,
                )
                with conn.pipeline() as pipeline:
                    store.pin_search_path(conn)
                    locks = store.lock(conn, task=task, worker_id=self.id)
                    pipeline.sync()
                    written = self._record(
                        conn, task, context, lambda state, now: [StepSucceeded(now, task.frame, result)], locks
                    )
            return self._committed(task, written)
        except _LeaseLost:
            return None
        except _NotLive:
            self._drop(conn, task)
            return None
        except StepError as error:
            return self._fail(conn, task, context, task.frame, error)
        finally:
            store.reset_session(conn)

    def _run_http(self, conn: psycopg.Connection[Any], task: store.Claim, context: _Context) -> store.Claim | None:
        """An HTTP step (at-least-once, outside any transaction), after pg_durable's checks in its order:
        HTTP enabled, then the submitter's privilege on the builder; the executor then checks the scheme,
        the allow-list and every address it connects to."""
        query = self._query(conn, task, context)
        if query is None:
            self._drop(conn, task)
            return None
        builder = "df.http(text,text,text,jsonb,integer)"
        if task.kind == "http_multipart":
            builder = "df.http_multipart(text,text,jsonb,jsonb,integer)"
        self._load_settings(conn)  # HTTP enablement is checked when the node runs, not when the worker started
        try:
            if self._settings.get("http_enabled") is not True:
                raise StepError("outbound HTTP requests are disabled: set http_enabled in df.settings to allow them")
            if not store.may_execute(conn, role_oid=context.row.submitter_oid, function=builder):
                raise StepError(f"permission denied for function {builder.partition('(')[0]}")
            state = self._cached_state(task.instance_id)
            key = idempotency_key(state, task.frame) if state is not None else task.frame
            envelope = self._http().execute(
                query,
                multipart=task.kind == "http_multipart",
                idempotency_key=key,
                secrets=store.secrets_of(conn, role_oid=context.row.submitter_oid),
            )
        except StepError as error:
            return self._fail(conn, task, context, task.frame, error)
        except ValueError as error:  # a bad HTTP setting in df.settings
            return self._fail(conn, task, context, task.frame, StepError(str(error)))
        return self._transition(conn, task, context, lambda state, now: [StepSucceeded(now, task.frame, envelope)])

    def _http(self) -> HttpExecutor:
        """The HTTP executor for the current settings (made again when they change)."""
        policy = HttpPolicy.from_settings(self._settings)
        with self._cache_lock:
            if self._http_executor is None or self._http_executor[0] != policy:
                if self._http_executor is not None:
                    self._http_executor[1].close()
                self._http_executor = (policy, HttpExecutor(policy))
            return self._http_executor[1]

    def _inbox_events(
        self, conn: psycopg.Connection[Any], task: store.Claim
    ) -> Callable[[State, datetime], list[Event]]:
        def events(state: State, now: datetime) -> list[Event]:
            items = store.read_inbox(conn, instance_id=task.instance_id)
            store.delete_inbox(conn, items=items)
            out: list[Event] = []
            for item in items:
                if item.table == "signals":
                    out.append(SignalArrived(now, item.name or "", _compact(item.payload or "null")))
                else:
                    out.append(CancelRequested(now, item.reason or "Cancelled by user"))
            return out

        return events

    def _transition(
        self,
        conn: psycopg.Connection[Any],
        task: store.Claim,
        context: _Context,
        make_events: Callable[[State, datetime], list[Event]],
    ) -> store.Claim | None:
        """Fence, lock, fold and write in one transaction; for work items that run nothing first."""
        try:
            with _transaction(conn) as pipeline:
                locks = store.lock(conn, task=task, worker_id=self.id)
                pipeline.sync()
                written = self._record(conn, task, context, make_events, locks)
            return self._committed(task, written)
        except _LeaseLost:
            return None
        except _NotLive:
            self._drop(conn, task)
            return None

    def _record(
        self,
        conn: psycopg.Connection[Any],
        task: store.Claim,
        context: _Context,
        make_events: Callable[[State, datetime], list[Event]],
        locks: store.Pending[store.Locked | None],
    ) -> _Written | None:
        """Inside the transaction `locks` were taken in: fold the events and send the transition's writes."""
        locked = locks.result()
        if locked is None:
            return None
        if not locked.fenced:
            raise _LeaseLost
        folded: list[tuple[Event, Transition]] = []
        state = None if locked.checkpoint is None else self._state(context, locked)
        if task.kind == "start" and state is not None:
            raise _NotLive  # begun meanwhile (by an inbox item): its first step is an item of its own now
        if task.kind == "start" and locked.cancel_pending:
            raise _NotLive  # cancelled before it began: roll the first step back; the inbox item cancels it
        if state is None:
            started = self._started(context)
            transition = begin(context.graph, started)
            folded.append((started, transition))
            state = transition.state
        if state.terminal or not _live(state, task):
            if not folded:
                raise _NotLive
            store.finish_tasks(conn, instance_id=task.instance_id, frames=[task.frame])
        else:
            for event in make_events(state, locked.now):
                transition = step(state, event)
                folded.append((event, transition))
                state = transition.state
        if not folded:
            return None
        return self._write(conn, task, context, locked, folded)

    def _write(
        self,
        conn: psycopg.Connection[Any],
        task: store.Claim,
        context: _Context,
        locked: store.Locked,
        folded: Sequence[tuple[Event, Transition]],
    ) -> _Written:
        final = folded[-1][1].state
        decision = decide(context.graph, final)
        started: list[str] = []
        finished: list[str] = [task.frame]
        updates: list[store.NodeWrite] = []
        for _, transition in folded:
            started.extend(transition.started)
            finished.extend(transition.finished)
            updates.extend(self._node_write(context, u) for u in transition.updates)
        wakes = {t.frame: t.wake_at for t in decision.timers}
        runnable = {s.frame: s.kind for s in decision.steps}
        functions = {s.frame: json.loads(s.payload)["function"] for s in decision.steps if s.kind == "call"}
        live_started = list(dict.fromkeys(f for f in started if f in wakes or f in runnable))
        continue_with = next((f for f in live_started if runnable.get(f) == "sql"), None)
        new_tasks = [
            store.NewTask(f, runnable.get(f, "timer"), wakes.get(f), f == continue_with, functions.get(f))
            for f in live_started
        ]
        seq0 = locked.state_version
        write = store.Write(
            instance_id=task.instance_id,
            events=[(seq0 + i, event_to_json(event)) for i, (event, _) in enumerate(folded, 1)],
            checkpoint=json.dumps(final.to_checkpoint(), separators=(",", ":"), ensure_ascii=False),
            status=final.status,
            output=final.output,
            execution_count=final.execution_count,
            waiting_for=_waiting_for(final, decision),
            node_updates=updates,
            finished=[f for f in dict.fromkeys(finished) if f not in live_started],
            started=new_tasks,
        )
        leases = store.write(conn, transition=write, worker_id=self.id, lease_seconds=self.config.lease_seconds)
        if final.terminal:
            store.notify(conn, channel=store.DONE_CHANNEL, payload=task.instance_id)
        elif len(new_tasks) > (continue_with is not None):  # work for other slots and workers
            store.notify(conn, channel=store.WORK_CHANNEL, payload=f"step {task.instance_id}")
        return _Written(final, continue_with, leases)

    def _committed(self, task: store.Claim, written: _Written | None) -> store.Claim | None:
        """After the COMMIT of a transition: cache its state, and lease the step this slot continues with."""
        if written is None:
            return None
        with self._cache_lock:
            if written.state.terminal:
                self._states.pop(task.instance_id, None)
                self._contexts.pop(task.instance_id, None)
            else:
                self._states[task.instance_id] = written.state
        self.steps_run += 1
        if written.continue_with is None:
            return None
        lease_gen = written.leases.result()[written.continue_with]
        return store.Claim(task.instance_id, written.continue_with, "sql", lease_gen)

    @staticmethod
    def _node_write(context: _Context, update: NodeUpdate) -> store.NodeWrite:
        stamp = execution_stamp(context.graph, context.row.id, context.node_ids, update)
        return store.NodeWrite(context.node_ids[update.path], update.status, update.result, stamp, update.error)

    def _drop(self, conn: psycopg.Connection[Any], task: store.Claim) -> None:
        """Remove a work item whose frame is no longer live (a RACE loser, a cancelled instance)."""
        with conn.transaction():
            if store.fence(conn, task=task, worker_id=self.id).result():
                store.finish_tasks(conn, instance_id=task.instance_id, frames=[task.frame])

    # -- state and context -----------------------------------------------------------------------------

    def _forget(self, instance_id: str) -> None:
        with self._cache_lock:
            self._states.pop(instance_id, None)

    def _started(self, context: _Context) -> Started:
        return Started(
            at=context.row.created_at,
            instance_id=context.row.id,
            label=context.row.label,
            vars=context.row.vars,
            loop_floor_seconds=float(self._settings.get("loop_floor_seconds", 1)),
            loop_max_iterations=int(self._settings.get("loop_max_iterations", 100_000)),
            retry=context.row.options.get("retry"),
            deadline_seconds=context.row.options.get("deadline_seconds"),
        )

    def _cached_state(self, instance_id: str) -> State | None:
        with self._cache_lock:
            return self._states.get(instance_id)

    def _state(self, context: _Context, locked: store.Locked) -> State | None:
        """The locked checkpoint as a State: the cached copy when its version matches, else decoded."""
        if locked.checkpoint is None:
            return None
        cached = self._cached_state(context.row.id)
        if cached is not None and cached.events == locked.state_version:
            return cached
        return State.from_checkpoint(context.graph, locked.checkpoint)

    def _context(self, conn: psycopg.Connection[Any], instance_id: str) -> _Context | None:
        with self._cache_lock:
            known = self._contexts.get(instance_id)
        if known is not None:
            return known
        with conn.pipeline():
            loaded = store.load_instance(conn, instance_id=instance_id)
            nodes = store.node_rows(conn, instance_id=instance_id)
        row = loaded.result()
        if row is None:
            return None
        context = _Context(row, from_json(row.graph), _node_ids(nodes.result(), row))
        with self._cache_lock:
            self._contexts[instance_id] = context
        return context


def _node_ids(
    rows: Sequence[tuple[str, str, str | None, str | None, str | None]], row: store.InstanceRow
) -> dict[str, str]:
    """Node ids by graph path, rebuilt from the flattened rows (reference §4.2)."""
    by_id = {r[0]: r for r in rows}
    paths: dict[str, str] = {}
    pending = [("root", row.root_node)]
    while pending:
        path, node_id = pending.pop()
        paths[path] = node_id
        _, node_type, query, left, right = by_id[node_id]
        if left is not None:
            pending.append((f"{path}.left", left))
        if right is not None:
            pending.append((f"{path}.right", right))
        if query and node_type in ("IF", "LOOP", "JOIN") and query.startswith("{"):
            config = json.loads(query)
            if isinstance(config.get("condition_node"), str):
                pending.append((f"{path}.condition_node", config["condition_node"]))
            for index, extra in enumerate(config.get("extra_nodes", [])):
                pending.append((f"{path}.extra_nodes[{index}]", extra))
    return paths


@contextmanager
def _transaction(
    conn: psycopg.Connection[Any], then: Callable[[psycopg.Connection[Any]], None] | None = None
) -> Iterator[psycopg.Pipeline]:
    """A transaction in pipeline mode whose BEGIN goes out with its first statements and COMMIT (and `then`)
    with its last: each `sync()` in it is a round trip, and the end one more. (psycopg's `transaction()`
    syncs once more, before COMMIT.) A failure rolls back, and psycopg then forgets its prepared statements
    and deallocates them, as after any rollback."""
    try:
        with conn.pipeline() as pipeline:
            store.begin(conn)
            try:
                yield pipeline
            except BaseException:
                with suppress(psycopg.Error):  # read what the error aborted, so that leaving raises nothing more
                    pipeline.sync()
                raise
            store.commit(conn)
            if then is not None:
                then(conn)
    except BaseException:
        if not conn.broken:
            conn.rollback()
        raise


def _payload(state: State | None, frame: str) -> str | None:
    leaf = state.frames.get(frame) if state is not None else None
    return leaf.payload if isinstance(leaf, Leaf) else None


def _live(state: State, task: store.Claim) -> bool:
    if task.kind in ("start", "inbox"):
        return True
    frame = state.frames.get(task.frame)
    if task.kind == "timer":
        return isinstance(frame, Leaf | LoopFrame) and frame.wake_at is not None
    return isinstance(frame, Leaf) and frame.payload is not None


def _compact(payload: str) -> str:
    return json.dumps(json.loads(payload), separators=(",", ":"), ensure_ascii=False)


def _waiting_for(state: State, decision: Decision) -> str | None:
    """What the instance waits for, shown to users: a worker, a worker with a Python function, a timer or a
    signal."""
    if state.terminal:
        return None
    calls = sorted({json.loads(s.payload)["function"] for s in decision.steps if s.kind == "call"})
    if calls:
        return "a worker with function " + ", ".join(f"'{name}'" for name in calls)
    if decision.steps:
        return "worker"
    waits = []
    if decision.timers:
        waits.append("timer until " + min(t.wake_at for t in decision.timers).isoformat())
    if decision.signals:
        waits.append("signal " + ", ".join(f"'{name}'" for name in decision.signals))
    return " or ".join(waits) or None


class _LeaseLost(Exception):
    """The fence found another worker's lease: roll the step back."""


class _NotLive(Exception):
    """The work item's frame ended meanwhile (a RACE loser, a cancelled instance): roll back, drop the item."""
