"""HTTP steps inside workflows: enabled in df.settings, gated by the builders' grant, guarded, and their
response envelope usable by later steps. The server is a loopback one this test starts."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from pgdurable import Client, Step, http
from tests.integration.conftest import DfDatabase

received: list[dict[str, str]] = []


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        received.append({"body": self.rfile.read(length).decode(), **{k.lower(): v for k, v in self.headers.items()}})
        payload = json.dumps({"embedding": [0.1, 0.2]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def http_enabled(df_db: DfDatabase, worker: Any) -> Iterator[None]:
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE df.settings SET value = 'true' WHERE key = 'http_enabled'")
        conn.execute(
            "INSERT INTO df.settings (key, value) VALUES ('http_allow_hosts', '[\"127.0.0.1\"]'),"
            " ('http_allow_loopback', 'true') ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        )
        conn.execute("SELECT df.grant_usage(%s, include_http => true)", (df_db.app_role,))
    yield
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE df.settings SET value = 'false' WHERE key = 'http_enabled'")


def test_an_http_step_calls_out_and_later_steps_read_its_envelope(
    client: Client, server: str, http_enabled: None
) -> None:
    graph = (http(f"{server}/embed", "POST", "label={sys_label}", {"Content-Type": "text/plain"}) | "r") >> (
        Step("SELECT ($r.body)::jsonb -> 'embedding' AS e, $r.status AS status")
    )
    instance = client.start(graph, label="hello")
    assert instance.wait(timeout=30) == "completed", client.output(instance.id)
    assert instance.result() == {"rows": [{"e": [0.1, 0.2], "status": 200}], "row_count": 1}
    assert received[-1]["body"] == "label=hello"
    assert received[-1]["idempotency-key"] == f"{instance.id}:root.left:0"


def test_http_is_refused_where_it_is_not_allowed(client: Client, http_enabled: None) -> None:
    instance = client.start(http("http://10.0.0.5/x", "GET"))
    assert instance.wait(timeout=30) == "failed"
    assert "allow-list" in (client.output(instance.id) or "")


def test_secrets_reach_the_request_but_never_the_database(
    client: Client, server: str, http_enabled: None, app: psycopg.Connection[Any], admin: psycopg.Connection[Any]
) -> None:
    app.execute("SELECT df.set_secret('embed_token', 'tok-7f3a9')")
    instance = client.start(http(f"{server}/embed", "POST", "x", {"Authorization": "Bearer {secret:embed_token}"}))
    assert instance.wait(timeout=30) == "completed", client.output(instance.id)
    assert received[-1]["authorization"] == "Bearer tok-7f3a9"
    stored = admin.execute(
        "SELECT concat(i.graph, i.checkpoint::text, string_agg(h.event, ''), string_agg(n.result::text, ''))"
        " FROM df.instances i JOIN df.history h ON h.instance_id = i.id JOIN df.nodes n ON n.instance_id = i.id"
        " WHERE i.id = %s GROUP BY i.id",
        (instance.id,),
    ).fetchone()
    assert stored is not None and "tok-7f3a9" not in stored[0] and "{secret:embed_token}" in stored[0]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.execute("SELECT value FROM df.secrets")
