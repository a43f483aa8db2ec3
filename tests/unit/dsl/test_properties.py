"""Properties of every random graph: the JSON codec round-trips, and explain never fails and draws every
node it should, once, with the same width on every line. Also: the strategy reaches what it promises.
(`to_sql` has its own property in test_sqltext.py: its text reads back as the same graph.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis.errors import NoSuchExample

from pgdurable.dsl import (
    Break,
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
    from_json,
    to_json,
)
from pgdurable.dsl.explain import explain
from pgdurable.dsl.validate import children
from tests.strategies import cron_exprs, graphs

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(graphs(max_leaves=25))
def test_json_round_trip(graph: Node) -> None:
    text = to_json(graph)
    assert from_json(text) == graph
    assert to_json(from_json(text)) == text


@SETTINGS
@given(graphs(max_leaves=25))
def test_explain_never_fails(graph: Node) -> None:
    lines = explain(graph).split("\n")
    widths = {len(line) for line in lines}
    assert len(widths) == 1
    assert any(line.endswith("    ") for line in lines)


@SETTINGS
@given(graphs(max_leaves=25))
def test_explain_asks_for_the_marker_of_every_non_then_node_once(graph: Node) -> None:
    asked: list[str] = []

    def marker(path: str) -> str:
        asked.append(path)
        return ""

    assert explain(graph, marker=marker) == explain(graph)
    assert sorted(asked) == sorted(path for path, node in _walk(graph, "root") if not isinstance(node, Then))


def _walk(node: Node, path: str) -> Iterator[tuple[str, Node]]:
    yield path, node
    for step, child in children(node):
        yield from _walk(child, f"{path}.{step}")


# -- the strategy covers what the database equivalence test relies on ----------------------------------------


SHAPES: list[Callable[[Node], bool]] = [
    lambda n: isinstance(n, Step) and n.query.lstrip().startswith("{"),
    lambda n: isinstance(n, Step) and "'" in n.query and "\\" in n.query,
    lambda n: isinstance(n, Step) and "\n" in n.query and "$" in n.query,
    lambda n: isinstance(n, Step) and len(n.query.encode()) > 50 and not n.query.isascii(),
    lambda n: isinstance(n, Then) and isinstance(n.right, Then),
    lambda n: isinstance(n, Then) and n.result_name is not None,
    lambda n: isinstance(n, Parallel) and len(n.branches) == 2,
    lambda n: isinstance(n, Parallel) and len(n.branches) == 3,
    lambda n: isinstance(n, Parallel) and len(n.branches) == 5,
    lambda n: isinstance(n, Parallel) and isinstance(n.branches[0], Parallel),
    lambda n: isinstance(n, Race) and n.result_name is not None,
    lambda n: isinstance(n, If) and n.condition is not None and isinstance(n.condition, If),
    lambda n: isinstance(n, If) and n.if_rows is not None,
    lambda n: isinstance(n, Loop) and n.condition is None and isinstance(n.body, Loop),
    lambda n: isinstance(n, Loop) and n.condition is not None,
    lambda n: isinstance(n, Break) and n.value is None,
    lambda n: isinstance(n, Break) and n.value is not None and len(n.value.encode()) > 20,
    lambda n: isinstance(n, Sleep) and n.result_name is not None,
    lambda n: isinstance(n, WaitForSchedule),
    lambda n: isinstance(n, WaitForSignal) and n.timeout_seconds is not None,
    lambda n: isinstance(n, WaitForSignal) and n.timeout_seconds is None and "'" in n.signal_name,
    lambda n: isinstance(n, Http) and n.headers is not None and n.headers != "{}" and n.body is not None,
    lambda n: isinstance(n, Http) and "{" in n.url,
    lambda n: isinstance(n, HttpMultipart) and not n.parts.isascii() and "'" in n.parts,
    lambda n: isinstance(n, HttpMultipart) and n.headers is not None,
]


def test_strategy_reaches_every_node_type_and_shape() -> None:
    """One derandomized pass of generation (no shrinking) until every shape in SHAPES has been drawn."""
    missing = set(range(len(SHAPES)))

    def all_reached(graph: Node) -> bool:
        for _, node in _walk(graph, "root"):
            missing.difference_update([i for i in missing if SHAPES[i](node)])
        return not missing

    quick = settings(
        max_examples=20_000,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    try:
        find(graphs(max_leaves=12), all_reached, settings=quick)
    except NoSuchExample:
        pytest.fail(f"never drawn: SHAPES{sorted(missing)}")


@settings(max_examples=200)
@given(cron_exprs())
def test_cron_expressions_are_valid(expr: str) -> None:
    assert WaitForSchedule(expr).cron_expr == expr
