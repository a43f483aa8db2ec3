"""A workflow graph as a Mermaid flowchart: what Jupyter shows for a graph or an instance (`_repr_markdown_`).

Pure: no database. One Mermaid node per graph node, with `explain.label`'s text. THEN chains become edges in
sequence (a THEN has no box, as it has no line in `explain`). JOIN and RACE fan out from their own box and
fan in to a small circle (`all` or `first`). An IF runs its condition, then branches along edges labelled
`then` and `else`. A LOOP enters its body, comes back along a dotted edge, and leaves along an edge labelled
`break` (`false` for a loop with a condition); nothing follows a BREAK.

Mermaid ids are `n0`, `n1`, ... in drawing order. `status` is keyed by graph path (`root`, `root.left`,
`root.condition_node`, `root.extra_nodes[0]`, as in `explain` and `df.instance_nodes`) and colours each node
with a class per status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import pairwise
from typing import Final

from attrs import define, field, frozen
from typing_extensions import assert_never

from pgdurable.dsl.explain import explain, label
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
from pgdurable.errors import GraphError

__all__ = ["MAX_EDGES", "MAX_TEXT_SIZE", "STATUS_STYLES", "escape", "escape_markdown", "to_markdown", "to_mermaid"]

STATUS_STYLES: Final = {
    "pending": "fill:#f3f4f6,stroke:#9ca3af,color:#374151",
    "running": "fill:#dbeafe,stroke:#2563eb,color:#1e3a8a",
    "completed": "fill:#dcfce7,stroke:#16a34a,color:#14532d",
    "failed": "fill:#fee2e2,stroke:#dc2626,color:#7f1d1d",
    "skipped": "fill:#f9fafb,stroke:#d1d5db,color:#9ca3af,stroke-dasharray:4 3",
    "cancelled": "fill:#fef3c7,stroke:#d97706,color:#78350f",
}
"""The classDef of each status a node can have (`df.instance_nodes.inferred_status`, plus `cancelled`)."""

MAX_EDGES: Final = 500
MAX_TEXT_SIZE: Final = 50_000
"""Mermaid's default `maxEdges` and `maxTextSize`: a bigger diagram renders as an error, so `to_markdown`
shows the explain tree instead (`to_mermaid` still draws it, for a renderer configured with higher limits)."""

# Characters that end or re-interpret a quoted Mermaid label, written as Mermaid's `#<code>;` entities: the
# quote, the entity marker itself, HTML (`<`, `>`, `&`), shape brackets, the edge-label bar, and the backtick
# (a label between backticks is Markdown, and three of them would end this Markdown fence).
_ESCAPED: Final = {ord(c): f"#{ord(c)};" for c in '"#<>&[]{}|`'}
_MARKERS: Final = {"completed": " ✓", "failed": " ✗", "running": " ⏳", "skipped": " ⊘"}  # df.explain's


def escape(text: str) -> str:
    """`text` made safe inside a quoted Mermaid label: one line, with no character Mermaid would read.

    >>> escape('SQL: SELECT "a"[1] <> #x')
    'SQL: SELECT #34;a#34;#91;1#93; #60;#62; #35;x'
    """
    return " ".join(text.splitlines()).translate(_ESCAPED)


def to_mermaid(node: Node, status: Mapping[str, str] | None = None) -> str:
    """The `flowchart TD` text of `node`; `status` (graph path → status) colours the nodes it names.

    Raises `GraphError` if the graph breaks the depth or size limit. Graphs of any depth are drawn without
    recursion.

    >>> print(to_mermaid(Step("SELECT 1") >> Step("SELECT 2"), {"root.left": "completed"}))
    flowchart TD
        n0["SQL: SELECT 1"]
        n1["SQL: SELECT 2"]
        n0 --> n1
        classDef completed fill:#dcfce7,stroke:#16a34a,color:#14532d
        class n0 completed
    """
    return _draw(node, status or {}).text()


def to_markdown(node: Node, status: Mapping[str, str] | None = None) -> str:
    """A fenced ```` ```mermaid ```` block (JupyterLab renders it natively), with no HTML.

    A graph beyond Mermaid's default limits (`MAX_EDGES`, `MAX_TEXT_SIZE`) is shown as its explain tree in a
    text block instead, with status markers; a graph beyond the graph limits, as the error.
    """
    try:
        diagram = _draw(node, status or {})
    except GraphError as error:
        return f"*Not drawn:* {escape_markdown(str(error))}\n"
    text = diagram.text()
    if diagram.edge_count <= MAX_EDGES and len(text) <= MAX_TEXT_SIZE:
        return f"```mermaid\n{text}\n```\n"
    marks = status or {}
    tree = explain(node, marker=lambda path: _MARKERS.get(marks[path], " ○") if path in marks else "")
    trimmed = "\n".join(line.rstrip() for line in tree.split("\n"))
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", trimmed)), default=0))  # outlasts the SQL's
    return (
        f"*{diagram.node_count} nodes and {diagram.edge_count} edges: too large for Mermaid's default limits "
        f"({MAX_EDGES} edges, {MAX_TEXT_SIZE:,} characters), so here is the explain tree.*\n\n"
        f"{fence}text\n{trimmed}\n{fence}\n"
    )


def escape_markdown(text: str) -> str:
    """`text` as literal Markdown on one line: its punctuation backslash-escaped, so it cannot format or link.

    >>> print(escape_markdown("<b>*x*</b>"))
    \\<b\\>\\*x\\*\\</b\\>
    """
    return "".join(f"\\{c}" if c in "\\`*_{}[]<>()#+-.!|~" else c for c in " ".join(text.splitlines()))


# -- drawing ---------------------------------------------------------------------------------------------


@frozen
class _Fragment:
    """A drawn subgraph: the Mermaid id control enters by, and the ids it leaves from (with an edge label)."""

    entry: str
    exits: tuple[tuple[str, str | None], ...]


@frozen
class _Close:
    """A stack task: every child of `node` (its Mermaid id `own`) is drawn; connect them."""

    node: Node
    own: str
    path: str
    children: int


@define
class _Diagram:
    status: Mapping[str, str]
    nodes: list[str] = field(factory=list)
    edges: list[str] = field(factory=list)
    classes: dict[str, list[str]] = field(factory=dict)

    @property
    def node_count(self) -> int:
        return len(self.nodes)

    @property
    def edge_count(self) -> int:
        return len(self.edges)

    def text(self) -> str:
        lines = ["flowchart TD", *self.nodes, *self.edges]
        lines += [f"    classDef {name} {STATUS_STYLES[name]}" for name in STATUS_STYLES if name in self.classes]
        lines += [f"    class {','.join(ids)} {name}" for name, ids in self.classes.items()]
        return "\n".join(lines)

    def declare(self, path: str, text: str, opening: str, closing: str) -> str:
        own = f"n{len(self.nodes)}"
        self.nodes.append(f'    {own}{opening}"{escape(text)}"{closing}')
        state = self.status.get(path)
        if state in STATUS_STYLES:
            self.classes.setdefault(state, []).append(own)
        return own

    def edge(self, source: str, target: str, text: str | None = None, *, back: bool = False) -> None:
        arrow = "-.->" if back else "-->"
        self.edges.append(
            f"    {source} {arrow} {target}" if text is None else f'    {source} {arrow}|"{text}"| {target}'
        )

    def link(
        self, exits: tuple[tuple[str, str | None], ...], target: str, text: str | None = None, *, back: bool = False
    ) -> None:
        for source, exit_text in exits:
            self.edge(source, target, _joined(exit_text, text) or None, back=back)


def _joined(*texts: str | None) -> str:
    return ", ".join(t for t in texts if t)


def _draw(root: Node, status: Mapping[str, str]) -> _Diagram:
    """Draw `root` with an explicit stack (a graph 256 levels deep needs more frames than Python allows)."""
    check_limits(root)
    diagram = _Diagram(status)
    tasks: list[tuple[str, Node] | _Close] = [("root", root)]
    drawn: list[_Fragment] = []
    while tasks:
        task = tasks.pop()
        if isinstance(task, _Close):
            parts = drawn[len(drawn) - task.children :]
            del drawn[len(drawn) - task.children :]
            drawn.append(_connect(diagram, task, parts))
            continue
        path, node = task
        own = "" if isinstance(node, Then) else diagram.declare(path, *_shape(node))
        children = _children(node, path)
        tasks.append(_Close(node, own, path, len(children)))
        tasks.extend((child_path, child) for child_path, child in reversed(children))
    assert len(drawn) == 1
    return diagram


def _shape(node: Node) -> tuple[str, str, str]:
    """The label and the opening and closing brackets of the node's Mermaid shape."""
    text = label(node)
    match node:
        case Step() | Call() | Http() | HttpMultipart():
            return text, "[", "]"
        case Sleep() | WaitForSchedule() | WaitForSignal():
            return text, "(", ")"
        case Parallel() | Race():
            return text, "{{", "}}"
        case If(if_rows=rows):
            return (text if rows is None else f"{text} rows of '{rows}'"), "{", "}"
        case Loop():
            return text, "([", "])"
        case Break():
            return text, ">", "]"
        case Then():
            raise AssertionError("a THEN has no box")
        case _:
            assert_never(node)


def _children(node: Node, path: str) -> list[tuple[str, Node]]:
    """The children in drawing order, with their paths: a THEN's flattened chain, an IF's condition first."""
    match node:
        case Then():
            chain: list[tuple[str, Node]] = []
            pending: list[tuple[str, Node]] = [(path, node)]
            while pending:
                element_path, element = pending.pop()
                if isinstance(element, Then):
                    pending += [(f"{element_path}.right", element.right), (f"{element_path}.left", element.left)]
                else:
                    chain.append((element_path, element))
            return chain
        case Race(left=left, right=right):
            return [(f"{path}.left", left), (f"{path}.right", right)]
        case Parallel(branches=branches):
            steps = ["left", "right", *(f"extra_nodes[{i}]" for i in range(len(branches) - 2))]
            return [(f"{path}.{step}", branch) for step, branch in zip(steps, branches, strict=True)]
        case If(condition=condition, then_branch=then_branch, else_branch=else_branch):
            first = [] if condition is None else [(f"{path}.condition_node", condition)]
            return [*first, (f"{path}.left", then_branch), (f"{path}.right", else_branch)]
        case Loop(body=body, condition=condition):
            last = [] if condition is None else [(f"{path}.condition_node", condition)]
            return [(f"{path}.left", body), *last]
        case Step() | Break() | Sleep() | WaitForSchedule() | WaitForSignal() | Http() | HttpMultipart() | Call():
            return []
        case _:
            assert_never(node)


def _connect(diagram: _Diagram, task: _Close, parts: list[_Fragment]) -> _Fragment:
    """The edges between a node and its drawn children, and the fragment they make together."""
    own = task.own
    match task.node:
        case Then():
            for before, after in pairwise(parts):
                diagram.link(before.exits, after.entry)
            return _Fragment(parts[0].entry, parts[-1].exits)
        case Parallel() | Race():
            end = diagram.declare(task.path, "all" if isinstance(task.node, Parallel) else "first", "((", "))")
            for part in parts:
                diagram.edge(own, part.entry)
                diagram.link(part.exits, end)
            return _Fragment(own, ((end, None),))
        case If(condition=condition):
            entry = own
            if condition is not None:
                test, *parts = parts
                diagram.link(test.exits, own, "condition")
                entry = test.entry
            then_part, else_part = parts
            diagram.edge(own, then_part.entry, "then")
            diagram.edge(own, else_part.entry, "else")
            return _Fragment(entry, then_part.exits + else_part.exits)
        case Loop(condition=condition):
            body = parts[0]
            diagram.edge(own, body.entry)
            if condition is None:
                diagram.link(body.exits, own, "repeat", back=True)
                return _Fragment(own, ((own, "break"),))
            test = parts[1]
            diagram.link(body.exits, test.entry)
            diagram.link(test.exits, own, "true", back=True)
            return _Fragment(own, tuple((source, _joined(text, "false")) for source, text in test.exits))
        case Break():
            return _Fragment(own, ())  # control leaves for the enclosing loop's exit, not the next node
        case Step() | Sleep() | WaitForSchedule() | WaitForSignal() | Http() | HttpMultipart() | Call():
            return _Fragment(own, ((own, None),))
        case _:
            assert_never(task.node)
