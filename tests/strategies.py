"""Hypothesis strategies for workflow graphs: every node type, any nesting, awkward text everywhere.

Every graph drawn is valid (the node classes' own checks pass; no NUL, no lone surrogate), within the depth
and size limits, and buildable by the SQL builders: integers fit the SQL parameter types (`integer`
timeouts, `bigint` seconds), HTTP methods are supported ones, cron expressions are valid.
"""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

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
)
from pgdurable.dsl.cron import CronError, check_cron
from pgdurable.dsl.nodes import HTTP_METHODS, MULTIPART_METHODS
from pgdurable.dsl.policy import RetryPolicy

__all__ = [
    "cron_exprs",
    "graphs",
    "http_nodes",
    "leaves",
    "names",
    "sql_texts",
    "texts",
]

INT4_MAX = 2**31 - 1

# Any Unicode scalar value except NUL (PostgreSQL text cannot hold it); `codec="utf-8"` leaves out surrogates.
_CHARACTERS = st.characters(codec="utf-8", exclude_characters="\x00")

# Fragments that have broken quoting, escaping, JSON detection or label truncation somewhere.
_AWKWARD = (
    "'",
    "''",
    '"',
    "\\",
    "\\'",
    "\\\\",
    "\n",
    "\r\n",
    "\r",
    "\t",
    " ",
    "{",
    "}",
    "[",
    "$$",
    "$tag$",
    "--",
    "/*",
    "*/",
    "?",
    "%s",
    "%(x)s",
    ":name",
    "{var}",
    "$a",
    "$doc.id",
    "$resp.rows[0].x",
    "$name.*",
    "E'\\n'",
    "U&'\\0041'",
    "é",
    "ß",
    "日本語",
    "😀",
    "\u200b",
    "\u2028",
    "\ufeff",
    "\x7f",
    "\x01",
    "\x1f",
    "~>",
    "|=>",
    "?>",
    "!>",
    "@>",
    "&",
    "|",
    "::jsonb",
    "NULL",
    "df.sql('x')",
)
_GRAPH_JSON = (
    '{"node_type":"SQL","query":"SELECT 1"}',
    '{"node_type":"SLEEP","query":"5"}',
    '{"node_type":"NOPE"}',
    '{"_partial_if":true,"condition":"a","then_branch":"b"}',
    '{"a": 1}',
    "{",
)


def texts(*, min_size: int = 0, max_size: int = 30) -> st.SearchStrategy[str]:
    """Text mixing awkward fragments with arbitrary characters."""
    piece = st.one_of(st.sampled_from(_AWKWARD), st.text(_CHARACTERS, max_size=6))
    return (
        st.lists(piece, max_size=6)
        .map("".join)
        .map(lambda text: text[:max_size])
        .filter(lambda text: len(text) >= min_size)
    )


def sql_texts() -> st.SearchStrategy[str]:
    """SQL step text: ordinary statements, awkward text, and text that starts (after blanks) with `{`."""
    ordinary = st.sampled_from(
        [
            "SELECT 1",
            "SELECT 'yes'",
            "SELECT $a > 0",
            "SELECT $doc.id",
            "UPDATE c SET v = v + 1 RETURNING v",
            "SELECT count(*) > 0 FROM q",
            "VACUUM",
            "batch",
            "",
            " ",
            "SELECT $resp.rows[0].id,\n       '$5' AS price\r\nFROM t -- {var}\n",
        ]
    )
    json_like = st.builds(
        lambda blank, json, tail: blank + json + tail,
        st.sampled_from(["", " ", "\n", "\t", "\r\n  ", "\u00a0", "\ufeff"]),
        st.sampled_from(_GRAPH_JSON),
        st.sampled_from(["", " ", "x"]),
    )
    long = st.builds(lambda head, tail: head + tail, st.text("x", min_size=40, max_size=52), texts(max_size=6))
    return st.one_of(ordinary, texts(max_size=60), json_like, long)


def names() -> st.SearchStrategy[str]:
    """Result names: identifiers (`^[A-Za-z_][A-Za-z0-9_]*$`)."""
    return st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)


def _cron_field(low: int, high: int, words: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    pair = st.tuples(number, number).map(sorted)
    step = st.integers(1, high - low + 1)
    item = st.one_of(
        st.just("*"),
        number.map(str),
        pair.map(lambda p: f"{p[0]}-{p[1]}"),
        step.map(lambda s: f"*/{s}"),
        st.tuples(pair, step).map(lambda t: f"{t[0][0]}-{t[0][1]}/{t[1]}"),
        st.tuples(number, step).map(lambda t: f"{t[0]}/{t[1]}"),
        *([st.sampled_from(words).map(lambda w: w.lower() if len(w) % 2 else w)] if words else []),
    )
    return st.lists(item, min_size=1, max_size=3).map(",".join)


def _valid_cron(expr: str) -> bool:
    try:
        check_cron(expr)
    except CronError:
        return False
    return True


def cron_exprs() -> st.SearchStrategy[str]:
    """Valid 5-field cron expressions, with names, ranges, steps and lists."""
    fields = st.tuples(
        _cron_field(0, 59),
        _cron_field(0, 23),
        _cron_field(1, 31),
        _cron_field(1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
        _cron_field(0, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "MON-FRI", "sat-sun")),
    )
    spaced = st.tuples(fields, st.sampled_from([" ", "  "])).map(lambda t: t[1].join(t[0]))
    return st.one_of(st.sampled_from(["* * * * *", "*/5 * * * *", "0 9 * * MON-FRI"]), spaced).filter(_valid_cron)


_JSON_SCALARS = st.one_of(texts(max_size=12), st.integers(-(10**20), 10**20), st.booleans(), st.none())


def _headers() -> st.SearchStrategy[dict[str, str] | None]:
    return st.none() | st.dictionaries(texts(max_size=12), texts(max_size=16), max_size=4)


def _parts() -> st.SearchStrategy[list[dict[str, object]]]:
    part = st.fixed_dictionaries(
        {"name": texts(min_size=1, max_size=10)},
        optional={
            "filename": texts(max_size=10),
            "content_type": st.sampled_from(["application/pdf", "text/plain; charset=utf-8"]),
            "data_b64": st.sampled_from(["", "aGVsbG8=", "$pdf.body"]),
            "data": texts(max_size=10),
            "size": st.integers(0, 10**12),
            "meta": st.dictionaries(texts(max_size=6), _JSON_SCALARS, max_size=3),
            "tags": st.lists(_JSON_SCALARS, max_size=3),
        },
    )
    return st.lists(part, min_size=1, max_size=3)


def _urls() -> st.SearchStrategy[str]:
    scheme = st.sampled_from(["https://", "http://", "HTTPS://", "Http://"])
    absolute = st.builds(
        lambda s, host, path: s + host + "/" + path,
        scheme,
        st.sampled_from(["example.com", "x.blob.core.windows.net", "ünï.example", "h:8080"]),
        texts(max_size=50),
    )
    templated = st.builds(lambda path: "{base_url}/" + path, texts(max_size=20))
    return st.one_of(absolute, templated)


def http_nodes() -> st.SearchStrategy[Node]:
    """HTTP and multipart requests: any method the builder accepts (any case), headers, bodies, parts."""
    timeouts = st.integers(1, INT4_MAX) | st.just(30)
    http = st.builds(
        Http,
        _urls(),
        st.sampled_from(HTTP_METHODS).flatmap(lambda m: st.sampled_from([m, m.lower()])),
        st.none() | texts(max_size=30),
        _headers(),
        timeouts,
    )
    multipart = st.builds(
        HttpMultipart,
        _urls(),
        st.sampled_from(MULTIPART_METHODS),
        _parts(),
        _headers(),
        timeouts,
    )
    return st.one_of(http, multipart)


def leaves() -> st.SearchStrategy[Node]:
    """Every node type without children."""
    return st.one_of(
        st.builds(Step, sql_texts()),
        st.builds(Break, st.none() | st.sampled_from(['{"done":true}', "x" * 21, "é" * 11]) | texts()),
        st.builds(Sleep, st.integers(0, 2**63 - 1) | st.integers(0, 3600)),
        st.builds(WaitForSchedule, cron_exprs()),
        st.builds(WaitForSignal, texts(min_size=1, max_size=20), st.none() | st.integers(1, INT4_MAX)),
        http_nodes(),
        st.builds(
            Call,
            st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,30}", fullmatch=True),
            st.dictionaries(texts(max_size=8), st.none() | st.integers() | texts(max_size=12), max_size=4),
        ),
    )


def retry_policies() -> st.SearchStrategy[RetryPolicy]:
    """Valid retry policies (pgdurable's extension key `retry`)."""
    return st.builds(
        lambda attempts, backoff, extra, multiplier, jitter, codes: RetryPolicy(
            attempts, backoff, min(backoff + extra, 86_400_000), multiplier, jitter, codes
        ),
        st.integers(1, 100),
        st.integers(0, 86_400_000),
        st.integers(0, 1_000_000),
        st.integers(1, 10),
        st.integers(0, 100),
        st.none() | st.lists(st.sampled_from(["40001", "40P01", "08", "57014", "23"]), min_size=1, max_size=3),
    )


@st.composite
def _named(draw: st.DrawFn, nodes: st.SearchStrategy[Node]) -> Node:
    """A node from `nodes`, about a quarter of the time with a result name; steps sometimes with a retry
    policy or a timeout (the extension keys)."""
    node = draw(nodes)
    if isinstance(node, Step | Http | HttpMultipart | Call) and draw(st.integers(0, 3)) == 0:
        node = attrs.evolve(
            node, retry=draw(st.none() | retry_policies()), timeout=draw(st.none() | st.integers(1, INT4_MAX))
        )
    if draw(st.integers(0, 3)) == 0:
        return attrs.evolve(node, result_name=draw(names()))
    return node


_SHAPES = ("then", "join", "race", "if", "if_rows", "loop", "while")


@st.composite
def _composites(draw: st.DrawFn, children: st.SearchStrategy[Node]) -> Node:
    """One composite node over `children` (drawn in one place, which keeps the strategy's repr small)."""
    shape = draw(st.sampled_from(_SHAPES))
    if shape == "join":
        node: Node = Parallel(tuple(draw(st.lists(children, min_size=2, max_size=5))))
    elif shape == "if_rows":
        name = draw(st.one_of(names(), texts(max_size=10)))
        node = If(None, draw(children), draw(children), if_rows=name)
    elif shape == "loop":
        node = Loop(draw(children))
    else:
        first, second = draw(children), draw(children)
        if shape == "then":
            node = Then(first, second)
        elif shape == "race":
            node = Race(first, second)
        elif shape == "if":
            node = If(first, second, draw(children))
        else:
            node = Loop(first, second)
    return draw(_named(st.just(node)))


def graphs(*, max_leaves: int = 12) -> st.SearchStrategy[Node]:
    """Random workflow graphs covering every node type, any nesting and result names on any node.

    `max_leaves` bounds the size (hypothesis' `recursive`); the depth stays far below the limit of 256.
    """
    return st.recursive(_named(leaves()), _composites, max_leaves=max_leaves)
