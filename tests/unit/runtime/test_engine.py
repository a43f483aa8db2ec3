"""The engine's semantics, through a simulated worker: no database, a virtual clock."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgdurable import (
    Step,
    break_,
    if_,
    if_rows,
    join,
    loop,
    race,
    retry,
    sleep,
    wait_for_schedule,
    wait_for_signal,
)
from pgdurable.runtime.engine import NondeterminismError, apply, decide
from pgdurable.runtime.events import StepSucceeded
from pgdurable.runtime.state import State
from tests.unit.runtime.simulation import T0, Simulation, StepFailure, rows


def echo(query: str) -> str:
    """Answers `SELECT <x>` with one row holding the literal text after SELECT."""
    return rows({"v": query.removeprefix("SELECT ").strip("'")})


def test_then_returns_the_right_result_and_binds_names() -> None:
    graph = (Step("SELECT 1 AS a") | "a") >> "SELECT $a + 1"
    sim = Simulation(graph, lambda q: rows({"a": 41}) if "AS a" in q else rows({"?column?": 42}))
    state = sim.run()
    assert state.status == "completed"
    assert sim.queries == ["SELECT 1 AS a", "SELECT 41 + 1"]
    assert json.loads(state.output or "") == {"rows": [{"?column?": 42}], "row_count": 1}


def test_join_waits_for_all_and_keeps_branch_order() -> None:
    graph = join(Step("SELECT 'a'") | "x", "SELECT 'b'", "SELECT 'c'") >> "SELECT $x"
    sim = Simulation(graph, echo)
    state = sim.run(order=lambda frames: len(frames) - 1)  # finish branches last-first
    assert state.status == "completed"
    assert sim.queries[-1] == "SELECT 'a'"
    join_result = sim.final("root.left")
    assert join_result is not None and [r["rows"][0]["v"] for r in json.loads(join_result.result or "")] == [
        "a",
        "b",
        "c",
    ]


def test_a_failed_join_branch_fails_the_join_after_all_branches_finish() -> None:
    def answer(query: str) -> str:
        if "boom" in query:
            raise StepFailure("SQL execution failed: division by zero")
        return echo(query)

    sim = Simulation(join("SELECT 'ok'", "SELECT boom", "SELECT 'late'"), answer)
    state = sim.run()
    assert state.status == "failed"
    assert state.output == "JOIN branch 2 failed: SQL execution failed: division by zero"
    assert len(sim.queries) == 3


def test_race_first_finisher_wins_and_the_loser_is_cancelled() -> None:
    graph = race("SELECT 'fast'", sleep(10) >> "SELECT 'slow'")
    sim = Simulation(graph, echo)
    state = sim.run()
    assert state.status == "completed"
    assert json.loads(state.output or "")["rows"][0]["v"] == "fast"
    assert sim.queries == ["SELECT 'fast'"]
    assert state.frames == {}


def test_race_loser_loop_is_marked_failed() -> None:
    sim = Simulation(race("SELECT 'fast'", loop(sleep(1))), echo)
    sim.run()
    assert sim.final("root.right") == sim.final("root.right") and sim.final("root.right").status == "failed"  # type: ignore[union-attr]


@pytest.mark.parametrize(("condition", "taken"), [("SELECT true", "yes"), ("SELECT false", "no")])
def test_if_takes_one_branch(condition: str, taken: str) -> None:
    sim = Simulation(
        if_(condition, "SELECT 'yes'", "SELECT 'no'"),
        lambda q: rows({"b": q.endswith("true")}) if q in ("SELECT true", "SELECT false") else echo(q),
    )
    state = sim.run()
    assert json.loads(state.output or "")["rows"][0]["v"] == taken


def test_if_rows_branches_on_a_named_result() -> None:
    graph = (Step("SELECT 1 WHERE false") | "doc") >> if_rows("doc", "SELECT 'has'", "SELECT 'none'")
    sim = Simulation(graph, lambda q: rows() if "WHERE false" in q else echo(q))
    assert json.loads(sim.run().output or "")["rows"][0]["v"] == "none"


def test_if_rows_on_an_unknown_name_fails() -> None:
    sim = Simulation(if_rows("nope", "SELECT 1", "SELECT 2"))
    state = sim.run()
    assert state.status == "failed" and state.output == "df.if_rows: result 'nope' not found"


def test_loop_breaks_through_if_and_join() -> None:
    counter = {"n": 0}

    def answer(query: str) -> str:
        if query.startswith("UPDATE"):
            counter["n"] += 1
            return rows({"v": counter["n"]})
        if query.startswith("SELECT v >= 3"):
            return rows({"?column?": counter["n"] >= 3})
        return echo(query)

    body = Step("UPDATE c SET v = v + 1 RETURNING v") >> (
        if_("SELECT v >= 3 FROM c", break_("nested-done"), "SELECT 'keep-going'") & "SELECT 'other'"
    )
    sim = Simulation(loop(body), answer)
    state = sim.run()
    assert state.status == "completed"
    assert state.output == '"nested-done"'
    assert counter["n"] == 3


def test_break_outside_a_loop_fails_the_instance() -> None:
    state = Simulation(break_("oops")).run()
    assert state.status == "failed" and state.output == "df.break() was called outside of a loop"


def test_do_while_loop_returns_the_last_body_result() -> None:
    counter = {"n": 0}

    def answer(query: str) -> str:
        if query == "SELECT step()":
            counter["n"] += 1
            return rows({"n": counter["n"]})
        return rows({"more": counter["n"] < 4})

    state = Simulation(loop("SELECT step()", "SELECT more()"), answer).run()
    assert json.loads(state.output or "") == {"rows": [{"n": 4}], "row_count": 1}


def test_loop_iterations_respect_the_floor_as_durable_timers() -> None:
    counter = {"n": 0}

    def answer(query: str) -> str:
        counter["n"] += 1
        return rows({"done": counter["n"] >= 3})

    sim = Simulation(loop(if_("SELECT done()", break_(), "SELECT 1")), answer, floor=1.0)
    sim.run()
    assert sim.now - T0 == timedelta(seconds=1)  # two iterations: one floor wait of 1 s
    assert sim.state.status == "completed"


def test_loop_cap_fails_the_loop() -> None:
    state = Simulation(loop("SELECT 1"), cap=5).run()
    assert state.status == "failed" and state.output == "Loop exceeded maximum iteration count of 5"


def test_root_loop_starts_each_iteration_with_no_names_but_a_nested_loop_keeps_them() -> None:
    seen: list[str] = []

    def answer(query: str) -> str:
        seen.append(query)
        return rows({"v": 7})

    body = (Step("SELECT $x") >> (Step("SELECT 7") | "x")) >> if_("SELECT true", "SELECT 1", "SELECT 1")
    sim = Simulation(loop(body), answer, cap=2)
    sim.run()
    assert seen.count("SELECT $x") == 2  # never substituted: iteration 2 does not see iteration 1's x
    seen.clear()
    Simulation(Step("SELECT 0") >> loop(body), answer, cap=2).run()
    assert "SELECT 7" in seen[2:] and seen.count("SELECT $x") == 1  # the nested loop carries x over


def test_sleep_and_schedule_results_use_the_virtual_clock() -> None:
    sim = Simulation((sleep(30) | "s") >> wait_for_schedule("0 13 * * *"))
    state = sim.run()
    assert sim.now == T0.replace(hour=13)
    assert state.output == '{"scheduled":true}'
    assert sim.final("root.left") is not None and sim.final("root.left").result == '{"slept":true,"seconds":30}'  # type: ignore[union-attr]


def test_signals_are_buffered_until_a_wait_consumes_them() -> None:
    graph = sleep(5) >> (wait_for_signal("go") | "sig") >> "SELECT $sig.data"
    sim = Simulation(graph, lambda q: rows({"q": q}))
    sim.signal("go", '{"n":1}')  # before the wait exists
    sim.signal("go", '"second"')
    state = sim.run()
    assert state.status == "completed"
    assert sim.queries == ["SELECT '{\"n\":1}'"]
    assert len([e for e in sim.events if type(e).__name__ == "SignalArrived"]) == 2  # one wait took one


def test_one_signal_wakes_every_wait_on_its_name() -> None:
    sim = Simulation(join(wait_for_signal("go"), wait_for_signal("go"), wait_for_signal("other", 60)))
    sim.run()
    sim.signal("go", "1")
    state = sim.run()
    assert state.status == "completed"
    assert json.loads(state.output or "")[2] == {"signal_name": "other", "timed_out": True, "data": None}


def test_cancel_cascades_to_every_running_part() -> None:
    sim = Simulation(join(wait_for_signal("a"), sleep(100), loop(sleep(1))))
    sim.run(max_events=3, settle=False)
    sim.cancel("stop")
    assert sim.state.status == "cancelled" and sim.state.output == "cancelled: stop"
    assert sim.state.frames == {} and decide(sim.graph, sim.state).timers == ()


def test_substitution_errors_fail_the_step() -> None:
    graph = (Step("SELECT 1 WHERE false") | "empty") >> "SELECT $empty"
    state = Simulation(graph, lambda q: rows()).run()
    assert state.status == "failed" and "has no rows" in (state.output or "")


def test_system_variables_and_idempotency_keys() -> None:
    graph = loop(Step("SELECT '{sys_idempotency_key}', '{sys_instance_id}', '{sys_label}', '{colour}'"), "SELECT false")
    sim = Simulation(graph, lambda q: rows({"more": False}), variables={"colour": "red"})
    sim.run()
    assert sim.queries[0] == "SELECT 'abcd1234:root.left:1', 'abcd1234', 'test', 'red'"


def test_events_for_dead_frames_are_refused() -> None:
    sim = Simulation(Step("SELECT 1"))
    with pytest.raises(NondeterminismError):
        apply(sim.state, StepSucceeded(T0, "root.left#", "{}"))


GRAPHS = [
    (Step("SELECT 1") | "a") >> join("SELECT $a", race("SELECT 2", sleep(3))),
    loop(if_("SELECT done()", break_('{"ok":true}'), sleep(2) >> "SELECT 1")),
    join(wait_for_signal("go", 30), loop("SELECT 1", "SELECT more()")),
]


@pytest.mark.parametrize("graph", GRAPHS)
@settings(max_examples=30)
@given(choices=st.lists(st.integers(min_value=0, max_value=5), min_size=50, max_size=50))
def test_replaying_history_reproduces_the_checkpoint(graph: object, choices: list[int]) -> None:
    picks = iter(choices)
    counter = {"n": 0}

    def answer(query: str) -> str:
        counter["n"] += 1
        return rows({"v": counter["n"] > 6})

    sim = Simulation(graph, answer, cap=20)  # type: ignore[arg-type]
    sim.signal("go", '"now"')
    sim.run(order=lambda frames: next(picks, 0) % len(frames))
    replayed = sim.replayed()
    assert replayed.to_checkpoint() == sim.state.to_checkpoint()
    stored = json.loads(json.dumps(sim.state.to_checkpoint()))
    assert State.from_checkpoint(sim.graph, stored).to_checkpoint() == sim.state.to_checkpoint()


class Flaky:
    """Fails with `sqlstate` the first `failures` times, then answers."""

    def __init__(self, failures: int, sqlstate: str) -> None:
        self.failures, self.sqlstate, self.calls = failures, sqlstate, 0

    def __call__(self, query: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise StepFailure(self.sqlstate)
        return rows({"ok": True})


def run_flaky(graph: Step, answer: Flaky) -> Simulation:
    """Like Simulation.run, but failures carry a SQLSTATE in their detail (as the worker records them)."""
    from pgdurable.runtime.events import StepFailed, TimerFired

    sim = Simulation(graph, answer)
    while not sim.state.terminal:
        decision = decide(sim.graph, sim.state)
        if decision.steps:
            chosen = decision.steps[0]
            try:
                sim.feed(StepSucceeded(sim.now, chosen.frame, answer(chosen.payload)))
            except StepFailure as failure:
                detail = {"sqlstate": str(failure), "message": "could not serialize access"}
                sim.feed(StepFailed(sim.now, chosen.frame, "SQL execution failed: boom", detail))
        else:
            timer = min(decision.timers, key=lambda t: t.wake_at)
            sim.now = max(sim.now, timer.wake_at)
            sim.feed(TimerFired(sim.now, timer.frame))
    return sim


def test_a_retry_policy_runs_a_transient_failure_again_after_a_durable_backoff() -> None:
    sim = run_flaky(retry("UPDATE t SET n = n + 1", max_attempts=3, backoff_ms=1000, jitter_pct=0), Flaky(2, "40001"))
    assert sim.state.status == "completed"
    assert sim.now - T0 == timedelta(seconds=3)  # waits of 1 s, then 2 s
    assert sim.replayed().to_checkpoint() == sim.state.to_checkpoint()


def test_errors_a_policy_does_not_name_fail_at_once() -> None:
    sim = run_flaky(retry("INSERT INTO t VALUES (1)", max_attempts=5), Flaky(1, "23505"))
    assert sim.state.status == "failed" and sim.now == T0
    error = json.loads(sim.final("root").error or "")  # type: ignore[union-attr]
    assert error == {
        "sqlstate": "23505",
        "message": "could not serialize access",
        "detail": None,
        "hint": None,
        "node": "root",
        "attempt": 1,
    }


def test_attempts_are_bounded_and_the_last_error_is_recorded() -> None:
    sim = run_flaky(retry("SELECT 1", max_attempts=2, retry_on=["40"]), Flaky(5, "40P01"))
    assert sim.state.status == "failed"
    assert json.loads(sim.final("root").error or "")["attempt"] == 2  # type: ignore[union-attr]


def test_retry_waits_are_deterministic_with_jitter() -> None:
    first = run_flaky(retry("SELECT 1", max_attempts=4), Flaky(3, "40001"))
    second = run_flaky(retry("SELECT 1", max_attempts=4), Flaky(3, "40001"))
    assert first.now == second.now != T0


def test_a_start_deadline_ends_what_still_runs() -> None:
    from pgdurable.runtime.engine import begin
    from pgdurable.runtime.events import Started

    sim = Simulation(Step("SELECT 1"))
    started = Started(T0, "abcd1234", None, {}, 0.0, 100, deadline_seconds=30)
    sim.state = begin(join(sleep(10) >> sleep(100), wait_for_signal("never")), started).state
    sim.graph = join(sleep(10) >> sleep(100), wait_for_signal("never"))
    sim.events = [started]
    state = sim.run()
    assert state.status == "failed" and "deadline" in (state.output or "")
    assert sim.now - T0 == timedelta(seconds=30)
    assert state.frames == {}


def test_a_start_retry_policy_applies_to_steps_without_one() -> None:
    from pgdurable.runtime.engine import begin
    from pgdurable.runtime.events import Started, StepFailed, TimerFired

    graph = Step("UPDATE t SET n = 1")
    started = Started(
        T0,
        "abcd1234",
        None,
        {},
        0.0,
        100,
        retry={"max_attempts": 2, "backoff_ms": 500, "max_backoff_ms": 500, "multiplier": 1, "jitter_pct": 0},
    )
    state = begin(graph, started).state
    state = apply(state, StepFailed(T0, "root#", "SQL execution failed: deadlock", {"sqlstate": "40P01"}))
    assert state.status == "running" and decide(graph, state).timers[0].wake_at == T0 + timedelta(milliseconds=500)
    state = apply(state, TimerFired(T0 + timedelta(milliseconds=500), "root#"))
    assert decide(graph, state).steps[0].frame == "root#"
