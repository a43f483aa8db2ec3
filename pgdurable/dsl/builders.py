"""Builder functions that mirror pg_durable's `df.*` names and arguments.

`if_` and `break_` carry a trailing underscore because `if` and `break` are Python keywords. Arguments that
pg_durable auto-wraps accept a SQL string as well as a node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from pgdurable.dsl._coerce import as_node
from pgdurable.dsl.nodes import (
    Break,
    Call,
    Http,
    HttpMultipart,
    If,
    Loop,
    Node,
    Parallel,
    Race,
    Sleep,
    Step,
    Then,
    WaitForSchedule,
    WaitForSignal,
)
from pgdurable.dsl.policy import RetryPolicy
from pgdurable.errors import GraphError

__all__ = [
    "break_",
    "call",
    "http",
    "http_multipart",
    "if_",
    "if_rows",
    "join",
    "join3",
    "loop",
    "race",
    "retry",
    "seq",
    "sleep",
    "sql",
    "timeout",
    "wait_for_schedule",
    "wait_for_signal",
]

Operand = Node | str


def sql(query: str) -> Step:
    """A SQL step, like `df.sql(query)`.

    >>> sql("SELECT 42 AS answer").to_json()
    '{"node_type":"SQL","query":"SELECT 42 AS answer"}'
    """
    return Step(query)


def seq(*steps: Operand) -> Node:
    """Run steps in order, like `df.seq(a, b)` or `a ~> b`; with more than two, a balanced tree of THENs.

    A balanced tree keeps 10,000 steps within the depth limit of 256, where a chain of `>>` would not. The
    result is still the last step's.

    >>> seq("SELECT 1", "SELECT 2") == (Step("SELECT 1") >> "SELECT 2")
    True
    """
    if not steps:
        raise GraphError("seq needs at least one step")
    nodes = [as_node(step, where=f"seq step {index + 1}") for index, step in enumerate(steps)]
    return _balanced(nodes)


def _balanced(nodes: Sequence[Node]) -> Node:
    if len(nodes) == 1:
        return nodes[0]
    middle = (len(nodes) + 1) // 2
    return Then(_balanced(nodes[:middle]), _balanced(nodes[middle:]))


def join(*branches: Operand) -> Parallel:
    """Run 2 or more branches concurrently and wait for all, like `df.join(a, b)` / `df.join_all(...)`.

    >>> len(join("SELECT 1", "SELECT 2", "SELECT 3").branches)
    3
    """
    if len(branches) < 2:
        raise GraphError(f"join needs at least 2 branches, got {len(branches)}")
    return Parallel(tuple(as_node(b, where=f"join branch {i + 1}") for i, b in enumerate(branches)))


def join3(a: Operand, b: Operand, c: Operand) -> Parallel:
    """Three branches, like `df.join3(a, b, c)`: the third is carried in `extra_nodes`.

    >>> join3("SELECT 1", "SELECT 2", "SELECT 3") == join("SELECT 1", "SELECT 2", "SELECT 3")
    True
    """
    return join(a, b, c)


def race(a: Operand, b: Operand) -> Race:
    """The first branch to finish decides, like `df.race(a, b)` or `a | b`.

    >>> race("SELECT pg_sleep(5)", sleep(2)) == ("SELECT pg_sleep(5)" | sleep(2))
    True
    """
    return Race(as_node(a, where="race branch 1"), as_node(b, where="race branch 2"))


def if_(condition: Operand, then_branch: Operand, else_branch: Operand) -> If:
    """Run `then_branch` if `condition`'s result is truthy, else `else_branch`, like `df.if(...)`.

    >>> if_("SELECT true", "SELECT 'yes'", "SELECT 'no'").condition
    Step(query='SELECT true', result_name=None, retry=None, timeout=None)
    """
    return If(
        as_node(condition, where="if condition"),
        as_node(then_branch, where="if then_branch"),
        as_node(else_branch, where="if else_branch"),
    )


def if_rows(result_name: str, then_branch: Operand, else_branch: Operand) -> If:
    """Branch on whether the named earlier result has rows, like `df.if_rows(result_name, ...)`.

    >>> if_rows("doc", "SELECT $doc.id", "SELECT 0").if_rows
    'doc'
    """
    return If(
        None,
        as_node(then_branch, where="if_rows then_branch"),
        as_node(else_branch, where="if_rows else_branch"),
        if_rows=result_name,
    )


def loop(body: Operand, condition: Operand | None = None) -> Loop:
    """Repeat `body` until a `break_()`; with `condition`, a do-while loop, like `df.loop(body, condition)`.

    >>> loop("SELECT step()", "SELECT count(*) > 0 FROM q").condition
    Step(query='SELECT count(*) > 0 FROM q', result_name=None, retry=None, timeout=None)
    """
    return Loop(
        as_node(body, where="loop body"),
        None if condition is None else as_node(condition, where="loop condition"),
    )


def break_(value: str | None = None) -> Break:
    """Leave the nearest loop with `value`, like `df.break(value)`. The value is literal text, never SQL.

    >>> break_('{"done": true}').value
    '{"done": true}'
    """
    return Break(value)


def sleep(seconds: int) -> Sleep:
    """A durable timer, like `df.sleep(seconds)`.

    >>> sleep(60).to_json()
    '{"node_type":"SLEEP","query":"60"}'
    """
    return Sleep(seconds)


def wait_for_schedule(cron_expr: str) -> WaitForSchedule:
    """Wait for the next match of a 5-field cron expression (UTC), like `df.wait_for_schedule(cron_expr)`.

    >>> wait_for_schedule("*/5 * * * *").cron_expr
    '*/5 * * * *'
    """
    return WaitForSchedule(cron_expr)


def wait_for_signal(name: str, timeout_seconds: int | None = None) -> WaitForSignal:
    """Wait for `df.signal(id, name, data)`, like `df.wait_for_signal(name, timeout_seconds)`.

    >>> wait_for_signal("approval", 3600) | "sig"
    WaitForSignal(signal_name='approval', timeout_seconds=3600, result_name='sig')
    """
    return WaitForSignal(name, timeout_seconds)


def retry(
    node: Operand,
    max_attempts: int = 3,
    backoff_ms: int = 1000,
    max_backoff_ms: int = 60_000,
    multiplier: int = 2,
    jitter_pct: int = 20,
    retry_on: Sequence[str] | None = None,
) -> Step | Http | HttpMultipart | Call:
    """Try a SQL, HTTP or CALL step again when it fails transiently, like `df.retry(node, ...)` (pgdurable).

    >>> retry("UPDATE t SET n = n + 1", max_attempts=5).retry.max_attempts
    5
    """
    step = _work(as_node(node, where="df.retry"), "df.retry", "retry")
    try:
        policy = RetryPolicy(max_attempts, backoff_ms, max_backoff_ms, multiplier, jitter_pct, retry_on)
    except GraphError as error:
        raise GraphError(f"df.retry: {error.problem}") from None
    return attrs.evolve(step, retry=policy)


def timeout(node: Operand, seconds: int) -> Step | Http | HttpMultipart | Call:
    """Limit one SQL, HTTP or CALL step to `seconds`, like `df.timeout(node, seconds)` (pgdurable).

    >>> timeout("SELECT pg_sleep(10)", 2).timeout
    2
    """
    step = _work(as_node(node, where="df.timeout"), "df.timeout", "timeout_seconds")
    try:
        return attrs.evolve(step, timeout=seconds)
    except GraphError as error:
        raise GraphError(f"df.timeout: {error.problem}") from None


def _work(node: Node, builder: str, key: str) -> Step | Http | HttpMultipart | Call:
    if not isinstance(node, Step | Http | HttpMultipart | Call):
        raise GraphError(f"{builder}: {key} is only allowed on SQL, HTTP, HTTP_MULTIPART and CALL nodes")
    return node


def call(function: str, args: Mapping[str, Any] | None = None) -> Call:
    """Call a Python function registered with `@pgdurable.function`, like `df.call(function, args)`.

    >>> call("embed_chunks", {"chunks": "$chunks"}).arguments
    {'chunks': '$chunks'}
    """
    return Call(function, args)


def http(
    url: str,
    method: str = "POST",
    body: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_seconds: int = 30,
) -> Http:
    """An HTTP request, like `df.http(url, method, body, headers, timeout_seconds)`.

    >>> http("https://example.com", "get").method
    'GET'
    """
    return Http(url, method, body, headers, timeout_seconds)


def http_multipart(
    url: str,
    method: str = "POST",
    parts: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_seconds: int = 30,
) -> HttpMultipart:
    """A multipart/form-data request, like `df.http_multipart(url, method, parts, headers, timeout_seconds)`.

    >>> http_multipart("https://e.com/u", parts=[{"name": "f", "data_b64": "aGk="}]).parts
    '[{"name":"f","data_b64":"aGk="}]'
    """
    if parts is None:
        raise GraphError("df.http_multipart: parts must be a non-empty JSON array")
    return HttpMultipart(url, method, parts, headers, timeout_seconds)
