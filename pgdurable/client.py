"""The application's handle on workflows: start them, watch them, signal and cancel them.

`Client.start()` calls the SQL function `df.start_with`, so both front ends materialise through the same
code; the client never writes df tables itself. It never imports the worker.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from attrs import frozen
from psycopg import sql
from psycopg_pool import ConnectionPool

from pgdurable.dsl.nodes import NODE_CLASSES, Node
from pgdurable.dsl.policy import RetryPolicy
from pgdurable.errors import PgdurableError

__all__ = ["Client", "Instance", "InstanceSummary", "WaitTimeout"]

DSN_ENV: Final = "PGDURABLE_DSN"
TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})
_INSTANCE_ID: Final = re.compile(r"^[0-9a-f]{8}$")
# df.explain's markers for SQL DSL text that must be evaluated to get a graph (reference §8.1).
_DSL_MARKERS: Final = ("~>", "|=>", "?>", "!>", "@>", "df.")


class WaitTimeout(PgdurableError, TimeoutError):
    """`wait()` gave up before the instance finished."""

    __module__ = "pgdurable"


class InstanceNotFound(PgdurableError, LookupError):
    """No instance with this id is visible to the client's role."""

    __module__ = "pgdurable"


@frozen
class InstanceSummary:
    id: str
    label: str | None
    status: str
    output: str | None


class Instance:
    """A started workflow instance: its id, and shortcuts to the client's calls for it."""

    def __init__(self, client: Client, instance_id: str) -> None:
        self.client = client
        self.id = instance_id

    def __repr__(self) -> str:
        return f"Instance({self.id!r})"

    def _repr_markdown_(self) -> str:
        """Jupyter renders an instance as a Mermaid diagram with each node's status."""
        from pgdurable.notebook import instance_markdown

        return instance_markdown(self.client, self.id)

    def status(self) -> str | None:
        return self.client.status(self.id)

    def result(self) -> Any:
        return self.client.result(self.id)

    def wait(self, timeout: float | None = None, *, progress: bool = False) -> str:
        return self.client.wait(self.id, timeout=timeout, progress=progress)

    def signal(self, name: str, data: Any = None) -> str:
        return self.client.signal(self.id, name, data)

    def cancel(self, reason: str = "Cancelled by user") -> str:
        return self.client.cancel(self.id, reason)

    def error(self) -> dict[str, Any] | None:
        return self.client.error(self.id)

    def delete(self) -> bool:
        return self.client.delete(self.id)


class Client:
    """Talks to one database's df schema as one role.

    The DSN is the argument, else `PGDURABLE_DSN`, else the embedded default's application role.
    """

    def __init__(self, dsn: str | None = None, *, pool_size: int = 4) -> None:
        self.dsn = dsn or os.environ.get(DSN_ENV) or _embedded_app_dsn()
        self._pool_size = pool_size
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_lock = threading.Lock()

    def close(self) -> None:
        """Close the client's connections (a new call opens them again)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def _connection(self, conn: psycopg.Connection[Any] | None = None) -> Iterator[psycopg.Connection[Any]]:
        """The caller's connection, or one of the client's: sessions are reused, so PostgreSQL compiles the
        df functions once per session rather than once per call."""
        if conn is not None:
            yield conn
            return
        with self._pool_lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.dsn, min_size=0, max_size=self._pool_size, kwargs={"autocommit": True}, open=True
                )
            pool = self._pool
        with pool.connection() as own:
            yield own

    def _one(self, query: sql.Composable | str, params: Mapping[str, Any], conn: Any = None) -> Any:
        with self._connection(conn) as c:
            row = c.execute(query, params).fetchone()  # type: ignore[arg-type]
            return row[0] if row else None

    # -- starting --------------------------------------------------------------------------------------

    def start(
        self,
        graph: Node | str,
        *,
        label: str | None = None,
        database: str | None = None,
        vars: Mapping[str, str] | None = None,
        conn: psycopg.Connection[Any] | None = None,
        idempotency_key: str | None = None,
        retry: RetryPolicy | None = None,
        deadline_seconds: int | None = None,
    ) -> Instance:
        """Start a workflow: a graph object, or SQL DSL text (`'SELECT 1' ~> 'SELECT 2'`) or plain SQL.

        With `conn=`, the start joins that connection's transaction: it happens only if the caller commits.
        With `idempotency_key=`, a start with a key this role already used returns that instance (even when
        the two starts race), and raises `psycopg.errors.UniqueViolation` if its graph differs; deleting the
        instance releases the key. `retry` is the policy for steps that have none of their own;
        `deadline_seconds` ends the instance (failed) with whatever still runs once that time has passed.
        """
        options: dict[str, Any] = {"label": label, "database": database, "idempotency_key": idempotency_key}
        if vars:
            options["vars"] = dict(vars)
        if retry is not None:
            options["retry"] = json.loads(retry.to_json())
        options["deadline_seconds"] = deadline_seconds
        options = {k: v for k, v in options.items() if v is not None}
        params = {"options": json.dumps(options)}
        if isinstance(graph, NODE_CLASSES):
            query: sql.Composable = sql.SQL("SELECT df.start_with(%(graph)s, %(options)s::jsonb)")
            params["graph"] = graph.to_json()
        elif isinstance(graph, str):
            query = _start_text(graph)
            params["graph"] = graph
        else:
            raise TypeError(f"start() takes a workflow node or SQL text, got {type(graph).__name__}")
        instance_id = self._one(query, params, conn)
        return Instance(self, str(instance_id))

    # -- watching --------------------------------------------------------------------------------------

    def status(self, instance_id: str) -> str | None:
        """`pending`, `running`, `completed`, `failed` or `cancelled`; None if not visible."""
        value = self._one("SELECT df.status(%(id)s)", {"id": instance_id})
        return None if value is None else str(value)

    def result(self, instance_id: str) -> Any:
        """The root node's result (parsed JSON) once completed; None before, or if it failed."""
        value = self._one("SELECT df.result(%(id)s)", {"id": instance_id})
        return None if value is None else json.loads(value)

    def error(self, instance_id: str) -> dict[str, Any] | None:
        """The structured failure of the instance's failing step (`df.error`): ``sqlstate``, ``message``,
        ``detail``, ``hint``, ``node`` (its graph path) and ``attempt``; None if there is none."""
        value = self._one("SELECT df.error(%(id)s)", {"id": instance_id})
        return None if value is None else dict(value)

    def output(self, instance_id: str) -> str | None:
        """The result text, the error text, or `cancelled: <reason>`, as df.instance_info reports it."""
        value = self._one("SELECT output FROM df.instance_info(%(id)s)", {"id": instance_id})
        return None if value is None else str(value)

    def wait(self, instance_id: str, timeout: float | None = None, *, progress: bool = False) -> str:
        """Block until the instance finishes; its final status. Listens for the worker's notice."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _progress_bar(instance_id) if progress else None
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("LISTEN df_done")
            try:
                while True:
                    status = conn.execute("SELECT df.status(%(id)s)", {"id": instance_id}).fetchone()
                    if status is None or status[0] is None:
                        raise InstanceNotFound(f"instance {instance_id} not found (or not visible to this role)")
                    if bar is not None:
                        _update_bar(bar, conn, instance_id)
                    if status[0] in TERMINAL:
                        return str(status[0])
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise WaitTimeout(f"instance {instance_id} is still {status[0]} after {timeout} s")
                    for _ in conn.notifies(timeout=min(1.0, left) if left is not None else 1.0, stop_after=1):
                        pass
            finally:
                if bar is not None:
                    bar.close()

    def list(self, *, status: str | None = None, label: str | None = None, limit: int = 100) -> list[InstanceSummary]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT instance_id, label, status, output FROM df.list_instances(%(status)s, %(limit)s, %(label)s)"
                if label is not None
                else "SELECT instance_id, label, status, output FROM df.list_instances(%(status)s, %(limit)s)",
                {"status": status, "limit": limit, "label": label},
            ).fetchall()
        return [InstanceSummary(*row) for row in rows]

    def explain(self, target: Node | str) -> str:
        """The explain tree of a graph, of SQL DSL text, or of a live instance by id (with status markers)."""
        text = target.to_json() if isinstance(target, NODE_CLASSES) else str(target)
        return str(self._one("SELECT df.explain(%(text)s)", {"text": text}))

    # -- control ---------------------------------------------------------------------------------------

    def signal(self, instance_id: str, name: str, data: Any = None) -> str:
        """Send a signal; `data` is JSON-encoded unless it is already a string."""
        payload = data if isinstance(data, str) else json.dumps({} if data is None else data)
        return str(
            self._one(
                "SELECT df.signal(%(id)s, %(name)s, %(data)s)", {"id": instance_id, "name": name, "data": payload}
            )
        )

    def cancel(self, instance_id: str, reason: str = "Cancelled by user") -> str:
        return str(self._one("SELECT df.cancel(%(id)s, %(reason)s)", {"id": instance_id, "reason": reason}))

    def cancel_all(
        self, *, label: str | None = None, status: str | None = None, reason: str = "Cancelled by user"
    ) -> int:
        """Cancel this role's pending or running instances with this label and/or status (`df.cancel_all`; at
        least one filter); how many were cancelled."""
        return int(
            self._one(
                "SELECT df.cancel_all(%(label)s, %(status)s, %(reason)s)",
                {"label": label, "status": status, "reason": reason},
            )
        )

    def delete(self, instance_id: str) -> bool:
        """Delete a completed, failed or cancelled instance with its nodes and history (`df.delete_instance`);
        False if no such instance is visible to this role. A pending or running one is refused (an error)."""
        return bool(self._one("SELECT df.delete_instance(%(id)s)", {"id": instance_id}))


def _start_text(text: str) -> sql.Composable:
    """SQL DSL text is evaluated by PostgreSQL (as the caller); anything else is one SQL step."""
    stripped = text.strip()
    if _INSTANCE_ID.match(stripped):
        raise ValueError(f"{stripped!r} looks like an instance id, not a workflow")
    if any(marker in text for marker in _DSL_MARKERS) and not stripped.startswith("{"):
        # `%` in the user's text must not read as a placeholder
        expression = sql.SQL(text.replace("%", "%%"))
        return sql.SQL("SELECT df.start_with(({})::text, %(options)s::jsonb)").format(expression)
    return sql.SQL("SELECT df.start_with(%(graph)s, %(options)s::jsonb)")


def _embedded_app_dsn() -> str:
    from pgdurable import embedded

    return str(embedded.app_dsn())


def _progress_bar(instance_id: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("progress bars need tqdm: pip install tqdm") from error
    return tqdm(total=1, desc=f"instance {instance_id}", unit="node")


def _update_bar(bar: Any, conn: psycopg.Connection[Any], instance_id: str) -> None:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE inferred_status IN ('completed', 'skipped')), count(*)"
        " FROM df.instance_nodes(%(id)s)",
        {"id": instance_id},
    ).fetchone()
    if row:
        bar.total = max(int(row[1]), 1)
        bar.n = int(row[0])
        bar.refresh()
