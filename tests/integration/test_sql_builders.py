"""The SQL DSL: builders, auto-wrapping, operators and their grouping (reference §1.1, §3, §4.1)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[tuple[object, ...]]


def build(conn: Conn, expr: str) -> str:
    row = conn.execute(f"SELECT {expr}".encode()).fetchone()
    assert row is not None
    return str(row[0])


def error_of(conn: Conn, expr: str) -> str:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(f"SELECT {expr}".encode())
    return str(info.value.diag.message_primary)


# Reference §4.1, byte for byte.
GOLDEN = [
    (
        "'SELECT 1 AS a' |=> 'a' ~> 'SELECT $a + 1'",
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1 AS a","result_name":"a"},'
        '"right_node":{"node_type":"SQL","query":"SELECT $a + 1"}}',
    ),
    (
        "'SELECT 1 AS a' & 'SELECT 2 AS b'",
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1 AS a"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2 AS b"}}',
    ),
    (
        "df.join3('SELECT 1','SELECT 2','SELECT 3')",
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL",'
        '"query":"SELECT 2"},"extra_nodes":[{"node_type":"SQL","query":"SELECT 3"}]}',
    ),
    (
        "'SELECT pg_sleep(5)' | df.sleep(2)",
        '{"node_type":"RACE","left_node":{"node_type":"SQL","query":"SELECT pg_sleep(5)"},'
        '"right_node":{"node_type":"SLEEP","query":"2"}}',
    ),
    (
        "df.if('SELECT count(*) > 0 FROM q', 'SELECT ''yes''', 'SELECT ''no''')",
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT \'yes\'"},"right_node":{"node_type":"SQL",'
        '"query":"SELECT \'no\'"},"condition_node":{"node_type":"SQL","query":"SELECT count(*) > 0 FROM q"}}',
    ),
    (
        "'SELECT count(*) > 0 FROM q' ?> 'SELECT ''yes''' !> 'SELECT ''no'''",
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT \'yes\'"},"right_node":{"node_type":"SQL",'
        '"query":"SELECT \'no\'"},"condition_node":{"node_type":"SQL","query":"SELECT count(*) > 0 FROM q"}}',
    ),
    (
        "df.if_rows('doc', 'SELECT $doc.id', 'SELECT 0')",
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT $doc.id"},"right_node":{"node_type":"SQL",'
        '"query":"SELECT 0"},"query":"{\\"condition_type\\":\\"result_has_rows\\",\\"result_name\\":\\"doc\\"}"}',
    ),
    (
        "df.loop('UPDATE c SET v = v + 1 RETURNING v' ~> df.if('SELECT v >= 3 FROM c', df.break('{\"done\":true}'),"
        " df.sleep(1)))",
        '{"node_type":"LOOP","left_node":{"node_type":"THEN","left_node":{"node_type":"SQL","query":"UPDATE c SET v = v'
        ' + 1 RETURNING v"},"right_node":{"node_type":"IF","left_node":{"node_type":"BREAK","query":"{\\"break_value\\"'
        ':\\"{\\\\\\"done\\\\\\":true}\\"}"},"right_node":{"node_type":"SLEEP","query":"1"},"condition_node":'
        '{"node_type":"SQL","query":"SELECT v >= 3 FROM c"}}}}',
    ),
    (
        "df.loop('SELECT step()', 'SELECT count(*) > 0 FROM q')",
        '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT step()"},"condition_node":'
        '{"node_type":"SQL","query":"SELECT count(*) > 0 FROM q"}}',
    ),
    ("df.break()", '{"node_type":"BREAK","query":"{\\"break_value\\":null}"}'),
    (
        "df.wait_for_schedule('*/5 * * * *')",
        '{"node_type":"WAIT_SCHEDULE","query":"{\\"cron_expr\\":\\"*/5 * * * *\\"}"}',
    ),
    (
        "df.wait_for_signal('approval', 3600) |=> 'sig'",
        '{"node_type":"SIGNAL","query":"{\\"signal_name\\":\\"approval\\",\\"timeout_seconds\\":3600}",'
        '"result_name":"sig"}',
    ),
    (
        "df.wait_for_signal('approval')",
        '{"node_type":"SIGNAL","query":"{\\"signal_name\\":\\"approval\\",\\"timeout_seconds\\":null}"}',
    ),
    ("df.sleep(60)", '{"node_type":"SLEEP","query":"60"}'),
    ("df.sql('SELECT 1')", '{"node_type":"SQL","query":"SELECT 1"}'),
    (
        "df.seq('a', 'b')",
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"}}',
    ),
    ("df.as(df.sql('SELECT 1'), 'x')", '{"node_type":"SQL","query":"SELECT 1","result_name":"x"}'),
    ("('SELECT 1' |=> 'x') |=> 'y'", '{"node_type":"SQL","query":"SELECT 1","result_name":"y"}'),
    (
        "df.join_all('a', 'b', 'c', 'd')",
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"},'
        '"extra_nodes":[{"node_type":"SQL","query":"c"},{"node_type":"SQL","query":"d"}]}',
    ),
    (
        "df.join_all('a', 'b')",
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"}}',
    ),
    ("@> 'SELECT 1'", '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"}}'),
    # strings are escaped as to_json(text) does: control characters, quotes, backslashes; UTF-8 kept
    ("df.sql(E'a\\\"b\\\\c\\n\\t\\u0001é→')", '{"node_type":"SQL","query":"a\\"b\\\\c\\n\\t\\u0001é→"}'),
]


@pytest.mark.parametrize(("expr", "expected"), GOLDEN, ids=[g[0][:40] for g in GOLDEN])
def test_golden_json(app: Conn, expr: str, expected: str) -> None:
    assert build(app, expr) == expected


def test_http_builders(admin: Conn) -> None:
    admin.execute("BEGIN")
    try:
        admin.execute("UPDATE df.settings SET value = 'true' WHERE key = 'http_enabled'")
        assert build(
            admin, "df.http('https://x.blob.core.windows.net/c/b','get',NULL,'{\"x-ms-version\":\"2021-08-06\"}')"
        ) == (
            '{"node_type":"HTTP","query":"{\\"url\\":\\"https://x.blob.core.windows.net/c/b\\",\\"method\\":\\"GET\\",'
            '\\"body\\":null,\\"headers\\":{\\"x-ms-version\\":\\"2021-08-06\\"},\\"timeout_seconds\\":30}"}'
        )
        # jsonb arguments are rendered compactly in jsonb's key order (shorter keys first)
        assert build(
            admin,
            'df.http_multipart(\'https://a/b\', \'put\', \'[{"name":"f","data_b64":"x","n":[1,2.50,true,null]}]\','
            ' \'{"bb":"1","a":"2"}\', 5)',
        ) == (
            '{"node_type":"HTTP_MULTIPART","query":"{\\"url\\":\\"https://a/b\\",\\"method\\":\\"PUT\\",\\"parts\\":'
            '[{\\"n\\":[1,2.50,true,null],\\"name\\":\\"f\\",\\"data_b64\\":\\"x\\"}],\\"headers\\":{\\"a\\":\\"2\\",'
            '\\"bb\\":\\"1\\"},\\"timeout_seconds\\":5}"}'
        )
        assert "{url}" in build(admin, "df.http('{url}', 'GET')")
        for expr, message in [
            ("df.http('ftp://x', 'GET')", "df.http: URL scheme must be http or https: ftp://x"),
            ("df.http('$resp.next', 'GET')", "df.http: URL scheme must be http or https: $resp.next"),
            (
                "df.http('https://x', 'trace')",
                "df.http: unsupported method 'TRACE' (expected GET, POST, PUT, DELETE or PATCH)",
            ),
            ("df.http('https://x', 'GET', timeout_seconds => 0)", "df.http: timeout_seconds must be > 0, got 0"),
            ("df.http('https://x', headers => '[1]')", "df.http: headers must be a JSON object"),
            ("df.http('https://x', headers => '{\"k\":1}')", "df.http: header 'k' must have a string value"),
            (
                "df.http_multipart('https://x', 'GET', '[{}]')",
                "df.http_multipart: unsupported method 'GET' (expected POST, PUT or PATCH)",
            ),
            ("df.http_multipart('https://x', 'POST', '[]')", "df.http_multipart: parts must be a non-empty JSON array"),
            ("df.http_multipart('https://x')", "df.http_multipart: parts must be a non-empty JSON array"),
        ]:
            admin.execute("SAVEPOINT s")
            assert error_of(admin, expr) == message, expr
            admin.execute("ROLLBACK TO SAVEPOINT s")
    finally:
        admin.execute("ROLLBACK")


def test_http_is_disabled_by_default_and_not_granted(app: Conn, admin: Conn) -> None:
    assert error_of(admin, "df.http('https://example.com/path', 'GET')") == (
        "df.http() is disabled: outbound HTTP requests are disabled in df.settings (set http_enabled)"
    )
    assert error_of(admin, "df.http_multipart('https://x', 'POST', '[{}]')").startswith(
        "df.http_multipart() is disabled"
    )
    assert "permission denied" in error_of(app, "df.http('https://example.com/path', 'GET')")


def test_builder_errors(app: Conn) -> None:
    for expr, message in [
        (
            "'SELECT 1' |=> 'has space'",
            "df.as: result name 'has space' is not a valid identifier (must match ^[A-Za-z_][A-Za-z0-9_]*$)",
        ),
        (
            "df.as('SELECT 1', '1x')",
            "df.as: result name '1x' is not a valid identifier (must match ^[A-Za-z_][A-Za-z0-9_]*$)",
        ),
        ("df.sleep(-1)", "df.sleep: seconds must be >= 0, got -1"),
        ("df.wait_for_signal('')", "df.wait_for_signal: signal name must not be empty"),
        ("df.wait_for_signal('x', 0)", "df.wait_for_signal: timeout_seconds must be > 0, got 0"),
        (
            "df.wait_for_schedule('bad')",
            "df.wait_for_schedule: invalid cron expression 'bad': expected 5 fields (minute hour day-of-month month "
            "day-of-week), got 1",
        ),
        ("'C' ?> 'T' ~> 'T2' !> 'E'", "Invalid if-then-else: left side of !> must be a ?> expression"),
        ("'x' !> 'E'", "Invalid if-then-else: left side of !> must be a ?> expression"),
        ("df.join_all('a')", "df.join_all: at least 2 branches are required, got 1"),
        (
            'df.seq(\'{"node_type":"SQL","query":1}\', \'b\')',
            "Invalid Durofut JSON: failed to deserialize workflow step: root: query must be a string",
        ),
        (
            'df.seq(\'{"node_type":"THEN","left_node":5}\', \'b\')',
            "Invalid Durofut JSON: failed to deserialize workflow step: root.left: expected a JSON object",
        ),
    ]:
        assert error_of(app, expr) == message, expr


CRON_VECTORS = json.loads((Path(__file__).parents[1] / "data" / "cron_vectors.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("vector", CRON_VECTORS, ids=[repr(v["expr"]) for v in CRON_VECTORS])
def test_cron_vectors(app: Conn, vector: dict[str, Any]) -> None:
    row = app.execute("SELECT df._cron_error(%s)", (vector["expr"],)).fetchone()
    assert row is not None and row[0] == vector["error"]
    if vector["error"] is None:
        assert build(app, f"df.wait_for_schedule({_literal(vector['expr'])})").startswith(
            '{"node_type":"WAIT_SCHEDULE"'
        )
    else:
        assert error_of(app, f"df.wait_for_schedule({_literal(vector['expr'])})") == (
            f"df.wait_for_schedule: invalid cron expression '{vector['expr']}': {vector['error']}"
        )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_auto_wrap(app: Conn) -> None:
    # a graph passes through (re-rendered canonically), anything else becomes a SQL node
    assert build(app, 'df.seq(\'{ "query" : "x", "node_type" : "SQL", "extra": 1 }\', \'b\')') == (
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"x"},"right_node":{"node_type":"SQL","query":"b"}}'
    )
    assert build(app, "df.seq('{\"node_type\":\"NOPE\"}', 'b')") == (
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"{\\"node_type\\":\\"NOPE\\"}"},'
        '"right_node":{"node_type":"SQL","query":"b"}}'
    )
    assert build(app, "df.seq('[1]', '{\"a\":1}')") == (
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"[1]"},'
        '"right_node":{"node_type":"SQL","query":"{\\"a\\":1}"}}'
    )
    # break/sleep arguments are literals, never graphs
    assert build(app, "df.break('SELECT 1')") == '{"node_type":"BREAK","query":"{\\"break_value\\":\\"SELECT 1\\"}"}'
    # a dangling partial if is wrapped as SQL
    assert build(app, "df.seq('c' ?> 't', 'x')").startswith(
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"{\\"_partial_if\\":true,'
    )


def test_status_helpers_cannot_be_steps(app: Conn) -> None:
    assert error_of(app, "df.setvar('k', 'v') ~> 'SELECT 1'").startswith("df.setvar cannot be used as a workflow step")
    assert build(app, "'SELECT 1' ~> 'SELECT 2'").startswith('{"node_type":"THEN"')


def test_identical_expressions_give_identical_json(app: Conn) -> None:
    row = app.execute(
        "SELECT ('SELECT 2' ~> 'SELECT 3') = ('SELECT 2' ~> 'SELECT 3'),"
        " ('SELECT 4' ~> 'SELECT 5') <> ('SELECT 6' ~> 'SELECT 7')"
    ).fetchone()
    assert row == (True, True)


# Reference §3.2: every row of the precedence table, asserted through the JSON.
def _s(q: str) -> dict[str, Any]:
    return {"node_type": "SQL", "query": q}


def _then(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"node_type": "THEN", "left_node": a, "right_node": b}


def _join(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"node_type": "JOIN", "left_node": a, "right_node": b}


def _race(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"node_type": "RACE", "left_node": a, "right_node": b}


def _named(node: dict[str, Any], name: str) -> dict[str, Any]:
    return {**node, "result_name": name}


def _if(c: dict[str, Any], t: dict[str, Any], e: dict[str, Any]) -> dict[str, Any]:
    return {"node_type": "IF", "left_node": t, "right_node": e, "condition_node": c}


def _loop(b: dict[str, Any]) -> dict[str, Any]:
    return {"node_type": "LOOP", "left_node": b}


A, B, C, E, S, T, X, Y = (_s(q) for q in "ABCESTXY")
PRECEDENCE = [
    ("'A' ~> 'B' & 'C'", _join(_then(A, B), C)),
    ("'A' & 'B' ~> 'C'", _then(_join(A, B), C)),
    ("'A' | 'B' & 'C'", _join(_race(A, B), C)),
    ("'A' & 'B' | 'C'", _race(_join(A, B), C)),
    ("'A' |=> 'x' ~> 'B'", _then(_named(A, "x"), B)),
    ("'A' ~> 'B' |=> 'x'", _named(_then(A, B), "x")),
    ("'C' ?> 'T' !> 'E'", _if(C, T, E)),
    ("'X' ~> 'C' ?> 'T' !> 'E'", _if(_then(X, C), T, E)),
    ("'C' ?> 'T' !> 'E' ~> 'Y'", _then(_if(C, T, E), Y)),
    ("@> 'B' ~> 'S'", _then(_loop(B), S)),
    ("@> ('B' ~> 'S')", _loop(_then(B, S))),
    ("'X' ~> @> 'B' ~> 'Y'", _then(_then(X, _loop(B)), Y)),
]


@pytest.mark.parametrize(("expr", "tree"), PRECEDENCE, ids=[p[0] for p in PRECEDENCE])
def test_precedence(app: Conn, expr: str, tree: dict[str, Any]) -> None:
    assert json.loads(build(app, expr)) == tree


def test_precedence_error_rows(app: Conn) -> None:
    # 'C' ?> 'T' ~> 'T2' !> 'E': the partial if is wrapped into a THEN before !>
    assert error_of(app, "'C' ?> 'T' ~> 'T2' !> 'E'") == "Invalid if-then-else: left side of !> must be a ?> expression"
    # || binds at the same level: the JSON text gets 'C' appended and is no longer JSON
    corrupt = build(app, "'A' ~> 'B' || 'C'")
    assert corrupt == json.dumps(_then(A, B), separators=(",", ":")) + "C"
    # = binds looser: the comparison is between the THEN and the text
    assert build(app, "('A' ~> 'B' = 'x')::text") == "false"
    assert build(app, "('A' ~> 'B' = ('A' ~> 'B'))::text") == "true"
    # + binds tighter: 'A' ~> ('B' + 1) is a type error
    assert error_of(app, "'A' ~> 'B' + 1") == 'invalid input syntax for type integer: "B"'


def test_signatures_and_strictness(admin: Conn) -> None:
    rows = dict(
        admin.execute(
            """
            SELECT p.proname || ' ' || pg_get_function_arguments(p.oid), p.proisstrict
              FROM pg_proc p WHERE p.pronamespace = 'df'::regnamespace AND p.proname !~ '^_'
            """
        ).fetchall()
    )
    expected = {
        "df.sql(text) query text": True,
        "df.seq(text,text) a text, b text": True,
        'df."as"(text,text) fut text, name text': True,
        'df."join"(text,text) a text, b text': True,
        "df.join3(text,text,text) a text, b text, c text": True,
        "df.race(text,text) a text, b text": True,
        'df."if"(text,text,text) condition text, then_branch text, else_branch text': True,
        "df.if_rows(text,text,text) result_name text, then_branch text, else_branch text": True,
        "df.loop(text,text) body text, condition text DEFAULT NULL::text": False,
        'df."break"(text) value text DEFAULT NULL::text': False,
        "df.sleep(bigint) seconds bigint": True,
        "df.wait_for_schedule(text) cron_expr text": True,
        "df.wait_for_signal(text,integer) name text, timeout_seconds integer DEFAULT NULL::integer": False,
        "df.http(text,text,text,jsonb,integer) url text, method text DEFAULT 'POST'::text, body text DEFAULT "
        "NULL::text, headers jsonb DEFAULT NULL::jsonb, timeout_seconds integer DEFAULT 30": False,
        "df.http_multipart(text,text,jsonb,jsonb,integer) url text, method text DEFAULT 'POST'::text, parts jsonb "
        "DEFAULT NULL::jsonb, headers jsonb DEFAULT NULL::jsonb, timeout_seconds integer DEFAULT 30": False,
        "df.join_all(text[]) VARIADIC branches text[]": True,
        "df.start(text,text,text,text) fut text, label text DEFAULT NULL::text, database text DEFAULT NULL::text, "
        "transaction_mode text DEFAULT 'caller'::text": False,
        "df.cancel(text,text) instance_id text, reason text DEFAULT 'Cancelled by user'::text": True,
        "df.signal(text,text,text) instance_id text, signal_name text, signal_data text DEFAULT '{}'::text": True,
        "df.status(text) instance_id text": True,
        "df.result(text) instance_id text": True,
        "df.await_instance(text,integer) instance_id text, timeout_seconds integer DEFAULT 30": True,
        "df.explain(text) input text": True,
        "df.setvar(text,text) name text, value text": True,
        "df.getvar(text) name text": True,
        "df.unsetvar(text) name text": True,
        "df.list_instances(text,integer) status_filter text DEFAULT NULL::text, limit_count integer DEFAULT 100": False,
        "df.list_instances(text,integer,text,text) status_filter text, limit_count integer, label_filter text, "
        "after_cursor text DEFAULT NULL::text": False,
        "df.grant_usage(text,boolean,boolean) p_role text, include_http boolean DEFAULT false, with_grant boolean "
        "DEFAULT false": False,
        "df.revoke_usage(text) p_role text": False,
        "df.instance_nodes(text) instance_id_param text": False,
        "df.instance_nodes(text,integer) instance_id_param text, _last_n_executions integer": False,
        "df.instance_executions(text,integer) instance_id text, limit_count integer DEFAULT 5": False,
        "df.instance_info(text) instance_id text": False,
    }
    for signature, strict in expected.items():
        key = re.sub(r'^df\."?([a-z_0-9]+)"?\([^)]*\) ', r"\1 ", signature)
        assert rows.get(key) == strict, signature
    operators = admin.execute(
        "SELECT oprname, oprleft::regtype::text, oprright::regtype::text, oprcode::text FROM pg_operator"
        " WHERE oprnamespace = 'df'::regnamespace ORDER BY 1"
    ).fetchall()
    assert operators == [
        ("!>", "text", "text", "df.if_else_op"),
        ("&", "text", "text", 'df."join"'),
        ("?>", "text", "text", "df.if_then_op"),
        ("@>", "-", "text", "df.loop_prefix_op"),
        ("|", "text", "text", "df.race"),
        ("|=>", "text", "text", "df.as_op"),
        ("~>", "text", "text", "df.seq"),
    ]
