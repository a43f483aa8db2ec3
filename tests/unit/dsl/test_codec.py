"""Canonical JSON: pg_durable's §4.1 vectors byte for byte, and every from_json rule with its path."""

from __future__ import annotations

import json

import pytest

from pgdurable import (
    GraphError,
    Step,
    break_,
    from_json,
    http,
    http_multipart,
    if_,
    if_rows,
    join3,
    loop,
    sleep,
    sql,
    wait_for_schedule,
    wait_for_signal,
)
from pgdurable.dsl.nodes import Node

GOLDEN: list[tuple[Node, str]] = [
    (
        (Step("SELECT 1 AS a") | "a") >> "SELECT $a + 1",
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1 AS a","result_name":"a"},'
        '"right_node":{"node_type":"SQL","query":"SELECT $a + 1"}}',
    ),
    (
        Step("SELECT 1 AS a") & "SELECT 2 AS b",
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1 AS a"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2 AS b"}}',
    ),
    (
        join3("SELECT 1", "SELECT 2", "SELECT 3"),
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"},"extra_nodes":[{"node_type":"SQL","query":"SELECT 3"}]}',
    ),
    (
        "SELECT pg_sleep(5)" | sleep(2),
        '{"node_type":"RACE","left_node":{"node_type":"SQL","query":"SELECT pg_sleep(5)"},'
        '"right_node":{"node_type":"SLEEP","query":"2"}}',
    ),
    (
        if_("SELECT count(*) > 0 FROM q", "SELECT 'yes'", "SELECT 'no'"),
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT \'yes\'"},'
        '"right_node":{"node_type":"SQL","query":"SELECT \'no\'"},'
        '"condition_node":{"node_type":"SQL","query":"SELECT count(*) > 0 FROM q"}}',
    ),
    (
        if_rows("doc", "SELECT $doc.id", "SELECT 0"),
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT $doc.id"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 0"},'
        '"query":"{\\"condition_type\\":\\"result_has_rows\\",\\"result_name\\":\\"doc\\"}"}',
    ),
    (
        loop(
            Step("UPDATE c SET v = v + 1 RETURNING v") >> if_("SELECT v >= 3 FROM c", break_('{"done":true}'), sleep(1))
        ),
        '{"node_type":"LOOP","left_node":{"node_type":"THEN","left_node":{"node_type":"SQL",'
        '"query":"UPDATE c SET v = v + 1 RETURNING v"},"right_node":{"node_type":"IF","left_node":'
        '{"node_type":"BREAK","query":"{\\"break_value\\":\\"{\\\\\\"done\\\\\\":true}\\"}"},'
        '"right_node":{"node_type":"SLEEP","query":"1"},"condition_node":{"node_type":"SQL",'
        '"query":"SELECT v >= 3 FROM c"}}}}',
    ),
    (
        loop("SELECT step()", "SELECT count(*) > 0 FROM q"),
        '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT step()"},'
        '"condition_node":{"node_type":"SQL","query":"SELECT count(*) > 0 FROM q"}}',
    ),
    (break_(), '{"node_type":"BREAK","query":"{\\"break_value\\":null}"}'),
    (
        wait_for_schedule("*/5 * * * *"),
        '{"node_type":"WAIT_SCHEDULE","query":"{\\"cron_expr\\":\\"*/5 * * * *\\"}"}',
    ),
    (
        wait_for_signal("approval", 3600) | "sig",
        '{"node_type":"SIGNAL","query":"{\\"signal_name\\":\\"approval\\",\\"timeout_seconds\\":3600}",'
        '"result_name":"sig"}',
    ),
    (
        http("https://x.blob.core.windows.net/c/b", "get", None, {"x-ms-version": "2021-08-06"}),
        '{"node_type":"HTTP","query":"{\\"url\\":\\"https://x.blob.core.windows.net/c/b\\",\\"method\\":\\"GET\\",'
        '\\"body\\":null,\\"headers\\":{\\"x-ms-version\\":\\"2021-08-06\\"},\\"timeout_seconds\\":30}"}',
    ),
    (sleep(60), '{"node_type":"SLEEP","query":"60"}'),
]


@pytest.mark.parametrize(("graph", "expected"), GOLDEN, ids=[g.to_json()[:40] for g, _ in GOLDEN])
def test_golden_vectors_are_byte_identical(graph: Node, expected: str) -> None:
    assert graph.to_json() == expected
    assert from_json(expected) == graph


def test_multipart_parts_and_headers_keep_jsonb_key_order() -> None:
    node = http_multipart(
        "https://example.com/upload",
        parts=[{"name": "file", "filename": "a.pdf", "content_type": "application/pdf", "data_b64": "$pdf.body"}],
        headers={"X-Long-Header": "1", "Accept": "x"},
    )
    config = json.loads(json.loads(node.to_json())["query"])
    assert list(config) == ["url", "method", "parts", "headers", "timeout_seconds"]
    assert list(config["parts"][0]) == ["name", "data_b64", "filename", "content_type"]
    assert list(config["headers"]) == ["Accept", "X-Long-Header"]


def test_json_strings_escape_like_postgresql_to_json() -> None:
    text = sql("SELECT 'é\u2028\"\\\n\t\x01\x7f'").to_json()
    assert text == '{"node_type":"SQL","query":"SELECT \'é\u2028\\"\\\\\\n\\t\\u0001\x7f\'"}'


def test_result_name_comes_last_and_overwrites() -> None:
    assert ((Step("SELECT 1") | "a") | "b").to_json() == '{"node_type":"SQL","query":"SELECT 1","result_name":"b"}'


def _sql(query: str = "SELECT 1") -> dict[str, object]:
    return {"node_type": "SQL", "query": query}


def _deep(depth: int) -> dict[str, object]:
    graph: dict[str, object] = _sql()
    for _ in range(depth - 1):
        graph = {"node_type": "LOOP", "left_node": graph}
    return graph


# (document, expected error text); each text starts with the path.
BAD: list[tuple[object, str]] = [
    ({"node_type": "NOT_A_NODE"}, "root: Unknown node_type 'NOT_A_NODE'. Valid types: SQL, THEN, IF, JOIN"),
    ([1], "root: expected a JSON object"),
    ({"query": "x"}, "root: node_type must be a string"),
    ({"node_type": 3}, "root: node_type must be a string"),
    ({**_sql(), "colour": "red"}, "root: unknown key 'colour'"),
    (_deep(257), "root.left.left"),
    (_deep(257), "Graph exceeds maximum nesting depth of 256"),
    (
        {"node_type": "JOIN", "left_node": _sql(), "right_node": _sql(), "extra_nodes": [_sql()] * 10_000},
        "root: Graph exceeds maximum of 10000 nodes",
    ),
    ({**_sql(), "condition_node": _sql()}, "root: condition_node is only allowed on IF and LOOP nodes"),
    (
        {"node_type": "THEN", "left_node": _sql(), "right_node": _sql(), "extra_nodes": []},
        "root: extra_nodes is only allowed on JOIN nodes",
    ),
    (
        {"node_type": "JOIN", "left_node": _sql(), "right_node": _sql(), "extra_nodes": {}},
        "root: extra_nodes must be an array",
    ),
    ({"node_type": "THEN", "left_node": _sql()}, "root: THEN requires left_node and right_node"),
    ({"node_type": "LOOP", "right_node": _sql()}, "root: LOOP requires left_node"),
    ({"node_type": "LOOP", "left_node": _sql(), "right_node": _sql()}, "root: LOOP does not take right_node"),
    ({**_sql(), "left_node": _sql()}, "root: SQL does not take left_node"),
    ({"node_type": "SQL"}, "root: SQL requires a query string"),
    (
        {"node_type": "RACE", "left_node": _sql(), "right_node": _sql(), "query": "x"},
        "root: RACE does not take a query",
    ),
    (
        {"node_type": "IF", "left_node": _sql(), "right_node": _sql()},
        "root: IF requires exactly one of condition_node or an if_rows query",
    ),
    (
        {
            "node_type": "THEN",
            "left_node": _sql(),
            "right_node": {
                "node_type": "IF",
                "left_node": _sql(),
                "right_node": _sql(),
                "condition_node": {"node_type": "NOPE"},
            },
        },
        "root.right.condition_node: Unknown node_type 'NOPE'",
    ),
    (
        {"node_type": "JOIN", "left_node": _sql(), "right_node": _sql(), "extra_nodes": [_sql(), 7]},
        "root.extra_nodes[1]: expected a JSON object",
    ),
    ({"node_type": "SLEEP", "query": '{"condition_node":"x"}'}, "root: invalid SLEEP config"),
    (
        {"node_type": "BREAK", "query": '{"break_value":null,"condition_node":"abc"}'},
        "root: legacy condition_node/extra_nodes inside query is not supported",
    ),
    ({"node_type": "SIGNAL", "query": '{"signal_name":"go"}'}, "root: invalid SIGNAL config: missing key"),
    (
        {"node_type": "SIGNAL", "query": '{"signal_name":"","timeout_seconds":null}'},
        "root: df.wait_for_signal: signal name must not be empty",
    ),
    (
        {"node_type": "WAIT_SCHEDULE", "query": '{"cron_expr":"61 * * * *"}'},
        "root: df.wait_for_schedule: invalid cron expression '61 * * * *': minute value '61' is out of range 0-59",
    ),
    ({**_sql(), "result_name": "has space"}, "root: result name 'has space' is not a valid identifier"),
    (
        {"node_type": "THEN", "left_node": _sql("SELECT 1\u0000"), "right_node": _sql()},
        "root.left: strings may not contain NUL",
    ),
    (
        {
            "node_type": "HTTP",
            "query": json.dumps(
                {
                    "url": "https://e.com",
                    "method": "GET",
                    "body": None,
                    "headers": {"X-Count": 3},
                    "timeout_seconds": 30,
                }
            ),
        },
        "root: header 'X-Count' must have a string value",
    ),
    (
        {
            "node_type": "HTTP",
            "query": json.dumps(
                {"url": "ftp://e.com", "method": "GET", "body": None, "headers": None, "timeout_seconds": 30}
            ),
        },
        "root: df.http: URL scheme must be http or https: ftp://e.com",
    ),
    (
        {
            "node_type": "HTTP_MULTIPART",
            "query": json.dumps(
                {"url": "https://e.com", "method": "POST", "parts": [], "headers": None, "timeout_seconds": 30}
            ),
        },
        "root: df.http_multipart: parts must be a non-empty JSON array",
    ),
]


@pytest.mark.parametrize(("document", "expected"), BAD, ids=[e[:60] for _, e in BAD])
def test_from_json_rejects_with_the_path(document: object, expected: str) -> None:
    with pytest.raises(GraphError) as caught:
        from_json(json.dumps(document))
    assert expected in str(caught.value)
    assert str(caught.value).startswith("root")


@pytest.mark.parametrize("text", ["", "{", "nul", '{"node_type":"SQL","query":"x","query":"y"}', "NaN"])
def test_from_json_rejects_text_that_is_not_one_json_object(text: str) -> None:
    with pytest.raises(GraphError, match=r"^root: "):
        from_json(text)


def test_from_json_survives_absurd_nesting() -> None:
    with pytest.raises(GraphError, match="maximum nesting depth"):
        from_json('{"node_type":"LOOP","left_node":' * 100_000)


def test_depth_limit_is_exact() -> None:
    assert from_json(json.dumps(_deep(256))) is not None
    with pytest.raises(GraphError):
        from_json(json.dumps(_deep(257)))


def test_to_json_refuses_graphs_over_the_limits() -> None:
    chain = Step("SELECT 0")
    for index in range(300):
        chain = chain >> f"SELECT {index}"
    with pytest.raises(GraphError, match="root: Graph exceeds maximum nesting depth of 256"):
        chain.to_json()
    doubled: Node = Step("SELECT 1")
    for _ in range(20):
        doubled = doubled & doubled
    with pytest.raises(GraphError, match="maximum of 10000 nodes"):
        doubled.to_json()
