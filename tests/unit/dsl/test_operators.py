"""The Python DSL's operators and builders: what they build, and the errors they give."""

from __future__ import annotations

import pickle

import pytest

from pgdurable import (
    Bind,
    GraphError,
    Http,
    If,
    Parallel,
    Race,
    Sleep,
    Step,
    Then,
    WaitForSignal,
    break_,
    http,
    http_multipart,
    join,
    seq,
    sleep,
    wait_for_schedule,
    wait_for_signal,
)
from pgdurable.dsl.validate import children

a, b, c = Step("SELECT 'a'"), Step("SELECT 'b'"), Step("SELECT 'c'")


def test_then_join_race_and_bind() -> None:
    assert a >> b == Then(a, b)
    assert a & b == Parallel((a, b))
    assert a | b == Race(a, b)
    assert a | "x" == Step("SELECT 'a'", result_name="x")
    assert Bind(a, "x") == a | "x"
    assert type(Bind(a, "x")) is Step


def test_plain_strings_are_auto_wrapped_on_either_side() -> None:
    assert "SELECT 1" >> a == Then(Step("SELECT 1"), a)
    assert a >> "SELECT 1" == Then(a, Step("SELECT 1"))
    assert "SELECT 1" & a == Parallel((Step("SELECT 1"), a))
    assert "SELECT 1" | a == Race(Step("SELECT 1"), a)


def test_python_precedence_is_shift_then_and_then_or() -> None:
    # Python: >> binds tighter than &, which binds tighter than |.
    assert (a >> b & c) == Parallel((Then(a, b), c))
    assert (a & b >> c) == Parallel((a, Then(b, c)))
    assert (a | b & c) == Race(a, Parallel((b, c)))
    assert ((a | "x") >> b) == Then(Step("SELECT 'a'", result_name="x"), b)


def test_chains_of_one_operator_nest_left_like_postgresql() -> None:
    assert a & b & c == Parallel((Parallel((a, b)), c))
    assert a >> b >> c == Then(Then(a, b), c)


def test_precedence_trap_is_caught_with_the_fix() -> None:
    with pytest.raises(GraphError, match=r"write `\(a \| \"batch\"\) >> b`"):
        a | "batch" >> b


@pytest.mark.parametrize("word", ["VACUUM", "analyze", " CHECKPOINT "])
def test_one_word_statements_are_not_traps(word: str) -> None:
    assert (a >> word).right == Step(word)


def test_binding_a_non_identifier_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"to race a SQL string use Step\(\.\.\.\)"):
        a | "SELECT 1"


@pytest.mark.parametrize("name", ["has space", "123abc", "x) UNION SELECT version()--", ""])
def test_bind_validates_result_names(name: str) -> None:
    with pytest.raises(GraphError, match="is not a valid identifier"):
        Bind(a, name)


def test_unknown_operands_are_not_implemented() -> None:
    for op in ("__rshift__", "__and__", "__or__", "__rrshift__", "__rand__", "__ror__"):
        assert getattr(a, op)(42) is NotImplemented
    with pytest.raises(TypeError):
        a >> 42  # type: ignore[operator]
    with pytest.raises(TypeError):
        42 & a  # type: ignore[operator]


def test_nodes_have_no_truth_value() -> None:
    with pytest.raises(TypeError, match="no truth value"):
        bool(a)
    with pytest.raises(TypeError):
        a and b  # noqa: B018


def test_nodes_are_immutable_hashable_values_that_pickle() -> None:
    graph = (a | "x") >> (b & c)
    with pytest.raises(AttributeError):
        graph.left = b  # type: ignore[misc]
    assert {graph: 1}[(Step("SELECT 'a'") | "x") >> (b & c)] == 1
    assert pickle.loads(pickle.dumps(graph)) == graph


def test_seq_builds_a_balanced_tree_that_fits_the_depth_limit() -> None:
    steps = [f"SELECT {i}" for i in range(5_000)]  # 9,999 nodes: just under the limit
    graph = seq(*steps)
    order = []
    stack = [graph]
    while stack:
        node = stack.pop()
        if isinstance(node, Step):
            order.append(node.query)
        stack.extend(reversed([child for _, child in children(node)]))
    assert order == steps
    assert len(graph.to_json()) > 0


def test_join_takes_two_or_more() -> None:
    assert len(join(a, b, c, "SELECT 4").branches) == 4
    with pytest.raises(GraphError, match="at least 2 branches"):
        join(a)
    with pytest.raises(GraphError, match="at least 2 branches"):
        Parallel((a,))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: sleep(-1), "df.sleep: seconds must be >= 0, got -1"),
        (lambda: wait_for_signal(""), "df.wait_for_signal: signal name must not be empty"),
        (lambda: wait_for_signal("x", 0), "df.wait_for_signal: timeout_seconds must be > 0, got 0"),
        (lambda: wait_for_schedule("bad"), "df.wait_for_schedule: invalid cron expression 'bad': expected 5 fields"),
        (lambda: http("https://e.com", "TRACE"), "df.http: unsupported method 'TRACE'"),
        (lambda: http_multipart("https://e.com", "GET", [{"name": "f"}]), "df.http_multipart: unsupported method"),
        (lambda: http("file:///etc/passwd"), "df.http: URL scheme must be http or https: file:///etc/passwd"),
        (lambda: http("https://e.com", timeout_seconds=0), "df.http: timeout_seconds must be > 0, got 0"),
        (lambda: http_multipart("https://e.com", parts=[]), "df.http_multipart: parts must be a non-empty JSON array"),
        (lambda: http("https://e.com", headers={"X": 1}), "df.http: header 'X' must have a string value"),
        (lambda: Step("SELECT '\x00'"), "strings may not contain NUL"),
        (lambda: break_("\x00"), "strings may not contain NUL"),
        (lambda: Step("SELECT '\ud800'"), "valid Unicode"),
        (lambda: If(None, a, b), "IF requires exactly one of condition_node or an if_rows query"),
        (lambda: Sleep(True), "seconds must be an integer"),
    ],
)
def test_builders_check_their_arguments(build: object, message: str) -> None:
    with pytest.raises(GraphError) as caught:
        build()  # type: ignore[operator]
    assert message in str(caught.value)


def test_http_urls_with_placeholders_skip_the_scheme_check() -> None:
    assert http("{base_url}/v1", "post").url == "{base_url}/v1"
    assert isinstance(http("$resp.next" + "{x}"), Http)


def test_signal_timeout_is_optional() -> None:
    assert wait_for_signal("go") == WaitForSignal("go", None)
