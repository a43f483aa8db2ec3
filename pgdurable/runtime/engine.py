"""The engine: a pure, deterministic fold over an instance's history.

`apply(state, event)` folds one event; `decide(graph, state)` says what the worker must do next. Pure: no
I/O, no clock, no randomness — time, results and signals arrive inside events. This module is the one place
where workflow semantics live (reference §5 and §6, with design §2's differences).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Final, Literal, cast

from attrs import evolve, frozen
from typing_extensions import assert_never

from pgdurable.dsl.cron import CronError
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
from pgdurable.dsl.policy import retry_policy_from_config
from pgdurable.dsl.validate import children
from pgdurable.errors import PgdurableError
from pgdurable.runtime.events import (
    Aborted,
    CancelRequested,
    Event,
    SignalArrived,
    Started,
    StepFailed,
    StepSucceeded,
    TimerFired,
)
from pgdurable.runtime.schedules import ScheduleError, next_fire
from pgdurable.runtime.state import (
    Frame,
    IfFrame,
    JoinFrame,
    Leaf,
    LoopFrame,
    Outcome,
    RaceFrame,
    State,
    ThenFrame,
    frame_key,
    split_key,
)
from pgdurable.runtime.subst import SubstitutionError, substitute_results, substitute_vars
from pgdurable.runtime.truthy import is_truthy

__all__ = [
    "Decision",
    "NodeUpdate",
    "NondeterminismError",
    "RunStep",
    "Timer",
    "Transition",
    "apply",
    "begin",
    "decide",
    "execution_stamp",
    "idempotency_key",
    "replay",
    "step",
    "step_timeout",
]

StepKind = Literal["sql", "http", "http_multipart", "call"]
_STEP_KINDS: Final = ("sql", "http", "http_multipart", "call")
MAX_BUFFERED_SIGNALS: Final = 1000
DEADLINE: Final = "deadline#"  # the frame of a start's deadline timer
BREAK_OUTSIDE_LOOP: Final = "df.break() was called outside of a loop"
RACE_LOSER_LOOP: Final = "Loop branch cancelled after losing RACE"
# Named results are kept for these node types only; naming a SLEEP, WAIT_SCHEDULE or BREAK has no effect.
_UNBOUND: Final = (Sleep, WaitForSchedule, Break)
_NAME: Final = "[A-Za-z_][A-Za-z0-9_]*"
_SINGLE_REFERENCE: Final = re.compile(rf"\${_NAME}(\.{_NAME})?\??|\{{{_NAME}\}}")


class NondeterminismError(PgdurableError):
    """The history contradicts the graph (an event for a frame that is not live)."""

    __module__ = "pgdurable"


@frozen
class NodeUpdate:
    """A change to one `df.nodes` row: `result` is result JSON (completed) or error text (failed)."""

    path: str
    status: Literal["pending", "running", "completed", "failed"]
    result: str | None
    iterations: tuple[int, ...]  # of the enclosing loops, outermost first; a loop's own marks add its own
    error: str | None = None  # a failed step's structured error (JSON), for df.nodes.error


@frozen
class Transition:
    """A folded event: the new state, the node rows it changed, the frames that now need a task (steps and
    timers) and the frames whose task is done or cancelled."""

    state: State
    updates: tuple[NodeUpdate, ...]
    started: tuple[str, ...]
    finished: tuple[str, ...]


@frozen
class RunStep:
    frame: str
    kind: StepKind
    payload: str
    idempotency_key: str


@frozen
class Timer:
    frame: str
    wake_at: datetime


@frozen
class Decision:
    """What is outstanding: steps to run, timers to keep, signal names awaited."""

    steps: tuple[RunStep, ...]
    timers: tuple[Timer, ...]
    signals: tuple[str, ...]


# -- entry points ----------------------------------------------------------------------------------------


def begin(graph: Node, started: Started) -> Transition:
    """Start an instance: the state after its first event."""
    state = State(
        graph=graph,
        instance_id=started.instance_id,
        label=started.label,
        vars=dict(started.vars),
        loop_floor_seconds=started.loop_floor_seconds,
        loop_max_iterations=started.loop_max_iterations,
        scopes={"s0": {}},
        default_retry=started.retry,
    )
    fold = _Fold(state, started.at)
    if started.deadline_seconds is not None:
        deadline = started.at + timedelta(seconds=started.deadline_seconds)
        fold.frames[DEADLINE] = Leaf(DEADLINE, None, "s0", "timer", wake_at=deadline, payload=None)
        fold.started.append(DEADLINE)
    fold.activate("root", (), None, "s0")
    return fold.done()


def step(state: State, event: Event) -> Transition:
    """Fold one event into `state`, reporting what changed."""
    fold = _Fold(state, event.at)
    match event:
        case Started():
            raise NondeterminismError(f"instance {state.instance_id} has already started")
        case StepSucceeded(frame=key, result=result):
            fold.finish(fold.live_leaf(key), Outcome("completed", result))
        case StepFailed(frame=key, error=error, detail=detail):
            fold.step_failed(fold.live_leaf(key), error, detail or {})
        case TimerFired(frame=key):
            fold.timer_fired(key)
        case SignalArrived(name=name, payload=payload):
            fold.signal(name, payload)
        case CancelRequested(reason=reason):
            fold.cancel_instance(reason)
        case Aborted(reason=reason):
            fold.abort(reason)
        case _:
            assert_never(event)
    return fold.done()


def apply(state: State, event: Event) -> State:
    """The fold: the state after `event`."""
    return step(state, event).state


def replay(graph: Node, events: Sequence[Event]) -> State:
    """Fold a whole history from its first event; equals the stored checkpoint."""
    first = events[0]
    if not isinstance(first, Started):
        raise NondeterminismError("a history must begin with Started")
    state = begin(graph, first).state
    for event in events[1:]:
        state = apply(state, event)
    return state


def decide(graph: Node, state: State) -> Decision:
    """What the worker must do for `state`: run its ready steps, keep its timers, await its signals."""
    steps: list[RunStep] = []
    timers: list[Timer] = []
    signals: set[str] = set()
    for frame in state.frames.values():
        if isinstance(frame, Leaf):
            if frame.payload is not None and frame.wake_at is None and frame.kind in _STEP_KINDS:
                steps.append(RunStep(frame.key, frame.kind, frame.payload, idempotency_key(state, frame.key)))
            if frame.signal is not None:
                signals.add(frame.signal)
        if isinstance(frame, Leaf | LoopFrame) and frame.wake_at is not None:
            timers.append(Timer(frame.key, frame.wake_at))
    return Decision(tuple(steps), tuple(timers), tuple(sorted(signals)))


def execution_stamp(graph: Node, instance_id: str, node_ids: Mapping[str, str], update: NodeUpdate) -> str:
    """pg_durable's `status_details.execution_id` for a node update: `<instance>::<generation>`, extended by
    `::<loop node id>::<iteration>` for each nested loop, so that df.instance_nodes can tell a node of an
    earlier iteration from a current one (reference §7.3 and §7.4)."""
    nodes = _index(graph).nodes
    steps = update.path.split(".")
    prefixes = (".".join(steps[: i + 1]) for i in range(len(steps)))
    loops = [p for p in prefixes if isinstance(nodes.get(p), Loop)]
    if len(loops) != len(update.iterations):
        return f"{instance_id}::1"
    pairs = list(zip(loops, update.iterations, strict=True))
    if pairs and pairs[0][0] == "root":
        stamp, pairs = f"{instance_id}::{pairs[0][1]}", pairs[1:]
    else:
        stamp = f"{instance_id}::1"
    return stamp + "".join(f"::{node_ids[path]}::{iteration}" for path, iteration in pairs)


def idempotency_key(state: State, key: str) -> str:
    """`instance:node-path:iteration-path`: stable across retries of a step, different per loop iteration."""
    path, iterations = split_key(key)
    return f"{state.instance_id}:{path}:{'.'.join(map(str, iterations)) or '0'}"


# -- the graph, indexed by path -------------------------------------------------------------------------


@frozen
class _Index:
    nodes: dict[str, Node]
    descendants: dict[str, tuple[str, ...]]


@lru_cache(maxsize=64)
def _index(graph: Node) -> _Index:
    nodes: dict[str, Node] = {}
    descendants: dict[str, tuple[str, ...]] = {}

    def walk(path: str, node: Node) -> list[str]:
        nodes[path] = node
        below: list[str] = []
        for step_name, child in children(node):
            child_path = f"{path}.{step_name}"
            below.append(child_path)
            below.extend(walk(child_path, child))
        descendants[path] = tuple(below)
        return below

    walk("root", graph)
    return _Index(nodes, descendants)


# -- the fold --------------------------------------------------------------------------------------------


class _Fold:
    """One transition in progress: copies of the state's containers, edited, then frozen by `done()`."""

    def __init__(self, state: State, at: datetime) -> None:
        self.state = state
        self.at = at
        self.index = _index(state.graph)
        self.frames: dict[str, Frame] = dict(state.frames)
        self.scopes: dict[str, dict[str, str]] = dict(state.scopes)
        self.signals: dict[str, tuple[str, ...]] = dict(state.signals)
        self.status = state.status
        self.output = state.output
        self.next_scope = state.next_scope
        self.execution_count = state.execution_count
        self.updates: list[NodeUpdate] = []
        self.started: list[str] = []
        self.finished: list[str] = []

    def done(self) -> Transition:
        state = evolve(
            self.state,
            status=self.status,
            output=self.output,
            frames=self.frames,
            scopes=self.scopes,
            signals=self.signals,
            next_scope=self.next_scope,
            events=self.state.events + 1,
            execution_count=self.execution_count,
        )
        return Transition(state, tuple(self.updates), tuple(self.started), tuple(self.finished))

    # -- activation -------------------------------------------------------------------------------------

    def activate(self, path: str, iterations: tuple[int, ...], parent: str | None, scope: str) -> None:
        node = self.index.nodes[path]
        key = frame_key(path, iterations)
        self.mark(path, (*iterations, 1) if isinstance(node, Loop) else iterations, "running")
        match node:
            case Step():
                self.leaf(key, parent, scope, "sql", lambda: self.render_sql(node, key, scope))
            case Http():
                self.leaf(key, parent, scope, "http", lambda: self.render_http(node, key, scope))
            case HttpMultipart():
                self.leaf(key, parent, scope, "http_multipart", lambda: self.render_multipart(node, key, scope))
            case Call():
                self.leaf(key, parent, scope, "call", lambda: self.render_call(node, key, scope))
            case Then():
                self.frames[key] = ThenFrame(key, parent, scope)
                self.activate(f"{path}.left", iterations, key, scope)
            case Parallel(branches=branches):
                scopes = tuple(self.copy_scope(scope) for _ in branches)
                self.frames[key] = JoinFrame(key, parent, scope, scopes, (None,) * len(branches))
                for (step_name, _), branch_scope in zip(children(node), scopes, strict=True):
                    if key in self.frames:  # an earlier branch may have ended the JOIN's parent already
                        self.activate(f"{path}.{step_name}", iterations, key, branch_scope)
            case Race():
                scopes2 = (self.copy_scope(scope), self.copy_scope(scope))
                self.frames[key] = RaceFrame(key, parent, scope, scopes2)
                self.activate(f"{path}.left", iterations, key, scopes2[0])
                if key in self.frames:  # the left branch may have finished at once and won
                    self.activate(f"{path}.right", iterations, key, scopes2[1])
            case If(if_rows=rows) if rows is not None:
                self.frames[key] = IfFrame(key, parent, scope, deciding=False)
                has_rows = self.rows_test(rows, scope)
                if isinstance(has_rows, Outcome):
                    self.finish(key, has_rows)
                else:
                    self.activate(f"{path}.{'left' if has_rows else 'right'}", iterations, key, scope)
            case If():
                self.frames[key] = IfFrame(key, parent, scope)
                self.activate(f"{path}.condition_node", iterations, key, scope)
            case Loop():
                is_root = parent is None or isinstance(self.frames[parent], JoinFrame | RaceFrame)
                loop = LoopFrame(key, parent, scope, self.copy_scope(scope), 1, self.at, is_root)
                self.frames[key] = loop
                self.activate(f"{path}.left", (*iterations, 1), key, loop.body_scope)
            case Break(value=value):
                self.frames[key] = Leaf(key, parent, scope, "instant")
                self.finish(key, Outcome("broke", _break_value(value)))
            case Sleep(seconds=seconds):
                self.frames[key] = Leaf(key, parent, scope, "timer", wake_at=self.at + timedelta(seconds=seconds))
                self.started.append(key)
            case WaitForSchedule(cron_expr=cron):
                self.frames[key] = Leaf(key, parent, scope, "timer")
                try:
                    wake_at = next_fire(cron, self.at)
                except (ScheduleError, CronError) as error:
                    self.finish(key, Outcome("failed", f"df.wait_for_schedule: {error}"))
                else:
                    self.frames[key] = Leaf(key, parent, scope, "timer", wake_at=wake_at)
                    self.started.append(key)
            case WaitForSignal(signal_name=name, timeout_seconds=timeout):
                queued = self.signals.get(name, ())
                deadline = None if timeout is None else self.at + timedelta(seconds=timeout)
                self.frames[key] = Leaf(key, parent, scope, "signal", wake_at=deadline, signal=name)
                if queued:
                    self.signals = {**self.signals, name: queued[1:]} if queued[1:] else _without(self.signals, name)
                    self.finish(key, Outcome("completed", _signal_result(name, queued[0])))
                elif deadline is not None:
                    self.started.append(key)
            case _:
                assert_never(node)

    def leaf(self, key: str, parent: str | None, scope: str, kind: StepKind, render: Callable[[], str]) -> None:
        self.frames[key] = Leaf(key, parent, scope, kind)
        try:
            payload = render()
        except SubstitutionError as error:
            self.finish(key, Outcome("failed", str(error)))
            return
        self.frames[key] = Leaf(key, parent, scope, kind, payload=payload)
        self.started.append(key)

    # -- rendering (substitution happens when a step becomes ready) --------------------------------------

    def variables(self, key: str) -> dict[str, str]:
        return {
            **self.state.vars,
            "sys_instance_id": self.state.instance_id,
            "sys_label": self.state.label or "",
            "sys_idempotency_key": idempotency_key(self.state, key),
        }

    def render_sql(self, node: Step, key: str, scope: str) -> str:
        text = substitute_vars(node.query, self.variables(key))
        return substitute_results(text, self.scopes[scope], mode="sql")

    def raw(self, text: str, key: str, scope: str) -> str:
        return substitute_results(substitute_vars(text, self.variables(key)), self.scopes[scope], mode="raw")

    def render_headers(self, headers: str | None, key: str, scope: str) -> dict[str, Any] | None:
        if headers is None:
            return None
        parsed: dict[str, Any] = json.loads(headers)
        return {name: self.raw(value, key, scope) for name, value in sorted(parsed.items())}

    def render_http(self, node: Http, key: str, scope: str) -> str:
        request = {
            "url": self.raw(node.url, key, scope),
            "method": node.method,
            "body": None if node.body is None else self.raw(node.body, key, scope),
            "headers": self.render_headers(node.headers, key, scope),
            "timeout_seconds": node.timeout_seconds,
        }
        return json.dumps(request, separators=(",", ":"), ensure_ascii=False)

    def render_multipart(self, node: HttpMultipart, key: str, scope: str) -> str:
        parts = []
        for part in json.loads(node.parts):
            rendered = dict(part)
            for field in ("name", "filename"):
                if isinstance(part.get(field), str):
                    rendered[field] = self.raw(part[field], key, scope)
            data = part.get("data_b64")
            if isinstance(data, str):
                if _SINGLE_REFERENCE.fullmatch(data.strip()):
                    rendered["data_b64"] = self.raw(data.strip(), key, scope)
                elif "$" in data or "{" in data:
                    raise SubstitutionError(
                        "multipart data_b64 must be base64 text or exactly one reference such as $file.body"
                    )
            parts.append(rendered)
        request = {
            "url": self.raw(node.url, key, scope),
            "method": node.method,
            "parts": parts,
            "headers": self.render_headers(node.headers, key, scope),
            "timeout_seconds": node.timeout_seconds,
        }
        return json.dumps(request, separators=(",", ":"), ensure_ascii=False)

    def render_call(self, node: Call, key: str, scope: str) -> str:
        """The call's arguments: `{var}` substituted in strings, and a string that is exactly one result
        reference replaced by that result's JSON value (not its text)."""
        variables, results = self.variables(key), self.scopes[scope]

        def value(item: Any) -> Any:
            if isinstance(item, dict):
                return {k: value(v) for k, v in item.items()}
            if isinstance(item, list):
                return [value(v) for v in item]
            if isinstance(item, str):
                reference = _WHOLE_REFERENCE.fullmatch(item.strip())
                if reference is not None and reference["name"] in results:
                    return _reference_value(reference, results[reference["name"]])
                return substitute_vars(item, variables)
            return item

        request = {"function": node.function, "args": value(json.loads(node.args))}
        return json.dumps(request, separators=(",", ":"), ensure_ascii=False)

    def rows_test(self, name: str, scope: str) -> bool | Outcome:
        result = self.scopes[scope].get(name)
        if result is None:
            return Outcome("failed", f"df.if_rows: result '{name}' not found")
        try:
            row_count = json.loads(result).get("row_count")
        except (ValueError, AttributeError):
            row_count = None
        if isinstance(row_count, bool) or not isinstance(row_count, int | float):
            return Outcome("failed", f"df.if_rows: result '{name}' is not a SQL result")
        return row_count > 0

    # -- completion -------------------------------------------------------------------------------------

    def live_leaf(self, key: str) -> str:
        if self.state.terminal or not isinstance(self.frames.get(key), Leaf):
            raise NondeterminismError(f"instance {self.state.instance_id}: no live step {key}")
        return key

    def finish(self, key: str, outcome: Outcome, *, structured: str | None = None) -> None:
        """End a frame with `outcome` and tell its parent; `structured` is a failed step's error record."""
        frame = self.frames.pop(key)
        self.finished.append(key)
        path, iterations = split_key(key)
        node = self.index.nodes[path]
        if isinstance(frame, LoopFrame):  # a loop's own marks carry its current iteration
            iterations = (*iterations, frame.iteration)
        if outcome.kind == "failed":
            if structured is None and isinstance(frame, Leaf):  # a step that failed before it ran
                structured = _error_record(path, outcome.value, {}, frame.attempt)
            self.mark(path, iterations, "failed", outcome.value, structured)
        else:
            self.mark(path, iterations, "completed", outcome.value)
        if outcome.kind == "completed" and node.result_name is not None and not isinstance(node, _UNBOUND):
            self.bind(frame.scope, node.result_name, outcome.value)
        if frame.parent is None:
            self.end_instance(outcome)
        else:
            self.child_done(self.frames[frame.parent], key, outcome)

    def child_done(self, parent: Frame, child: str, outcome: Outcome) -> None:
        path, iterations = split_key(parent.key)
        match parent:
            case ThenFrame():
                if outcome.kind != "completed" or parent.on_right:
                    self.finish(parent.key, outcome)
                else:
                    self.frames[parent.key] = evolve(parent, on_right=True)
                    self.activate(f"{path}.right", iterations, parent.key, parent.scope)
            case IfFrame():
                if outcome.kind != "completed" or not parent.deciding:
                    self.finish(parent.key, outcome)
                else:
                    self.frames[parent.key] = evolve(parent, deciding=False)
                    branch = "left" if is_truthy(outcome.value) else "right"
                    self.activate(f"{path}.{branch}", iterations, parent.key, parent.scope)
            case JoinFrame():
                self.join_branch_done(parent, child, outcome)
            case RaceFrame():
                self.race_branch_done(parent, child, outcome)
            case LoopFrame():
                self.loop_part_done(parent, outcome)
            case Leaf():
                raise NondeterminismError(f"step {parent.key} cannot have children")
            case _:
                assert_never(parent)

    def join_branch_done(self, join: JoinFrame, child: str, outcome: Outcome) -> None:
        branch = _branch_index(join.key, child)
        outcomes = tuple(outcome if i == branch else o for i, o in enumerate(join.outcomes))
        if any(o is None for o in outcomes):
            self.frames[join.key] = evolve(join, outcomes=outcomes)
            return
        for scope in join.branch_scopes:
            self.merge(scope, join.scope)
        finished = [o for o in outcomes if o is not None]
        failed = next(((i, o) for i, o in enumerate(finished, 1) if o.kind == "failed"), None)
        broke = next((o for o in finished if o.kind == "broke"), None)
        if failed is not None:
            self.finish(join.key, Outcome("failed", f"JOIN branch {failed[0]} failed: {failed[1].value}"))
        elif broke is not None:
            self.finish(join.key, broke)
        else:
            self.finish(join.key, Outcome("completed", "[" + ",".join(o.value for o in finished) + "]"))

    def race_branch_done(self, race: RaceFrame, child: str, outcome: Outcome) -> None:
        winner = _branch_index(race.key, child)
        path, iterations = split_key(race.key)
        loser = frame_key(f"{path}.{'right' if winner == 0 else 'left'}", iterations)
        if loser in self.frames:
            self.cancel_subtree(loser, loser_of_race=True)
        if outcome.kind != "failed":
            self.merge(race.branch_scopes[winner], race.scope)
        self.drop_scope(race.branch_scopes[1 - winner])
        self.finish(race.key, outcome)

    def loop_part_done(self, loop: LoopFrame, outcome: Outcome) -> None:
        if outcome.kind != "completed":
            self.end_loop(loop, outcome if outcome.kind == "failed" else Outcome("completed", outcome.value))
            return
        path, iterations = split_key(loop.key)
        node = cast(Loop, self.index.nodes[path])
        if loop.phase == "body" and node.condition is not None:
            self.frames[loop.key] = evolve(loop, phase="condition", last_result=outcome.value)
            self.activate(f"{path}.condition_node", (*iterations, loop.iteration), loop.key, loop.body_scope)
        elif loop.phase == "condition" and not is_truthy(outcome.value):
            self.end_loop(loop, Outcome("completed", loop.last_result or "null"))
        else:
            last = outcome.value if loop.phase == "body" else loop.last_result
            self.next_iteration(evolve(loop, last_result=last))

    def next_iteration(self, loop: LoopFrame) -> None:
        number = loop.iteration + 1
        if number > self.state.loop_max_iterations:
            self.end_loop(
                loop, Outcome("failed", f"Loop exceeded maximum iteration count of {self.state.loop_max_iterations}")
            )
            return
        path, iterations = split_key(loop.key)
        for below in self.index.descendants[path]:
            self.mark(below, (*iterations, number), "pending")
        due = loop.started_at + timedelta(seconds=self.state.loop_floor_seconds)
        # An iteration that began in this same transition ended at once: wait for a timer instead of
        # recursing, so that a loop of instant steps cannot spin inside one fold.
        if due > self.at or loop.started_at == self.at:
            self.frames[loop.key] = evolve(loop, iteration=number, phase="floor", wake_at=due)
            self.started.append(loop.key)
        else:
            self.begin_iteration(evolve(loop, iteration=number))

    def begin_iteration(self, loop: LoopFrame) -> None:
        body_scope = loop.body_scope
        if loop.is_root:
            self.drop_scope(body_scope)
            body_scope = self.new_scope({})
        self.frames[loop.key] = evolve(loop, phase="body", started_at=self.at, wake_at=None, body_scope=body_scope)
        if loop.parent is None:
            self.execution_count = loop.iteration
        path, iterations = split_key(loop.key)
        self.activate(f"{path}.left", (*iterations, loop.iteration), loop.key, body_scope)

    def end_loop(self, loop: LoopFrame, outcome: Outcome) -> None:
        self.merge(loop.body_scope, loop.scope)
        self.finish(loop.key, outcome)

    def end_instance(self, outcome: Outcome) -> None:
        if outcome.kind == "broke":
            self.status, self.output = "failed", BREAK_OUTSIDE_LOOP
            path = "root"
            self.mark(path, (), "failed", BREAK_OUTSIDE_LOOP)
        else:
            self.status, self.output = outcome.kind, outcome.value
        for key in list(self.frames):
            if key in self.frames:
                self.cancel_subtree(key)
        self.scopes, self.signals = {}, {}

    # -- timers, signals, cancellation --------------------------------------------------------------

    def timer_fired(self, key: str) -> None:
        frame = self.frames.get(key)
        if self.state.terminal or frame is None or getattr(frame, "wake_at", None) is None:
            raise NondeterminismError(f"instance {self.state.instance_id}: no live timer {key}")
        if key == DEADLINE:
            self.finished.append(key)
            self.frames.pop(key, None)
            self.abort("the workflow's deadline passed: what still ran was cancelled")
            return
        if isinstance(frame, Leaf) and frame.payload is not None:  # a retry's backoff is over: run it again
            self.frames[key] = evolve(frame, wake_at=None, attempt=frame.attempt + 1)
            self.finished.append(key)
            self.started.append(key)
            return
        if isinstance(frame, LoopFrame):
            self.finished.append(key)
            self.begin_iteration(frame)
            return
        node = self.index.nodes[split_key(key)[0]]
        match node:
            case Sleep(seconds=seconds):
                self.finish(key, Outcome("completed", f'{{"slept":true,"seconds":{seconds}}}'))
            case WaitForSchedule():
                self.finish(key, Outcome("completed", '{"scheduled":true}'))
            case WaitForSignal(signal_name=name):
                self.finish(key, Outcome("completed", _signal_result(name, None)))
            case _:
                raise NondeterminismError(f"instance {self.state.instance_id}: {key} has no timer")

    def signal(self, name: str, payload: str) -> None:
        if self.state.terminal:
            return
        waiting = [k for k, f in self.frames.items() if isinstance(f, Leaf) and f.signal == name]
        for key in waiting:
            if key in self.frames:  # delivering to one wait may end another's branch (a RACE)
                self.finish(key, Outcome("completed", _signal_result(name, payload)))
        if not waiting:
            queued = self.signals.get(name, ())
            if len(queued) < MAX_BUFFERED_SIGNALS:
                self.signals = {**self.signals, name: (*queued, payload)}

    def cancel_instance(self, reason: str) -> None:
        if self.state.terminal:
            return
        for key in list(self.frames):
            if key in self.frames:
                self.cancel_subtree(key)
        self.status, self.output = "cancelled", f"cancelled: {reason}"
        self.scopes, self.signals = {}, {}

    def abort(self, reason: str) -> None:
        if self.state.terminal:
            return
        for key in list(self.frames):
            if key in self.frames:
                self.cancel_subtree(key)
        self.mark("root", (), "failed", reason)
        self.status, self.output = "failed", reason
        self.scopes, self.signals = {}, {}

    def cancel_subtree(self, key: str, *, loser_of_race: bool = False) -> None:
        doomed = [k for k in self.frames if k == key or self.descends_from(k, key)]
        doomed_frames = {k: self.frames[k] for k in doomed}
        for doomed_key in doomed:
            frame = self.frames.pop(doomed_key)
            self.finished.append(doomed_key)
            for scope in _owned_scopes(frame):
                self.drop_scope(scope)
        loser = doomed_frames.get(key)
        if loser_of_race and isinstance(loser, LoopFrame):
            path, iterations = split_key(key)
            self.mark(path, (*iterations, loser.iteration), "failed", RACE_LOSER_LOOP)

    def descends_from(self, key: str, ancestor: str) -> bool:
        parent = self.frames[key].parent
        while parent is not None:
            if parent == ancestor:
                return True
            parent = self.frames[parent].parent if parent in self.frames else None
        return False

    # -- scopes and monitoring ----------------------------------------------------------------------

    def new_scope(self, bindings: dict[str, str]) -> str:
        name = f"s{self.next_scope}"
        self.next_scope += 1
        self.scopes[name] = bindings
        return name

    def copy_scope(self, scope: str) -> str:
        return self.new_scope(dict(self.scopes[scope]))

    def drop_scope(self, scope: str) -> None:
        self.scopes.pop(scope, None)

    def bind(self, scope: str, name: str, result: str) -> None:
        if scope in self.scopes:
            self.scopes[scope] = {**self.scopes[scope], name: result}

    def merge(self, source: str, target: str) -> None:
        if source == target or source not in self.scopes or target not in self.scopes:
            return
        self.scopes[target] = {**self.scopes[target], **self.scopes.pop(source)}

    def mark(
        self, path: str, iterations: tuple[int, ...], status: Any, result: str | None = None, error: str | None = None
    ) -> None:
        self.updates.append(NodeUpdate(path, status, result, iterations, error))

    # -- failures and retries -----------------------------------------------------------------------

    def step_failed(self, key: str, error: str, detail: dict[str, Any]) -> None:
        """A step failed: wait and run it again if its retry policy says so, else fail it for good."""
        leaf = cast(Leaf, self.frames[key])  # live_leaf checked it
        path = split_key(key)[0]
        node = self.index.nodes[path]
        policy = node.retry if isinstance(node, Step | Http | HttpMultipart | Call) else None
        if policy is None and self.state.default_retry is not None:
            policy = retry_policy_from_config(self.state.default_retry)
        if policy is not None and leaf.attempt < policy.max_attempts and policy.retries(detail.get("sqlstate")):
            delay = policy.delay_ms(leaf.attempt, _jitter(self.state.instance_id, key, leaf.attempt))
            self.frames[key] = evolve(leaf, wake_at=self.at + timedelta(milliseconds=delay))
            self.started.append(key)
            return
        self.finish(key, Outcome("failed", error), structured=_error_record(path, error, detail, leaf.attempt))


def _branch_index(parent_key: str, child_key: str) -> int:
    parent_path = split_key(parent_key)[0]
    step_name = split_key(child_key)[0][len(parent_path) + 1 :]
    if step_name == "left":
        return 0
    if step_name == "right":
        return 1
    return 2 + int(step_name.removeprefix("extra_nodes[").removesuffix("]"))


def _owned_scopes(frame: Frame) -> Iterable[str]:
    if isinstance(frame, JoinFrame | RaceFrame):
        return frame.branch_scopes
    if isinstance(frame, LoopFrame) and frame.body_scope != frame.scope:
        return (frame.body_scope,)
    return ()


def _error_record(path: str, error: str, detail: dict[str, Any], attempt: int) -> str:
    """The structured failure kept in df.nodes.error (and returned by df.error)."""
    record = {
        "sqlstate": detail.get("sqlstate"),
        "message": detail.get("message") or error,
        "detail": detail.get("detail"),
        "hint": detail.get("hint"),
        "node": path,
        "attempt": attempt,
    }
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


_WHOLE_REFERENCE: Final = re.compile(rf"\$(?P<name>{_NAME})(?:\.(?P<column>{_NAME}|\*))?(?P<safe>\?)?")


def _reference_value(reference: re.Match[str], result: str) -> Any:
    """The JSON value a whole-string reference (`$x`, `$x?`, `$x.col`, `$x.col?`, `$x.*`) stands for."""
    name, column, null_safe = reference["name"], reference["column"], reference["safe"] is not None
    parsed = json.loads(result)
    rows = parsed.get("rows") if isinstance(parsed, dict) and isinstance(parsed.get("rows"), list) else None
    if column == "*":
        if rows is None:
            raise SubstitutionError(f"${name}.*: result is not a row set")
        return rows
    if rows is not None:
        if not rows:
            if null_safe:
                return None
            raise SubstitutionError(f"${name} has no rows — query returned zero results")
        record = rows[0]
        if column is None:
            return next(iter(record.values()), None)
        if column not in record:
            raise SubstitutionError(f"${name}.{column}: result has no field '{column}'")
        return record[column]
    if column is None:
        return parsed
    if not isinstance(parsed, dict) or column not in parsed:
        raise SubstitutionError(f"${name}.{column}: result has no field '{column}'")
    return parsed[column]


def _jitter(instance_id: str, key: str, attempt: int) -> float:
    """A deterministic number in [-1, 1) for a retry's jitter: replay must compute the same wait."""
    digest = hashlib.sha256(f"{instance_id}:{key}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**63 - 1


def step_timeout(graph: Node, key: str) -> int | None:
    """The `timeout_seconds` of the step a frame runs, if it has one."""
    node = _index(graph).nodes.get(split_key(key)[0])
    return node.timeout if isinstance(node, Step | Http | HttpMultipart | Call) else None


def _without(signals: dict[str, tuple[str, ...]], name: str) -> dict[str, tuple[str, ...]]:
    return {key: value for key, value in signals.items() if key != name}


def _break_value(value: str | None) -> str:
    """A break value as JSON text: the value itself if it parses as JSON (made compact), else a string."""
    if value is None:
        return "null"
    try:
        return json.dumps(json.loads(value), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return json.dumps(value, ensure_ascii=False)


def _signal_result(name: str, payload: str | None) -> str:
    data = "null" if payload is None else payload
    timed_out = "true" if payload is None else "false"
    return f'{{"signal_name":{json.dumps(name, ensure_ascii=False)},"timed_out":{timed_out},"data":{data}}}'
