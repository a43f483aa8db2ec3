"""`to_mermaid` / `to_markdown`: the diagram's structure for every node type, label escaping, status classes,
Mermaid's size limits, and graphs as deep and as large as the graph limits allow."""

from __future__ import annotations

import re

import pytest

from pgdurable.dsl import (
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
    break_,
    if_,
    if_rows,
    join,
    loop,
    race,
    seq,
    sleep,
    wait_for_signal,
)
from pgdurable.dsl.mermaid import MAX_EDGES, STATUS_STYLES, escape, to_markdown, to_mermaid
from pgdurable.dsl.validate import MAX_DEPTH, MAX_NODES

DECLARATION = re.compile(r'^    (n\d+(?:_end)?)(\[|\(\(|\(\[|\(|\{\{|\{|>)"([^"]*)"(\]|\)\)|\]\)|\)|\}\}|\})$')
EDGE = re.compile(r'^    (n\d+) (-->|-\.->)(?:\|"([^"]*)"\|)? (n\d+)$')


def parse(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str, str | None, str]], list[str]]:
    """The diagram's nodes (id → (opening bracket, label)), edges (source, arrow, label, target) and the
    class lines; fails on any line that is none of these."""
    lines = text.split("\n")
    assert lines[0] == "flowchart TD"
    nodes: dict[str, tuple[str, str]] = {}
    edges: list[tuple[str, str, str | None, str]] = []
    classes: list[str] = []
    for line in lines[1:]:
        if declared := DECLARATION.match(line):
            assert declared[1] not in nodes
            nodes[declared[1]] = (declared[2], declared[3])
        elif edge := EDGE.match(line):
            edges.append((edge[1], edge[2], edge[3], edge[4]))
        elif line.startswith(("    classDef ", "    class ")):
            classes.append(line.strip())
        else:
            raise AssertionError(f"unexpected line {line!r}")
    for source, _, _, target in edges:
        assert source in nodes and target in nodes
    return nodes, edges, classes


def unescape(text: str) -> str:
    return re.sub(r"#(\d+);", lambda entity: chr(int(entity[1])), text)


def by_label(nodes: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Node ids by their label, as Mermaid shows it (entities decoded)."""
    return {unescape(text): node_id for node_id, (_, text) in nodes.items()}


# -- structure ----------------------------------------------------------------------------------------------


def test_a_sequence_is_a_chain_of_edges_and_a_then_has_no_box() -> None:
    assert to_mermaid(Step("SELECT 1") >> Step("SELECT 2") >> sleep(5)) == "\n".join(
        [
            "flowchart TD",
            '    n0["SQL: SELECT 1"]',
            '    n1["SQL: SELECT 2"]',
            '    n2("SLEEP 5s")',
            "    n0 --> n1",
            "    n1 --> n2",
        ]
    )


def test_join_and_race_fan_out_from_their_box_and_fan_in_to_a_circle() -> None:
    nodes, edges, _ = parse(to_mermaid(join("SELECT 1", "SELECT 2", "SELECT 3") >> race("SELECT 4", "SELECT 5")))
    ids = by_label(nodes)
    assert nodes[ids["JOIN (3)"]][0] == "{{" and nodes[ids["RACE"]][0] == "{{"
    assert nodes[ids["all"]][0] == "((" and nodes[ids["first"]][0] == "(("
    for n in (1, 2, 3):
        assert (ids["JOIN (3)"], "-->", None, ids[f"SQL: SELECT {n}"]) in edges
        assert (ids[f"SQL: SELECT {n}"], "-->", None, ids["all"]) in edges
    assert (ids["all"], "-->", None, ids["RACE"]) in edges  # the JOIN's fan-in leads on
    for n in (4, 5):
        assert (ids["RACE"], "-->", None, ids[f"SQL: SELECT {n}"]) in edges
        assert (ids[f"SQL: SELECT {n}"], "-->", None, ids["first"]) in edges
    assert len(edges) == 11


def test_if_runs_its_condition_then_branches_on_labelled_edges() -> None:
    graph = Step("SELECT 0") >> if_("SELECT true", "SELECT 1", "SELECT 2") >> Step("SELECT 3")
    nodes, edges, _ = parse(to_mermaid(graph))
    ids = by_label(nodes)
    assert nodes[ids["IF"]][0] == "{"
    assert sorted(edges) == sorted(
        [
            (ids["SQL: SELECT 0"], "-->", None, ids["SQL: SELECT true"]),
            (ids["SQL: SELECT true"], "-->", "condition", ids["IF"]),
            (ids["IF"], "-->", "then", ids["SQL: SELECT 1"]),
            (ids["IF"], "-->", "else", ids["SQL: SELECT 2"]),
            (ids["SQL: SELECT 1"], "-->", None, ids["SQL: SELECT 3"]),
            (ids["SQL: SELECT 2"], "-->", None, ids["SQL: SELECT 3"]),
        ]
    )


def test_if_rows_names_its_result_and_has_no_condition_edge() -> None:
    nodes, edges, _ = parse(to_mermaid(if_rows("batch", "SELECT 1", "SELECT 2")))
    ids = by_label(nodes)
    assert "IF rows of 'batch'" in ids
    assert {label for _, _, label, _ in edges} == {"then", "else"}


def test_an_infinite_loop_comes_back_dotted_and_leaves_by_break() -> None:
    graph = loop((Step("SELECT next()") | "b") >> if_rows("b", "SELECT work()", break_("done"))) >> "SELECT 9"
    nodes, edges, _ = parse(to_mermaid(graph))
    ids = by_label(nodes)
    head, work, leave = ids["LOOP (infinite)"], ids["SQL: SELECT work()"], ids["BREAK 'done'"]
    assert nodes[head][0] == "([" and nodes[leave][0] == ">"
    assert (head, "-->", None, ids["SQL: SELECT next() |=> 'b'"]) in edges
    assert (work, "-.->", "repeat", head) in edges
    assert (head, "-->", "break", ids["SQL: SELECT 9"]) in edges
    assert not [edge for edge in edges if edge[0] == leave]  # nothing follows a BREAK


def test_a_while_loop_tests_after_the_body_and_leaves_when_false() -> None:
    nodes, edges, _ = parse(to_mermaid(loop("SELECT work()", "SELECT more()") >> "SELECT 9"))
    ids = by_label(nodes)
    head, body, test = ids["LOOP (while)"], ids["SQL: SELECT work()"], ids["SQL: SELECT more()"]
    assert sorted(edges) == sorted(
        [
            (head, "-->", None, body),
            (body, "-->", None, test),
            (test, "-.->", "true", head),
            (test, "-->", "false", ids["SQL: SELECT 9"]),
        ]
    )


EVERY_TYPE: list[tuple[Node, str, str]] = [
    (Step("SELECT 1"), "[", "SQL: SELECT 1"),
    (Then(Step("SELECT 1"), Step("SELECT 2")), "[", "SQL: SELECT 2"),
    (Parallel((Step("SELECT 1"), Step("SELECT 2"))), "{{", "JOIN (2)"),
    (Race(Step("SELECT 1"), Step("SELECT 2")), "{{", "RACE"),
    (If(Step("SELECT true"), Step("SELECT 1"), Step("SELECT 2")), "{", "IF"),
    (Loop(Step("SELECT 1")), "([", "LOOP (infinite)"),
    (Break("x"), ">", "BREAK 'x'"),
    (Sleep(3), "(", "SLEEP 3s"),
    (WaitForSchedule("0 * * * *"), "(", "WAIT '0 * * * *'"),
    (WaitForSignal("go", 5), "(", "SIGNAL 'go' (5s)"),
    (Http("https://example.com/x", "GET"), "[", "HTTP GET https://example.com/x"),
    (HttpMultipart("https://example.com/u", parts=[{"name": "f", "value": "v"}]), "[", "HTTP_MULTIPART POST h"),
    (Call("embed", {"chunks": "$c"}), "[", "CALL embed"),
]


@pytest.mark.parametrize(("node", "opening", "text"), EVERY_TYPE, ids=[type(n).__name__ for n, _, _ in EVERY_TYPE])
def test_every_node_type_is_drawn(node: Node, opening: str, text: str) -> None:
    nodes, _, _ = parse(to_mermaid(node))
    assert any(o == opening and t.startswith(text) for o, t in nodes.values()), nodes
    markdown = to_markdown(node)
    assert markdown.startswith("```mermaid\nflowchart TD\n") and markdown.endswith("\n```\n")
    assert node._repr_markdown_() == markdown


def test_the_tests_cover_every_node_class() -> None:
    from pgdurable.dsl.nodes import NODE_CLASSES

    assert {type(node) for node, _, _ in EVERY_TYPE} == set(NODE_CLASSES)


# -- labels --------------------------------------------------------------------------------------------------


def test_labels_are_escaped_for_mermaid() -> None:
    hostile = 'SELECT "a"[1]{2} <b>&x</b> #3 | `y`\nFROM t -- ```'
    nodes, _, _ = parse(to_mermaid(Step(hostile) | "r"))
    ((_, text),) = nodes.values()
    assert text == (
        "SQL: SELECT #34;a#34;#91;1#93;#123;2#125; #60;b#62;#38;x#60;/b#62; #35;3 #124; #96;y#96;"
        " FROM t -- #96;#96;#96; #124;=#62; 'r'"
    )
    assert not set(text) & set('"<>[]{}|`\n')


def test_escape_keeps_plain_text_and_turns_line_breaks_into_spaces() -> None:
    assert escape("SQL: SELECT $a * 2, 'x' (y)") == "SQL: SELECT $a * 2, 'x' (y)"
    assert escape("a\r\nb\nc") == "a b c"


# -- status -----------------------------------------------------------------------------------------------------


def test_status_adds_a_class_per_status_with_its_colours() -> None:
    graph = (Step("SELECT 1") | "a") >> join("SELECT 2", wait_for_signal("go")) >> "SELECT 3"
    status = {
        "root": "running",  # a THEN: not drawn, so not coloured
        "root.left.left": "completed",
        "root.left.right": "running",
        "root.left.right.left": "completed",
        "root.left.right.right": "running",
        "root.right": "pending",
        "root.nowhere": "failed",  # no such node
        "root.left": "weird",  # not a status
    }
    text = to_mermaid(graph, status)
    nodes, _, classes = parse(text)
    ids = by_label(nodes)
    first, second, third = ids["SQL: SELECT 1 |=> 'a'"], ids["SQL: SELECT 2"], ids["SQL: SELECT 3"]
    fan_out, fan_in, wait = ids["JOIN (2)"], ids["all"], ids["SIGNAL 'go'"]
    assert classes == [
        f"classDef pending {STATUS_STYLES['pending']}",
        f"classDef running {STATUS_STYLES['running']}",
        f"classDef completed {STATUS_STYLES['completed']}",
        f"class {first},{second} completed",
        f"class {fan_out},{wait},{fan_in} running",
        f"class {third} pending",
    ]


def test_without_status_there_are_no_classes() -> None:
    assert "class" not in to_mermaid(join("SELECT 1", "SELECT 2"))


# -- size ------------------------------------------------------------------------------------------------------


def test_a_graph_256_deep_is_drawn_without_recursion() -> None:
    graph: Node = Step("SELECT 0")
    for depth in range(1, MAX_DEPTH):  # a loop in an IF in a loop ..., 256 levels
        graph = Loop(graph) if depth % 2 else if_rows("r", graph, "SELECT 1")
    nodes, edges, _ = parse(to_mermaid(graph, {"root": "running"}))
    assert len(nodes) == 1 + (MAX_DEPTH - 1) + (MAX_DEPTH - 1) // 2
    assert "SQL: SELECT 0" in by_label(nodes)
    deep_chain: Node = Step("SELECT 0")
    for i in range(1, MAX_DEPTH):  # left-deep THENs: a >> b >> c ...
        deep_chain = deep_chain >> Step(f"SELECT {i}")
    nodes, edges, _ = parse(to_mermaid(deep_chain))
    assert len(nodes) == MAX_DEPTH and len(edges) == MAX_DEPTH - 1


def test_a_graph_of_ten_thousand_nodes_is_drawn() -> None:
    graph = seq(*[Step(f"SELECT {i}") for i in range((MAX_NODES + 1) // 2)])  # 5000 SQL nodes, 4999 THENs
    nodes, edges, _ = parse(to_mermaid(graph))
    assert len(nodes) == 5000 and len(edges) == 4999


def test_a_graph_too_deep_is_reported_not_drawn() -> None:
    graph: Node = Step("SELECT 0")
    for _ in range(MAX_DEPTH):
        graph = Loop(graph)
    with pytest.raises(Exception, match="maximum nesting depth"):
        to_mermaid(graph)
    assert to_markdown(graph) == "*Not drawn:* root: Graph exceeds maximum nesting depth of 256\n"


def test_markdown_falls_back_to_the_explain_tree_past_mermaid_limits() -> None:
    at_limit = seq(*[Step(f"SELECT {i}") for i in range(MAX_EDGES + 1)])  # exactly 500 edges: drawn
    assert to_markdown(at_limit).startswith("```mermaid\n")
    past = seq(*[Step(f"SELECT {i}") for i in range(MAX_EDGES + 2)])
    first, path = past, "root"
    while isinstance(first, Then):
        first, path = first.left, f"{path}.left"
    markdown = to_markdown(past, {path: "completed"})
    assert markdown.startswith("*502 nodes and 501 edges: too large for Mermaid's default limits")
    assert "```text\nSQL: SELECT 0 ✓\n→ SQL: SELECT 1\n" in markdown
    assert "<" not in markdown


def test_the_fallback_fence_outlasts_backticks_in_the_sql() -> None:
    steps = [Step(f"SELECT {i}") for i in range(MAX_EDGES + 1)]
    markdown = to_markdown(seq(Step("SELECT '````'"), *steps))
    assert "\n`````text\nSQL: SELECT '````'\n" in markdown and markdown.endswith("\n`````\n")
