"""The pgdurable exception tree; nothing else lives here.

PgdurableError
 └── GraphError (also a ValueError)   an invalid workflow graph; `.path` names the node
"""

from __future__ import annotations

__all__ = ["GraphError", "PgdurableError"]


class PgdurableError(Exception):
    """Base class of every error pgdurable raises on purpose."""

    __module__ = "pgdurable"


class GraphError(PgdurableError, ValueError):
    """A workflow graph breaks a rule. The text reads `<path>: <problem>` when the place is known.

    >>> str(GraphError("unknown key 'x'", path="root.left"))
    "root.left: unknown key 'x'"
    """

    __module__ = "pgdurable"

    def __init__(self, problem: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.problem = problem
        self.path = path

    def __reduce__(self) -> tuple[type[GraphError], tuple[str, str | None]]:
        return (type(self), (self.problem, self.path))

    def at(self, path: str) -> GraphError:
        """The same problem, placed at `path` (an inner path wins: it is more precise)."""
        return self if self.path else GraphError(self.problem, path)
