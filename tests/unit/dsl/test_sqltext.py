"""`to_sql` without a database: the precedence table of reference §3.2, quoting, auto-wrap exceptions, and a
small model of PostgreSQL's grouping that reads the text back into a graph.

The model (`_evaluate`) parses what `to_sql` emits the way PostgreSQL's grammar does for these operators (one
precedence level, left-associative; a prefix operator takes the single operand after it) and applies the df
builders' semantics, including auto-wrap. It is checked against PostgreSQL itself by the database
equivalence test; here it lets hypothesis check the parenthesisation of every random graph.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings

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
    if_,
    if_rows,
    join3,
    loop,
    sleep,
    wait_for_signal,
)
from pgdurable.dsl.nodes import NODE_CLASSES, Call
from pgdurable.dsl.policy import RetryPolicy
from pgdurable.dsl.sqltext import quote_literal, to_sql
from pgdurable.dsl.validate import children
from tests.strategies import graphs

A, B, C, E, S, T, T2, X, Y = (Step(q) for q in ("A", "B", "C", "E", "S", "T", "T2", "X", "Y"))


# -- reference §3.2, read backwards: the graph PostgreSQL builds -> the text that builds it ----------------

PRECEDENCE_TABLE = [
    # (graph, the text to_sql writes)                    # the row of §3.2 it comes from
    (Parallel((Then(A, B), C)), "'A' ~> 'B' & 'C'"),  # 'A' ~> 'B' & 'C'
    (Then(Parallel((A, B)), C), "'A' & 'B' ~> 'C'"),  # 'A' & 'B' ~> 'C'
    (Parallel((Race(A, B), C)), "'A' | 'B' & 'C'"),  # 'A' | 'B' & 'C'
    (Race(Parallel((A, B)), C), "'A' & 'B' | 'C'"),  # 'A' & 'B' | 'C'
    (Then(A | "x", B), "'A' |=> 'x' ~> 'B'"),  # 'A' |=> 'x' ~> 'B'
    (Then(A, B) | "x", "'A' ~> 'B' |=> 'x'"),  # 'A' ~> 'B' |=> 'x'
    (If(C, T, E), "'C' ?> 'T' !> 'E'"),  # 'C' ?> 'T' !> 'E'
    (If(Then(X, C), T, E), "'X' ~> 'C' ?> 'T' !> 'E'"),  # 'X' ~> 'C' ?> 'T' !> 'E'
    (Then(If(C, T, E), Y), "'C' ?> 'T' !> 'E' ~> 'Y'"),  # 'C' ?> 'T' !> 'E' ~> 'Y'
    (If(C, Then(T, T2), E), "'C' ?> ('T' ~> 'T2') !> 'E'"),  # 'C' ?> 'T' ~> 'T2' !> 'E' is an error
    (Then(Loop(B), S), "@> 'B' ~> 'S'"),  # @> 'B' ~> 'S'
    (Loop(Then(B, S)), "@> ('B' ~> 'S')"),  # @> ('B' ~> 'S')
    (Then(Then(X, Loop(B)), Y), "'X' ~> @> 'B' ~> 'Y'"),  # 'X' ~> @> 'B' ~> 'Y'
]

# The other way round: the groupings that need parentheses, and the ones that do not.
GROUPING = [
    (Then(A, Parallel((B, C))), "'A' ~> ('B' & 'C')"),
    (Then(Then(A, B), C), "'A' ~> 'B' ~> 'C'"),
    (Then(A, Then(B, C)), "'A' ~> ('B' ~> 'C')"),
    (Parallel((Parallel((A, B)), C)), "'A' & 'B' & 'C'"),
    (Parallel((A, Parallel((B, C)))), "'A' & ('B' & 'C')"),
    (Race(A, Race(B, C)), "'A' | ('B' | 'C')"),
    (Then(A, B | "b"), "'A' ~> ('B' |=> 'b')"),
    (Then(A | "a", B | "b") | "t", "'A' |=> 'a' ~> ('B' |=> 'b') |=> 't'"),
    (If(If(C, T, E), T2, E), "'C' ?> 'T' !> 'E' ?> 'T2' !> 'E'"),
    (If(C, T, If(C, T, E)), "'C' ?> 'T' !> ('C' ?> 'T' !> 'E')"),
    (If(C, T | "t", E) | "i", "'C' ?> ('T' |=> 't') !> 'E' |=> 'i'"),
    (Loop(B) | "l", "@> 'B' |=> 'l'"),
    (Loop(B | "b"), "@> ('B' |=> 'b')"),
    (Loop(Loop(B)), "@> @> 'B'"),
    (Then(A, Loop(B)), "'A' ~> @> 'B'"),
    (Then(A, Loop(B) | "l"), "'A' ~> (@> 'B' |=> 'l')"),
    (Parallel((Loop(A), Loop(B))), "@> 'A' & @> 'B'"),
    (If(Loop(C), Loop(T), Loop(E)), "@> 'C' ?> @> 'T' !> @> 'E'"),
    (Race(A, sleep(2)), "'A' | df.sleep(2)"),
]


@pytest.mark.parametrize(("graph", "text"), PRECEDENCE_TABLE + GROUPING)
def test_grouping(graph: Node, text: str) -> None:
    assert to_sql(graph) == text
    assert _evaluate(text) == graph


BUILDERS = [
    (Step("SELECT 1"), "df.sql('SELECT 1')"),  # the root must be a graph, not a bare string
    (Step("SELECT 1") | "one", "'SELECT 1' |=> 'one'"),
    (join3(A, B, C), "df.join3('A', 'B', 'C')"),
    (Parallel((A, B, C, E)), "df.join_all(VARIADIC ARRAY['A', 'B', 'C', 'E'])"),
    (
        Parallel((A, Then(B, C), Parallel((A, B)), E, S)) | "j",
        "df.join_all(VARIADIC ARRAY['A', 'B' ~> 'C', 'A' & 'B', 'E', 'S']) |=> 'j'",
    ),
    (Then(A, join3(B, C, E)), "'A' ~> df.join3('B', 'C', 'E')"),
    (if_rows("doc", "SELECT $doc.id", "SELECT 0"), "df.if_rows('doc', 'SELECT $doc.id', 'SELECT 0')"),
    (if_rows("it's", A, B), "df.if_rows('it''s', 'A', 'B')"),
    (loop("SELECT step()", "SELECT count(*) > 0 FROM q"), "df.loop('SELECT step()', 'SELECT count(*) > 0 FROM q')"),
    (Loop(Then(A, B), Then(C, E)), "df.loop('A' ~> 'B', 'C' ~> 'E')"),
    (Break(), "df.break()"),
    (Break(""), "df.break('')"),
    (Break('{"done":true}'), "df.break('{\"done\":true}')"),
    (Sleep(0), "df.sleep(0)"),
    (Sleep(2**63 - 1), "df.sleep(9223372036854775807)"),
    (WaitForSchedule("*/5 * * * *"), "df.wait_for_schedule('*/5 * * * *')"),
    (wait_for_signal("approval", 3600) | "sig", "df.wait_for_signal('approval', 3600) |=> 'sig'"),
    (WaitForSignal("it's"), "df.wait_for_signal('it''s')"),
    (Http("https://x/a"), "df.http('https://x/a')"),
    (Http("https://x/a", "get"), "df.http('https://x/a', 'GET')"),
    (Http("https://x/a", body="it's"), "df.http('https://x/a', 'POST', 'it''s')"),
    (
        Http("https://x/a", "GET", None, {"x-ms-version": "2021-08-06"}),
        "df.http('https://x/a', 'GET', NULL, '{\"x-ms-version\":\"2021-08-06\"}'::jsonb)",
    ),
    (Http("https://x/a", timeout_seconds=5), "df.http('https://x/a', 'POST', NULL, NULL, 5)"),
    (Http("{base}/a", "PUT", "", {}, 30), "df.http('{base}/a', 'PUT', '', '{}'::jsonb)"),
    (
        HttpMultipart("https://x/u", "POST", [{"name": "file", "data_b64": "$pdf.body"}]),
        'df.http_multipart(\'https://x/u\', \'POST\', \'[{"name":"file","data_b64":"$pdf.body"}]\'::jsonb)',
    ),
    (
        HttpMultipart("https://x/u", "PATCH", [{"n": "l'œuvre"}], {"B": "2", "a": "1"}, 9),
        "df.http_multipart('https://x/u', 'PATCH', '[{\"n\":\"l''œuvre\"}]'::jsonb, "
        '\'{"B":"2","a":"1"}\'::jsonb, 9)',
    ),
]


@pytest.mark.parametrize(("graph", "text"), BUILDERS)
def test_builders(graph: Node, text: str) -> None:
    assert to_sql(graph) == text
    assert _evaluate(text) == graph


# -- quoting and auto-wrap -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "literal"),
    [
        ("SELECT 'yes'", "'SELECT ''yes'''"),
        ("SELECT E'\\n'", "'SELECT E''\\n'''"),  # backslashes are plain characters (standard strings)
        ("a\\", "'a\\'"),
        ("SELECT 1;\nSELECT 2", "'SELECT 1;\nSELECT 2'"),
        ("SELECT $$x$$, '日本語 😀'", "'SELECT $$x$$, ''日本語 😀'''"),
        ("", "''"),
    ],
)
def test_literals_are_standard_strings(query: str, literal: str) -> None:
    assert quote_literal(query) == literal
    assert to_sql(Then(Step(query), A)) == f"{literal} ~> 'A'"


@pytest.mark.parametrize(
    "query",
    [
        '{"node_type":"SQL","query":"SELECT 1"}',
        '{"node_type":"SLEEP","query":"5"}',  # as a literal, auto-wrap would make it a SLEEP node
        "{",
        " {",
        "\n\t{",
        "\r\n {",
        "\u00a0{",
        "\ufeff{",
    ],
)
def test_text_that_may_read_as_graph_json_uses_df_sql(query: str) -> None:
    literal = quote_literal(query)
    assert to_sql(Then(Step(query), A)) == f"df.sql({literal}) ~> 'A'"
    assert to_sql(Then(A, Step(query))) == f"'A' ~> df.sql({literal})"
    assert to_sql(Step(query) | "n") == f"df.sql({literal}) |=> 'n'"
    assert to_sql(join3(A, B, Step(query))) == f"df.join3('A', 'B', df.sql({literal}))"


@pytest.mark.parametrize("query", ["[1]", '"x"', "x {", "SELECT '{}'::jsonb"])
def test_other_text_stays_a_literal(query: str) -> None:
    assert to_sql(Then(A, Step(query))) == f"'A' ~> {quote_literal(query)}"


def test_graph_json_is_never_embedded() -> None:
    graph = if_(
        (A | "a") >> join3(Http("https://x", "GET", None, {"k": "v"}), sleep(5), Loop(B, C)),
        Race(wait_for_signal("go", 60), WaitForSchedule("0 9 * * MON-FRI")),
        loop(Break('{"done":true}')) | "l",
    )
    text = to_sql(graph)
    assert "node_type" not in text
    assert "{" not in text.replace('{"done":true}', "").replace('{"k":"v"}', "")
    assert _evaluate(text) == graph


def test_limits_are_checked() -> None:
    deep: Node = A
    for _ in range(300):
        deep = Then(A, deep)
    with pytest.raises(ValueError, match="maximum nesting depth"):
        to_sql(deep)


def test_the_deepest_graphs_render() -> None:
    # 256 levels, the most the depth limit allows: deeper than Python's recursion limit would go
    right, loops, ifs = A, A, A
    for _ in range(255):
        right, loops, ifs = Then(A, right), Loop(loops), If(C, ifs, E)
    assert to_sql(right) == "'A' ~> (" * 254 + "'A' ~> 'A'" + ")" * 254
    assert to_sql(loops) == "@> " * 255 + "'A'"
    assert to_sql(ifs) == "'C' ?> (" * 254 + "'C' ?> 'A' !> 'E'" + ") !> 'E'" * 254


def test_shared_subtrees_render_once_each_place() -> None:
    doubled: Node = Parallel((A, B))
    for _ in range(11):
        doubled = Parallel((doubled, doubled))
    text = to_sql(doubled)
    assert text.count("'A'") == 2**11
    assert _evaluate(text) == doubled


# -- every random graph reads back as itself -----------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(max_leaves=20))
def test_text_reads_back_as_the_same_graph(graph: Node) -> None:
    text = to_sql(graph)
    assert _evaluate(text) == graph
    # graph JSON appears only where the graph's own strings hold it
    assert text.count('{"node_type') <= sum(s.count('{"node_type') for s in _strings(graph))


def _strings(node: Node) -> Iterator[str]:
    for value in attrs.astuple(node, recurse=False):
        if isinstance(value, str):
            yield value
    for _, child in children(node):
        yield from _strings(child)


# -- a model of PostgreSQL evaluating the text ---------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<cast>::jsonb|::text\[\])
      | (?P<keyword>[a-z_]+\s*=>)
      | (?P<name>df\.[a-z_0-9]+|NULL|VARIADIC|ARRAY)
      | (?P<number>[0-9]+)
      | (?P<punct>[()\[\],])
      | (?P<operator>[~!@#%^&|`?+\-*/<>=]+)
    )""",
    re.VERBOSE,
)
_BINARY = ("~>", "&", "|", "|=>", "?>", "!>")
_WRAPPED = re.compile(r"[ \t\n\r]*\{")  # what df._ensure tries to read as graph JSON


@attrs.frozen
class _PartialIf:
    condition: object
    then_branch: object


@attrs.frozen
class _Jsonb:
    text: str


class _Parser:
    """Recursive descent over the subset of SQL that `to_sql` writes."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.lastgroup is None:
                if text[position:].isspace():
                    break
                raise AssertionError(f"cannot read {text[position : position + 20]!r}")
            self.tokens.append((match.lastgroup, match.group(match.lastgroup)))
            position = match.end()
        self.index = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        assert token is not None, "unexpected end"
        assert value is None or token[1] == value, f"expected {value!r}, got {token[1]!r}"
        self.index += 1
        return token

    def expression(self) -> object:
        left = self.unary()
        while (token := self.peek()) is not None and token[0] == "operator":
            assert token[1] in _BINARY, f"unknown operator {token[1]!r}"
            self.take()
            left = _apply(token[1], left, self.unary())
        return left

    def unary(self) -> object:
        token = self.peek()
        if token == ("operator", "@>"):
            self.take()
            return Loop(_ensure(self.unary()))
        return self.primary()

    def primary(self) -> object:
        kind, value = self.take()
        if kind == "string":
            text = value[1:-1].replace("''", "'")
            if self.peek() == ("cast", "::jsonb"):
                self.take()
                return _Jsonb(text)
            return text
        if kind == "number":
            return int(value)
        if value == "ARRAY":
            self.take("[")
            array = self.items("]")
            self.take("::text[]")
            return array
        if value == "NULL":
            return None
        if value == "(":
            inner = self.expression()
            self.take(")")
            return inner
        assert kind == "name" and value.startswith("df."), f"unexpected {value!r}"
        self.take("(")
        if self.peek() == ("name", "VARIADIC"):
            self.take()
            self.take("ARRAY")
            self.take("[")
            args: list[Any] = [self.items("]")]
            self.take(")")
        elif self.peek() == ("punct", ")"):
            self.take()
            args = []
        else:
            args = self.items(")")
        return _call(value[3:], args)

    def items(self, closing: str) -> list[Any]:
        """Comma-separated expressions (or `name => expression` arguments) up to and including `closing`."""
        items = [self.item()]
        while (separator := self.take()[1]) == ",":
            items.append(self.item())
        assert separator == closing, f"expected {closing!r}, got {separator!r}"
        return items

    def item(self) -> Any:
        token = self.peek()
        if token is not None and token[0] == "keyword":
            self.take()
            return (token[1].removesuffix("=>").strip(), self.expression())
        return self.expression()


def _evaluate(text: str) -> Node:
    parser = _Parser(text)
    value = parser.expression()
    assert parser.peek() is None, f"trailing {parser.peek()!r}"
    assert isinstance(value, NODE_CLASSES), f"{text!r} is not a graph"
    return value


def _ensure(value: object) -> Node:
    """df._ensure: a graph stays itself, any other text becomes a SQL step."""
    if isinstance(value, str):
        assert _WRAPPED.match(value) is None, f"{value!r} would be read as graph JSON"
        return Step(value)
    assert isinstance(value, NODE_CLASSES), f"{value!r} is not a graph"
    return value


def _apply(operator: str, left: object, right: object) -> object:
    if operator == "~>":
        return Then(_ensure(left), _ensure(right))
    if operator == "&":
        return Parallel((_ensure(left), _ensure(right)))
    if operator == "|":
        return Race(_ensure(left), _ensure(right))
    if operator == "|=>":
        assert isinstance(right, str)
        return attrs.evolve(_ensure(left), result_name=right)
    if operator == "?>":
        return _PartialIf(left, right)
    assert operator == "!>"
    assert isinstance(left, _PartialIf), "left side of !> must be a ?> expression"
    return If(_ensure(left.condition), _ensure(left.then_branch), _ensure(right))


def _call(function: str, args: list[Any]) -> Node:
    jsonb: list[Any] = [arg.text if isinstance(arg, _Jsonb) else arg for arg in args]
    match function, args:
        case "sql", [str(query)]:
            return Step(query)
        case "retry", [node, *named]:
            options = dict(named)
            codes = options.pop("retry_on", None)
            return attrs.evolve(_ensure(node), retry=RetryPolicy(**options, retry_on=codes))
        case "timeout", [node, int(seconds)]:
            return attrs.evolve(_ensure(node), timeout=seconds)
        case "call", [str(function)]:
            return Call(function)
        case "call", [str(function), _Jsonb(text=args)]:
            return Call(function, args)
        case "join3", [a, b, c]:
            return Parallel((_ensure(a), _ensure(b), _ensure(c)))
        case "join_all", [list(branches)]:
            return Parallel(tuple(_ensure(branch) for branch in branches))
        case "if_rows", [str(name), then_branch, else_branch]:
            return If(None, _ensure(then_branch), _ensure(else_branch), if_rows=name)
        case "loop", [body, condition]:
            return Loop(_ensure(body), _ensure(condition))
        case "break", [] | [str()]:
            return Break(*args)
        case "sleep", [int(seconds)]:
            return Sleep(seconds)
        case "wait_for_schedule", [str(cron)]:
            return WaitForSchedule(cron)
        case "wait_for_signal", [str()] | [str(), int()]:
            return WaitForSignal(*args)
        case "http", [str(), *_]:
            return Http(*jsonb)
        case "http_multipart", [str(), *_]:
            return HttpMultipart(*jsonb)
    raise AssertionError(f"df.{function}{tuple(args)!r}: not a builder call")
