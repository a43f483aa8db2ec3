"""HTTP steps against a loopback server started here (127.0.0.1, a random port), loopback allowed explicitly by
the policy: the envelope, 4xx and 5xx, redirects (off by default; each hop re-vetted), Idempotency-Key, the size
limit, the timeout, multipart uploads and secrets. `HttpExecutor.execute` is called directly: no database."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pgdurable.runtime.executors.http import HttpExecutor, HttpPolicy
from pgdurable.runtime.executors.sql import StepError

KEY = "0f9c2a4e-instance:root.left:1"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.handle_any()

    def do_POST(self) -> None:
        self.handle_any()

    def do_PUT(self) -> None:
        self.handle_any()

    def do_DELETE(self) -> None:
        self.handle_any()

    def do_PATCH(self) -> None:
        self.handle_any()

    def reply(self, status: int, body: bytes, content_type: str | None, *extra: tuple[str, str]) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("latin-1"),
        }
        self.server.requests.append(seen)
        route = url.path
        if route == "/json":
            payload = json.dumps({"hello": "wörld", "n": 1}).encode()
            self.reply(200, payload, "application/json", ("X-Multi", "a"), ("X-Multi", "b"))
        elif route.startswith("/status/"):
            status = int(route.rsplit("/", 1)[1])
            self.reply(status, query.get("body", "boom").encode(), "text/plain; charset=utf-8")
        elif route == "/echo":
            self.reply(int(query.get("status", "200")), json.dumps(seen).encode(), "application/json")
        elif route == "/redirect":
            self.reply(int(query.get("code", "302")), b"", None, ("Location", query["to"]))
        elif route == "/big":
            size = int(query["n"])
            if query.get("length", "1") == "1":
                self.reply(200, b"x" * size, "text/plain")
            else:  # no Content-Length: the body runs until the connection closes
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Connection", "close")
                self.end_headers()
                for _ in range(size // 100):
                    self.wfile.write(b"x" * 100)
                self.close_connection = True
        elif route == "/slow":
            time.sleep(float(query["s"]))
            self.reply(200, b"late", "text/plain")
        elif route == "/bytes":
            data = base64.urlsafe_b64decode(query["b64"])
            self.reply(200, data, query.get("type"))
        elif route == "/cookie":
            self.reply(200, b"ok", "text/plain", ("Set-Cookie", "session=abc; Path=/"))
        elif route == "/upload":
            self.reply(
                200, json.dumps(parse_multipart(self.headers["Content-Type"], body)).encode(), "application/json"
            )
        else:
            self.reply(404, b"no route", "text/plain")


def parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    """A strict little multipart/form-data parser: exact bytes, no line-ending repair."""
    assert content_type.startswith("multipart/form-data; boundary=")
    boundary = content_type.split("boundary=", 1)[1].encode()
    chunks = body.split(b"--" + boundary)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
    parts = []
    for chunk in chunks[1:-1]:
        head, _, data = chunk[2:].partition(b"\r\n\r\n")
        assert data.endswith(b"\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append(
            {
                "disposition": headers["Content-Disposition"],
                "content_type": headers.get("Content-Type"),
                "data_b64": base64.b64encode(data[:-2]).decode(),
            }
        )
    return {"content_type": content_type, "parts": parts}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict[str, Any]] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (the timeout and size-limit tests) is expected

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


LOOPBACK = HttpPolicy(allow_hosts=["127.0.0.1"], allow_loopback=True)


@pytest.fixture
def executor() -> Iterator[HttpExecutor]:
    with HttpExecutor(LOOPBACK) as ex:
        yield ex


def request(url: str, method: str = "GET", body: str | None = None, headers: dict[str, Any] | None = None,
            timeout: int = 10) -> str:  # fmt: skip
    return json.dumps({"url": url, "method": method, "body": body, "headers": headers, "timeout_seconds": timeout})


def call(
    ex: HttpExecutor, req: str, *, multipart: bool = False, secrets: dict[str, str] | None = None
) -> dict[str, Any]:
    envelope = ex.execute(req, multipart=multipart, idempotency_key=KEY, secrets=secrets or {})
    parsed: dict[str, Any] = json.loads(envelope)
    return parsed


def fails(ex: HttpExecutor, req: str, *, multipart: bool = False, secrets: dict[str, str] | None = None) -> StepError:
    with pytest.raises(StepError) as caught:
        ex.execute(req, multipart=multipart, idempotency_key=KEY, secrets=secrets or {})
    return caught.value


# ---------------------------------------------------------------------------------------------------------------
# The envelope
# ---------------------------------------------------------------------------------------------------------------


def test_200_json_response_becomes_the_envelope(server: Server, executor: HttpExecutor) -> None:
    text = executor.execute(request(f"{server.base}/json"), multipart=False, idempotency_key=KEY, secrets={})
    envelope = json.loads(text)
    assert list(envelope) == ["status", "body", "encoding", "headers", "ok", "duration_ms"]
    assert text == json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)  # compact
    assert envelope["status"] == 200 and envelope["ok"] is True and envelope["encoding"] == "text"
    assert json.loads(envelope["body"]) == {"hello": "wörld", "n": 1}
    assert envelope["headers"]["content-type"] == "application/json"
    assert envelope["headers"]["x-multi"] == "b"  # repeated names collapse to one (the last, as pg_durable)
    assert isinstance(envelope["duration_ms"], int) and envelope["duration_ms"] >= 0


def test_404_completes_with_ok_false(server: Server, executor: HttpExecutor) -> None:
    envelope = call(executor, request(f"{server.base}/status/404?body=missing"))
    assert (envelope["status"], envelope["ok"], envelope["body"]) == (404, False, "missing")


def test_500_fails_the_node_with_pg_durables_message(server: Server, executor: HttpExecutor) -> None:
    url = f"{server.base}/status/500?body=boom"
    error = fails(executor, request(url, "POST", body="{}"))
    assert error.message == f"HTTP POST {url} returned 500: boom"
    assert error.detail == {"reason": "status", "url": url, "status": 500}
    url = f"{server.base}/status/503?body={'é' * 1000}"
    message = fails(executor, request(url)).message
    preview = message.split(": ", 1)[1]
    assert preview == "é" * 256 + "... [truncated, 2000 bytes total]"


def test_each_method_and_the_body_are_sent_as_given(server: Server, executor: HttpExecutor) -> None:
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        seen = json.loads(call(executor, request(f"{server.base}/echo", method, body='{"a":1}'))["body"])
        assert (seen["method"], seen["body"]) == (method, '{"a":1}')
        assert "content-type" not in seen["headers"]  # none added: callers pass one for JSON APIs
    assert fails(executor, request(f"{server.base}/echo", "HEAD")).message == "Unsupported HTTP method: HEAD"


def test_binary_and_text_bodies(server: Server, executor: HttpExecutor) -> None:
    def fetch(data: bytes, content_type: str | None) -> dict[str, Any]:
        query = f"b64={base64.urlsafe_b64encode(data).decode()}" + (f"&type={content_type}" if content_type else "")
        return call(executor, request(f"{server.base}/bytes?{query}"))

    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    envelope = fetch(png, "image/png")
    assert envelope["encoding"] == "base64" and base64.b64decode(envelope["body"]) == png
    assert fetch("plain ü".encode(), "application/octet-stream")["encoding"] == "text"  # valid UTF-8, no NUL
    assert fetch(b"\xff\xfe", None)["encoding"] == "base64"
    assert fetch(b"a\x00b", None)["encoding"] == "base64"
    latin = fetch("café".encode("latin-1"), "text/plain; charset=ISO-8859-1")
    assert (latin["body"], latin["encoding"]) == ("café", "text")
    assert fetch(b'{"x": 1}', "application/problem+json")["body"] == '{"x": 1}'


# ---------------------------------------------------------------------------------------------------------------
# Headers sent
# ---------------------------------------------------------------------------------------------------------------


def test_idempotency_key_and_user_agent_are_sent(server: Server, executor: HttpExecutor) -> None:
    seen = json.loads(call(executor, request(f"{server.base}/echo", headers={"X-Trace": "t1", "N": 5}))["body"])
    assert seen["headers"]["idempotency-key"] == KEY
    assert seen["headers"]["user-agent"].startswith("pgdurable/")
    assert seen["headers"]["x-trace"] == "t1"
    assert "n" not in seen["headers"]  # non-string header values are dropped, as pg_durable does
    headers = {"User-Agent": "acme/2", "Host": "evil.test", "Content-Length": "999", "Connection": "upgrade"}
    seen = json.loads(call(executor, request(f"{server.base}/echo", "POST", "abc", headers))["body"])
    assert seen["headers"]["user-agent"] == "acme/2"
    assert seen["headers"]["host"] == server.base.removeprefix("http://")  # framing headers are ours
    assert seen["headers"]["content-length"] == "3" and seen["body"] == "abc"


def test_cookies_are_not_kept_between_steps(server: Server, executor: HttpExecutor) -> None:
    call(executor, request(f"{server.base}/cookie"))
    seen = json.loads(call(executor, request(f"{server.base}/echo"))["body"])
    assert "cookie" not in seen["headers"]


def test_environment_proxies_are_ignored(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://10.255.255.1:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with HttpExecutor(LOOPBACK) as ex:
        assert call(ex, request(f"{server.base}/json"))["status"] == 200


# ---------------------------------------------------------------------------------------------------------------
# Redirects
# ---------------------------------------------------------------------------------------------------------------


def test_redirects_are_not_followed_by_default(server: Server, executor: HttpExecutor) -> None:
    envelope = call(executor, request(f"{server.base}/redirect?to=/json"))
    assert (envelope["status"], envelope["ok"], envelope["headers"]["location"]) == (302, False, "/json")


def test_redirects_allowed_by_policy_are_followed(server: Server) -> None:
    with HttpExecutor(HttpPolicy(allow_hosts=["127.0.0.1"], allow_loopback=True, max_redirects=2)) as ex:
        assert call(ex, request(f"{server.base}/redirect?to=/json"))["status"] == 200
        hop = "/redirect?to=/redirect%3Fto%3D/redirect%253Fto%253D/json"
        error = fails(ex, request(f"{server.base}{hop}"))
        assert error.message == f"HTTP request failed: {server.base}{hop} - more than 2 redirects"


class Resolver:
    """`public.test` stands for a public name; it resolves to the test server, which the policy exempts by its
    exact address (allow_networks 127.0.0.1/32), while loopback in general stays blocked."""

    def __init__(self) -> None:
        self.table = {"public.test": ["127.0.0.1"], "sneaky.test": ["127.0.0.2"], "other.test": ["127.0.0.1"]}
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.table[host]


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is the cloud metadata endpoint"),
        ("http://10.0.0.5/", "10.0.0.5 is private (10.0.0.0/8)"),
        ("http://sneaky.test:{port}/json", "127.0.0.2 is loopback (127.0.0.0/8)"),
        ("http://[::ffff:127.0.0.2]:{port}/json", "IPv4-mapped form of 127.0.0.2, loopback"),
        ("http://2130706434:{port}/json", "127.0.0.2 is loopback"),
    ],
)
def test_a_redirect_to_a_private_address_is_refused(server: Server, target: str, why: str) -> None:
    port = server.server_address[1]
    policy = HttpPolicy(allow_hosts=["*"], allow_networks=["127.0.0.1/32"], max_redirects=5)
    resolver = Resolver()
    server.requests.clear()
    with HttpExecutor(policy, resolver=resolver) as ex:
        url = f"http://public.test:{port}/json"
        assert call(ex, request(url))["status"] == 200  # the first hop itself is allowed
        error = fails(ex, request(f"http://public.test:{port}/redirect?to={target.format(port=port)}"))
    assert error.message.startswith("Blocked: the resolved IP address for")
    assert why in error.message
    assert error.detail is not None and error.detail["check"] == "ip"
    assert [r["path"] for r in server.requests] == ["/json", f"/redirect?to={target.format(port=port)}"]
    assert server.requests[0]["headers"]["host"] == f"public.test:{port}"  # Host stays the name, not the IP


def test_a_redirect_off_the_allow_list_is_refused_and_secret_headers_stay_home(server: Server) -> None:
    port = server.server_address[1]
    policy = HttpPolicy(allow_hosts=["public.test"], allow_networks=["127.0.0.1/32"], max_redirects=5)
    with HttpExecutor(policy, resolver=Resolver()) as ex:
        error = fails(ex, request(f"http://public.test:{port}/redirect?to=http://other.test:{port}/echo"))
        assert error.message.startswith("Blocked: host 'other.test' is not in the HTTP allow-list")
    policy = HttpPolicy(allow_hosts=["*.test"], allow_networks=["127.0.0.1/32"], max_redirects=5)
    with HttpExecutor(policy, resolver=Resolver()) as ex:
        headers = {"X-Api-Key": "{secret:KEY}", "X-Plain": "p"}
        url = f"http://public.test:{port}/redirect?to=http://other.test:{port}/echo"
        seen = json.loads(call(ex, request(url, headers=headers), secrets={"KEY": "s3cr3t-value"})["body"])
    assert seen["headers"]["x-plain"] == "p" and "x-api-key" not in seen["headers"]
    assert seen["headers"]["idempotency-key"] == KEY


# ---------------------------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------------------------


def test_response_size_limit(server: Server) -> None:
    with HttpExecutor(HttpPolicy(allow_hosts=["127.0.0.1"], allow_loopback=True, max_response_bytes=1000)) as ex:
        assert len(call(ex, request(f"{server.base}/big?n=1000"))["body"]) == 1000
        for length in ("1", "0"):  # declared up front, or only found out while streaming
            url = f"{server.base}/big?n=5000&length={length}"
            error = fails(ex, request(url))
            assert error.message == (
                f"HTTP response from {url} is larger than the limit of 1000 bytes (df.settings http_max_response_bytes)"
            )
            assert error.detail is not None and error.detail["reason"] == "too_large"


def test_timeout(server: Server, executor: HttpExecutor) -> None:
    url = f"{server.base}/slow?s=3"
    started = time.monotonic()
    error = fails(executor, request(url, timeout=1))
    assert time.monotonic() - started < 2.5
    assert error.message == f"HTTP timeout after 1s: {url}"
    assert error.detail is not None and error.detail["reason"] == "timeout"


def test_connection_refused(executor: HttpExecutor) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    assert fails(executor, request(url)).message.startswith(f"HTTP connection failed: {url} - ")


# ---------------------------------------------------------------------------------------------------------------
# Multipart
# ---------------------------------------------------------------------------------------------------------------


def multipart(
    url: str, parts: list[dict[str, Any]], method: str = "POST", headers: dict[str, Any] | None = None
) -> str:
    return json.dumps({"url": url, "method": method, "parts": parts, "headers": headers, "timeout_seconds": 10})


def pg_base64(data: bytes) -> str:
    """What PostgreSQL's encode(bytea, 'base64') returns: lines of 76 characters."""
    flat = base64.b64encode(data).decode()
    return "\n".join(flat[i : i + 76] for i in range(0, len(flat), 76))


def test_multipart_upload_is_received_exactly(server: Server, executor: HttpExecutor) -> None:
    pdf = bytes(range(256)) * 3 + b"\r\n--not-a-boundary\r\n"
    parts = [
        {"name": "file", "filename": "a.pdf", "content_type": "application/pdf", "data_b64": pg_base64(pdf)},
        {"name": "purpose", "data_b64": base64.b64encode(b"assistants").decode()},
        {"name": 'we"ird', "filename": "x\r\ny.txt", "data_b64": "  aGk=\n"},
    ]
    headers = {"Content-Type": "application/json", "X-Tenant": "t"}
    envelope = call(executor, multipart(f"{server.base}/upload", parts, "PUT", headers), multipart=True)
    received = json.loads(envelope["body"])
    assert received["content_type"].startswith("multipart/form-data; boundary=")  # the caller's was dropped
    file, purpose, weird = received["parts"]
    assert file["disposition"] == 'form-data; name="file"; filename="a.pdf"'
    assert file["content_type"] == "application/pdf"
    assert base64.b64decode(file["data_b64"]) == pdf
    assert purpose["disposition"] == 'form-data; name="purpose"' and purpose["content_type"] is None
    assert base64.b64decode(purpose["data_b64"]) == b"assistants"
    assert weird["disposition"] == 'form-data; name="we%22ird"; filename="x%0D%0Ay.txt"'  # no header injection
    assert base64.b64decode(weird["data_b64"]) == b"hi"
    assert server.requests[-1]["headers"]["idempotency-key"] == KEY
    assert server.requests[-1]["headers"]["x-tenant"] == "t"


def test_multipart_rules(server: Server, executor: HttpExecutor) -> None:
    part = {"name": "f", "data_b64": "aGk="}
    url = f"{server.base}/upload"
    assert fails(executor, multipart(url, [part], "GET"), multipart=True).message == (
        "Unsupported HTTP method for multipart: GET"
    )
    bad = fails(executor, multipart(url, [{"name": "f", "data_b64": "a!b="}]), multipart=True).message
    assert bad.startswith("Invalid base64 in part 'f': ")
    empty = fails(executor, multipart(url, []), multipart=True).message
    assert empty == "Invalid multipart HTTP config: parts must be a non-empty array"
    injected = [{"name": "f", "data_b64": "aGk=", "content_type": "text/plain\r\nX-Evil: 1"}]
    assert fails(executor, multipart(url, injected), multipart=True).message == "Invalid content_type for part 'f'"
    error = fails(executor, multipart(f"{server.base}/status/502?body=down", [part]), multipart=True)
    assert error.message == f"HTTP_MULTIPART POST {server.base}/status/502?body=down returned 502: down"


# ---------------------------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------------------------

SECRETS = {"API_TOKEN": "tok-7f3a9c1e5b", "QKEY": "q-51d0e2a8", "PASS": "pw-c4b3a291"}


def test_secrets_are_sent_and_never_come_back(server: Server, executor: HttpExecutor) -> None:
    url = f"{server.base}/echo?key={{secret:QKEY}}"
    headers = {"Authorization": "Bearer {secret:API_TOKEN}"}
    text = executor.execute(
        request(url, "POST", '{"password": "{secret:PASS}"}', headers),
        multipart=False,
        idempotency_key=KEY,
        secrets=SECRETS,
    )
    seen = server.requests[-1]
    assert seen["headers"]["authorization"] == "Bearer tok-7f3a9c1e5b"
    assert seen["path"] == "/echo?key=q-51d0e2a8"
    assert seen["body"] == '{"password": "pw-c4b3a291"}'
    for value in SECRETS.values():
        assert value not in text
    echoed = json.loads(json.loads(text)["body"])
    assert echoed["headers"]["authorization"] == "Bearer [secret:API_TOKEN]"
    assert echoed["path"] == "/echo?key=[secret:QKEY]"


def test_secrets_never_appear_in_errors(server: Server, executor: HttpExecutor) -> None:
    url = f"{server.base}/echo?status=500&key={{secret:QKEY}}"
    error = fails(executor, request(url, headers={"Authorization": "{secret:API_TOKEN}"}), secrets=SECRETS)
    assert error.message.startswith(f"HTTP GET {url} returned 500: ")  # the URL as written, unresolved
    assert "[secret:API_TOKEN]" in error.message
    for value in SECRETS.values():
        assert value not in error.message and value not in json.dumps(error.detail)
    slow = f"{server.base}/slow?s=3&k={{secret:QKEY}}"
    error = fails(executor, request(slow, timeout=1), secrets=SECRETS)
    assert error.message == f"HTTP timeout after 1s: {slow}"


def test_a_missing_secret_is_named_and_nothing_is_sent(server: Server, executor: HttpExecutor) -> None:
    before = len(server.requests)
    error = fails(executor, request(f"{server.base}/echo", headers={"X-Key": "{secret:NOPE}"}), secrets=SECRETS)
    assert error.message == "HTTP step refers to secret 'NOPE', which is not defined"
    assert error.detail is not None and error.detail["reason"] == "secret"
    assert len(server.requests) == before


def test_a_secret_that_would_break_a_header_is_refused_without_echoing_it(executor: HttpExecutor) -> None:
    error = fails(
        executor, request("http://127.0.0.1:9/", headers={"X-Key": "{secret:BAD}"}), secrets={"BAD": "a\r\nX-Evil: 1"}
    )
    assert error.message == "Invalid value for HTTP header 'X-Key': only ASCII without CR, LF or NUL"


# ---------------------------------------------------------------------------------------------------------------
# TLS: connect to the vetted address, verify the certificate (and send SNI) for the name
# ---------------------------------------------------------------------------------------------------------------


class TlsServer(Server):
    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self.names: list[str | None] = []
        context.sni_callback = lambda sock, name, ctx: self.names.append(name)
        self.socket = context.wrap_socket(self.socket, server_side=True)


@pytest.fixture(scope="module")
def tls() -> Iterator[tuple[TlsServer, ssl.SSLContext]]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("public.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    srv = TlsServer(server_context)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, client_context
    srv.shutdown()
    srv.server_close()


def test_https_verifies_the_name_while_connecting_to_the_vetted_address(tls: tuple[TlsServer, ssl.SSLContext]) -> None:
    srv, client_context = tls
    port = srv.server_address[1]
    policy = HttpPolicy(allow_hosts=["*.test"], allow_networks=["127.0.0.1/32"])
    resolver = Resolver()
    with HttpExecutor(policy, resolver=resolver, verify=client_context) as ex:
        envelope = call(ex, request(f"https://public.test:{port}/echo"))
        assert envelope["status"] == 200
        assert json.loads(envelope["body"])["headers"]["host"] == f"public.test:{port}"
        assert srv.names[-1] == "public.test"
        assert resolver.calls == ["public.test"]
        # other.test resolves to the same server, whose certificate does not name it
        error = fails(ex, request(f"https://other.test:{port}/echo"))
        assert error.message.startswith(f"HTTP connection failed: https://other.test:{port}/echo - ")
        assert "certificate" in error.message.lower()
    with HttpExecutor(HttpPolicy(allow_hosts=["*.test"], allow_networks=["127.0.0.1/32"]), resolver=Resolver()) as ex:
        error = fails(ex, request(f"https://public.test:{port}/echo"))  # a CA the default bundle does not know
        assert "CERTIFICATE_VERIFY_FAILED" in error.message
