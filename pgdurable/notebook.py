"""What Jupyter shows for an instance (`Instance._repr_markdown_`): a header line and the Mermaid diagram of
its graph snapshot, each node coloured by its status as `df.instance_nodes` infers it.

Reads through the client's DSN, so a role sees only its own instances. Never imports the worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import psycopg

from pgdurable.dsl.codec import from_json
from pgdurable.dsl.mermaid import escape_markdown, to_markdown

if TYPE_CHECKING:
    from pgdurable.client import Client

__all__ = ["instance_markdown", "node_paths", "node_statuses"]

_INSTANCE = "SELECT graph, root_node, label, df.status(id) FROM df.instances WHERE id = %(id)s"
_NODES = "SELECT node_id, node_type, query, left_node, right_node, inferred_status FROM df.instance_nodes(%(id)s)"


def instance_markdown(client: Client, instance_id: str) -> str:
    """`**Instance** \\`id\\` (label) · status`, then the graph's Mermaid diagram with each node's status."""
    with psycopg.connect(client.dsn, autocommit=True) as conn:
        row = conn.execute(_INSTANCE, {"id": instance_id}).fetchone()
        if row is None:
            return f"**Instance** `{_code(instance_id)}`: not found (or not visible to this role)\n"
        graph, root_node, label, status = row
        nodes = conn.execute(_NODES, {"id": instance_id}).fetchall()
    named = "" if label is None else f" ({escape_markdown(label)})"
    header = f"**Instance** `{instance_id}`{named} · {status}\n\n"
    return header + to_markdown(from_json(graph), node_statuses(root_node, nodes))


def node_paths(root_node: str, rows: Iterable[tuple[str, str, str | None, str | None, str | None]]) -> dict[str, str]:
    """Graph paths by node id, from the flattened node rows (id, node_type, query, left_node, right_node):
    a walk from the root along left and right, and the condition and extra nodes named in the JSON query of
    IF, LOOP and JOIN nodes (reference §4.2)."""
    by_id = {row[0]: row for row in rows}
    paths: dict[str, str] = {}
    pending = [("root", root_node)]
    while pending:
        path, node_id = pending.pop()
        if node_id not in by_id or node_id in paths:
            continue
        paths[node_id] = path
        _, node_type, query, left, right = by_id[node_id]
        if left is not None:
            pending.append((f"{path}.left", left))
        if right is not None:
            pending.append((f"{path}.right", right))
        if query and node_type in ("IF", "LOOP", "JOIN") and query.startswith("{"):
            config: Mapping[str, Any] = json.loads(query)
            if isinstance(config.get("condition_node"), str):
                pending.append((f"{path}.condition_node", config["condition_node"]))
            for index, extra in enumerate(config.get("extra_nodes") or []):
                pending.append((f"{path}.extra_nodes[{index}]", extra))
    return paths


def node_statuses(root_node: str, rows: Iterable[tuple[Any, ...]]) -> dict[str, str]:
    """Each node's inferred status by graph path, from `df.instance_nodes` rows (id, node_type, query,
    left_node, right_node, inferred_status)."""
    rows = list(rows)
    paths = node_paths(root_node, [(r[0], r[1], r[2], r[3], r[4]) for r in rows])
    return {paths[r[0]]: str(r[5]) for r in rows if r[0] in paths and r[5] is not None}


def _code(text: str) -> str:
    return text.replace("`", "'").replace("\n", " ")
