"""Every SQL statement the runtime issues, and typed functions that run them on a given connection.

The store is dumb and complete: it never commits, sleeps, retries or swallows errors; the worker decides
transactions. Statements address df objects by schema-qualified names, so a step's `search_path` cannot
redirect them. The store owns the channel names and the shape of the work-item rows.

The statements of a step's transaction return `Pending` results, so that the worker can send them in one
pipeline (one round trip) and read them afterwards; outside a pipeline a `Pending` is already complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Final, Generic, TypeVar
from uuid import UUID

import psycopg
from attrs import frozen
from psycopg import sql

__all__ = [
    "DONE_CHANNEL",
    "WORK_CHANNEL",
    "Claim",
    "InboxItem",
    "InstanceRow",
    "Locked",
    "NewTask",
    "NodeWrite",
    "Pending",
    "Runner",
    "Write",
    "begin",
    "claim",
    "commit",
    "delete_inbox",
    "extend_leases",
    "fence",
    "find_runner",
    "heartbeat",
    "load_instance",
    "lock",
    "node_rows",
    "pin_search_path",
    "read_inbox",
    "register_worker",
    "release",
    "reset_session",
    "run_step",
    "unregister_worker",
    "write",
]

Conn = psycopg.Connection[Any]
Cursor = psycopg.Cursor[Any]
T = TypeVar("T")


class Pending(Generic[T]):
    """A statement that was sent; its result, read when asked for (in a pipeline, after the pipeline syncs:
    reading earlier forces a round trip)."""

    def __init__(self, cursor: Cursor, read: Callable[[Cursor], T]) -> None:
        self._cursor = cursor
        self._read = read

    @property
    def done(self) -> bool:
        """Whether the statement's result arrived and was not an error."""
        return self._cursor.pgresult is not None

    def result(self) -> T:
        return self._read(self._cursor)


WORK_CHANNEL: Final = "df_work"
DONE_CHANNEL: Final = "df_done"


@frozen
class Claim:
    """A leased work item. `refusal` says why its instance may not go on (checked at each claim)."""

    instance_id: str
    frame: str
    kind: str
    lease_gen: int
    refusal: str | None = None
    claims: int = 1  # how often it was claimed: more than once means its earlier holders died


@frozen
class InstanceRow:
    id: str
    label: str | None
    graph: str
    root_node: str
    submitted_by: str
    submitter_oid: int
    database: str | None
    vars: dict[str, str]
    created_at: datetime
    options: dict[str, Any]  # of df.start_with that the engine applies: retry, deadline_seconds


@frozen
class Locked:
    """An instance row locked for a transition, and its work item fenced."""

    fenced: bool  # False: another worker holds the work item's lease now
    checkpoint: dict[str, Any] | None
    state_version: int
    status: str
    now: datetime
    cancel_pending: bool  # a cancel request waits in the inbox


@frozen
class InboxItem:
    """A signal (`name`, `payload`) or a cancel request (`reason`), in arrival order."""

    table: str
    id: int
    name: str | None
    payload: str | None
    reason: str | None


@frozen
class NewTask:
    frame: str
    kind: str
    wake_at: datetime | None  # None: due now
    leased: bool  # claimed by the writing worker, which continues with it at once
    function: str | None = None  # of a 'call': the Python function it runs


@frozen
class NodeWrite:
    """One df.nodes row change: status, result (JSON, or error text) and execution stamp."""

    node_id: str
    status: str
    result: str | None
    stamp: str
    error: str | None = None


@frozen
class Runner:
    """A role's step runner, checked: owned by the role and SECURITY DEFINER."""

    role_oid: int
    name: str


@frozen
class Write:
    """Everything one transition writes, in one round trip."""

    instance_id: str
    events: Sequence[tuple[int, str]]  # (seq, event JSON); the last seq becomes state_version
    checkpoint: str
    status: str
    output: str | None
    execution_count: int
    waiting_for: str | None
    node_updates: Sequence[NodeWrite]  # in order; a node changed twice keeps its last change
    finished: Sequence[str]
    started: Sequence[NewTask]


# -- workers ---------------------------------------------------------------------------------------------

_REGISTER: Final = """
INSERT INTO df.workers (id, hostname, pid, schema_version) VALUES (%(id)s, %(hostname)s, %(pid)s, %(version)s)
"""
_HEARTBEAT: Final = "UPDATE df.workers SET last_seen_at = now() WHERE id = %(id)s"
_UNREGISTER: Final = "DELETE FROM df.workers WHERE id = %(id)s"


def register_worker(conn: Conn, *, worker_id: UUID, hostname: str, pid: int, schema_version: int) -> None:
    conn.execute(_REGISTER, {"id": worker_id, "hostname": hostname, "pid": pid, "version": schema_version})


def heartbeat(conn: Conn, *, worker_id: UUID) -> None:
    conn.execute(_HEARTBEAT, {"id": worker_id})


def unregister_worker(conn: Conn, *, worker_id: UUID) -> None:
    conn.execute(_UNREGISTER, {"id": worker_id})


# -- claims and leases -----------------------------------------------------------------------------------

# A claim is not one of the commits the commit plan counts: it commits asynchronously (a lost claim only
# delays the work item until its lease expires).
# It looks at one due item more than it takes (locked only until the claim commits), to say whether more are
# due: then the worker wakes another slot. The limits are literals, so that the prepared statement's generic
# plan knows them too (with a parameter it may join the work items by a Seq Scan).
_CLAIM: Final = """
WITH async AS (SELECT pg_catalog.set_config('synchronous_commit', 'off', true)),
due AS (
    SELECT t.instance_id, t.frame, t.kind = 'start' AS new, t.wake_at FROM df.tasks t
     WHERE t.wake_at <= now() AND (t.lease_expires IS NULL OR t.lease_expires < now())
       AND (t.kind <> 'call' OR t.function = ANY(%(functions)s::text[]))
     ORDER BY t.kind = 'start', t.wake_at  -- running instances before new ones: in-flight work finishes first
     LIMIT 2
       FOR UPDATE SKIP LOCKED
), taken AS (
    SELECT d.instance_id, d.frame FROM due d ORDER BY d.new, d.wake_at LIMIT 1
)
UPDATE df.tasks t
   SET lease_owner = %(worker)s, lease_expires = now() + %(lease)s * interval '1 second',
       lease_gen = t.lease_gen + 1, claims = t.claims + 1, backend_pid = pg_backend_pid()
  FROM taken, async
 WHERE t.instance_id = taken.instance_id AND t.frame = taken.frame
RETURNING (SELECT count(*) FROM due) > 1, t.instance_id, t.frame, t.kind, t.lease_gen, t.claims, (
    SELECT CASE
               WHEN r.oid IS NULL THEN 'the submitting role no longer exists'
               WHEN NOT r.rolcanlogin THEN format('role "%%s" does not have LOGIN privilege any more', r.rolname)
               WHEN r.rolsuper AND NOT coalesce((SELECT s.value = 'true' FROM df.settings s
                                                  WHERE s.key = 'allow_superuser_instances'), false)
                   THEN format('role "%%s" is a superuser: superuser instances are disabled', r.rolname)
           END
      FROM df.instances i LEFT JOIN pg_catalog.pg_roles r ON r.oid = i.submitted_by
     WHERE i.id = t.instance_id)
"""

_EXTEND: Final = """
UPDATE df.tasks SET lease_expires = now() + %(lease)s * interval '1 second'
 WHERE lease_owner = %(worker)s AND (instance_id, frame) IN (SELECT * FROM unnest(%(ids)s::text[], %(frames)s::text[]))
"""

_FENCE: Final = """
UPDATE df.tasks SET backend_pid = NULL
 WHERE instance_id = %(instance)s AND frame = %(frame)s AND lease_gen = %(gen)s AND lease_owner = %(worker)s
"""

_RELEASE: Final = """
UPDATE df.tasks SET lease_owner = NULL, lease_expires = NULL, wake_at = %(wake_at)s
 WHERE instance_id = %(instance)s AND frame = %(frame)s AND lease_gen = %(gen)s
"""


def claim(
    conn: Conn, *, worker_id: UUID, lease_seconds: float, functions: Sequence[str] = ()
) -> tuple[Claim | None, bool]:
    """Lease a due work item (skipping those other workers hold, and calls of Python functions this worker
    does not run); and whether more are due."""
    params = {"worker": worker_id, "lease": lease_seconds, "functions": list(functions)}
    row = conn.execute(_CLAIM, params).fetchone()
    if row is None:
        return None, False
    return Claim(row[1], row[2], row[3], row[4], refusal=row[6], claims=row[5]), bool(row[0])


def extend_leases(conn: Conn, *, worker_id: UUID, tasks: Sequence[Claim], lease_seconds: float) -> None:
    conn.execute(
        _EXTEND,
        {
            "worker": worker_id,
            "lease": lease_seconds,
            "ids": [t.instance_id for t in tasks],
            "frames": [t.frame for t in tasks],
        },
    )


def begin(conn: Conn) -> None:
    conn.execute("BEGIN", prepare=False)


def commit(conn: Conn) -> None:
    conn.execute("COMMIT", prepare=False)


_PIN: Final = "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)"
_RESET: Final = "RESET ALL"


def pin_search_path(conn: Conn) -> None:
    """After a step ran in this transaction: resolve the store's names and operators only in pg_catalog,
    whatever `search_path` the step set."""
    conn.execute(_PIN)


def reset_session(conn: Conn) -> None:
    """Undo what a step set at session level (SET without LOCAL), before the connection runs anything else."""
    conn.execute(_RESET)


def fence(conn: Conn, *, task: Claim, worker_id: UUID) -> Pending[bool]:
    """Lock the work item if this worker's lease on it is still current; False means the lease was lost."""
    cursor = conn.execute(
        _FENCE, {"instance": task.instance_id, "frame": task.frame, "gen": task.lease_gen, "worker": worker_id}
    )
    return Pending(cursor, _one_row_changed)


def release(conn: Conn, *, task: Claim, wake_at: datetime | None) -> None:
    """Give a work item back (to run again at `wake_at`, or now)."""
    conn.execute(
        _RELEASE,
        {"instance": task.instance_id, "frame": task.frame, "gen": task.lease_gen, "wake_at": wake_at or "now"},
    )


# -- instances -------------------------------------------------------------------------------------------

_LOAD: Final = """
SELECT i.id, i.label, i.graph, i.root_node, i.submitted_by::text, i.submitted_by::oid, i.database, i.vars,
       i.created_at, i.options
  FROM df.instances i WHERE i.id = %(instance)s
"""
_NODES: Final = """
SELECT n.id, n.node_type, n.query, n.left_node, n.right_node FROM df.nodes n WHERE n.instance_id = %(instance)s
"""
# The instance row is locked first, then the work item fenced: the order in which deleting an instance takes
# them (its work items go by cascade).
_LOCK: Final = """
WITH fence AS (
    UPDATE df.tasks SET backend_pid = NULL
     WHERE instance_id = %(instance)s AND frame = %(frame)s AND lease_gen = %(gen)s AND lease_owner = %(worker)s
    RETURNING 1
)
SELECT (SELECT count(*) FROM fence) = 1, i.checkpoint, i.state_version, i.status, clock_timestamp(),
       EXISTS (SELECT 1 FROM df.cancel_requests c WHERE c.instance_id = i.id)
  FROM df.instances i
 WHERE i.id = %(instance)s
   FOR UPDATE OF i
"""


def load_instance(conn: Conn, *, instance_id: str) -> Pending[InstanceRow | None]:
    return Pending(conn.execute(_LOAD, {"instance": instance_id}), _instance_row)


def _instance_row(cursor: Cursor) -> InstanceRow | None:
    row = cursor.fetchone()
    if row is None:
        return None
    variables = {k: str(v) for k, v in row[7].items()}
    return InstanceRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], variables, row[8], row[9])


NodeRow = tuple[str, str, str | None, str | None, str | None]


def node_rows(conn: Conn, *, instance_id: str) -> Pending[list[NodeRow]]:
    """(id, node_type, query, left_node, right_node) of every node of an instance."""
    return Pending(conn.execute(_NODES, {"instance": instance_id}), _node_rows)


def _node_rows(cursor: Cursor) -> list[NodeRow]:
    return [(r[0], r[1], r[2], r[3], r[4]) for r in cursor.fetchall()]


def lock(conn: Conn, *, task: Claim, worker_id: UUID) -> Pending[Locked | None]:
    """Lock the work item's instance and fence the work item (design §2); None: the instance is gone."""
    params = {"instance": task.instance_id, "frame": task.frame, "gen": task.lease_gen, "worker": worker_id}
    return Pending(conn.execute(_LOCK, params), _locked)


def _locked(cursor: Cursor) -> Locked | None:
    row = cursor.fetchone()
    return None if row is None else Locked(*row)


# -- steps -----------------------------------------------------------------------------------------------

_FIND_RUNNER: Final = """
SELECT p.proname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'df_exec' AND p.proname = 'run_' || %(role)s::oid::text
   AND p.proowner = %(role)s::oid AND p.prosecdef
   AND p.proargtypes = '25 20'::pg_catalog.oidvector
"""


_SECRETS: Final = "SELECT s.name, s.value FROM df.secrets s WHERE s.owner = %(role)s::oid"


def secrets_of(conn: Conn, *, role_oid: int) -> dict[str, str]:
    """A role's secrets, for resolving {secret:NAME} just before a step runs (never stored anywhere else)."""
    return {name: value for name, value in conn.execute(_SECRETS, {"role": role_oid}).fetchall()}


_MAY_EXECUTE: Final = "SELECT pg_catalog.has_function_privilege(%(role)s::oid, %(function)s, 'EXECUTE')"


def may_execute(conn: Conn, *, role_oid: int, function: str) -> bool:
    """Whether a role may execute a function (the HTTP builders' grants gate HTTP steps)."""
    row = conn.execute(_MAY_EXECUTE, {"role": role_oid, "function": function}).fetchone()
    return bool(row and row[0])


def find_runner(conn: Conn, *, role_oid: int) -> Runner | None:
    """The role's runner, only if it is owned by the role and SECURITY DEFINER."""
    row = conn.execute(_FIND_RUNNER, {"role": role_oid}).fetchone()
    return Runner(role_oid, row[0]) if row else None


# The subquery (OFFSET 0 keeps it one) runs the step before the outer SELECT pins the search path.
_RUN_STEP: Final = """
SELECT s.output, pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)
  FROM (SELECT df_exec.{}(%(query)s, %(max)s) AS output OFFSET 0) s
"""
_STEP_TIMEOUT: Final = "SELECT pg_catalog.set_config('statement_timeout', %(ms)s, true)"


def run_step(
    conn: Conn, *, runner: Runner, query: str, max_bytes: int, timeout_seconds: int | None = None
) -> Pending[str]:
    """Run one SQL step through its submitter's runner; the raw rows JSON (see runtime.results). The search
    path is pinned again right after it, in the same statement (see `pin_search_path`).

    A `timeout_seconds` becomes the step's `statement_timeout` (a role-level setting of the submitter,
    which the runner applies, takes precedence)."""
    if timeout_seconds is not None:
        conn.execute(_STEP_TIMEOUT, {"ms": str(timeout_seconds * 1000)})
    statement = sql.SQL(_RUN_STEP).format(sql.Identifier(runner.name))
    return Pending(conn.execute(statement, {"query": query, "max": max_bytes}), _runner_output)


def _runner_output(cursor: Cursor) -> str:
    row = cursor.fetchone()
    return str(row[0]) if row else '{"types":null,"rows":[]}'


# -- inbox -----------------------------------------------------------------------------------------------

_INBOX: Final = """
SELECT 'signals', s.id, s.signal_name, s.payload::text, NULL, s.created_at FROM df.signals s
 WHERE s.instance_id = %(instance)s
UNION ALL
SELECT 'cancel_requests', c.id, NULL, NULL, c.reason, c.requested_at FROM df.cancel_requests c
 WHERE c.instance_id = %(instance)s
 ORDER BY 6, 2
"""


def read_inbox(conn: Conn, *, instance_id: str) -> list[InboxItem]:
    rows = conn.execute(_INBOX, {"instance": instance_id}).fetchall()
    return [InboxItem(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def delete_inbox(conn: Conn, *, items: Iterable[InboxItem]) -> None:
    signals = [i.id for i in items if i.table == "signals"]
    cancels = [i.id for i in items if i.table == "cancel_requests"]
    if signals:
        conn.execute("DELETE FROM df.signals WHERE id = ANY(%(ids)s)", {"ids": signals})
    if cancels:
        conn.execute("DELETE FROM df.cancel_requests WHERE id = ANY(%(ids)s)", {"ids": cancels})


# -- transitions -----------------------------------------------------------------------------------------

# One statement: the events, the checkpoint, the node rows and the work items (their lists in one JSON
# document: a few parameters cost the driver far less than many arrays). Work items of finished frames go;
# those another worker holds locked are left to it (it will find its frame gone and roll back), and steps
# still running elsewhere are interrupted. Started and finished frames never overlap.
_TRANSITION: Final = """
WITH changes AS (
    SELECT %(changes)s::json AS c
), history AS (
    INSERT INTO df.history (instance_id, seq, event)
    SELECT %(instance)s, e.seq, e.event FROM changes, json_to_recordset(c -> 'events') AS e(seq bigint, event text)
), instance AS (
    UPDATE df.instances
       SET checkpoint = %(checkpoint)s::jsonb, state_version = %(version)s, status = %(status)s,
           output = %(output)s, execution_count = %(executions)s, waiting_for = %(waiting)s, updated_at = now(),
           completed_at = CASE WHEN %(status)s = 'completed' THEN now() END
     WHERE id = %(instance)s
), nodes AS (
    UPDATE df.nodes n
       SET status = u.status,
           result = CASE WHEN u.status IN ('completed', 'failed') THEN u.result::jsonb END,
           error = CASE WHEN u.status = 'failed' THEN coalesce(u.error, n.error) END,
           status_details = jsonb_build_object('execution_id', u.stamp),
           updated_at = now()
      FROM changes, json_to_recordset(c -> 'nodes') AS u(id text, status text, result text, stamp text, error text)
     WHERE n.instance_id = %(instance)s AND n.id = u.id
), doomed AS (
    SELECT t.instance_id, t.frame FROM df.tasks t
     WHERE t.instance_id = %(instance)s  -- an array, so that the index is searched on both columns
       AND t.frame = ANY(ARRAY(SELECT json_array_elements_text(c -> 'finished') FROM changes))
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM df.tasks t USING doomed d
     WHERE t.instance_id = d.instance_id AND t.frame = d.frame
    RETURNING CASE WHEN t.backend_pid <> pg_backend_pid() THEN pg_cancel_backend(t.backend_pid) END
)
INSERT INTO df.tasks (instance_id, frame, kind, wake_at, lease_owner, lease_expires, lease_gen, backend_pid, function)
SELECT %(instance)s, t.frame, t.kind, coalesce(t.wake_at, now()),
       CASE WHEN t.leased THEN %(worker)s::uuid END,
       CASE WHEN t.leased THEN now() + %(lease)s * interval '1 second' END,
       CASE WHEN t.leased THEN 1 ELSE 0 END,
       CASE WHEN t.leased THEN pg_backend_pid() END, t.function
  FROM changes, json_to_recordset(c -> 'started')
       AS t(frame text, kind text, wake_at timestamptz, leased boolean, function text)
ON CONFLICT (instance_id, frame) DO UPDATE
   SET kind = EXCLUDED.kind, wake_at = EXCLUDED.wake_at, lease_owner = EXCLUDED.lease_owner,
       lease_expires = EXCLUDED.lease_expires, lease_gen = df.tasks.lease_gen + 1, claims = 0,
       backend_pid = EXCLUDED.backend_pid, function = EXCLUDED.function
RETURNING frame, lease_gen, lease_owner IS NOT NULL
"""
_DELETE_TASKS: Final = """
WITH doomed AS (
    SELECT t.instance_id, t.frame FROM df.tasks t
     WHERE t.instance_id = %(instance)s AND t.frame = ANY(%(frames)s)
       FOR UPDATE SKIP LOCKED
)
DELETE FROM df.tasks t USING doomed d
 WHERE t.instance_id = d.instance_id AND t.frame = d.frame
RETURNING CASE WHEN t.backend_pid <> pg_backend_pid() THEN pg_cancel_backend(t.backend_pid) END
"""
_NOTIFY: Final = "SELECT pg_notify(%(channel)s, %(payload)s)"


def write(conn: Conn, *, transition: Write, worker_id: UUID, lease_seconds: float) -> Pending[dict[str, int]]:
    """Record a transition: history, checkpoint, node rows and work items. Its result: the lease generation
    of each work item it leased to `worker_id`."""
    t = transition
    nodes = {u.node_id: u for u in t.node_updates}  # a node changed twice keeps its last change
    changes = {
        "events": [{"seq": seq, "event": event} for seq, event in t.events],
        "nodes": [
            {
                "id": u.node_id,
                "status": u.status,
                "result": _stored_result(u.status, u.result),
                "stamp": u.stamp,
                "error": u.error,
            }
            for u in nodes.values()
        ],
        "finished": list(t.finished),
        "started": [
            {
                "frame": task.frame,
                "kind": task.kind,
                "wake_at": task.wake_at and task.wake_at.isoformat(),
                "leased": task.leased,
                "function": task.function,
            }
            for task in t.started
        ],
    }
    cursor = conn.execute(
        _TRANSITION,
        {
            "instance": t.instance_id,
            "changes": json.dumps(changes, separators=(",", ":"), ensure_ascii=False),
            "checkpoint": t.checkpoint,
            "version": t.events[-1][0],
            "status": t.status,
            "output": t.output,
            "executions": t.execution_count,
            "waiting": t.waiting_for,
            "worker": worker_id,
            "lease": lease_seconds,
        },
    )
    return Pending(cursor, _leases)


def _leases(cursor: Cursor) -> dict[str, int]:
    return {frame: gen for frame, gen, leased in cursor.fetchall() if leased}


def _one_row_changed(cursor: Cursor) -> bool:
    return cursor.rowcount == 1


def finish_tasks(conn: Conn, *, instance_id: str, frames: Sequence[str]) -> None:
    conn.execute(_DELETE_TASKS, {"instance": instance_id, "frames": list(frames)})


def read_checkpoint(conn: Conn, *, instance_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT checkpoint FROM df.instances WHERE id = %(instance)s", {"instance": instance_id}
    ).fetchone()
    return row[0] if row else None


_PRUNE: Final = "SELECT df._prune()"


def prune(conn: Conn) -> int:
    """Delete a batch of terminal instances past the retention of df.settings; how many went."""
    row = conn.execute(_PRUNE).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def notify(conn: Conn, *, channel: str, payload: str) -> None:
    conn.execute(_NOTIFY, {"channel": channel, "payload": payload})


def _stored_result(status: str, result: str | None) -> str | None:
    """df.nodes.result is jsonb: a result as is; an error as a JSON string unless it parses as JSON."""
    if result is None or status == "completed":
        return result
    try:
        json.loads(result)
    except ValueError:
        return json.dumps(result, ensure_ascii=False)
    return result
