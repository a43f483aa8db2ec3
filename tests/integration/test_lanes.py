"""Lanes and hygiene (issue 4, "Lanes and hygiene"; design §2).

- Statements that cannot run in a transaction block (`VACUUM`, `CREATE INDEX CONCURRENTLY`) complete through
  the autocommit lane.
- A step is exactly one statement: two fail the instance with an error that names the problem, and neither ran.
- A `database =>` target runs its steps in that database (one without df installed), as the submitter.
- Session state set by a step (`SET`) does not leak into the next step.
- A step's result encodes each column type as design §2 and §4 say, in both lanes.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgdurable import Client, Step
from pgdurable.testing import MakeDatabase, TestServer

pytestmark = pytest.mark.usefixtures("worker")

Conn = psycopg.Connection[tuple[Any, ...]]
TIMEOUT = 30.0


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _start_sql(app: Conn, graph_text: str, *, database: str | None = None) -> str:
    """`SELECT df.start(<graph text>, database => ...)` on the application role's connection."""
    target = "" if database is None else f", database => {_q(database)}"
    row = app.execute(f"SELECT df.start({graph_text}{target})".encode()).fetchone()
    assert row is not None
    return str(row[0])


def _output(admin: Conn, instance_id: str) -> str | None:
    row = admin.execute("SELECT output FROM df.instances WHERE id = %s", (instance_id,)).fetchone()
    assert row is not None
    return None if row[0] is None else str(row[0])


@pytest.fixture(scope="module")
def owned_table(df_db: Any) -> str:
    """A table the application role owns, in a schema it owns (CREATE INDEX needs CREATE on the schema), with
    dead tuples for VACUUM to remove."""
    role = sql.Identifier(df_db.app_role)
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA lane_app AUTHORIZATION {}").format(role))
        conn.execute("CREATE TABLE lane_app.owned (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO lane_app.owned SELECT g, g FROM generate_series(1, 1000) g")
        conn.execute("DELETE FROM lane_app.owned WHERE id % 2 = 0")
        conn.execute(sql.SQL("ALTER TABLE lane_app.owned OWNER TO {}").format(role))
    return "lane_app.owned"


@pytest.fixture(scope="module")
def second_database(pg_server: TestServer, make_database: MakeDatabase, df_db: Any) -> str:
    """A second database without df: the application role may connect and create there; pgvector is installed."""
    name = make_database()
    role = sql.Identifier(df_db.app_role)
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(sql.Identifier(name), role))
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
        assert conn.execute("SELECT to_regnamespace('df')").fetchone() == (None,)
        conn.execute("CREATE EXTENSION vector")
    return name


# -- the autocommit lane ---------------------------------------------------------------------------------


def test_vacuum_completes_through_the_autocommit_lane(client: Client, admin: Conn, owned_table: str) -> None:
    def vacuums() -> int:
        row = admin.execute(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = %s::regclass", (owned_table,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    before = vacuums()
    instance = client.start(Step(f"VACUUM {owned_table}"))
    assert instance.wait(timeout=TIMEOUT) == "completed"
    assert instance.result() == {"rows": [], "row_count": 0}
    assert vacuums() == before + 1  # it really ran, once, on the table


def test_a_database_wide_vacuum_completes(client: Client) -> None:
    instance = client.start("VACUUM")
    assert instance.wait(timeout=TIMEOUT) == "completed"


def test_create_index_concurrently_completes_through_the_autocommit_lane(
    client: Client, admin: Conn, owned_table: str
) -> None:
    instance = client.start(Step(f"CREATE INDEX CONCURRENTLY owned_v_idx ON {owned_table} (v)"))
    assert instance.wait(timeout=TIMEOUT) == "completed", _output(admin, instance.id)
    row = admin.execute(
        "SELECT i.indisvalid, i.indisready, c.xmin::text"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.oid = 'lane_app.owned_v_idx'::regclass"
    ).fetchone()
    assert row is not None, "the index exists"
    valid, ready, index_xmin = row
    assert valid and ready
    # Not in the checkpoint's transaction: the autocommit lane commits the step on its own (at-least-once).
    (step_xid,) = admin.execute(
        'SELECT xid::text FROM df.history WHERE instance_id = %s AND event LIKE \'{"type":"StepSucceeded"%%\'',
        (instance.id,),
    ).fetchone() or (None,)
    assert step_xid is not None
    assert int(step_xid) % 2**32 != int(index_xmin)


# -- one statement per step ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch_table(df_db: Any) -> str:
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE lane_scratch (v int)")
        conn.execute(sql.SQL("GRANT ALL ON lane_scratch TO {}").format(sql.Identifier(df_db.app_role)))
    return "lane_scratch"


def test_two_statements_fail_the_instance_and_neither_runs(client: Client, admin: Conn, scratch_table: str) -> None:
    instance = client.start(Step(f"INSERT INTO {scratch_table} VALUES (1); SELECT 2"))
    assert instance.wait(timeout=TIMEOUT) == "failed"
    message = "a SQL step must be exactly one statement, found 2; split it into separate steps"
    assert _output(admin, instance.id) == message
    (node_status, node_result) = admin.execute(
        "SELECT status, result #>> '{}' FROM df.nodes WHERE instance_id = %s", (instance.id,)
    ).fetchone() or (None, None)
    assert (node_status, node_result) == ("failed", message)
    assert admin.execute(f"SELECT count(*) FROM {scratch_table}").fetchone() == (0,)


def test_two_statements_started_from_sql_fail_the_same_way(app: Conn, client: Client, admin: Conn) -> None:
    instance_id = _start_sql(app, "'SELECT 1; SELECT 2'")
    assert client.wait(instance_id, timeout=TIMEOUT) == "failed"
    assert _output(admin, instance_id) == (
        "a SQL step must be exactly one statement, found 2; split it into separate steps"
    )


def test_semicolons_inside_quotes_and_a_trailing_one_are_one_statement(client: Client) -> None:
    instance = client.start(Step("SELECT ';' AS a, $$;$$ AS b /* ; */; -- ;"))
    assert instance.wait(timeout=TIMEOUT) == "completed"
    assert instance.result() == {"rows": [{"a": ";", "b": ";"}], "row_count": 1}


# -- database => ------------------------------------------------------------------------------------------


def test_a_database_target_runs_there(
    app: Conn, client: Client, admin: Conn, second_database: str, pg_server: TestServer, df_db: Any
) -> None:
    graph = (
        "'CREATE SCHEMA lane_made_here'"
        " ~> 'CREATE TABLE lane_made_here.t AS SELECT current_database()::text AS db, current_user::text AS who'"
        " ~> 'SELECT db, who FROM lane_made_here.t'"
    )
    instance_id = _start_sql(app, graph, database=second_database)
    assert client.wait(instance_id, timeout=TIMEOUT) == "completed", _output(admin, instance_id)
    assert client.result(instance_id) == {"rows": [{"db": second_database, "who": df_db.app_role}], "row_count": 1}
    with psycopg.connect(pg_server.dsn(second_database), autocommit=True) as there:
        assert there.execute("SELECT db, who FROM lane_made_here.t").fetchall() == [(second_database, df_db.app_role)]
        assert there.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'lane_made_here'"
        ).fetchone() == (df_db.app_role,)
    assert admin.execute("SELECT to_regnamespace('lane_made_here')").fetchone() == (None,)
    assert admin.execute("SELECT database FROM df.instances WHERE id = %s", (instance_id,)).fetchone() == (
        second_database,
    )


# -- session state ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setter",
    ["SET work_mem = '7MB'", "SELECT set_config('work_mem', '7MB', false)"],
    ids=["SET", "set_config"],
)
def test_a_setting_made_by_a_step_does_not_leak_into_the_next(client: Client, app: Conn, setter: str) -> None:
    (default,) = app.execute("SELECT current_setting('work_mem')").fetchone() or (None,)
    assert default != "7MB"
    instance = client.start(Step(setter) >> "SELECT current_setting('work_mem') AS work_mem")
    assert instance.wait(timeout=TIMEOUT) == "completed"
    assert instance.result() == {"rows": [{"work_mem": default}], "row_count": 1}


# -- result encoding ---------------------------------------------------------------------------------------

ENCODING_QUERY = (
    "SELECT 1.50::numeric AS numeric, 3.14::float4 AS float4, '\\xdeadbeef'::bytea AS bytea,"
    " interval '1 day 2 hours 3 minutes 4.5 seconds' AS interval, ARRAY[1, 2, 3]::int[] AS int_array,"
    " '[1,2.5,3]'::vector AS vector, timestamptz '2024-06-15 14:30:00+02' AS timestamptz"
)
EXPECTED = {
    "numeric": "1.50",
    "float4": 3.140000104904175,
    "bytea": "3q2+7w==",
    "interval": "P1DT2H3M4.5S",
    "int_array": [1, 2, 3],
    "vector": [1, 2.5, 3],
    "timestamptz": "2024-06-15T12:30:00+00:00",
}


@pytest.fixture(scope="module")
def encoded(df_db: Any, second_database: str, worker: Any) -> dict[str, dict[str, Any]]:
    """One step selecting every type, run in each lane; its first row by lane, parsed in column order."""
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    client = Client(df_db.app_dsn)
    instances = {
        "exactly_once": client.start(Step(ENCODING_QUERY)),
        "autocommit": client.start(Step(ENCODING_QUERY), database=second_database),
    }
    out: dict[str, dict[str, Any]] = {}
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        for lane, instance in instances.items():
            status = instance.wait(timeout=TIMEOUT)
            (output,) = conn.execute("SELECT output FROM df.instances WHERE id = %s", (instance.id,)).fetchone() or (
                None,
            )
            assert status == "completed", f"{lane}: {output}"
            result = json.loads(output, object_pairs_hook=lambda pairs: pairs)
            assert [key for key, _ in result] == ["rows", "row_count"]
            first_row = result[0][1][0]
            assert [key for key, _ in first_row] == list(EXPECTED), "columns keep select-list order"
            out[lane] = dict(first_row)
    return out


@pytest.mark.parametrize("column", list(EXPECTED))
def test_a_result_encodes_each_type_in_the_exactly_once_lane(encoded: dict[str, dict[str, Any]], column: str) -> None:
    assert encoded["exactly_once"][column] == EXPECTED[column]


@pytest.mark.parametrize("column", list(EXPECTED))
def test_a_result_encodes_each_type_in_the_autocommit_lane(encoded: dict[str, dict[str, Any]], column: str) -> None:
    assert encoded["autocommit"][column] == EXPECTED[column]
