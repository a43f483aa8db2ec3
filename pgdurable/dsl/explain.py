"""The dry-run text tree of a graph, exactly as pg_durable's `df.explain` prints it (reference §8.3).

Pure: no database. Live mode (status markers from a running instance) is the caller's business: it passes a
`marker` function keyed by node path (`root`, `root.left`, `root.condition_node`, `root.extra_nodes[0]`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
from pgdurable.dsl.validate import check_limits

__all__ = ["Marker", "explain", "label", "truncate_bytes"]

Marker = Callable[[str], str]
"""Given a node's path, the text to append to its line (live mode: `" ✓"`, `" ⏳"`, ...; `""` for none)."""

# Rust's `str::trim_end` strips characters with the Unicode White_Space property; Python's `str.isspace`
# differs (it includes U+001C..U+001F), so the set is spelled out.
_WHITE_SPACE: Final = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_PADDING: Final = 4


def explain(node: Node, *, marker: Marker | None = None) -> str:
    """The `df.explain` text tree of `node`: one line per node, every line right-padded to the same width.

    Raises `GraphError` if the graph breaks the depth or size limit. `marker(path)` (live mode) returns the
    text appended to the line of the node at `path`; THEN nodes have no line, so it is never asked for them.

    >>> print(explain(Step("SELECT 1") >> Step("SELECT 2")).replace(" ", "_"))
    SQL:_SELECT_1______
    →_SQL:_SELECT_2____
    >>> print(explain(Loop(Step("SELECT step()")) | "forever").replace(" ", "_"))
    LOOP_(infinite)_|=>_'forever'____
    ____↻_body:______________________
    ______└─SQL:_SELECT_step()_______
    """
    check_limits(node)
    return _pad("\n".join(_tree_lines(node, marker)))


def truncate_bytes(text: str, limit: int, keep: int) -> str:
    """`text` if its UTF-8 encoding is at most `limit` bytes, else its longest prefix of at most `keep` bytes
    that ends on a character boundary, followed by `...` (pg_durable cuts at the byte, which may split a
    character; pgdurable does not).

    >>> truncate_bytes("x" * 46 + "é" + "y" * 10, 50, 47)
    'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...'
    >>> truncate_bytes("short", 50, 47)
    'short'
    """
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    end = keep
    while end > 0 and (raw[end] & 0xC0) == 0x80:  # a continuation byte: the cut would split a character
        end -= 1
    return raw[:end].decode("utf-8") + "..."


def label(node: Node) -> str:
    """A node's own line text, without connector or marker; `|=> 'name'` is appended when it is named.

    >>> label(WaitForSignal("go", 60) | "sig")
    "SIGNAL 'go' (60s) |=> 'sig'"
    >>> label(Break("x" * 30))
    "BREAK 'xxxxxxxxxxxxxxxxx...'"
    """
    suffix = "" if node.result_name is None else f" |=> '{node.result_name}'"
    match node:
        case Step(query=query):
            text = f"SQL: {truncate_bytes(query, 50, 47)}"
        case Then():
            text = "SEQUENCE"  # never printed: THEN chains are flattened into lists
        case Parallel(branches=branches):
            text = f"JOIN ({len(branches)})"
        case Race():
            text = "RACE"
        case If():
            text = "IF"
        case Loop(condition=condition):
            text = "LOOP (infinite)" if condition is None else "LOOP (while)"
        case Break(value=value):
            text = "BREAK" if value is None else f"BREAK '{truncate_bytes(value, 20, 17)}'"
        case Sleep(seconds=seconds):
            text = f"SLEEP {seconds}s"
        case WaitForSchedule(cron_expr=cron):
            text = f"WAIT '{cron}'"
        case WaitForSignal(signal_name=name, timeout_seconds=timeout):
            text = f"SIGNAL '{name}'" + ("" if timeout is None else f" ({timeout}s)")
        case Http(method=method, url=url):
            text = f"HTTP {method} {truncate_bytes(url, 40, 37)}"
        case HttpMultipart(method=method, url=url):
            text = f"HTTP_MULTIPART {method} {truncate_bytes(url, 40, 37)}"
        case Call(function=function):
            text = f"CALL {truncate_bytes(function, 40, 37)}"
        case _:
            assert_never(node)
    return text + suffix


# -- the tree --------------------------------------------------------------------------------------------

# A line ready to print, or a node still to draw: (node, path, prefix, last child of its parent?).
_Task = str | tuple[Node, str, str, bool]


def _tree_lines(root: Node, marker: Marker | None) -> Iterator[str]:
    """Every line, top to bottom. An explicit stack rather than recursion: a graph 256 levels deep would
    need more Python frames than the default recursion limit allows."""
    tasks: list[_Task] = [(root, "root", "", True)]
    while tasks:
        task = tasks.pop()
        if isinstance(task, str):
            yield task
        else:
            tasks.extend(reversed(_draw(*task, marker)))


def _draw(node: Node, path: str, prefix: str, last: bool, marker: Marker | None) -> list[_Task]:
    """The line of `node` at `prefix`, then its sections (a THEN: the lines of its flattened elements)."""
    connector = "" if prefix == "" else "└─" if last else "├─"
    if isinstance(node, Then):
        # A THEN never gets a line of its own: its elements form a list at the same prefix, and their
        # sections are indented by four from that prefix.
        drawn: list[_Task] = []
        for index, (element_path, element) in enumerate(_chain(node, path)):
            lead = connector if index == 0 else "→ "
            drawn.append(f"{prefix}{lead}{label(element)}{_mark(marker, element_path)}")
            drawn.extend(_sections(element, element_path, prefix + "    "))
        return drawn
    child_prefix = "    " if prefix == "" else prefix + ("    " if last else "│   ")
    return [f"{prefix}{connector}{label(node)}{_mark(marker, path)}", *_sections(node, path, child_prefix)]


def _chain(then: Then, path: str) -> list[tuple[str, Node]]:
    """The non-THEN elements of a THEN chain, left to right, with their paths."""
    elements: list[tuple[str, Node]] = []
    pending: list[tuple[str, Node]] = [(path, then)]
    while pending:
        node_path, node = pending.pop()
        if isinstance(node, Then):
            pending += [(f"{node_path}.right", node.right), (f"{node_path}.left", node.left)]
        else:
            elements.append((node_path, node))
    return elements


def _sections(node: Node, path: str, prefix: str) -> list[_Task]:
    """The headed child sections of a node (`↻ body:`, `? condition:`, `║ branch i:`, ...)."""
    inner = prefix + "  "
    match node:
        case Loop(body=body, condition=condition):
            drawn: list[_Task] = [f"{prefix}↻ body:", (body, f"{path}.left", inner, True)]
            if condition is not None:
                drawn += [f"{prefix}? while:", (condition, f"{path}.condition_node", inner, True)]
            return drawn
        case If(condition=condition, then_branch=then_branch, else_branch=else_branch):
            drawn = []
            if condition is not None:
                drawn += [f"{prefix}? condition:", (condition, f"{path}.condition_node", inner, True)]
            drawn += [f"{prefix}✓ then:", (then_branch, f"{path}.left", inner, True)]
            drawn += [f"{prefix}✗ else:", (else_branch, f"{path}.right", inner, True)]
            return drawn
        case Parallel() | Race():
            branches = _branches(node, path)
            drawn = []
            for index, (branch_path, branch) in enumerate(branches, start=1):
                drawn += [f"{prefix}║ branch {index}:", (branch, branch_path, inner, index == len(branches))]
            return drawn
        case (
            Then()
            | Step()
            | Break()
            | Sleep()
            | WaitForSchedule()
            | WaitForSignal()
            | Http()
            | HttpMultipart()
            | Call()
        ):
            return []  # a THEN's elements are drawn by _draw; the rest are leaves
        case _:
            assert_never(node)


def _branches(node: Parallel | Race, path: str) -> list[tuple[str, Node]]:
    if isinstance(node, Race):
        return [(f"{path}.left", node.left), (f"{path}.right", node.right)]
    steps = ["left", "right", *(f"extra_nodes[{i}]" for i in range(len(node.branches) - 2))]
    return [(f"{path}.{step}", branch) for step, branch in zip(steps, node.branches, strict=True)]


def _mark(marker: Marker | None, path: str) -> str:
    return "" if marker is None else marker(path)


def _pad(text: str) -> str:
    """pg_durable's finish: trim the end of the whole text, split into lines as Rust's `str::lines` does
    (at `\\n`, dropping one `\\r` before it), and right-pad every line to the longest line's length + 4,
    counting characters (PostgreSQL `length()`)."""
    lines = [line[:-1] if line.endswith("\r") else line for line in text.rstrip(_WHITE_SPACE).split("\n")]
    width = max(len(line) for line in lines) + _PADDING
    return "\n".join(line.ljust(width) for line in lines)
