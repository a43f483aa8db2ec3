"""History events: the facts an instance's checkpoint is folded from.

Values only. Every event carries `at`, the database clock when it was recorded, so the engine never reads a
clock. Events serialize to compact JSON for `df.history`, and back.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final

from attrs import asdict, frozen

__all__ = [
    "ENGINE_VERSION",
    "Aborted",
    "CancelRequested",
    "Event",
    "SignalArrived",
    "Started",
    "StepFailed",
    "StepSucceeded",
    "TimerFired",
    "event_from_json",
    "event_to_json",
]

ENGINE_VERSION: Final = 1


@frozen
class Started:
    """The instance began. Everything the fold needs besides the graph is here."""

    at: datetime
    instance_id: str
    label: str | None
    vars: dict[str, str]
    loop_floor_seconds: float
    loop_max_iterations: int
    engine_version: int = ENGINE_VERSION
    retry: dict[str, Any] | None = None  # the start's default retry policy (df.start_with option `retry`)
    deadline_seconds: int | None = None  # the start's deadline (df.start_with option `deadline_seconds`)


@frozen
class StepSucceeded:
    """A SQL or HTTP step (a leaf frame) returned `result`, JSON text."""

    at: datetime
    frame: str
    result: str


@frozen
class StepFailed:
    """A step failed; `error` is the text pg_durable would store, `detail` the structured failure."""

    at: datetime
    frame: str
    error: str
    detail: dict[str, Any] | None = None


@frozen
class TimerFired:
    """A durable timer of `frame` came due (a sleep, a cron wait, a signal timeout or a loop floor)."""

    at: datetime
    frame: str


@frozen
class SignalArrived:
    """`df.signal` delivered `payload` (JSON text) under `name`."""

    at: datetime
    name: str
    payload: str


@frozen
class CancelRequested:
    """`df.cancel` asked the instance to stop."""

    at: datetime
    reason: str


@frozen
class Aborted:
    """The worker refused to go on (the submitter lost LOGIN, became a superuser, ...): the instance fails."""

    at: datetime
    reason: str


Event = Started | StepSucceeded | StepFailed | TimerFired | SignalArrived | CancelRequested | Aborted

_TYPES: Final[dict[str, type[Any]]] = {
    cls.__name__: cls
    for cls in (Started, StepSucceeded, StepFailed, TimerFired, SignalArrived, CancelRequested, Aborted)
}


def event_to_json(event: Event) -> str:
    """Compact JSON with a `type` tag; datetimes as ISO 8601."""
    fields = asdict(event, recurse=False)
    fields["at"] = event.at.isoformat()
    return json.dumps({"type": type(event).__name__, **fields}, separators=(",", ":"), ensure_ascii=False)


def event_from_json(text: str) -> Event:
    data = json.loads(text)
    cls = _TYPES[data.pop("type")]
    data["at"] = datetime.fromisoformat(data["at"])
    event: Event = cls(**data)
    return event
