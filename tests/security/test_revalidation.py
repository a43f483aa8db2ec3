"""Re-validation of the submitter after df.start (issue 8): a role that loses LOGIN, or becomes a superuser,
after submitting gets its instance failed with a clear message, unless df.settings allows superuser instances.
Superuser submissions are refused at df.start unless allowed, too.

Two places check, and each is tested on its own:

- the worker, when it claims work (an instance submitted, then its role changed, then a worker started: the
  first claim refuses it, even for a workflow that runs no SQL at all);
- the runner, at every SQL step, because consecutive steps of one instance are not claimed again (the role
  changes while the first step runs; the second step is refused).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from pgdurable import Worker
from tests.integration.conftest import DfDatabase, Roles

from .conftest import SECURITY_WORKER, Cast, make_cast

pytestmark = pytest.mark.xdist_group("roles")

LOCK_KEY = 770077


@pytest.fixture(scope="module")
def cast(df_db: DfDatabase, df_roles: Roles) -> Iterator[Cast]:
    """This module's cast; no worker runs but the ones the tests start."""
    found = make_cast(df_db, df_roles, attacker="rv_a", victim="rv_b")
    yield found
    with found.connect() as conn:
        for role in (found.attacker, found.victim):
            conn.execute("SELECT df.revoke_usage(%s)", (role,))


@pytest.fixture
def subject(cast: Cast) -> Iterator[str]:
    """A LOGIN role of this test only, prepared with df.grant_usage; put back (and dropped) afterwards."""
    role = cast.roles.create(f"rv_{time.monotonic_ns() % 10**9}")
    with cast.connect() as conn:
        conn.execute("SELECT df.grant_usage(%s)", (role,))
    yield role
    with cast.connect() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} NOSUPERUSER LOGIN").format(sql.Identifier(role)))
        conn.execute("SELECT df.revoke_usage(%s)", (role,))
        conn.execute("UPDATE df.settings SET value = 'false' WHERE key = 'allow_superuser_instances'")
    cast.roles.drop(role)


def alter(cast: Cast, role: str, change: str) -> None:
    with cast.connect() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} " + change).format(sql.Identifier(role)))


def allow_superusers(cast: Cast, allowed: bool) -> None:
    with cast.connect() as conn:
        conn.execute(
            "UPDATE df.settings SET value = %s::jsonb WHERE key = 'allow_superuser_instances'",
            ("true" if allowed else "false",),
        )


def node_statuses(cast: Cast, instance_id: str) -> list[tuple[str, str]]:
    with cast.connect() as conn:
        rows = conn.execute(
            "SELECT query, status FROM df.nodes WHERE instance_id = %s AND node_type = 'SQL' ORDER BY query",
            (instance_id,),
        ).fetchall()
    return [(str(q), str(s)) for q, s in rows]


CHANGES = {
    "loses-login": ("NOLOGIN", False, "LOGIN"),
    "becomes-superuser": ("SUPERUSER", False, "superuser"),
}


# -- at the claim -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", ["'SELECT current_user::text AS who'", "df.sleep(0)"], ids=["sql", "no-sql"])
@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_a_role_changed_after_submitting_is_refused_when_claimed(
    cast: Cast, df_db: DfDatabase, subject: str, change: str, graph: str
) -> None:
    instance = cast.start(subject, graph)
    alter(cast, subject, CHANGES[change][0])
    with Worker(df_db.admin_dsn, config=SECURITY_WORKER):
        status, output = cast.wait(instance)
    assert status == "failed", output
    assert output is not None and CHANGES[change][2] in output and subject in output, output


def test_a_role_made_superuser_runs_when_superuser_instances_are_allowed(
    cast: Cast, df_db: DfDatabase, subject: str
) -> None:
    instance = cast.start(
        subject, "'SELECT current_user::text AS who, rolsuper FROM pg_roles WHERE rolname = current_user'"
    )
    alter(cast, subject, "SUPERUSER")
    allow_superusers(cast, True)
    with Worker(df_db.admin_dsn, config=SECURITY_WORKER):
        assert cast.wait(instance) == ("completed", f'{{"rows":[{{"who":"{subject}","rolsuper":true}}],"row_count":1}}')


# -- between consecutive steps, which are not claimed again -----------------------------------------------------------


def _change_during_the_first_step(cast: Cast, df_db: DfDatabase, role: str, change: Callable[[], None]) -> str:
    """Start `role`'s two-step workflow, hold its first step on an advisory lock, `change()`, let it go."""
    with cast.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        with Worker(df_db.admin_dsn, config=SECURITY_WORKER):
            instance = cast.start(
                role,
                f"'SELECT 1 AS one FROM pg_advisory_xact_lock({LOCK_KEY})' ~> 'SELECT current_user::text AS who'",
            )
            deadline = time.monotonic() + 30
            waiting = "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND NOT granted"
            while holder.execute(waiting, (LOCK_KEY,)).fetchone() != (True,):
                assert time.monotonic() < deadline, "the first step never started"
                time.sleep(0.02)
            change()
            holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            cast.wait(instance)
    return instance


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_a_role_changed_between_two_steps_is_refused_at_the_next_step(
    cast: Cast, df_db: DfDatabase, subject: str, change: str
) -> None:
    instance = _change_during_the_first_step(cast, df_db, subject, lambda: alter(cast, subject, CHANGES[change][0]))
    status, output = cast.wait(instance)
    assert status == "failed", output
    assert output is not None and CHANGES[change][2] in output and subject in output, output
    statuses = dict(node_statuses(cast, instance))
    assert statuses[f"SELECT 1 AS one FROM pg_advisory_xact_lock({LOCK_KEY})"] == "completed"
    assert statuses["SELECT current_user::text AS who"] == "failed"


# -- superuser submissions ------------------------------------------------------------------------------------------


@pytest.fixture
def superuser(cast: Cast) -> Iterator[str]:
    role = cast.roles.create(f"rv_su_{time.monotonic_ns() % 10**9}", "LOGIN SUPERUSER")
    yield role
    allow_superusers(cast, False)
    with cast.connect() as conn:
        conn.execute("SELECT df.revoke_usage(%s)", (role,))
    cast.roles.drop(role)


def test_superuser_submissions_are_refused_unless_allowed(cast: Cast, df_db: DfDatabase, superuser: str) -> None:
    with cast.connect(superuser) as conn:
        with pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="is a superuser: superuser instances are disabled"
        ):
            conn.execute("SELECT df.start('SELECT 1')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="superuser instances are disabled"):
            conn.execute("SELECT df.start_with('SELECT 1', '{}')")
    allow_superusers(cast, True)
    with cast.connect() as conn:
        conn.execute("SELECT df.grant_usage(%s)", (superuser,))
    instance = cast.start(superuser, "'SELECT current_user::text AS who'")
    with Worker(df_db.admin_dsn, config=SECURITY_WORKER):
        assert cast.wait(instance) == ("completed", f'{{"rows":[{{"who":"{superuser}"}}],"row_count":1}}')


def test_a_superuser_instance_written_around_df_start_is_refused(cast: Cast, df_db: DfDatabase, superuser: str) -> None:
    """A superuser can write df.instances directly, past df.start's check; the worker refuses the instance."""
    with cast.connect() as conn:
        conn.execute("SELECT df.grant_usage(%s)", (superuser,))
    allow_superusers(cast, True)
    instance = cast.start(superuser, "'SELECT 1 AS one'")  # submitted while allowed ...
    allow_superusers(cast, False)  # ... then disallowed: the same as a row written past df.start
    with Worker(df_db.admin_dsn, config=SECURITY_WORKER):
        status, output = cast.wait(instance)
    assert status == "failed"
    assert output is not None and "superuser instances are disabled" in output, output


# -- session_user inside a step ------------------------------------------------------------------------------------


def test_a_step_cannot_set_another_roles_start_options(cast: Cast, df_db: DfDatabase) -> None:
    with cast.connect() as conn:
        if conn.execute("SELECT to_regprocedure('df._set_start_options(text, regrole, jsonb)')").fetchone() == (None,):
            pytest.skip("no df._set_start_options in this schema")
    victim = cast.start(cast.victim, "'SELECT 1 AS one'")
    with cast.connect() as conn:  # keep it unstarted: no worker claims it for an hour
        conn.execute("UPDATE df.tasks SET wake_at = now() + interval '1 hour' WHERE instance_id = %s", (victim,))
        before = conn.execute("SELECT options FROM df.instances WHERE id = %s", (victim,)).fetchone()
    statement = (
        f"SELECT df._set_start_options('{victim}', '{cast.victim}'::regrole,"
        ' \'{"deadline_seconds": 0, "retry": {"max_attempts": 1000}}\'::jsonb)'
    )
    with Worker(df_db.admin_dsn, config=SECURITY_WORKER):
        cast.run(cast.attacker, statement)
    with cast.connect() as conn:
        after = conn.execute("SELECT options FROM df.instances WHERE id = %s", (victim,)).fetchone()
        conn.execute("DELETE FROM df.instances WHERE id = %s", (victim,))
    assert after == before, "a step of another role changed the victim's start options"
