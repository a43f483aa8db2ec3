"""`explain`: the dry-run vectors of reference §8.3 byte for byte, then labels, truncation at character
boundaries, THEN chains, nesting, padding and the live-mode marker hook.

Expected trees are written line by line with their padding, so that no line of this file ends in a space.
"""

from __future__ import annotations

import pytest

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
    loop,
    sleep,
    wait_for_signal,
)
from pgdurable.dsl.explain import explain, label, truncate_bytes


def tree(*lines: str) -> str:
    return "\n".join(lines)


def padded(*lines: str) -> str:
    """`lines` right-padded as df.explain pads them: to the longest line's length + 4."""
    width = max(len(line) for line in lines) + 4
    return "\n".join(line.ljust(width) for line in lines)


# -- reference §8.3, the exact dry-run outputs ----------------------------------------------------------------


def test_reference_sequence_with_if() -> None:
    # df.explain('SELECT 1' |=> 'a' ~> ('SELECT 2' |=> 'b') ~> df.if('SELECT $a > 0','SELECT ''yes''','SELECT ''no'''))
    graph = (Step("SELECT 1") | "a") >> (Step("SELECT 2") | "b") >> if_("SELECT $a > 0", "SELECT 'yes'", "SELECT 'no'")
    assert explain(graph) == tree(
        "SQL: SELECT 1 |=> 'a'         ",
        "→ SQL: SELECT 2 |=> 'b'       ",
        "→ IF                          ",
        "    ? condition:              ",
        "      └─SQL: SELECT $a > 0    ",
        "    ✓ then:                   ",
        "      └─SQL: SELECT 'yes'     ",
        "    ✗ else:                   ",
        "      └─SQL: SELECT 'no'      ",
    )


def test_reference_join_then_race() -> None:
    # df.explain(('SELECT 1 AS x' |=> 'l' & 'SELECT 2') ~> (df.wait_for_signal('go',60) | df.sleep(30)))
    graph = ((Step("SELECT 1 AS x") | "l") & "SELECT 2") >> (wait_for_signal("go", 60) | sleep(30))
    assert explain(graph) == tree(
        "JOIN (2)                              ",
        "    ║ branch 1:                       ",
        "      ├─SQL: SELECT 1 AS x |=> 'l'    ",
        "    ║ branch 2:                       ",
        "      └─SQL: SELECT 2                 ",
        "→ RACE                                ",
        "    ║ branch 1:                       ",
        "      ├─SIGNAL 'go' (60s)             ",
        "    ║ branch 2:                       ",
        "      └─SLEEP 30s                     ",
    )


def test_reference_while_loop() -> None:
    # df.explain(df.loop('SELECT step()', 'SELECT count(*) > 0 FROM q'))
    graph = loop("SELECT step()", "SELECT count(*) > 0 FROM q")
    assert explain(graph) == tree(
        "LOOP (while)                               ",
        "    ↻ body:                                ",
        "      └─SQL: SELECT step()                 ",
        "    ? while:                               ",
        "      └─SQL: SELECT count(*) > 0 FROM q    ",
    )


def test_reference_note_name_on_a_then_is_not_shown() -> None:
    # without the parentheses 'b' names the enclosing THEN, which has no line of its own
    graph = ((Step("SELECT 1") | "a") >> Step("SELECT 2")) | "b"
    assert explain(graph) == padded("SQL: SELECT 1 |=> 'a'", "→ SQL: SELECT 2")


def test_single_sql_step() -> None:
    assert explain(Step("SELECT 1")) == "SQL: SELECT 1    "


# -- labels ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "text"),
    [
        (Step("SELECT 1"), "SQL: SELECT 1"),
        (Step("SELECT 1") | "one", "SQL: SELECT 1 |=> 'one'"),
        (Sleep(60), "SLEEP 60s"),
        (Sleep(0) | "nap", "SLEEP 0s |=> 'nap'"),
        (WaitForSchedule("*/5 * * * *"), "WAIT '*/5 * * * *'"),
        (WaitForSignal("approval"), "SIGNAL 'approval'"),
        (WaitForSignal("approval", 3600) | "sig", "SIGNAL 'approval' (3600s) |=> 'sig'"),
        (Http("https://example.com/a", "get"), "HTTP GET https://example.com/a"),
        (Http("https://example.com/a") | "r", "HTTP POST https://example.com/a |=> 'r'"),
        (HttpMultipart("https://example.com/u", "PUT", [{"name": "f"}]), "HTTP_MULTIPART PUT https://example.com/u"),
        (Break(), "BREAK"),
        (Break(""), "BREAK ''"),
        (Break('{"done":true}') | "b", "BREAK '{\"done\":true}' |=> 'b'"),
        (Loop(Step("x")), "LOOP (infinite)"),
        (Loop(Step("x"), Step("y")) | "l", "LOOP (while) |=> 'l'"),
        (If(Step("c"), Step("t"), Step("e")), "IF"),
        (If(None, Step("t"), Step("e"), if_rows="doc") | "i", "IF |=> 'i'"),
        (Parallel((Step("a"), Step("b"), Step("c"), Step("d"), Step("e"))), "JOIN (5)"),
        (Race(Step("a"), Step("b")) | "r", "RACE |=> 'r'"),
    ],
)
def test_labels(node: Node, text: str) -> None:
    assert label(node) == text


# -- truncation: UTF-8 bytes, cut on a character boundary ----------------------------------------------------


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("x" * 50, "x" * 50),  # exactly at the limit: kept
        ("x" * 51, "x" * 47 + "..."),
        ("x" * 48 + "é", "x" * 48 + "é"),  # 50 bytes, 49 characters: kept
        ("x" * 49 + "é", "x" * 47 + "..."),  # 51 bytes
        ("x" * 46 + "é" + "y" * 9, "x" * 46 + "..."),  # é would straddle byte 47: dropped whole
        ("x" * 45 + "é" + "y" * 9, "x" * 45 + "é..."),  # é ends exactly at byte 47
        ("x" * 45 + "€" + "y" * 9, "x" * 45 + "..."),  # 3-byte character across the cut
        ("x" * 44 + "€" + "y" * 9, "x" * 44 + "€..."),
        ("x" * 44 + "😀" + "y" * 9, "x" * 44 + "..."),  # 4-byte character
        ("x" * 43 + "😀" + "y" * 9, "x" * 43 + "😀..."),
        ("é" * 26, "é" * 23 + "..."),  # 52 bytes: 23 é are 46 bytes, a 24th would make 48
        ("日本語" * 6, "日本語" * 5 + "..."),  # 54 bytes: 15 characters are 45 bytes
    ],
)
def test_query_truncation(query: str, shown: str) -> None:
    assert label(Step(query)) == f"SQL: {shown}"
    assert len(shown.encode()) <= 50


def test_query_of_46_ascii_bytes_then_e_acute_keeps_46_bytes() -> None:
    query = "SELECT * FROM accounts WHERE owner_name = 'Ren" + "é" + "e' ORDER BY id"
    assert len(query[:46].encode()) == 46
    assert label(Step(query)) == "SQL: SELECT * FROM accounts WHERE owner_name = 'Ren..."


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://example.com/" + "a" * 20, "https://example.com/" + "a" * 20),  # 40 bytes
        ("https://example.com/" + "a" * 21, "https://example.com/" + "a" * 17 + "..."),
        ("https://example.com/" + "a" * 16 + "ü" + "b" * 5, "https://example.com/" + "a" * 16 + "..."),
        ("https://example.com/" + "a" * 15 + "ü" + "b" * 5, "https://example.com/" + "a" * 15 + "ü..."),
    ],
)
def test_url_truncation(url: str, shown: str) -> None:
    assert label(Http(url, "GET")) == f"HTTP GET {shown}"
    assert label(HttpMultipart(url, "POST", [{"name": "f"}])) == f"HTTP_MULTIPART POST {shown}"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("x" * 20, "x" * 20),
        ("x" * 21, "x" * 17 + "..."),
        ("x" * 16 + "é" + "y" * 5, "x" * 16 + "..."),
        ("x" * 15 + "é" + "y" * 5, "x" * 15 + "é..."),
        ("x" * 18 + "é", "x" * 18 + "é"),  # 20 bytes: kept
        ("é" * 11, "é" * 8 + "..."),
    ],
)
def test_break_value_truncation(value: str, shown: str) -> None:
    assert label(Break(value)) == f"BREAK '{shown}'"


def test_truncate_bytes_never_splits_a_character() -> None:
    for text in ("é" * 30, "€" * 30, "😀" * 30, "a" + "😀" * 30, "ab" + "😀" * 30, "abc" + "😀" * 30):
        for limit, keep in ((50, 47), (40, 37), (20, 17)):
            cut = truncate_bytes(text, limit, keep)
            assert cut.endswith("...")
            assert text.startswith(cut[:-3])
            assert keep - 3 <= len(cut[:-3].encode()) <= keep  # a character is at most 4 bytes


# -- THEN chains and nesting ---------------------------------------------------------------------------------


def test_then_chain_with_join_if_and_loop() -> None:
    graph = (
        Step("SELECT 1")
        >> (Step("SELECT 2") & Step("SELECT 3"))
        >> if_("SELECT 4", "SELECT 5", "SELECT 6")
        >> loop("SELECT 7")
    ) | "chain"
    assert explain(graph) == padded(
        "SQL: SELECT 1",
        "→ JOIN (2)",
        "    ║ branch 1:",
        "      ├─SQL: SELECT 2",
        "    ║ branch 2:",
        "      └─SQL: SELECT 3",
        "→ IF",
        "    ? condition:",
        "      └─SQL: SELECT 4",
        "    ✓ then:",
        "      └─SQL: SELECT 5",
        "    ✗ else:",
        "      └─SQL: SELECT 6",
        "→ LOOP (infinite)",
        "    ↻ body:",
        "      └─SQL: SELECT 7",
    )


def test_then_chains_flatten_whatever_their_shape() -> None:
    a, b, c, d = (Step(f"SELECT {i}") for i in range(4))
    expected = padded("SQL: SELECT 0", "→ SQL: SELECT 1", "→ SQL: SELECT 2", "→ SQL: SELECT 3")
    assert explain(Then(Then(Then(a, b), c), d)) == expected
    assert explain(Then(a, Then(b, Then(c, d)))) == expected
    assert explain(Then(Then(a, b) | "x", Then(c, d) | "y") | "z") == expected


def test_then_chain_inside_a_join_branch() -> None:
    graph = Parallel((Step("SELECT 1") >> Loop(Step("SELECT 2"), Step("SELECT 3")), Step("SELECT 4")))
    assert explain(graph) == padded(
        "JOIN (2)",
        "    ║ branch 1:",
        "      ├─SQL: SELECT 1",
        "      → LOOP (while)",
        "          ↻ body:",
        "            └─SQL: SELECT 2",
        "          ? while:",
        "            └─SQL: SELECT 3",
        "    ║ branch 2:",
        "      └─SQL: SELECT 4",
    )


def test_nested_join_inside_a_branch() -> None:
    graph = (Step("SELECT 1") & Step("SELECT 2")) & Step("SELECT 3")
    assert explain(graph) == padded(
        "JOIN (2)",
        "    ║ branch 1:",
        "      ├─JOIN (2)",
        "      │   ║ branch 1:",
        "      │     ├─SQL: SELECT 1",
        "      │   ║ branch 2:",
        "      │     └─SQL: SELECT 2",
        "    ║ branch 2:",
        "      └─SQL: SELECT 3",
    )


def test_last_branch_children_continue_without_a_bar() -> None:
    graph = Parallel((Step("a"), Step("b"), Race(Step("c"), Loop(Step("d")))))
    assert explain(graph) == padded(
        "JOIN (3)",
        "    ║ branch 1:",
        "      ├─SQL: a",
        "    ║ branch 2:",
        "      ├─SQL: b",
        "    ║ branch 3:",
        "      └─RACE",
        "          ║ branch 1:",
        "            ├─SQL: c",
        "          ║ branch 2:",
        "            └─LOOP (infinite)",
        "                ↻ body:",
        "                  └─SQL: d",
    )


def test_if_rows_has_no_condition_section_and_sections_nest() -> None:
    graph = if_rows("doc", Step("SELECT $doc.id") | "id", if_("SELECT c", Break(), Sleep(1)))
    assert explain(graph) == padded(
        "IF",
        "    ✓ then:",
        "      └─SQL: SELECT $doc.id |=> 'id'",
        "    ✗ else:",
        "      └─IF",
        "          ? condition:",
        "            └─SQL: SELECT c",
        "          ✓ then:",
        "            └─BREAK",
        "          ✗ else:",
        "            └─SLEEP 1s",
    )


def test_loop_over_a_then_chain() -> None:
    body = Step("UPDATE c SET v = v + 1 RETURNING v") >> if_("SELECT v >= 3 FROM c", Break('{"done":true}'), sleep(1))
    graph = loop(body)
    assert explain(graph) == padded(
        "LOOP (infinite)",
        "    ↻ body:",
        "      └─SQL: UPDATE c SET v = v + 1 RETURNING v",
        "      → IF",
        "          ? condition:",
        "            └─SQL: SELECT v >= 3 FROM c",
        "          ✓ then:",
        "            └─BREAK '{\"done\":true}'",
        "          ✗ else:",
        "            └─SLEEP 1s",
    )


# -- padding ---------------------------------------------------------------------------------------------------


def test_padding_counts_characters_not_bytes() -> None:
    graph = Step("SELECT '日本語'") >> Step("SELECT 1")
    assert explain(graph) == tree("SQL: SELECT '日本語'    ", "→ SQL: SELECT 1      ")


def test_multi_line_queries_are_split_and_padded() -> None:
    graph = Step("SELECT 1,\n       2") >> Step("SELECT 3\r\nFROM t")
    assert explain(graph) == padded("SQL: SELECT 1,", "       2", "→ SQL: SELECT 3", "FROM t")


def test_trailing_whitespace_of_the_whole_tree_is_trimmed_first() -> None:
    assert explain(Step("SELECT 1\n\n  \t")) == "SQL: SELECT 1    "
    assert explain(Step("")) == "SQL:    "  # "SQL: " loses its space, then gains four
    # only the end of the whole text: a blank inside stays, and sets the width
    assert explain(Step("SELECT 1   ") >> Step("x")) == tree("SQL: SELECT 1       ", "→ SQL: x            ")


# -- the live-mode hook ----------------------------------------------------------------------------------------


def test_marker_is_asked_for_every_shown_node_by_path() -> None:
    graph = Step("SELECT 1") >> Parallel((If(Step("c"), Step("t"), Step("e")), Loop(Step("b"), Step("w")), Step("x")))
    asked: list[str] = []

    def marker(path: str) -> str:
        asked.append(path)
        return " ✓" if path.endswith("left") else " ○"

    assert explain(graph, marker=marker) == padded(
        "SQL: SELECT 1 ✓",
        "→ JOIN (3) ○",
        "    ║ branch 1:",
        "      ├─IF ✓",
        "      │   ? condition:",
        "      │     └─SQL: c ○",
        "      │   ✓ then:",
        "      │     └─SQL: t ✓",
        "      │   ✗ else:",
        "      │     └─SQL: e ○",
        "    ║ branch 2:",
        "      ├─LOOP (while) ○",
        "      │   ↻ body:",
        "      │     └─SQL: b ✓",
        "      │   ? while:",
        "      │     └─SQL: w ○",
        "    ║ branch 3:",
        "      └─SQL: x ○",
    )
    assert asked == [
        "root.left",
        "root.right",
        "root.right.left",
        "root.right.left.condition_node",
        "root.right.left.left",
        "root.right.left.right",
        "root.right.right",
        "root.right.right.left",
        "root.right.right.condition_node",
        "root.right.extra_nodes[0]",
    ]


def test_without_a_marker_nothing_is_appended() -> None:
    graph = Race(Step("a"), Step("b"))
    assert explain(graph) == explain(graph, marker=lambda _: "")


def test_the_deepest_graphs_are_drawn() -> None:
    # 256 levels, the most the depth limit allows: deeper than Python's recursion limit would go
    loops: Node = Step("a")
    chain: Node = Step("a")
    for _ in range(255):
        loops, chain = Loop(loops), Then(Step("a"), chain)
    lines = explain(loops).split("\n")
    assert len(lines) == 255 * 2 + 1
    assert lines[-1].strip() == "└─SQL: a"
    assert lines[-1].index("└─") == 255 * 6
    assert explain(chain).split("\n")[1:] == ["→ SQL: a    "] * 255


def test_limits_are_checked() -> None:
    deep: Node = Step("a")
    for _ in range(300):
        deep = Loop(deep)
    with pytest.raises(ValueError, match="maximum nesting depth"):
        explain(deep)
