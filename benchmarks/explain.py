"""EXPLAIN ANALYZE of the hot queries: the worker's claim, and every statement ``df.start`` runs.

- **The claim** is the worker's own SQL (``pgdurable.runtime.store._CLAIM``, so the plan follows the runtime
  as it changes; a copy is the fallback), explained as the df owner inside a transaction that is rolled back,
  with literal parameters as the worker sends them (it does not prepare).
- **The start** runs ``df.start`` as the application role with ``auto_explain`` logging every nested
  statement (the INSERTs into df.instances and df.nodes, the trigger's INSERT into df.tasks, the foreign-key
  checks) as notices, then rolls back.

A plan passes when no Seq Scan reads a hot table (df.tasks, df.instances, df.nodes, df.history).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, Final

import psycopg
from psycopg import sql

from benchmarks.server import APP

HOT_TABLES: Final = frozenset({"tasks", "instances", "nodes", "history"})

# A copy of pgdurable.runtime.store._CLAIM, used only if that name disappears or changes its parameters.
_CLAIM_COPY: Final = """
WITH due AS (
    SELECT t.instance_id, t.frame FROM df.tasks t
     WHERE t.wake_at <= now() AND (t.lease_expires IS NULL OR t.lease_expires < now())
     ORDER BY t.wake_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE df.tasks t
   SET lease_owner = %(worker)s, lease_expires = now() + %(lease)s * interval '1 second',
       lease_gen = t.lease_gen + 1, claims = t.claims + 1, backend_pid = pg_backend_pid()
  FROM due
 WHERE t.instance_id = due.instance_id AND t.frame = due.frame
RETURNING t.instance_id, t.frame, t.kind, t.lease_gen
"""

_AUTO_EXPLAIN: Final = (
    "auto_explain.log_min_duration = 0",
    "auto_explain.log_analyze = on",
    "auto_explain.log_buffers = on",
    "auto_explain.log_verbose = on",
    "auto_explain.log_nested_statements = on",
    "auto_explain.log_format = json",
    "auto_explain.log_level = notice",
)


def _walk(plan: dict[str, Any], depth: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    yield depth, plan
    for child in plan.get("Plans", []):
        yield from _walk(child, depth + 1)


def _label(node: dict[str, Any]) -> str:
    text = str(node["Node Type"])
    if "Relation Name" in node:
        schema = node.get("Schema")
        text += f" on {schema + '.' if schema else ''}{node['Relation Name']}"
    if "Index Name" in node:
        text += f" using {node['Index Name']}"
    return text


def summarize(explained: dict[str, Any]) -> dict[str, Any]:
    """Scans, Seq Scans of hot tables, timing and a compact tree of one EXPLAIN (FORMAT JSON) result."""
    nodes = list(_walk(explained["Plan"]))
    scans = [_label(n) for _, n in nodes if "Scan" in str(n["Node Type"]) and "Relation Name" in n]
    hot_seq = [
        _label(n)
        for _, n in nodes
        if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in HOT_TABLES and n.get("Schema", "df") == "df"
    ]
    tree = []
    for depth, node in nodes:
        actual = (
            f" (rows={node['Actual Rows']}, {node.get('Actual Total Time', 0):.3f} ms)" if "Actual Rows" in node else ""
        )
        tree.append("  " * depth + _label(node) + actual)
    execution = explained.get("Execution Time", explained["Plan"].get("Actual Total Time"))
    return {
        "scans": scans,
        "seq_scans_on_hot_tables": hot_seq,
        "index_scans_only": not hot_seq,
        "execution_ms": execution,
        "plan": tree,
    }


def claim_sql() -> tuple[str, str]:
    """The worker's claim statement and where it came from."""
    try:
        from pgdurable.runtime import store

        text = getattr(store, "_CLAIM", None)
    except ImportError:
        text = None
    if isinstance(text, str):
        return text, "pgdurable.runtime.store._CLAIM"
    return _CLAIM_COPY, "copy in benchmarks/explain.py"


def _explain_rolled_back(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> Any:
    conn.execute("BEGIN")
    try:
        return conn.execute("EXPLAIN (ANALYZE, VERBOSE, BUFFERS, FORMAT JSON) " + query, params).fetchone()
    finally:
        conn.execute("ROLLBACK")


def explain_claim(owner_dsn: str) -> dict[str, Any]:
    """EXPLAIN ANALYZE the claim of one due work item, as the worker runs it, and roll it back."""
    text, source = claim_sql()
    params = {"worker": uuid.uuid4(), "limit": 1, "lease": 30.0}
    with psycopg.connect(owner_dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        try:
            row = _explain_rolled_back(conn, text, params)
        except (KeyError, psycopg.ProgrammingError):  # the runtime's parameters changed: explain the copy
            source = "copy in benchmarks/explain.py (the runtime's _CLAIM takes other parameters)"
            row = _explain_rolled_back(conn, _CLAIM_COPY, params)
    assert row is not None
    explained = row[0][0] if isinstance(row[0], list) else json.loads(row[0])[0]
    return {"source": source, **summarize(explained)}


def _start_cost(admin_dsn: str, step: str, count: int = 20) -> float:
    """Mean server time of one ``df.start`` (without auto_explain, without its commit: rolled back), in ms."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(APP)))
        total = 0.0
        for i in range(count + 2):  # the first two warm the session's caches
            conn.execute("BEGIN")
            t0 = time.perf_counter()
            conn.execute("SELECT df.start(%s::text ~> %s::text ~> %s::text)", (step, step, step))
            if i >= 2:
                total += time.perf_counter() - t0
            conn.execute("ROLLBACK")
    return round(1000 * total / count, 3)


def explain_start(admin_dsn: str, step: str) -> dict[str, Any]:
    """Every statement ``df.start('step' ~> 'step' ~> 'step')`` runs, explained by auto_explain; rolled back.

    ``LOAD 'auto_explain'`` needs a superuser (`admin_dsn`), who then sets the role to the application role.
    """
    notices: list[str] = []
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("LOAD 'auto_explain'")
        for setting in _AUTO_EXPLAIN:
            conn.execute(f"SET {setting}")
        conn.execute("BEGIN")
        try:
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(APP)))
            conn.execute("SELECT df.start(%s::text ~> %s::text ~> %s::text)", (step, step, step))
        finally:
            conn.execute("ROLLBACK")
    statements = []
    for message in notices:
        if "plan:" not in message:
            continue
        explained = json.loads(message[message.index("{") :])
        query = " ".join(str(explained.get("Query Text", "")).split())
        statements.append({"query": query[:160], **summarize(explained)})
    top = statements[-1] if statements else {}  # the outermost statement is logged last
    writes = [s for s in statements if s["query"].upper().startswith(("INSERT", "UPDATE", "DELETE"))]
    hot_seq = [scan for s in statements for scan in s["seq_scans_on_hot_tables"]]
    return {
        "statements": len(statements),
        "instrumented_ms": top.get("execution_ms"),
        "server_ms": _start_cost(admin_dsn, step),
        "writes": [s["query"] for s in writes],
        "scans": sorted({scan for s in statements for scan in s["scans"]}),
        "seq_scans_on_hot_tables": hot_seq,
        "index_scans_only": not hot_seq,
        "detail": statements,
    }
