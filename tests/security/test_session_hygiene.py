"""What one step leaves in the worker's session never reaches the next step, of another role, on the same
connection; nor does it stop the worker (issue 8: "a SET inside a step never leaks into the next step or
another role's step").

The worker here has ONE slot, so consecutive steps share its one connection: every test first checks that the
attacker's step and the victim's step ran in the same backend (same pid), then that the victim met nothing of
the attacker's. Without the runner's clean-up each of these tests fails: the victim reads the attacker's
temporary table, runs under its settings, finds its prepared statements, or never runs at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql

from .conftest import Cast, q

pytestmark = [pytest.mark.usefixtures("single_slot_worker"), pytest.mark.xdist_group("roles")]


@pytest.fixture(scope="module")
def ledgers(sec: Cast) -> Iterator[None]:
    """A table `ledger` in the victim's own schema (first on its search_path, "$user"), and one of the same name
    in the attacker's schema, readable by everyone."""
    with sec.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {0} AUTHORIZATION {0}").format(sql.Identifier(sec.victim)))
        conn.execute(sql.SQL("CREATE SCHEMA atk AUTHORIZATION {}").format(sql.Identifier(sec.attacker)))
    with sec.connect(sec.victim) as conn:
        conn.execute("CREATE TABLE ledger AS SELECT 'victim'::text AS owner")
    with sec.connect(sec.attacker) as conn:
        conn.execute("CREATE TABLE atk.ledger AS SELECT 'attacker'::text AS owner")
        conn.execute("GRANT USAGE ON SCHEMA atk TO PUBLIC")
        conn.execute("GRANT SELECT ON atk.ledger TO PUBLIC")
    yield
    with sec.connect() as conn:
        conn.execute("DROP SCHEMA atk CASCADE")
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(sec.victim)))


def pid_and_rows(sec: Cast, instance_id: str) -> tuple[int, list[dict[str, Any]]]:
    """A two-step instance whose first step returned `pg_backend_pid() AS pid`: that pid and the last rows."""
    status, output = sec.wait(instance_id)
    assert status == "completed", output
    with sec.connect() as conn:
        row = conn.execute(
            "SELECT n.result FROM df.nodes n WHERE n.instance_id = %s AND n.node_type = 'SQL'"
            " AND n.query LIKE 'SELECT pg_backend_pid()%%'",
            (instance_id,),
        ).fetchone()
    assert row is not None
    assert output is not None
    return int(row[0]["rows"][0]["pid"]), json.loads(output)["rows"]


def attack_then_probe(sec: Cast, attack: str, probe: str, *, attack_fails: str | None = None) -> list[dict[str, Any]]:
    """The attacker's step (recording its backend), then the victim's probe (likewise), on the one slot."""
    first = sec.start(sec.attacker, f"'SELECT pg_backend_pid() AS pid' ~> {q(attack)}")
    status, output = sec.wait(first)
    if attack_fails is None:
        assert status == "completed", output
    else:
        assert status == "failed" and output is not None and attack_fails in output, output
    with sec.connect() as conn:
        row = conn.execute(
            "SELECT n.result FROM df.nodes n WHERE n.instance_id = %s AND n.query = 'SELECT pg_backend_pid() AS pid'",
            (first,),
        ).fetchone()
    assert row is not None
    attacker_pid = int(row[0]["rows"][0]["pid"])
    victim_pid, rows = pid_and_rows(sec, sec.start(sec.victim, f"'SELECT pg_backend_pid() AS pid' ~> {q(probe)}"))
    assert victim_pid == attacker_pid, "the two steps did not share the worker's connection"
    return rows


@pytest.mark.usefixtures("ledgers")
def test_a_temporary_table_does_not_shadow_the_next_roles_table(sec: Cast) -> None:
    """pg_temp comes first on every search_path: a temporary `ledger` left in the worker's session would be
    what the victim's unqualified `ledger` means."""
    attack = (
        "DO $$ BEGIN CREATE TEMP TABLE ledger AS SELECT 'attacker'::text AS owner;"
        " GRANT ALL ON ledger TO PUBLIC; END $$"
    )
    assert attack_then_probe(sec, attack, "SELECT owner FROM ledger") == [{"owner": "victim"}]


@pytest.mark.usefixtures("ledgers")
def test_a_search_path_does_not_reach_the_next_role(sec: Cast) -> None:
    rows = attack_then_probe(sec, "SET search_path = atk, public", "SELECT owner FROM ledger")
    assert rows == [{"owner": "victim"}]


@pytest.mark.parametrize(
    ("attack", "probe", "expected"),
    [
        ("SELECT set_config('app.tenant', 'attacker', false)", "SELECT current_setting('app.tenant', true) AS v", ""),
        ("SET statement_timeout = 1", "SELECT 'slept' AS v FROM pg_sleep(0.05)", "slept"),
        ("SET work_mem = '7MB'", "SELECT current_setting('work_mem') <> '7MB' AS v", True),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SELECT current_setting('transaction_read_only') AS v",
            "off",
        ),
        ("SET row_security = off", "SELECT current_setting('row_security') AS v", "on"),
    ],
)
def test_a_setting_does_not_reach_the_next_role(sec: Cast, attack: str, probe: str, expected: object) -> None:
    rows = attack_then_probe(sec, attack, probe)
    assert rows[0]["v"] in (expected, None) if expected == "" else rows[0]["v"] == expected


def test_prepared_statements_do_not_reach_the_next_role(sec: Cast) -> None:
    """Including one named like the runner's own probe, which would fail every later step."""
    attack = (
        "DO $$ BEGIN EXECUTE 'PREPARE pgdurable_step_probe AS SELECT 1'; EXECUTE 'PREPARE sec_x AS SELECT 2'; END $$"
    )
    rows = attack_then_probe(
        sec, attack, "SELECT count(*) AS n FROM pg_prepared_statements WHERE name IN ('sec_x', 'pgdurable_step_probe')"
    )
    assert rows == [{"n": 0}]


def test_listen_does_not_reach_the_next_role(sec: Cast) -> None:
    assert attack_then_probe(sec, "LISTEN sec_channel", "SELECT count(*) AS n FROM pg_listening_channels()") == [
        {"n": 0}
    ]


def test_a_session_advisory_lock_is_released(sec: Cast) -> None:
    """A lock taken in the worker's session would be held, in the worker's name, for as long as it runs."""
    attack_then_probe(sec, "SELECT pg_advisory_lock(424242)", "SELECT 1 AS one")
    with sec.connect() as conn:
        assert conn.execute("SELECT pg_try_advisory_lock(424242)").fetchone() == (True,)
        conn.execute("SELECT pg_advisory_unlock(424242)")


@pytest.mark.parametrize(
    ("attack", "says"),
    [
        ("SET transaction_read_only = on", "a step cannot make its transaction read-only"),
        ("DEALLOCATE ALL", "a step cannot change the prepared statements of the worker's session"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "a step cannot leave a cursor open"),
    ],
)
def test_the_only_slot_survives(sec: Cast, attack: str, says: str) -> None:
    """The worker's one slot outlives a step that would have broken its connection (a read-only transaction
    made the worker's own writes fail, which used to end the slot's thread)."""
    rows = attack_then_probe(sec, attack, "SELECT current_user::text AS who", attack_fails=says)
    assert rows == [{"who": sec.victim}]
