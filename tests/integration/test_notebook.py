"""An instance in Jupyter: `_repr_markdown_` draws its graph snapshot with each node's status."""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg

from pgdurable import Client, Node, Step, Worker, if_, join, wait_for_signal
from pgdurable.dsl.validate import children
from pgdurable.notebook import instance_markdown, node_statuses

CLASS_LINE = re.compile(r"^    class (\S+) (\w+)$", re.MULTILINE)
NODE_LINE = re.compile(r'^    (n\d+)[\[({>]+"([^"]*)"', re.MULTILINE)


def statuses_by_label(markdown: str) -> dict[str, str]:
    labels = dict(NODE_LINE.findall(markdown))
    return {labels[node_id]: status for ids, status in CLASS_LINE.findall(markdown) for node_id in ids.split(",")}


def test_a_completed_instance_shows_each_nodes_status(worker: Worker, client: Client) -> None:
    graph = (
        (Step("SELECT 21 AS half") | "half")
        >> join("SELECT $half * 2 AS answer", "SELECT 'durable' AS word")
        >> if_("SELECT $half > 100", "SELECT 'big'", "SELECT 'small'")
    )
    instance = client.start(graph, label="notebook *demo*")
    assert instance.wait(timeout=30) == "completed"
    markdown = instance._repr_markdown_()
    assert markdown.startswith(f"**Instance** `{instance.id}` (notebook \\*demo\\*) · completed\n\n```mermaid\n")
    assert markdown.endswith("\n```\n") and "<" not in markdown
    assert statuses_by_label(markdown) == {
        "SQL: SELECT 21 AS half #124;=#62; 'half'": "completed",
        "JOIN (2)": "completed",
        "SQL: SELECT $half * 2 AS answer": "completed",
        "SQL: SELECT 'durable' AS word": "completed",
        "all": "completed",
        "SQL: SELECT $half #62; 100": "completed",
        "IF": "completed",
        "SQL: SELECT 'small'": "completed",
        "SQL: SELECT 'big'": "skipped",
    }
    assert "classDef completed " in markdown and "classDef skipped " in markdown


def test_a_running_instance_shows_what_it_waits_for(worker: Worker, client: Client) -> None:
    instance = client.start((Step("SELECT 1") | "one") >> wait_for_signal("go") >> "SELECT 2")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = statuses_by_label(instance_markdown(client, instance.id))
        if shown.get("SIGNAL 'go'") == "running":
            break
        time.sleep(0.1)
    assert shown == {
        "SQL: SELECT 1 #124;=#62; 'one'": "completed",
        "SIGNAL 'go'": "running",
        "SQL: SELECT 2": "pending",
    }
    assert f"`{instance.id}` · running" in instance_markdown(client, instance.id)
    instance.signal("go")
    assert instance.wait(timeout=30) == "completed"
    assert set(statuses_by_label(instance_markdown(client, instance.id)).values()) == {"completed"}


def test_node_ids_map_to_every_path_of_the_graph(worker: Worker, client: Client, app: psycopg.Connection[Any]) -> None:
    graph = join("SELECT 1", "SELECT 2", if_("SELECT true", "SELECT 3", join("SELECT 4", "SELECT 5", "SELECT 6")))
    instance = client.start(graph)
    assert instance.wait(timeout=30) == "completed"
    root = app.execute("SELECT root_node FROM df.instances WHERE id = %s", (instance.id,)).fetchone()
    rows = app.execute(
        "SELECT node_id, node_type, query, left_node, right_node, inferred_status FROM df.instance_nodes(%s)",
        (instance.id,),
    ).fetchall()
    assert root is not None
    paths: set[str] = set()
    pending: list[tuple[str, Node]] = [("root", graph)]
    while pending:
        path, node = pending.pop()
        paths.add(path)
        pending += [(f"{path}.{step}", child) for step, child in children(node)]
    assert set(node_statuses(root[0], rows)) == paths


def test_an_unknown_instance_says_so(client: Client) -> None:
    assert instance_markdown(client, "0000000`") == "**Instance** `0000000'`: not found (or not visible to this role)\n"
