"""Graph-wide limits shared by both front ends: nesting depth and node count (pg_durable's §4.4)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

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
from pgdurable.errors import GraphError

__all__ = ["MAX_DEPTH", "MAX_NODES", "check_limits", "children"]

MAX_DEPTH: Final = 256
MAX_NODES: Final = 10_000
DEPTH_ERROR: Final = f"Graph exceeds maximum nesting depth of {MAX_DEPTH}"
COUNT_ERROR: Final = f"Graph exceeds maximum of {MAX_NODES} nodes"


def children(node: Node) -> Iterator[tuple[str, Node]]:
    """A node's children with their path steps, in pg_durable's order: left, right, condition, extras."""
    match node:
        case Then(left=left, right=right) | Race(left=left, right=right):
            yield "left", left
            yield "right", right
        case Parallel(branches=branches):
            yield "left", branches[0]
            yield "right", branches[1]
            for index, extra in enumerate(branches[2:]):
                yield f"extra_nodes[{index}]", extra
        case If(condition=condition, then_branch=then_branch, else_branch=else_branch):
            yield "left", then_branch
            yield "right", else_branch
            if condition is not None:
                yield "condition_node", condition
        case Loop(body=body, condition=condition):
            yield "left", body
            if condition is not None:
                yield "condition_node", condition
        case Step() | Break() | Sleep() | WaitForSchedule() | WaitForSignal() | Http() | HttpMultipart() | Call():
            return


def check_limits(root: Node) -> None:
    """Raise `GraphError` (path `root`) if the graph is deeper than 256 or has more than 10,000 nodes.

    Shared subtrees count once per occurrence, as they will once flattened; memoising by identity keeps
    a graph built by repeated doubling (`g = g & g`) cheap to check.
    """
    sizes: dict[int, tuple[int, int]] = {}

    def measure(node: Node, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise GraphError(DEPTH_ERROR, "root")
        known = sizes.get(id(node))
        if known is not None and depth + known[0] - 1 <= MAX_DEPTH:
            return known
        height, count = 1, 1
        for _, child in children(node):
            child_height, child_count = measure(child, depth + 1)
            height, count = max(height, child_height + 1), count + child_count
            if count > MAX_NODES:
                raise GraphError(COUNT_ERROR, "root")
        sizes[id(node)] = (height, count)
        return height, count

    measure(root, 1)
