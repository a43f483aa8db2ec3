"""EXPLAIN ANALYZE of the hot queries: the worker's claim, and every statement ``df.start`` runs.

- **The claim** is the worker's own SQL (``pgdurable.runtime.store._CLAIM``, so the plan follows the runtime
  as it changes), explained as the df owner inside a transaction that is rolled back, with the parameters
  the worker sends, as a custom plan and as the generic plan (the worker prepares its statements, so after
  five runs PostgreSQL may choose the generic one).
- **The start** runs ``df.start`` as the application role with ``auto_explain`` logging every nested
  statement (the INSERTs into df.instances and df.nodes, the trigger's INSERT into df.tasks, the foreign-key
  checks) as notices, then rolls back.

A plan passes when no Seq Scan reads a hot table (df.tasks, df.instances, df.nodes, df.history).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any, Final

import psycopg
from psycopg import sql

from benchmarks.server import APP
from pgdurable.runtime import store

HOT_TABLES: Final = frozenset({"tasks", "instances", "nodes", "history"})

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


def _explain_rolled_back(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> Any:
    conn.execute("BEGIN")
    try:
        return conn.execute("EXPLAIN (ANALYZE, VERBOSE, BUFFERS, FORMAT JSON) " + query, params).fetchone()
    finally:
        conn.execute("ROLLBACK")


def _numbered(query: str) -> str:
    """A psycopg query with `%(name)s` placeholders as PostgreSQL's `$1`, `$2`, ... (`%%` as `%`)."""
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

    return re.sub(r"%%|%\((\w+)\)s", number, query)


def explain_claim(owner_dsn: str) -> dict[str, Any]:
    """EXPLAIN ANALYZE the claim of one due work item as the worker runs it, rolled back (a custom plan, the
    parameters' values known); and EXPLAIN its generic plan, which PostgreSQL may choose for the worker's
    prepared statement after five runs. The summary is the custom plan's, with the scans of both."""
    params = {"worker": uuid.uuid4(), "lease": 30.0, "functions": []}
    with psycopg.connect(owner_dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        custom = _explain_rolled_back(conn, store._CLAIM, params)
        generic = conn.execute(
            "EXPLAIN (GENERIC_PLAN, VERBOSE, FORMAT JSON) " + _numbered(store._CLAIM), prepare=False
        ).fetchone()
    assert custom is not None and generic is not None
    plans = [summarize(row[0][0] if isinstance(row[0], list) else json.loads(row[0])[0]) for row in (custom, generic)]
    return {
        **plans[0],
        "source": "pgdurable.runtime.store._CLAIM",
        "scans": [f"{scan} (custom plan)" for scan in plans[0]["scans"]]
        + [f"{scan} (generic plan)" for scan in plans[1]["scans"]],
        "seq_scans_on_hot_tables": plans[0]["seq_scans_on_hot_tables"] + plans[1]["seq_scans_on_hot_tables"],
        "index_scans_only": plans[0]["index_scans_only"] and plans[1]["index_scans_only"],
        "generic_plan": plans[1]["plan"],
    }


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
