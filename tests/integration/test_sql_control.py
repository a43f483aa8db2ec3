"""df.start and validation, the persisted rows, vars, status/cancel/signal, listing, inference, explain, grants."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[tuple[object, ...]]


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def error_of(conn: Conn, query: str, params: Any = None) -> str:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(query, params)
    return str(info.value.diag.message_primary)


INVALID = [
    (
        '{"node_type":"NOT_A_NODE"}',
        "root: Unknown node_type 'NOT_A_NODE'. Valid types: SQL, THEN, IF, JOIN, LOOP, "
        "BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL",
    ),
    (
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"a"}}',
        "root: THEN requires left_node and right_node",
    ),
    (
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"a"},"right_node":7}',
        "root.right: expected a JSON object",
    ),
    ('{"node_type":"SQL","query":"a","x":1}', "root: unknown key 'x'"),
    ('{"node_type":"SQL"}', "root: SQL requires a query string"),
    ('{"node_type":"SQL","query":"a","left_node":{}}', "root: SQL does not take left_node"),
    (
        '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"a"},"right_node":{}}',
        "root: LOOP does not take right_node",
    ),
    ('{"node_type":"LOOP"}', "root: LOOP requires left_node"),
    (
        '{"node_type":"RACE","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"},'
        '"condition_node":{"node_type":"SQL","query":"c"}}',
        "root: condition_node is only allowed on IF and LOOP nodes",
    ),
    (
        '{"node_type":"RACE","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"},'
        '"extra_nodes":[]}',
        "root: extra_nodes is only allowed on JOIN nodes",
    ),
    (
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"},'
        '"extra_nodes":{}}',
        "root: extra_nodes must be an array",
    ),
    (
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"},'
        '"extra_nodes":[{"node_type":"SQL","query":"c"},{"node_type":"X"}]}',
        "root.extra_nodes[1]: Unknown node_type 'X'",
    ),
    (
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"}}',
        "root: IF requires exactly one of condition_node or an if_rows query",
    ),
    (
        '{"node_type":"THEN","query":"x","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL",'
        '"query":"b"}}',
        "root: THEN does not take a query",
    ),
    (
        '{"node_type":"BREAK","query":"{\\"break_value\\":null,\\"condition_node\\":\\"x\\"}"}',
        "root: legacy condition_node/extra_nodes inside query is not supported",
    ),
    (
        '{"node_type":"SLEEP","query":"1.5"}',
        'root: invalid SLEEP config: expected a whole number of seconds, such as "60"',
    ),
    (
        '{"node_type":"SIGNAL","query":"{\\"signal_name\\":\\"a\\"}"}',
        "root: invalid SIGNAL config: missing key 'timeout_seconds'",
    ),
    (
        '{"node_type":"WAIT_SCHEDULE","query":"{\\"cron_expr\\":\\"61 * * * *\\"}"}',
        "root: df.wait_for_schedule: invalid cron expression '61 * * * *': minute value '61' is out of range 0-59",
    ),
    (
        '{"node_type":"HTTP","query":"{\\"url\\":\\"https://x\\",\\"method\\":\\"GET\\",\\"body\\":null,'
        '\\"headers\\":{\\"k\\":1},\\"timeout_seconds\\":5}"}',
        "root: header 'k' must have a string value",
    ),
    (
        '{"node_type":"SQL","query":"a","result_name":"a b"}',
        "root: result name 'a b' is not a valid identifier (must match ^[A-Za-z_][A-Za-z0-9_]*$)",
    ),
]


@pytest.mark.parametrize(("graph", "message"), INVALID, ids=[m for _, m in INVALID])
def test_validation_messages(app: Conn, graph: str, message: str) -> None:
    assert error_of(app, "SELECT df.start(%s)", (graph,)).startswith("Invalid durable function: " + message)
    assert one(app, "SELECT df.explain(%s)", (graph,)).startswith("Invalid durable function graph: " + message)


def test_limits(app: Conn) -> None:
    deep = '{"node_type":"SQL","query":"x"}'
    for _ in range(256):
        deep = '{"node_type":"LOOP","left_node":' + deep + "}"
    path = "root" + ".left" * 256
    assert error_of(app, "SELECT df.start(%s)", (deep,)) == (
        f"Invalid durable function: {path}: Graph exceeds maximum nesting depth of 256"
    )
    wide = json.dumps(
        {
            "node_type": "JOIN",
            "left_node": {"node_type": "SQL", "query": "a"},
            "right_node": {"node_type": "SQL", "query": "b"},
            "extra_nodes": [{"node_type": "SQL", "query": "c"}] * 9999,
        }
    )
    assert error_of(app, "SELECT df.start(%s)", (wide,)) == (
        "Invalid durable function: root: Graph exceeds maximum of 10000 nodes"
    )


def test_start_persists_rows(app: Conn, df_db: Any) -> None:
    graph = one(
        app,
        "SELECT ('SELECT 1' |=> 'a' & 'SELECT 2' & 'SELECT 3') ~> df.if('c', 't', 'e') ~> "
        "df.join3('x', 'y', 'z') ~> df.loop('b', 'w')",
    )
    app.execute("SELECT df.setvar('color', 'red')")
    instance = one(app, "SELECT df.start(%s, 'persist')", (graph,))
    assert len(instance) == 8 and all(c in "0123456789abcdef" for c in instance)
    row = app.execute(
        "SELECT label, status, graph, graph_format, vars, submitted_by::text, database FROM df.instances WHERE id = %s",
        (instance,),
    ).fetchone()
    assert row == ("persist", "pending", graph, 1, {"color": "red"}, df_db.app_role, None)
    nodes = {
        r[0]: r[1:]
        for r in app.execute(
            "SELECT id, node_type, query, left_node, right_node, status FROM df.nodes WHERE instance_id = %s",
            (instance,),
        )
    }
    assert len(nodes) == 19 and {n[4] for n in nodes.values()} == {"pending"}
    ifs = [n for n in nodes.values() if n[0] == "IF"]
    assert json.loads(ifs[0][1])["condition_node"] in nodes
    join3 = [n for n in nodes.values() if n[0] == "JOIN" and n[1] is not None]
    assert [len(json.loads(j[1])["extra_nodes"]) for j in join3] == [1]
    loops = [n for n in nodes.values() if n[0] == "LOOP"]
    assert json.loads(loops[0][1]) == {"condition_node": json.loads(loops[0][1])["condition_node"]}
    # the canonical snapshot round-trips through explain of the live instance
    assert one(app, "SELECT df.explain(%s)", (instance,)).startswith(
        f"Instance: {instance} (persist)\nStatus:   ○ pending\n"
    )
    app.execute("SELECT df.clearvars()")


def test_start_checks(app: Conn, admin: Conn) -> None:
    assert (
        error_of(app, "SELECT df.start('SELECT 1', 'x', NULL, 'detached')")
        == "invalid transaction_mode \"detached\" for df.start(): expected 'caller' or 'new'"
    )
    assert one(app, "SELECT length(df.start('SELECT 1', 'x', NULL))") == 8
    assert one(app, "SELECT length(df.start('SELECT 1', transaction_mode => 'CALLER'))") == 8
    assert error_of(app, "SELECT df.start('SELECT 1', database => 'no_such_db_xyz')") == (
        'database "no_such_db_xyz" does not exist'
    )
    assert error_of(admin, "SELECT df.start('SELECT 1')").endswith("superuser instances are disabled")
    assert error_of(app, "SELECT df.start('SELECT 1', transaction_mode => 'new')") == (
        "df.start: transaction_mode 'new' is not configured"
    )
    assert "unknown option 'lable'" in error_of(app, "SELECT df.start_with('SELECT 1', '{\"lable\": \"x\"}')")
    instance = one(app, "SELECT df.start_with('SELECT 1', '{\"label\": \"with\"}')")
    assert one(app, "SELECT label FROM df.instances WHERE id = %s", (instance,)) == "with"


def test_rolled_back_start_leaves_nothing(app: Conn) -> None:
    with app.transaction(force_rollback=True):
        app.execute("SELECT df.start('SELECT 1', 'rolled-back')")
    assert one(app, "SELECT count(*) FROM df.instances WHERE label = 'rolled-back'") == 0
    assert (
        one(
            app,
            "SELECT count(*) FROM df.nodes n WHERE NOT EXISTS "
            "(SELECT 1 FROM df.instances i WHERE i.id = n.instance_id)",
        )
        == 0
    )


def test_start_notifies_workers(app: Conn, df_db: Any) -> None:
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as listener:
        listener.execute("LISTEN df_work")
        instance = one(app, "SELECT df.start('SELECT 1')")
        note = next(listener.notifies(timeout=10, stop_after=1))
    assert (note.channel, note.payload) == ("df_work", f"start {instance}")


def test_transaction_mode_new_survives_rollback(admin: Conn, app: Conn, df_db: Any) -> None:
    conninfo = psycopg.conninfo.make_conninfo(df_db.admin_dsn)
    admin.execute(
        "UPDATE df.settings SET value = to_jsonb(%s::text) WHERE key = 'new_transaction_conninfo'", (conninfo,)
    )
    try:
        app.execute("SELECT df.setvar('mode', 'new')")
        with app.transaction(force_rollback=True):
            instance = one(app, "SELECT df.start('SELECT 1', 'new-mode', transaction_mode => 'new')")
        assert (
            one(
                app,
                "SELECT label || ' ' || status || ' ' || (vars->>'mode') FROM df.instances WHERE id = %s",
                (instance,),
            )
            == "new-mode pending new"
        )
        assert one(app, "SELECT submitted_by::text FROM df.instances WHERE id = %s", (instance,)) == df_db.app_role
        assert one(app, "SELECT count(*) FROM df.nodes WHERE instance_id = %s", (instance,)) == 1
    finally:
        admin.execute("UPDATE df.settings SET value = 'null' WHERE key = 'new_transaction_conninfo'")
        app.execute("SELECT df.clearvars()")


def test_vars(app: Conn) -> None:
    assert one(app, "SELECT df.setvar('a', '1')") == "OK"
    assert one(app, "SELECT df.setvar('a', '2')") == "OK"
    assert one(app, "SELECT df.getvar('a')") == "2"
    assert one(app, "SELECT df.unsetvar('a')") == "OK"
    assert one(app, "SELECT df.getvar('a')") is None
    app.execute("SELECT df.setvar('b', '1')")
    assert one(app, "SELECT df.clearvars()") == "OK"
    assert one(app, "SELECT count(*) FROM df.vars") == 0
    with app.transaction(force_rollback=True):
        app.execute("SET LOCAL pgdurable.in_workflow = on")
        assert error_of(app, "SELECT df.setvar('a', '1')") == "df.setvar cannot be called inside a workflow"
    with app.transaction(force_rollback=True):
        app.execute("SET LOCAL pgdurable.in_workflow = on")
        assert error_of(app, "SELECT df.await_instance('x')") == "df.await_instance cannot be called inside a workflow"


def test_cancel_status_signal(app: Conn) -> None:
    instance = one(app, "SELECT df.start(df.wait_for_signal('go'), 'sig')")
    assert one(app, "SELECT df.signal(%s, 'go', '{\"a\": 1}')", (instance,)) == "OK"
    assert one(app, "SELECT df.signal(%s, 'go', 'plain')", (instance,)) == "OK"
    assert app.execute("SELECT payload FROM df.signals WHERE instance_id = %s ORDER BY id", (instance,)).fetchall() == [
        ({"a": 1},),
        ("plain",),
    ]
    assert error_of(app, "SELECT df.signal('', 'go')") == "df.signal: instance_id must not be empty"
    assert error_of(app, "SELECT df.signal('00000000', 'go')") == "Instance not found or access denied: 00000000"
    assert error_of(app, "SELECT df.cancel('00000000')") == "Instance not found or access denied: 00000000"
    assert one(app, "SELECT df.status('00000000')") is None
    assert one(app, "SELECT df.result(%s)", (instance,)) is None
    with app.transaction():
        assert one(app, "SELECT df.cancel(%s, 'test')", (instance,)) == f"Instance {instance} cancelled: test"
        assert one(app, "SELECT df.status(%s)", (instance,)) == "cancelled"
        assert (
            one(app, "SELECT l.status FROM df.list_instances() l WHERE l.instance_id = %s", (instance,)) == "cancelled"
        )
        assert one(app, "SELECT i.status FROM df.instance_info(%s) i", (instance,)) == "cancelled"
        assert one(app, "SELECT i.output FROM df.instance_info(%s) i", (instance,)) == "cancelled: test"
    # idempotent on a terminal instance; a signal to it is refused without raising
    assert one(app, "SELECT df.cancel(%s, 'again')", (instance,)) == f"Instance {instance} cancelled: again"
    assert one(app, "SELECT count(*) FROM df.cancel_requests WHERE instance_id = %s", (instance,)) == 1
    assert (
        one(app, "SELECT df.signal(%s, 'go')", (instance,))
        == f"Failed to send signal: instance {instance} is cancelled"
    )
    assert one(app, "SELECT df.await_instance(%s)", (instance,)) == "cancelled"
    assert error_of(app, "SELECT df.await_instance('00000000')") == "Instance not found: 00000000"
    assert error_of(app, "SELECT df.await_instance(%s, 0)", (instance,)).startswith(
        "df.await_instance: timeout_seconds"
    )


def test_users_cannot_update_status_or_forge_identity(app: Conn, admin: Conn) -> None:
    instance = one(app, "SELECT df.start('SELECT 1')")
    assert "permission denied" in error_of(
        app, "UPDATE df.instances SET status = 'completed' WHERE id = %s", (instance,)
    )
    assert "row-level security" in error_of(
        app, "INSERT INTO df.vars (name, value, owner) VALUES ('x', 'y', 'postgres'::regrole)"
    )
    other = one(admin, "SELECT count(*) FROM df.instances")
    assert other >= one(app, "SELECT count(*) FROM df.instances")


def test_list_instances_pagination(app: Conn) -> None:
    ids = [one(app, "SELECT df.start('SELECT 1', 'page')") for _ in range(5)]
    full = [r[0] for r in app.execute("SELECT instance_id FROM df.list_instances(NULL, 100, 'page')")]
    assert sorted(full) == sorted(ids)
    pages, cursor = [], None
    while True:
        rows = app.execute(
            "SELECT instance_id, next_cursor FROM df.list_instances(NULL, 2, 'page', %s)", (cursor,)
        ).fetchall()
        pages.append([r[0] for r in rows])
        assert len({r[1] for r in rows}) == 1
        cursor = rows[0][1]
        if cursor is None:
            break
    assert pages == [full[0:2], full[2:4], full[4:5]]
    assert (
        error_of(app, "SELECT * FROM df.list_instances(NULL, 2, 'page', 'zz')")
        == "df.list_instances: invalid after_cursor"
    )
    assert error_of(app, "SELECT * FROM df.list_instances(NULL, 2, 'page', encode('v1|nope|abc', 'hex'))") == (
        "df.list_instances: invalid after_cursor"
    )
    assert error_of(app, "SELECT * FROM df.list_instances(NULL, 0)").startswith(
        "df.list_instances: limit_count must be >= 1"
    )
    assert "list_instances_max_limit" in error_of(app, "SELECT * FROM df.list_instances(NULL, 1001)")
    assert one(app, "SELECT count(*) FROM df.list_instances('completed', 100, 'page')") == 0
    assert one(app, "SELECT count(*) FROM df.list_instances('pending', 100, 'page')") == 5


def test_instance_nodes_inference(app: Conn, admin: Conn) -> None:
    instance = one(app, "SELECT df.start(df.if('c', 't', 'e') ~> ('a' | 'b'))")
    rows = app.execute(
        "SELECT node_type, status, inferred_status, inferred_status_from_ancestor_id FROM df.instance_nodes(%s)",
        (instance,),
    ).fetchall()
    assert len(rows) == 8 and {r[1:] for r in rows} == {("pending", "pending", None)}
    assert len(app.execute("SELECT * FROM df.instance_nodes(%s, 1)", (instance,)).fetchall()) == 8
    # what the worker will write: the condition took the then branch, so else is skipped
    nodes = dict(
        app.execute("SELECT query, id FROM df.nodes WHERE instance_id = %s AND node_type = 'SQL'", (instance,))
    )
    if_id = one(app, "SELECT id FROM df.nodes WHERE instance_id = %s AND node_type = 'IF'", (instance,))
    admin.execute(
        "UPDATE df.nodes SET status = 'completed', result = '{}',"
        " status_details = jsonb_build_object('execution_id', %s::text)"
        " WHERE instance_id = %s AND id = ANY(%s)",
        (f"{instance}::1", instance, [if_id, nodes["c"], nodes["t"]]),
    )
    inferred = dict(app.execute("SELECT node_id, inferred_status FROM df.instance_nodes(%s)", (instance,)).fetchall())
    assert inferred[nodes["e"]] == "skipped" and inferred[nodes["t"]] == "completed"
    assert inferred[nodes["a"]] == "pending"
    assert "✓ then:" in one(app, "SELECT df.explain(%s)", (instance,))
    assert "└─SQL: e ⊘" in one(app, "SELECT df.explain(%s)", (instance,))


def test_executions_and_metrics(app: Conn, admin: Conn) -> None:
    instance = one(app, "SELECT df.start('SELECT 1')")
    assert app.execute("SELECT execution_id, status FROM df.instance_executions(%s)", (instance,)).fetchall() == [
        (1, "Pending")
    ]
    assert "permission denied" in error_of(app, "SELECT * FROM df.metrics()")
    assert one(admin, "SELECT total_instances FROM df.metrics()") >= 1


EXPLAINS = [
    (
        "'SELECT 1' |=> 'a' ~> ('SELECT 2' |=> 'b') ~> df.if('SELECT $a > 0','SELECT ''yes''','SELECT ''no''')",
        "SQL: SELECT 1 |=> 'a'         \n→ SQL: SELECT 2 |=> 'b'       \n→ IF                          \n"
        "    ? condition:              \n      └─SQL: SELECT $a > 0    \n    ✓ then:                   \n"
        "      └─SQL: SELECT 'yes'     \n    ✗ else:                   \n      └─SQL: SELECT 'no'      ",
    ),
    (
        "('SELECT 1 AS x' |=> 'l' & 'SELECT 2') ~> (df.wait_for_signal('go',60) | df.sleep(30))",
        "JOIN (2)                              \n    ║ branch 1:                       \n"
        "      ├─SQL: SELECT 1 AS x |=> 'l'    \n    ║ branch 2:                       \n"
        "      └─SQL: SELECT 2                 \n→ RACE                                \n"
        "    ║ branch 1:                       \n      ├─SIGNAL 'go' (60s)             \n"
        "    ║ branch 2:                       \n      └─SLEEP 30s                     ",
    ),
    (
        "df.loop('SELECT step()', 'SELECT count(*) > 0 FROM q')",
        "LOOP (while)                               \n    ↻ body:                                \n"
        "      └─SQL: SELECT step()                 \n    ? while:                               \n"
        "      └─SQL: SELECT count(*) > 0 FROM q    ",
    ),
    ("'SELECT 1'", "SQL: SELECT 1    "),
    (
        "df.break(repeat('b', 30)) & df.wait_for_schedule('* * * * *')",
        "\n".join(
            line.ljust(40)
            for line in [
                "JOIN (2)",
                "    ║ branch 1:",
                "      ├─BREAK 'bbbbbbbbbbbbbbbbb...'",
                "    ║ branch 2:",
                "      └─WAIT '* * * * *'",
            ]
        ),
    ),
]


@pytest.mark.parametrize(("expr", "text"), EXPLAINS, ids=[e[0][:30] for e in EXPLAINS])
def test_explain_exact(app: Conn, expr: str, text: str) -> None:
    assert one(app, f"SELECT df.explain({expr})") == text


def test_explain_truncation_and_inputs(app: Conn) -> None:
    # 46 bytes, then a 2-byte character that would end at byte 48 > 47: cut before it
    label = "SELECT '" + "x" * 38 + "é" + "y" * 20 + "'"
    assert one(app, "SELECT df.explain(%s)", (label,)).split("\n")[0].rstrip() == "SQL: SELECT '" + "x" * 38 + "..."
    label = "SELECT '" + "x" * 37 + "é" + "y" * 20 + "'"
    assert one(app, "SELECT df.explain(%s)", (label,)).split("\n")[0].rstrip() == "SQL: SELECT '" + "x" * 37 + "é..."
    assert one(app, "SELECT df.explain($$ 'SELECT 1' ~> 'SELECT 2' $$)") == "SQL: SELECT 1      \n→ SQL: SELECT 2    "
    assert one(app, "SELECT df.explain('hello world')").startswith("Cannot explain input:")
    assert one(app, "SELECT df.explain('df.nope()')").startswith("Failed to evaluate expression: ")
    assert one(app, "SELECT df.explain('abcdef12')") == "Instance 'abcdef12' not found"
