"""The folded state of one instance: its live frames, named-result scopes and buffered signals.

Values only; the engine derives new states, never edits one. `to_checkpoint` / `from_checkpoint` give the
JSON stored in `df.instances.checkpoint`. Frame keys are `<node path>#<loop iterations>`, such as
`root.left#3.1` for a node inside iteration 1 of an inner loop inside iteration 3 of an outer one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from attrs import field, frozen

from pgdurable.dsl.nodes import Node

__all__ = [
    "Frame",
    "IfFrame",
    "JoinFrame",
    "Leaf",
    "LoopFrame",
    "Outcome",
    "RaceFrame",
    "State",
    "ThenFrame",
    "frame_key",
    "split_key",
]

Status = Literal["running", "completed", "failed", "cancelled"]
TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})


def frame_key(path: str, iterations: tuple[int, ...]) -> str:
    return f"{path}#{'.'.join(map(str, iterations))}"


def split_key(key: str) -> tuple[str, tuple[int, ...]]:
    path, _, iterations = key.partition("#")
    return path, tuple(int(i) for i in iterations.split(".") if i)


@frozen
class Outcome:
    """How a frame ended: `value` is the result JSON for completed and broke, the error text for failed."""

    kind: Literal["completed", "failed", "broke"]
    value: str


@frozen
class Leaf:
    """A step the worker performs (`sql`, `http`, `http_multipart`), a wait (`timer`, `signal`), or a node
    that ends as soon as it starts (`instant`, a BREAK)."""

    key: str
    parent: str | None
    scope: str
    kind: Literal["sql", "http", "http_multipart", "call", "timer", "signal", "instant"]
    payload: str | None = None  # the rendered SQL text, or the rendered HTTP request as JSON
    wake_at: datetime | None = None
    signal: str | None = None
    attempt: int = 1  # of a step that a retry policy runs again


@frozen
class ThenFrame:
    key: str
    parent: str | None
    scope: str
    on_right: bool = False


@frozen
class JoinFrame:
    key: str
    parent: str | None
    scope: str
    branch_scopes: tuple[str, ...]
    outcomes: tuple[Outcome | None, ...]


@frozen
class RaceFrame:
    key: str
    parent: str | None
    scope: str
    branch_scopes: tuple[str, str]


@frozen
class IfFrame:
    key: str
    parent: str | None
    scope: str
    deciding: bool = True


@frozen
class LoopFrame:
    """`scope` is the enclosing scope; the body runs in `body_scope` (a copy, or a fresh one per iteration
    for a root loop). `phase` says what runs now; `floor` is the wait that enforces the iteration floor."""

    key: str
    parent: str | None
    scope: str
    body_scope: str
    iteration: int
    started_at: datetime
    is_root: bool
    phase: Literal["body", "condition", "floor"] = "body"
    last_result: str | None = None
    wake_at: datetime | None = None


Frame = Leaf | ThenFrame | JoinFrame | RaceFrame | IfFrame | LoopFrame
_FRAME_TYPES: Final[dict[str, type[Any]]] = {
    cls.__name__: cls for cls in (Leaf, ThenFrame, JoinFrame, RaceFrame, IfFrame, LoopFrame)
}


@frozen
class State:
    """One instance's checkpoint. The dict fields are never mutated once a State is built."""

    graph: Node = field(eq=False, repr=False)
    instance_id: str
    label: str | None
    vars: dict[str, str]
    loop_floor_seconds: float
    loop_max_iterations: int
    status: Status = "running"
    output: str | None = None
    frames: dict[str, Frame] = field(factory=dict)
    scopes: dict[str, dict[str, str]] = field(factory=dict)
    signals: dict[str, tuple[str, ...]] = field(factory=dict)
    next_scope: int = 1
    events: int = 0
    execution_count: int = 1
    default_retry: dict[str, Any] | None = None  # for steps without a policy of their own

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_checkpoint(self) -> dict[str, Any]:
        """A JSON-ready dict of everything but the graph (which `df.instances.graph` holds)."""
        return {
            "instance_id": self.instance_id,
            "label": self.label,
            "vars": self.vars,
            "loop_floor_seconds": self.loop_floor_seconds,
            "loop_max_iterations": self.loop_max_iterations,
            "status": self.status,
            "output": self.output,
            "frames": [_frame_to_json(frame) for frame in self.frames.values()],
            "scopes": self.scopes,
            "signals": {name: list(queue) for name, queue in self.signals.items()},
            "next_scope": self.next_scope,
            "events": self.events,
            "execution_count": self.execution_count,
            "default_retry": self.default_retry,
        }

    @classmethod
    def from_checkpoint(cls, graph: Node, data: dict[str, Any]) -> State:
        frames = [_frame_from_json(item) for item in data["frames"]]
        return cls(
            graph=graph,
            instance_id=data["instance_id"],
            label=data["label"],
            vars=data["vars"],
            loop_floor_seconds=data["loop_floor_seconds"],
            loop_max_iterations=data["loop_max_iterations"],
            status=data["status"],
            output=data["output"],
            frames={frame.key: frame for frame in frames},
            scopes=data["scopes"],
            signals={name: tuple(queue) for name, queue in data["signals"].items()},
            next_scope=data["next_scope"],
            events=data["events"],
            execution_count=data["execution_count"],
            default_retry=data.get("default_retry"),
        )


def _frame_to_json(frame: Frame) -> dict[str, Any]:
    data: dict[str, Any] = {"type": type(frame).__name__}
    for name in frame.__attrs_attrs__:
        value = getattr(frame, name.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif name.name == "outcomes":
            value = [None if o is None else [o.kind, o.value] for o in value]
        data[name.name] = value
    return data


def _frame_from_json(data: dict[str, Any]) -> Frame:
    data = dict(data)
    cls = _FRAME_TYPES[data.pop("type")]
    for name in ("wake_at", "started_at"):
        if data.get(name) is not None:
            data[name] = datetime.fromisoformat(data[name])
    if "outcomes" in data:
        data["outcomes"] = tuple(None if o is None else Outcome(o[0], o[1]) for o in data["outcomes"])
    if "branch_scopes" in data:
        data["branch_scopes"] = tuple(data["branch_scopes"])
    frame: Frame = cls(**data)
    return frame
