"""Identical executions: every node type but HTTP, built in Python and started from Python, and written in SQL
and started with plain SQL, runs the same way (issue 4, "Identical executions"; design §7).

For each pair of instances this asserts:
- byte-identical graph JSON in `df.instances.graph` (and equal to the Python graph's `to_json()`);
- the same final status, output and result, and the result the case expects;
- the same multiset of (node path, node type, query, status, result, inferred status) from `df.nodes` and
  `df.instance_nodes`, node ids mapped to graph paths by walking the rows from `df.instances.root_node`;
- the same history, apart from ids, timestamps and the order of events from parallel branches: both histories
  are put in the lexicographic normal form of their trace, where two events commute only if their frames lie in
  different branches of the same JOIN or RACE activation;
- the same label, vars snapshot and `submitted_by`.

Side effects are kept per instance (rows keyed by `{sys_instance_id}`), so both runs start from the same state.
WAIT_SCHEDULE uses a cron that cannot fire during a test (`0 0 1 1 *`) as a RACE loser, so no test waits for a
minute boundary. Signals are sent once, after the instance shows that it waits for them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgdurable import (
    Client,
    Instance,
    Loop,
    Node,
    Parallel,
    Race,
    Step,
    break_,
    from_json,
    if_,
    if_rows,
    join,
    join3,
    loop,
    race,
    sleep,
    wait_for_schedule,
    wait_for_signal,
)
from pgdurable.dsl.validate import children

Conn = psycopg.Connection[tuple[Any, ...]]
TIMEOUT = 30.0


@dataclass(frozen=True)
class Case:
    id: str
    python: Node
    sql: str  # SQL DSL text, evaluated by PostgreSQL inside `SELECT df.start(<sql>, <label>)`
    expect: Any  # the parsed df.result() when completed, else the instance's output text
    status: str = "completed"
    vars: Mapping[str, str] = field(default_factory=dict)
    signal: tuple[str, str] | None = None  # (name, JSON payload) sent once the instance waits for it

    @property
    def label(self) -> str:
        return f"fe-{self.id}"


def rows(*items: dict[str, Any]) -> dict[str, Any]:
    return {"rows": list(items), "row_count": len(items)}


_INSERT_COUNTER = "INSERT INTO fe_counter (id, v) VALUES ('{sys_instance_id}', 0)"
_BUMP_COUNTER = "UPDATE fe_counter SET v = v + 1 WHERE id = '{sys_instance_id}' RETURNING v"
_UPSERT_COUNTER = (
    "INSERT INTO fe_counter AS f (id, v) VALUES ('{sys_instance_id}', 1)"
    " ON CONFLICT (id) DO UPDATE SET v = f.v + 1 RETURNING v"
)


def _q(text: str) -> str:
    """A SQL string literal (only to embed the long counter statements above; the rest is written out)."""
    return "'" + text.replace("'", "''") + "'"


CASES = [
    Case(
        "then_named_results_and_vars",
        (Step("SELECT 7 AS n, 'O''Brien' AS name") | "x")
        >> Step(
            "SELECT $x AS n, $x.name AS name, (SELECT count(*) FROM $x.*) AS row_count,"
            " '{greeting}' AS greeting, '{sys_label}' AS label"
        ),
        "'SELECT 7 AS n, ''O''''Brien'' AS name' |=> 'x'"
        " ~> 'SELECT $x AS n, $x.name AS name, (SELECT count(*) FROM $x.*) AS row_count,"
        " ''{greeting}'' AS greeting, ''{sys_label}'' AS label'",
        rows(
            {"n": 7, "name": "O'Brien", "row_count": 1, "greeting": "hello", "label": "fe-then_named_results_and_vars"}
        ),
        vars={"greeting": "hello"},
    ),
    Case(
        "join_merges_branch_names",
        join(Step("SELECT 1 AS a") | "a", Step("SELECT 2 AS b") | "b") >> "SELECT $a + $b AS total",
        "(('SELECT 1 AS a' |=> 'a') & ('SELECT 2 AS b' |=> 'b')) ~> 'SELECT $a + $b AS total'",
        rows({"total": 3}),
    ),
    Case(
        "join3",
        join3("SELECT 1 AS a", "SELECT 2 AS b", "SELECT 3 AS c"),
        "df.join3('SELECT 1 AS a', 'SELECT 2 AS b', 'SELECT 3 AS c')",
        [rows({"a": 1}), rows({"b": 2}), rows({"c": 3})],
    ),
    Case(
        "join_of_four_with_a_sleep",
        (join("SELECT 1 AS a", sleep(0), "SELECT 3 AS c", "SELECT 4 AS d") | "all")
        >> "SELECT $all::jsonb -> 1 AS slept, jsonb_array_length($all::jsonb) AS n",
        "(df.join_all('SELECT 1 AS a', df.sleep(0), 'SELECT 3 AS c', 'SELECT 4 AS d') |=> 'all')"
        " ~> 'SELECT $all::jsonb -> 1 AS slept, jsonb_array_length($all::jsonb) AS n'",
        rows({"slept": {"slept": True, "seconds": 0}, "n": 4}),
    ),
    Case(
        "join_with_a_failing_branch",
        join("SELECT 1 AS a", "SELECT 1/0 AS boom"),
        "'SELECT 1 AS a' & 'SELECT 1/0 AS boom'",
        "JOIN branch 2 failed: SQL execution failed: division by zero",
        status="failed",
    ),
    Case(
        "race_step_beats_sleep",
        race(Step("SELECT 'fast' AS winner") | "w", sleep(30)) >> "SELECT $w AS w",
        "(('SELECT ''fast'' AS winner' |=> 'w') | df.sleep(30)) ~> 'SELECT $w AS w'",
        rows({"w": "fast"}),
    ),
    Case(
        "race_step_beats_schedule",
        race(wait_for_schedule("0 0 1 1 *"), Step("SELECT 'quick' AS q")),
        "df.wait_for_schedule('0 0 1 1 *') | 'SELECT ''quick'' AS q'",
        rows({"q": "quick"}),
    ),
    Case(
        "race_loop_loses",
        race(loop(sleep(30) >> "SELECT 1 AS never"), Step("SELECT 'quick' AS q")),
        "(@> (df.sleep(30) ~> 'SELECT 1 AS never')) | 'SELECT ''quick'' AS q'",
        rows({"q": "quick"}),
    ),
    Case(
        "if_operators_truthy",
        if_("SELECT 2 > 1", "SELECT 'yes' AS answer", "SELECT 'no' AS answer"),
        "'SELECT 2 > 1' ?> 'SELECT ''yes'' AS answer' !> 'SELECT ''no'' AS answer'",
        rows({"answer": "yes"}),
    ),
    Case(
        "if_named_condition_falsy",
        if_(Step("SELECT 0 AS zero") | "z", "SELECT 'yes' AS answer", "SELECT 'no' AS answer, $z AS z"),
        "df.if('SELECT 0 AS zero' |=> 'z', 'SELECT ''yes'' AS answer', 'SELECT ''no'' AS answer, $z AS z')",
        rows({"answer": "no", "z": 0}),
    ),
    Case(
        "if_rows_both_ways",
        (Step("SELECT 1 AS id WHERE false") | "e")
        >> (Step("SELECT 42 AS id") | "f")
        >> if_rows("e", "SELECT 'rows' AS e", "SELECT 'empty' AS e")
        >> if_rows("f", "SELECT $f.id AS id", "SELECT 0 AS id"),
        "'SELECT 1 AS id WHERE false' |=> 'e' ~> ('SELECT 42 AS id' |=> 'f')"
        " ~> df.if_rows('e', 'SELECT ''rows'' AS e', 'SELECT ''empty'' AS e')"
        " ~> df.if_rows('f', 'SELECT $f.id AS id', 'SELECT 0 AS id')",
        rows({"id": 42}),
    ),
    Case(
        "loop_infinite_with_break",
        Step(_INSERT_COUNTER)
        >> (loop((Step(_BUMP_COUNTER) | "c") >> if_("SELECT $c >= 3", break_('{"done": true}'), sleep(0))) | "l")
        >> "SELECT $l::jsonb AS broke, $c AS c",
        f"{_q(_INSERT_COUNTER)} ~> (df.loop(({_q(_BUMP_COUNTER)} |=> 'c')"
        """ ~> df.if('SELECT $c >= 3', df.break('{"done": true}'), df.sleep(0))) |=> 'l')"""
        " ~> 'SELECT $l::jsonb AS broke, $c AS c'",
        rows({"broke": {"done": True}, "c": 3}),
    ),
    Case(
        "loop_do_while_at_root",
        loop(Step(_UPSERT_COUNTER) | "c", "SELECT $c < 3"),
        f"df.loop({_q(_UPSERT_COUNTER)} |=> 'c', 'SELECT $c < 3')",
        rows({"v": 3}),
    ),
    Case(
        "loop_break_through_join_and_if",
        loop(join(Step("SELECT 1 AS a"), if_("SELECT true", break_("out"), "SELECT 0 AS zero"))),
        "@> ('SELECT 1 AS a' & ('SELECT true' ?> df.break('out') !> 'SELECT 0 AS zero'))",
        "out",
    ),
    Case(
        "break_outside_a_loop",
        Step("SELECT 1 AS a") >> break_("stop"),
        "'SELECT 1 AS a' ~> df.break('stop')",
        "df.break() was called outside of a loop",
        status="failed",
    ),
    Case(
        "sleeps",
        Step("SELECT 1 AS a") >> sleep(1) >> (sleep(0) | "s") >> "SELECT 2 AS b, '$s' AS s",
        "'SELECT 1 AS a' ~> df.sleep(1) ~> (df.sleep(0) |=> 's') ~> 'SELECT 2 AS b, ''$s'' AS s'",
        rows({"b": 2, "s": "$s"}),  # a SLEEP's name binds nothing
    ),
    Case(
        "signal_sent_once",
        Step("SELECT 1 AS a")
        >> (wait_for_signal("go", 30) | "sig")
        >> "SELECT $sig.data AS payload, $sig.timed_out AS timed_out, $sig.signal_name AS name",
        "'SELECT 1 AS a' ~> (df.wait_for_signal('go', 30) |=> 'sig')"
        " ~> 'SELECT $sig.data AS payload, $sig.timed_out AS timed_out, $sig.signal_name AS name'",
        rows({"payload": '{"n":1}', "timed_out": False, "name": "go"}),
        signal=("go", '{"n": 1}'),
    ),
    Case(
        "signal_times_out",
        (wait_for_signal("never", 1) | "sig") >> "SELECT $sig.timed_out AS timed_out, $sig.data? AS data",
        "(df.wait_for_signal('never', 1) |=> 'sig') ~> 'SELECT $sig.timed_out AS timed_out, $sig.data? AS data'",
        rows({"timed_out": True, "data": None}),
    ),
]


# -- fixtures and helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def counter_table(df_db: Any) -> None:
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE fe_counter (id text PRIMARY KEY, v int NOT NULL)")
        conn.execute(sql.SQL("GRANT ALL ON fe_counter TO {}").format(sql.Identifier(df_db.app_role)))


@pytest.fixture
def no_vars(app: Conn) -> Iterator[None]:
    """The application role's df.vars are empty before and after each test."""
    app.execute("SELECT df.clearvars()")
    yield
    app.execute("SELECT df.clearvars()")


def _until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _start_with_sql(app: Conn, case: Case) -> str:
    """Plain SQL on the application role's connection: df.setvar for the vars, then df.start(<text>, <label>)."""
    for name, value in case.vars.items():
        app.execute("SELECT df.setvar(%s, %s)", (name, value))
    # no parameters: psycopg sends the text as is, so the DSL's own quotes and any `%` stay untouched
    row = app.execute(f"SELECT df.start({case.sql}, {_q(case.label)})".encode()).fetchone()
    app.execute("SELECT df.clearvars()")
    assert row is not None
    return str(row[0])


def _wait_for_signal_wait(admin: Conn, instance_id: str, name: str) -> None:
    """Until the instance shows that it waits for `name`, so the signal is delivered, not buffered."""

    def waiting() -> bool:
        row = admin.execute("SELECT waiting_for FROM df.instances WHERE id = %s", (instance_id,)).fetchone()
        return row is not None and f"signal '{name}'" in (row[0] or "")

    _until(waiting, f"instance {instance_id} to wait for signal {name!r}")


@dataclass(frozen=True)
class Run:
    """What one instance did, with ids and timestamps taken out."""

    instance: dict[str, Any]
    nodes: list[tuple[Any, ...]]
    history: list[dict[str, Any]]


def _graph_paths(graph: Node) -> dict[str, Node]:
    paths: dict[str, Node] = {}

    def walk(path: str, node: Node) -> None:
        paths[path] = node
        for step, child in children(node):
            walk(f"{path}.{step}", child)

    walk("root", graph)
    return paths


def _node_paths(root: str, rows: dict[str, tuple[Any, ...]]) -> dict[str, str]:
    """Node id -> graph path, walking left_node, right_node and the ids in IF/LOOP/JOIN configs (ref. §4.2)."""
    paths: dict[str, str] = {}
    pending = [("root", root)]
    while pending:
        path, node_id = pending.pop()
        assert node_id not in paths, f"node {node_id} reached twice"
        paths[node_id] = path
        node_type, query, left, right = rows[node_id][:4]
        if left is not None:
            pending.append((f"{path}.left", left))
        if right is not None:
            pending.append((f"{path}.right", right))
        if node_type in ("IF", "LOOP", "JOIN") and query:
            config = json.loads(query)
            if "condition_node" in config:
                pending.append((f"{path}.condition_node", config["condition_node"]))
            for index, extra in enumerate(config.get("extra_nodes", [])):
                pending.append((f"{path}.extra_nodes[{index}]", extra))
    assert set(paths) == set(rows), "every node row is reachable from the root"
    return paths


def _observe(admin: Conn, instance_id: str) -> Run:
    row = admin.execute(
        "SELECT label, vars, submitted_by::text, status, output, graph, root_node, df.result(id)"
        " FROM df.instances WHERE id = %s",
        (instance_id,),
    ).fetchone()
    assert row is not None
    label, vars_, submitted_by, status, output, graph, root, result = row
    inferred = dict(
        admin.execute("SELECT node_id, inferred_status FROM df.instance_nodes(%s)", (instance_id,)).fetchall()  # type: ignore[arg-type]
    )
    node_rows = {
        r[0]: r[1:]
        for r in admin.execute(
            "SELECT id, node_type, query, left_node, right_node, result_name, status, result::text"
            " FROM df.nodes WHERE instance_id = %s",
            (instance_id,),
        )
    }
    paths = _node_paths(root, node_rows)
    nodes = sorted(
        (
            paths[node_id],
            node_type,
            None if node_type in ("IF", "LOOP", "JOIN") else query,  # those hold child ids
            result_name,
            status_,
            node_result,
            inferred[node_id],
        )
        for node_id, (node_type, query, _, _, result_name, status_, node_result) in node_rows.items()
    )
    history = []
    for (text,) in admin.execute("SELECT event FROM df.history WHERE instance_id = %s ORDER BY seq", (instance_id,)):
        event = json.loads(text)
        del event["at"]
        if event["type"] == "Started":
            assert event.pop("instance_id") == instance_id
        history.append(event)
    instance = {
        "label": label,
        "vars": vars_,
        "submitted_by": submitted_by,
        "status": status,
        "output": output,
        "graph": graph,
        "result": None if result is None else json.loads(result),
    }
    return Run(instance, nodes, history)


def _split_frame(frame: str) -> tuple[list[str], tuple[int, ...]]:
    path, _, iterations = frame.partition("#")
    return path.split("."), tuple(int(i) for i in iterations.split(".") if i)


def _commute(a: dict[str, Any], b: dict[str, Any], paths: dict[str, Node]) -> bool:
    """Whether two events may be recorded in either order: their frames are in different branches of one
    activation of a JOIN or RACE (same iterations of the loops around it). Events without a frame (Started,
    SignalArrived, CancelRequested) commute with nothing."""
    if "frame" not in a or "frame" not in b:
        return False
    (steps_a, iterations_a), (steps_b, iterations_b) = _split_frame(a["frame"]), _split_frame(b["frame"])
    common = 0
    while common < min(len(steps_a), len(steps_b)) and steps_a[common] == steps_b[common]:
        common += 1
    if common in (len(steps_a), len(steps_b)):  # the same node, or one inside the other
        return False
    fork = ".".join(steps_a[:common])
    if not isinstance(paths[fork], Parallel | Race):
        return False
    loops = sum(isinstance(paths[".".join(steps_a[:i])], Loop) for i in range(1, common))
    return iterations_a[:loops] == iterations_b[:loops]


def canonical_history(events: list[dict[str, Any]], graph: Node) -> list[dict[str, Any]]:
    """The lexicographic normal form of a history's trace: repeatedly take the smallest event (by its JSON)
    among those that commute with every event still before them. Equal for histories that differ only in the
    order of events from parallel branches."""
    paths = _graph_paths(graph)
    pending = list(events)
    out: list[dict[str, Any]] = []
    while pending:
        ready = [i for i, e in enumerate(pending) if all(_commute(pending[j], e, paths) for j in range(i))]
        best = min(ready, key=lambda i: json.dumps(pending[i], sort_keys=True))
        out.append(pending.pop(best))
    return out


# -- the tests -------------------------------------------------------------------------------------------


def test_the_canonical_history_forgives_only_parallel_order() -> None:
    """The comparison is not vacuous: branch order is forgiven, sequential order is not."""
    graph = join("SELECT 1", "SELECT 2") >> "SELECT 3"
    left, right, after = (
        {"type": "StepSucceeded", "frame": f, "result": "r"}
        for f in ("root.left.left#", "root.left.right#", "root.right#")
    )
    assert canonical_history([left, right, after], graph) == canonical_history([right, left, after], graph)
    assert canonical_history([left, after, right], graph) != canonical_history([left, right, after], graph)
    looped = loop(join("SELECT 1", "SELECT 2"))
    first = {"type": "StepSucceeded", "frame": "root.left.right#1", "result": "r"}
    second = {"type": "StepSucceeded", "frame": "root.left.left#2", "result": "r"}
    assert canonical_history([first, second], looped) != canonical_history([second, first], looped)


@pytest.mark.usefixtures("worker", "counter_table", "no_vars")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_both_front_ends_run_identically(case: Case, client: Client, app: Conn, admin: Conn, df_db: Any) -> None:
    from_python: Instance = client.start(case.python, label=case.label, vars=case.vars or None)
    from_sql = _start_with_sql(app, case)
    if case.signal is not None:
        name, payload = case.signal
        _wait_for_signal_wait(admin, from_python.id, name)
        from_python.signal(name, payload)
        _wait_for_signal_wait(admin, from_sql, name)
        assert app.execute("SELECT df.signal(%s, %s, %s)", (from_sql, name, payload)).fetchone() is not None
    assert from_python.wait(timeout=TIMEOUT) == case.status
    assert client.wait(from_sql, timeout=TIMEOUT) == case.status

    python_run, sql_run = _observe(admin, from_python.id), _observe(admin, from_sql)

    # the same graph, byte for byte, from both front ends
    assert python_run.instance["graph"] == sql_run.instance["graph"] == case.python.to_json()
    # what the case expects, so that two equally wrong runs do not pass
    if case.status == "completed":
        assert python_run.instance["result"] == case.expect
    else:
        assert python_run.instance["output"] == case.expect
    assert python_run.instance == sql_run.instance
    assert python_run.instance["label"] == case.label
    assert python_run.instance["vars"] == dict(case.vars)
    assert python_run.instance["submitted_by"] == df_db.app_role
    assert python_run.nodes == sql_run.nodes
    graph = from_json(python_run.instance["graph"])
    assert canonical_history(python_run.history, graph) == canonical_history(sql_run.history, graph)
    assert python_run.history[0]["type"] == "Started"
