"""The two front ends agree: for random graphs, PostgreSQL evaluating `node.to_sql()` returns `node.to_json()`
byte for byte. Runs as the superuser in this module's own database, with HTTP enabled so that HTTP nodes build.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings

from pgdurable.dsl import Node
from tests.strategies import graphs

EXAMPLES = 300


@pytest.fixture(scope="module")
def http_admin(df_db: Any) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE df.settings SET value = 'true' WHERE key = 'http_enabled'")
        yield conn


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs())
def test_sql_builders_match_python_to_json(http_admin: psycopg.Connection[tuple[object, ...]], graph: Node) -> None:
    text = graph.to_sql()
    expected = graph.to_json()
    # builder calls and operators only: no embedded graph literal (unless a step's own text holds one)
    if '{\\"node_type\\"' not in expected:
        assert '{"node_type"' not in text
    row = http_admin.execute(("SELECT " + text).encode()).fetchone()
    assert row is not None
    assert row[0] == expected
