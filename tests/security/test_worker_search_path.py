"""The worker's own statements must not resolve names through schemas that others can write (CVE-2018-1058).

The worker claims, loads and records work with statements such as ``... WHERE t.instance_id = due.instance_id``
(varchar = varchar). pg_catalog has no varchar = varchar operator, only text = text, so an operator
``public.=(varchar, varchar)`` is an exact match and wins, wherever ``public`` is on the worker's search_path:
the worker, a superuser, then runs the function behind it. Any role that may create in a schema on the
worker's search_path (``public`` in many databases, "$user" where it exists) would so run code as the worker.

Here the attacker may create in ``public`` and plants such an operator. Its function only records who ran it
(and from which application). The worker's statements after a step have a pinned search_path (design §2);
its other statements do not yet: this test fails until the worker pins ``search_path`` for its whole session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg import sql

from .conftest import Cast

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.xdist_group("roles")]


@pytest.fixture(scope="module")
def planted(sec: Cast) -> Iterator[None]:
    with sec.connect() as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(sec.attacker)))
    with sec.connect(sec.attacker) as conn:
        conn.execute("CREATE TABLE public.sec_who_ran (who text, super boolean, app text)")
        conn.execute("GRANT INSERT ON public.sec_who_ran TO PUBLIC")
        conn.execute(
            """
            CREATE FUNCTION public.sec_eq(a varchar, b varchar) RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO public.sec_who_ran
                SELECT current_user, r.rolsuper, current_setting('application_name')
                  FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
                RETURN a::text OPERATOR(pg_catalog.=) b::text;
            END $$
            """
        )
        conn.execute("CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.sec_eq)")
    yield
    with sec.connect() as conn:
        conn.execute("DROP OPERATOR public.= (varchar, varchar)")
        conn.execute("DROP FUNCTION public.sec_eq(varchar, varchar)")
        conn.execute("DROP TABLE public.sec_who_ran")
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(sql.Identifier(sec.attacker)))


@pytest.mark.usefixtures("planted")
def test_the_worker_never_runs_an_operator_planted_on_its_search_path(sec: Cast) -> None:
    for _ in range(3):
        assert sec.value(sec.victim, "SELECT 1 AS one") == 1
    with sec.connect() as conn:
        conn.execute("SET search_path = pg_catalog")  # this connection's own statements do not count
        ran = conn.execute(
            "SELECT DISTINCT who, super, app FROM public.sec_who_ran WHERE app LIKE 'pgdurable-worker%%'"
        ).fetchall()
    assert ran == [], f"the worker ran the attacker's operator: {ran}"
