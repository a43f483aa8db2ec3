"""A deterministic driver for the pure engine: it plays the worker's part with a virtual clock."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

from pgdurable.dsl.nodes import Node
from pgdurable.runtime.engine import NodeUpdate, begin, decide, replay, step
from pgdurable.runtime.events import (
    CancelRequested,
    Event,
    SignalArrived,
    Started,
    StepFailed,
    StepSucceeded,
    TimerFired,
)
from pgdurable.runtime.state import State

T0 = datetime(2026, 1, 5, 12, 0, 0, tzinfo=timezone.utc)

Answer = Callable[[str], str]


def rows(*records: dict[str, object]) -> str:
    """A SQL step's result envelope."""
    return json.dumps({"rows": list(records), "row_count": len(records)}, separators=(",", ":"))


class StepFailure(Exception):
    """Raised by an answer function to make the step fail with this message."""


class Simulation:
    """Runs a graph to quiescence: steps are answered in order, timers fire in time order."""

    def __init__(
        self,
        graph: Node,
        answer: Answer = lambda query: rows({"?column?": 1}),
        *,
        floor: float = 0.0,
        cap: int = 100_000,
        variables: dict[str, str] | None = None,
        label: str | None = "test",
    ) -> None:
        self.graph = graph
        self.answer = answer
        self.now = T0
        self.queries: list[str] = []
        started = Started(T0, "abcd1234", label, variables or {}, floor, cap)
        transition = begin(graph, started)
        self.state: State = transition.state
        self.events: list[Event] = [started]
        self.updates: list[NodeUpdate] = list(transition.updates)

    def feed(self, event: Event) -> None:
        transition = step(self.state, event)
        self.state = transition.state
        self.events.append(event)
        self.updates.extend(transition.updates)

    def run(
        self,
        *,
        max_events: int = 10_000,
        order: Callable[[Sequence[str]], int] = lambda frames: 0,
        settle: bool = True,
    ) -> State:
        """Answer steps and fire timers until nothing is left to do (or `max_events` if not `settle`)."""
        for _ in range(max_events):
            if self.state.terminal:
                return self.state
            decision = decide(self.graph, self.state)
            if decision.steps:
                chosen = decision.steps[order([s.frame for s in decision.steps])]
                self.queries.append(chosen.payload)
                try:
                    self.feed(StepSucceeded(self.now, chosen.frame, self.answer(chosen.payload)))
                except StepFailure as failure:
                    self.feed(StepFailed(self.now, chosen.frame, str(failure)))
            elif decision.timers:
                timer = min(decision.timers, key=lambda t: (t.wake_at, t.frame))
                self.now = max(self.now, timer.wake_at)
                self.feed(TimerFired(self.now, timer.frame))
            else:
                return self.state
        if settle:
            raise AssertionError("the simulation did not settle")
        return self.state

    def signal(self, name: str, payload: str = "{}") -> None:
        self.feed(SignalArrived(self.now, name, payload))

    def cancel(self, reason: str = "Cancelled by user") -> None:
        self.feed(CancelRequested(self.now, reason))

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def final(self, path: str) -> NodeUpdate | None:
        """The last monitoring update of a node path."""
        return next((u for u in reversed(self.updates) if u.path == path), None)

    def replayed(self) -> State:
        return replay(self.graph, self.events)
