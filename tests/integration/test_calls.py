"""Python function steps: registered functions run by the workers that have them, as JSON in and out."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import psycopg
import pytest

from pgdurable import Client, Step, Worker, call, function, retry
from pgdurable.runtime.executors.python import CallContext
from tests.integration.conftest import TEST_WORKER, DfDatabase

seen_keys: list[str] = []


@function(name="test_embed")
def embed(chunks: list[dict[str, Any]], scale: int = 1, context: CallContext | None = None) -> list[float]:
    if context is not None:
        seen_keys.append(context.idempotency_key)
    return [len(str(chunk["t"])) * scale for chunk in chunks]


@function(name="test_async_double")
async def double(n: int) -> int:
    await asyncio.sleep(0)
    return 2 * n


@function(name="test_not_json")
def not_json() -> object:
    return {1, 2}


@function(name="test_boom")
def boom() -> None:
    raise ValueError("no way")


@function(name="test_record", transactional=True)
def record(marker: str, context: CallContext) -> str:
    assert context.connection is not None
    context.connection.execute("INSERT INTO public.call_effects VALUES (%s, txid_current())", (marker,))
    return marker


FUNCTIONS = [embed, double, not_json, boom, record]


@pytest.fixture(scope="module")
def call_worker(df_db: DfDatabase) -> Any:
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE df.settings SET value = '0' WHERE key = 'loop_floor_seconds'")
        conn.execute("CREATE TABLE call_effects (marker text, xid bigint)")
        role = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
    # who may call: the application role, explicitly (by default only the worker's own role may)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in FUNCTIONS:
            definition = fn.__pgdurable_function__  # type: ignore[attr-defined]
            function(name=definition.name, roles=(df_db.app_role, role), transactional=definition.transactional)(fn)
    with Worker(df_db.admin_dsn, config=TEST_WORKER, functions=FUNCTIONS) as worker:
        yield worker


pytestmark = pytest.mark.usefixtures("call_worker")


def test_a_call_receives_earlier_results_as_json_values(client: Client) -> None:
    graph = (
        (Step("SELECT 'abc' AS t UNION ALL SELECT 'de'") | "chunks")
        >> (call("test_embed", {"chunks": "$chunks.*", "scale": 10}) | "vectors")
        >> "SELECT $vectors::jsonb AS v"
    )
    instance = client.start(graph)
    assert instance.wait(timeout=30) == "completed", client.output(instance.id)
    assert instance.result() == {"rows": [{"v": [30, 20]}], "row_count": 1}
    assert seen_keys and seen_keys[-1] == f"{instance.id}:root.left.right:0"


def test_sql_calls_a_function_too(app: psycopg.Connection[Any], client: Client) -> None:
    instance_id = app.execute("SELECT df.start(df.call('test_async_double', '{\"n\": 21}'))").fetchone()[0]  # type: ignore[index]
    assert client.wait(instance_id, timeout=30) == "completed"
    assert client.result(instance_id) == 42


def test_a_failing_or_unserializable_function_fails_the_step_clearly(client: Client) -> None:
    bad = client.start(call("test_not_json"))
    assert bad.wait(timeout=30) == "failed"
    assert "not JSON-serializable" in (client.output(bad.id) or "")
    failing = client.start(call("test_boom"))
    assert failing.wait(timeout=30) == "failed"
    assert client.output(failing.id) == "function 'test_boom' failed: ValueError: no way"


def test_a_transactional_function_commits_with_its_checkpoint(client: Client, admin: psycopg.Connection[Any]) -> None:
    instance = client.start(call("test_record", {"marker": "once"}))
    assert instance.wait(timeout=30) == "completed"
    rows = admin.execute("SELECT xid FROM call_effects WHERE marker = 'once'").fetchall()
    events = admin.execute(
        'SELECT xid::text::bigint FROM df.history WHERE instance_id = %s AND event LIKE \'{"type":"StepSucceeded"%%\'',
        (instance.id,),
    ).fetchall()
    assert rows == events and len(rows) == 1


def test_a_call_nobody_runs_waits_and_says_for_what(client: Client, admin: psycopg.Connection[Any]) -> None:
    instance = client.start(call("nobody_has_this"))
    for _ in range(200):
        waiting = admin.execute("SELECT waiting_for FROM df.instances WHERE id = %s", (instance.id,)).fetchone()
        if waiting and waiting[0]:
            break
        import time

        time.sleep(0.05)
    assert waiting == ("a worker with function 'nobody_has_this'",)
    instance.cancel()


def test_registering_a_name_again_replaces_it_with_a_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        @function(name="test_again")
        def first() -> int:
            return 1

        @function(name="test_again")
        def second() -> int:
            return 2

    assert any("registered again" in str(w.message) for w in caught)


def test_retry_is_allowed_on_calls() -> None:
    assert retry(call("test_boom"), 2).retry is not None
