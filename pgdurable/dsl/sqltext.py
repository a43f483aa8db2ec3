"""SQL DSL text for a graph: builder calls and operators that rebuild the same graph JSON in PostgreSQL.

Pure: no database. `SELECT <to_sql(g)>`, with the `df` schema on the search path, returns `to_json(g)`
byte for byte. The text never embeds graph JSON; it uses as few parentheses as PostgreSQL's grouping allows.

PostgreSQL gives every one of these operators (`~> & | |=> ?> !>`) one precedence level, left-associative,
and binds a prefix operator (`@>`) to the single operand after it. So a compound right operand needs
parentheses and a compound left operand never does: `a ~> b ~> c` is `(a ~> b) ~> c`, and `x |=> 'n'`
names everything on its left.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Final

from typing_extensions import assert_never

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
from pgdurable.dsl.validate import check_limits, children

__all__ = ["quote_literal", "to_sql"]

# A `{` after any character some parser may skip first (JSON's four blanks, Unicode's, a BOM).
_JSON_OBJECT_START: Final = re.compile(r"[\s\ufeff\u200b]*\{")


class _Form(enum.Enum):
    """How a rendered expression binds, which decides where it needs parentheses."""

    OPERAND = "operand"  # a literal, a call, `(...)` or `@> operand`: stands anywhere
    BINARY = "binary"  # `a op b`: stands as is only on the left of a binary operator


_Text = tuple[str, _Form]
_Rendered = Callable[[Node], _Text]


def to_sql(node: Node) -> str:
    """SQL DSL text that builds `node` when PostgreSQL evaluates `SELECT <text>`.

    A plain SQL step is a string literal wherever pg_durable auto-wraps strings; the root, and any step whose
    text starts with `{` (it could read as graph JSON), use `df.sql(...)`. Raises `GraphError` if the graph
    breaks the depth or size limit.

    >>> to_sql((Step("SELECT 1") | "a") >> Step("SELECT $a + 1"))
    "'SELECT 1' |=> 'a' ~> 'SELECT $a + 1'"
    >>> to_sql(Step("SELECT 'x'") >> (Step("SELECT 2") & Step("SELECT 3")))
    "'SELECT ''x''' ~> ('SELECT 2' & 'SELECT 3')"
    >>> to_sql(Step("SELECT 1"))
    "df.sql('SELECT 1')"
    """
    check_limits(node)
    if isinstance(node, Step) and node.result_name is None and node.retry is None and node.timeout is None:
        return f"df.sql({quote_literal(node.query)})"
    return _render_tree(node)[0]


def quote_literal(text: str) -> str:
    """A standard SQL string literal (`standard_conforming_strings = on`): `'` doubled, nothing else escaped.

    >>> print(quote_literal("it's"))
    'it''s'
    """
    return "'" + text.replace("'", "''") + "'"


def _render_tree(root: Node) -> _Text:
    """Render children before parents with an explicit stack (a graph 256 levels deep would need more Python
    frames than the default recursion limit allows). A subtree shared by several parents renders once."""
    done: dict[int, _Text] = {}  # keyed by id(): every node stays alive, held by `root`

    def rendered(child: Node) -> _Text:
        return done[id(child)]

    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in done:
            continue
        if children_done:
            done[id(node)] = _render(node, rendered)
        else:
            stack.append((node, True))
            stack.extend((child, False) for _, child in children(node))
    return done[id(root)]


def _render(node: Node, rendered: _Rendered) -> _Text:
    text, form = _unnamed(node, rendered)
    if isinstance(node, Step | Http | HttpMultipart | Call):
        text, form = _with_extensions(node, text, form)
    if node.result_name is None:
        return text, form
    return f"{text} |=> {quote_literal(node.result_name)}", _Form.BINARY


def _unnamed(node: Node, rendered: _Rendered) -> _Text:
    """`node` without its name; its children are already `rendered`."""

    def arg(child: Node) -> str:  # an auto-wrapped function argument, or a left operand: any expression
        return rendered(child)[0]

    def operand(child: Node) -> str:  # the right operand of a binary operator, or the operand of `@>`
        text, form = rendered(child)
        return f"({text})" if form is _Form.BINARY else text

    def binary(left: Node, operator: str, right: Node) -> _Text:
        return f"{arg(left)} {operator} {operand(right)}", _Form.BINARY

    match node:
        case Step(query=query):
            literal = quote_literal(query)
            return (f"df.sql({literal})" if _json_like(query) else literal), _Form.OPERAND
        case Then(left=left, right=right):
            return binary(left, "~>", right)
        case Parallel(branches=(left, right)):
            return binary(left, "&", right)
        case Parallel(branches=(first, second, third)):
            return _call("df.join3", arg(first), arg(second), arg(third))
        case Parallel(branches=branches):
            return _call("df.join_all", "VARIADIC ARRAY[" + ", ".join(arg(b) for b in branches) + "]")
        case Race(left=left, right=right):
            return binary(left, "|", right)
        case If(condition=condition, then_branch=then_branch, else_branch=else_branch, if_rows=rows):
            if condition is not None:
                return f"{arg(condition)} ?> {operand(then_branch)} !> {operand(else_branch)}", _Form.BINARY
            # no condition means if_rows is set (If checks that exactly one of them is)
            return _call("df.if_rows", quote_literal(rows or ""), arg(then_branch), arg(else_branch))
        case Loop(body=body, condition=condition):
            if condition is None:
                return f"@> {operand(body)}", _Form.OPERAND
            return _call("df.loop", arg(body), arg(condition))
        case Break(value=value):
            return _call("df.break", *(() if value is None else (quote_literal(value),)))
        case Sleep(seconds=seconds):
            return _call("df.sleep", str(seconds))
        case WaitForSchedule(cron_expr=cron):
            return _call("df.wait_for_schedule", quote_literal(cron))
        case WaitForSignal(signal_name=name, timeout_seconds=timeout):
            return _call("df.wait_for_signal", quote_literal(name), *(() if timeout is None else (str(timeout),)))
        case Http(url=url, method=method, body=body, headers=headers, timeout_seconds=timeout):
            body_arg = "NULL" if body is None else quote_literal(body)
            return _call("df.http", *_http_args(url, method, body_arg, headers, timeout))
        case HttpMultipart(url=url, method=method, parts=parts, headers=headers, timeout_seconds=timeout):
            return _call("df.http_multipart", *_http_args(url, method, _jsonb(parts), headers, timeout))
        case Call(function=function, args=args):
            return _call("df.call", quote_literal(function), *(() if args == "{}" else (_jsonb(args),)))
        case _:
            assert_never(node)


def _with_extensions(node: Step | Http | HttpMultipart | Call, text: str, form: _Form) -> _Text:
    """Wrap a step in `df.retry(...)` and `df.timeout(...)` (pgdurable's extension builders)."""
    if node.retry is not None:
        policy = node.retry
        args = [
            text,
            f"max_attempts => {policy.max_attempts}",
            f"backoff_ms => {policy.backoff_ms}",
            f"max_backoff_ms => {policy.max_backoff_ms}",
            f"multiplier => {policy.multiplier}",
            f"jitter_pct => {policy.jitter_pct}",
        ]
        if policy.retry_on is not None:
            args.append("retry_on => ARRAY[" + ", ".join(quote_literal(c) for c in policy.retry_on) + "]::text[]")
        text, form = _call("df.retry", *args)
    if node.timeout is not None:
        text, form = _call("df.timeout", text, str(node.timeout))
    return text, form


def _call(function: str, *args: str) -> _Text:
    return f"{function}({', '.join(args)})", _Form.OPERAND


def _http_args(url: str, method: str, third: str, headers: str | None, timeout: int) -> list[str]:
    """Positional arguments of `df.http` / `df.http_multipart`, trailing defaults left out."""
    args = [quote_literal(url), quote_literal(method), third, "NULL" if headers is None else _jsonb(headers)]
    args.append(str(timeout))
    defaults = [None, "'POST'", "NULL", "NULL", "30"]
    while len(args) > 1 and args[-1] == defaults[len(args) - 1]:
        args.pop()
    return args


def _jsonb(text: str) -> str:
    return f"{quote_literal(text)}::jsonb"


def _json_like(query: str) -> bool:
    """Whether auto-wrapping might read the text as graph JSON instead of wrapping it as SQL."""
    return _JSON_OBJECT_START.match(query) is not None
