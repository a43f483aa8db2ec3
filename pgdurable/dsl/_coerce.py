"""The one place where operands become nodes: a `str` becomes a SQL `Step`, after the trap checks."""

from __future__ import annotations

from typing import Final

from pgdurable.dsl.nodes import IDENTIFIER, NODE_CLASSES, Node, Step
from pgdurable.errors import GraphError

__all__ = ["as_node"]

# Statements that really are one word, so a bare word that is one of them is not the precedence trap.
ONE_WORD_STATEMENTS: Final = frozenset(
    {"ABORT", "ANALYSE", "ANALYZE", "BEGIN", "CHECKPOINT", "CLUSTER", "COMMIT", "END", "ROLLBACK", "VACUUM"}
)


def as_node(value: object, *, where: str) -> Node:
    """Return `value` as a node: nodes pass through, strings become SQL steps.

    A bare identifier such as `"batch"` is what `a | "batch" >> b` hands over (Python binds `>>` before `|`),
    so it is refused with the fix, unless it is a one-word statement such as `VACUUM`.

    >>> as_node("SELECT 1", where="here")
    Step(query='SELECT 1', result_name=None, retry=None, timeout=None)
    >>> as_node("batch", where="left operand of THEN (>>)")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pgdurable.GraphError: left operand of THEN (>>): 'batch' is a bare name, not a SQL statement: ...
    """
    if isinstance(value, NODE_CLASSES):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{where}: expected a workflow node or a SQL string, got {type(value).__name__}")
    word = value.strip()
    if IDENTIFIER.fullmatch(word) and word.upper() not in ONE_WORD_STATEMENTS:
        raise GraphError(
            f"'{word}' is a bare name, not a SQL statement: Python reads `a | \"{word}\" >> b` as "
            f'`a | ("{word}" >> b)` because >> binds tighter than |; '
            f'write `(a | "{word}") >> b` to name a\'s result',
            path=where,
        )
    return Step(value)
