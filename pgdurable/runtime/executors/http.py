"""HTTP steps (`df.http`, `df.http_multipart`) on httpx, behind an SSRF guard that sits at the transport.

Owns the egress policy value, the guard (vet an address, then connect to that address), and the executor that
turns a rendered request into pg_durable's response envelope (reference §5.7, §6.11). No database, no workflow
semantics: the worker decides whether HTTP is enabled and which secrets a step may use.

Errors::

    PgdurableError
     ├── BlockedRequest   the guard refused a destination (scheme, allow-list, address); raised in the transport
     └── StepError        (executors.sql) the only error `HttpExecutor.execute` raises: the node's message
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import http.cookiejar
import ipaddress
import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, TypeAlias

import attrs
import httpcore
import httpx
from attrs import field, frozen

from pgdurable.errors import PgdurableError
from pgdurable.runtime.executors.sql import StepError

__all__ = [
    "AddressGuard",
    "BlockedRequest",
    "GuardedBackend",
    "GuardedTransport",
    "HttpExecutor",
    "HttpPolicy",
    "IPAddress",
    "Resolver",
    "parse_ip_literal",
    "system_resolver",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver: TypeAlias = Callable[[str, int], Iterable[str | IPAddress]]
"""`(host, port) -> addresses`. The guard calls it once per connection and connects only to what it returned."""

DEFAULT_MAX_RESPONSE_BYTES: Final = 10 * 1024 * 1024
_ERROR_PREVIEW_BYTES: Final = 512
_RESTRICTED: Final = "df.http() cannot access private or internal network addresses."


class BlockedRequest(PgdurableError):
    """The guard refused a destination. `check` is pg_durable's audit tag: scheme, allowlist or ip."""

    def __init__(self, message: str, check: str = "ip") -> None:
        super().__init__(message)
        self.message = message
        self.check = check

    def __reduce__(self) -> tuple[type[BlockedRequest], tuple[str, str]]:
        return (type(self), (self.message, self.check))


# --------------------------------------------------------------------------------------------------------------
# Policy (a value; the worker builds it from df.settings)
# --------------------------------------------------------------------------------------------------------------


def _default_user_agent() -> str:
    import pgdurable  # late: this module loads while the package is still importing

    return f"pgdurable/{pgdurable.__version__}"


def _host_pattern(raw: str) -> str:
    """One allow-list pattern, lowercase and IDNA-encoded (URL hosts reach the check in that form)."""
    pattern = raw.strip().lower()
    if pattern == "*":
        return pattern
    wildcard, name = ("*.", pattern[2:]) if pattern.startswith("*.") else ("", pattern)
    name = name.rstrip(".")
    if "*" in name or not name or any(c in name for c in "/@?# "):
        raise ValueError(f"allow-list pattern {raw!r} must be a host name, *.suffix, an IP address or *")
    return wildcard + (name if name.isascii() else name.encode("idna").decode("ascii"))


def _hosts(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(_host_pattern(str(v)) for v in value if str(v).strip())


def _networks(value: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in value)


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive integer, not {value!r}")


def _not_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be zero or a positive integer, not {value!r}")


@frozen
class HttpPolicy:
    """What HTTP steps may reach.

    - `allow_hosts`: patterns, compared lowercase: `api.example.com` (exactly), `*.example.com` (any subdomain,
      not the apex), an IP literal (`203.0.113.7`, `[2001:db8::1]`), or `*` (any host). Empty: nothing.
    - Every resolved address must also pass the block list, unless `allow_loopback` (127/8, ::1: tests and
      local development) or `allow_networks` (explicit CIDR exemptions, e.g. one internal service) exempt it.
    - `max_redirects` is 0 by default: a 3xx comes back as the envelope with ok=false. Above 0, every hop
      passes the allow-list and the guard again.

    >>> HttpPolicy(allow_hosts=["*.Example.com"]).allows_host("api.example.com")
    True
    >>> HttpPolicy(allow_hosts=["*.example.com"]).allows_host("example.com")
    False
    """

    allow_hosts: tuple[str, ...] = field(default=(), converter=_hosts)
    allow_loopback: bool = False
    allow_networks: tuple[IPNetwork, ...] = field(default=(), converter=_networks)
    max_response_bytes: int = field(default=DEFAULT_MAX_RESPONSE_BYTES, validator=_positive)
    max_redirects: int = field(default=0, validator=_not_negative)
    user_agent: str = field(factory=_default_user_agent)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> HttpPolicy:
        """Build the policy from `df.settings` values (jsonb, already decoded); absent keys keep the defaults.

        Keys: `http_allow_hosts` (array of patterns, or one comma-separated string), `http_allow_loopback`
        (bool), `http_allow_networks` (array of CIDRs), `http_max_response_bytes`, `http_max_redirects` (ints),
        `http_user_agent` (text).

        >>> HttpPolicy.from_settings({"http_allow_hosts": "a.test, *.b.test", "http_max_redirects": 2}).allow_hosts
        ('a.test', '*.b.test')
        """
        kwargs: dict[str, Any] = {}
        for key, name in (("http_allow_hosts", "allow_hosts"), ("http_allow_networks", "allow_networks")):
            value = settings.get(key)
            if isinstance(value, str):
                value = value.split(",")
            if value is not None:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"df.settings {key} must be an array of strings")
                kwargs[name] = value
        if (loopback := settings.get("http_allow_loopback")) is not None:
            if not isinstance(loopback, bool):
                raise ValueError("df.settings http_allow_loopback must be true or false")
            kwargs["allow_loopback"] = loopback
        for key, name in (("http_max_response_bytes", "max_response_bytes"), ("http_max_redirects", "max_redirects")):
            if (number := settings.get(key)) is not None:
                kwargs[name] = number
        if (agent := settings.get("http_user_agent")) is not None:
            kwargs["user_agent"] = str(agent)
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ValueError(f"df.settings: {exc}") from None

    def allows_host(self, host: str) -> bool:
        """Whether `host` (as in the URL: a name, or an IP literal in any form) matches the allow-list."""
        host = host.lower().strip("[]").rstrip(".")
        try:
            literal = parse_ip_literal(host)
        except BlockedRequest:
            literal = None  # matched as a name here; the guard refuses it with the precise reason
        for pattern in self.allow_hosts:
            if pattern == "*":
                return True
            if literal is not None:
                with contextlib.suppress(ValueError):
                    if ipaddress.ip_address(pattern.strip("[]")) == literal:
                        return True
            elif pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False


# --------------------------------------------------------------------------------------------------------------
# Addresses: literal forms and the block list (pure)
# --------------------------------------------------------------------------------------------------------------


def _ipv4_number(part: str) -> int | None:
    """One dotted part as browsers and inet_aton read it: 0x hex, leading-0 octal, else decimal."""
    digits, base = part, 10
    if part[:2] in ("0x", "0X"):
        digits, base = part[2:], 16
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    alphabet = {16: "0123456789abcdefABCDEF", 8: "01234567", 10: "0123456789"}[base]
    if not digits:
        return 0 if base == 16 else None
    return int(digits, base) if all(c in alphabet for c in digits) else None


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a URL host denotes when it is an IP literal; None for a name.

    IPv4 is read the way browsers (WHATWG) and libc's inet_aton do: 1 to 4 parts, each decimal, octal (leading
    0) or hex (0x). A host whose last label is numeric but which is no valid address is refused, rather than
    handed to a resolver that might read it differently.

    >>> parse_ip_literal("2130706433"), parse_ip_literal("0177.0.0.1"), parse_ip_literal("0x7f.1")
    (IPv4Address('127.0.0.1'), IPv4Address('127.0.0.1'), IPv4Address('127.0.0.1'))
    >>> parse_ip_literal("[::ffff:127.0.0.1]"), parse_ip_literal("example.com")
    (IPv6Address('::ffff:7f00:1'), None)
    """
    name = host.strip()
    if ":" in name or name.startswith("["):
        if "%" in name:
            raise BlockedRequest(f"Blocked: IPv6 zone identifiers are not allowed ('{host}')", "ip")
        try:
            return ipaddress.IPv6Address(name.strip("[]"))
        except ValueError:
            raise BlockedRequest(f"Blocked: '{host}' is not a valid IPv6 address", "ip") from None
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    last = parts[-1] if parts else ""
    if not last or (not (last.isascii() and last.isdigit()) and _ipv4_number(last) is None):
        return None  # a name: its last label is not a number
    numbers = [_ipv4_number(p) if p else None for p in parts]
    if len(numbers) > 4 or any(n is None for n in numbers):
        raise BlockedRequest(f"Blocked: '{host}' is not a valid IPv4 address", "ip")
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise BlockedRequest(f"Blocked: '{host}' is not a valid IPv4 address", "ip")
    value = values[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(values[:-1]))
    return ipaddress.IPv4Address(value)


def _check_scheme(scheme: str) -> None:
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise BlockedRequest(f"Blocked: unsupported URL scheme '{scheme}'. Only http and https are allowed.", "scheme")


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), label) for net, label in rows)


_METADATA: Final = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_BLOCKED: Final = _table(
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments"),  # includes Teredo 2001::/32
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
    ("::/8", "reserved"),  # IPv4-compatible and other legacy forms; after 64:ff9b:1::/48, which it contains
)
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), with the form's name."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "IPv4-mapped"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    if address.sixtofour is not None:
        return address.sixtofour, "6to4"
    return None


def _blocked_reason(address: IPAddress) -> str | None:
    """Why an address is refused, e.g. `private (10.0.0.0/8)`; None when it is public."""
    if address in _METADATA:
        return "the cloud metadata endpoint"
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        inner, form = embedded
        reason = _blocked_reason(inner)
        return None if reason is None else f"{form} form of {inner}, {reason}"
    for network, label in _BLOCKED:
        if address.version == network.version and address in network:
            return f"{label} ({network})"
    return None if address.is_global else "not globally routable"


def system_resolver(host: str, port: int) -> list[str]:
    """The default resolver: `socket.getaddrinfo`, addresses in the order the system prefers."""
    seen: dict[str, None] = {}
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


class AddressGuard:
    """Resolves a host once and vets every address; the caller connects only to what `vet` returned."""

    def __init__(self, policy: HttpPolicy, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self.resolver: Resolver = resolver or system_resolver

    def exempt(self, address: IPAddress) -> bool:
        embedded = _embedded_ipv4(address)
        candidates = [address] if embedded is None else [address, embedded[0]]
        for candidate in candidates:
            if self.policy.allow_loopback and candidate.is_loopback:
                return True
            if any(candidate.version == n.version and candidate in n for n in self.policy.allow_networks):
                return True
        return False

    def check(self, host: str, address: IPAddress) -> None:
        """Raise `BlockedRequest` (pg_durable's text, plus the address and why) unless `address` may be used."""
        reason = _blocked_reason(address)
        if reason is not None and not self.exempt(address):
            raise BlockedRequest(
                f"Blocked: the resolved IP address for '{host}' is in a restricted range. {_RESTRICTED} "
                f"({address} is {reason})",
                "ip",
            )

    def vet(self, host: str, port: int) -> tuple[IPAddress, ...]:
        """The addresses to connect to: the literal itself, or every resolved address, all of them allowed.

        One blocked answer refuses the whole name (a mixed answer is the usual rebinding trick). `OSError`
        from the resolver (and an empty answer) propagates: the caller reports it as a connection failure.
        """
        literal = parse_ip_literal(host)
        if literal is not None:
            self.check(host, literal)
            return (literal,)
        addresses: dict[IPAddress, None] = {}
        for answer in self.resolver(host, port):
            try:
                addresses.setdefault(ipaddress.ip_address(str(answer)), None)
            except ValueError:
                raise BlockedRequest(f"Blocked: the resolver returned a non-address for '{host}'", "ip") from None
        if not addresses:
            raise OSError(f"no addresses for '{host}'")
        for address in addresses:
            self.check(host, address)
        return tuple(addresses)


# --------------------------------------------------------------------------------------------------------------
# Transport: the guard at the socket
# --------------------------------------------------------------------------------------------------------------


class GuardedBackend(httpcore.NetworkBackend):
    """An httpcore network backend that opens TCP connections only to addresses the guard vetted.

    Why here, and not by rewriting the URL to an IP: httpcore hands `connect_tcp` the URL's host name and then
    starts TLS on the returned stream with `server_hostname=<that name>`. Swapping only the socket's address
    at this point leaves everything else about the name intact: the Host header, SNI, certificate
    verification against the name, and the pool's keys. Resolution, vetting and connecting happen in this one
    call, so there is no second lookup an attacker's DNS could answer differently (no rebinding). Each
    redirect hop that needs a new connection comes through here too; a pooled connection was vetted when it
    was opened.
    """

    def __init__(self, guard: AddressGuard, inner: httpcore.NetworkBackend | None = None) -> None:
        self.guard = guard
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self.guard.vet(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"could not resolve host '{host}': {exc}") from None
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return self.inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"no address to connect to for '{host}'")

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise BlockedRequest("Blocked: Unix domain sockets are not allowed", "scheme")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


_HTTPCORE_ERRORS: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    """httpcore's exceptions as httpx's public ones; anything else (BlockedRequest) passes unchanged."""
    try:
        yield
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
        mapped = next(target for source, target in _HTTPCORE_ERRORS if isinstance(exc, source))
        raise mapped(str(exc)) from exc


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            with _httpx_errors():
                close()


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport: per request (so per redirect hop) the scheme and allow-list, then a pool whose
    connections come from `GuardedBackend`. No proxies, whatever the environment says."""

    def __init__(
        self,
        policy: HttpPolicy,
        *,
        resolver: Resolver | None = None,
        network_backend: httpcore.NetworkBackend | None = None,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        self.policy = policy
        self.guard = AddressGuard(policy, resolver)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(self.guard, network_backend),
        )

    def check_destination(self, url: httpx.URL) -> None:
        _check_scheme(url.scheme)
        if not url.host:
            raise BlockedRequest("Blocked: the URL has no host", "allowlist")
        if not self.policy.allows_host(url.host):
            raise BlockedRequest(
                f"Blocked: host '{url.host}' is not in the HTTP allow-list (df.settings http_allow_hosts)",
                "allowlist",
            )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.check_destination(request.url)
        if not isinstance(request.stream, httpx.SyncByteStream):
            raise TypeError("GuardedTransport needs a synchronous request body")
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = self._pool.handle_request(core_request)
        if not isinstance(response.stream, Iterable):
            raise TypeError("httpcore returned an asynchronous response body")
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


# --------------------------------------------------------------------------------------------------------------
# The executor: rendered request in, envelope out
# --------------------------------------------------------------------------------------------------------------

_SECRET: Final = re.compile(r"\{secret:([A-Za-z_][A-Za-z0-9_.\-]*)\}")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FRAMING: Final = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_METHODS: Final = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH"})
_MULTIPART_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_TEXT_TYPES: Final = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/ecmascript",
        "application/x-www-form-urlencoded",
        "application/graphql",
        "application/yaml",
        "application/x-yaml",
    }
)


@frozen
class _Part:
    name: str
    data: bytes
    filename: str | None
    content_type: str | None


@frozen
class _Spec:
    """A rendered request, parsed and checked; `url` and header values still hold `{secret:...}`."""

    url: str
    method: str
    headers: tuple[tuple[str, str], ...]
    body: str | None
    parts: tuple[_Part, ...] | None
    timeout: float


class _Fail(Exception):
    """Internal: a failure whose message is final (before secret scrubbing)."""

    def __init__(self, message: str, reason: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status


def _invalid(multipart: bool, problem: str) -> _Fail:
    return _Fail(f"Invalid {'multipart ' if multipart else ''}HTTP config: {problem}", "invalid")


def _parse_part(index: int, raw: object) -> _Part:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not isinstance(raw.get("data_b64"), str):
        raise _invalid(True, f"part {index} must be an object with string name and data_b64")
    name = raw["name"]
    filename, content_type = raw.get("filename"), raw.get("content_type")
    if filename is not None and not isinstance(filename, str):
        raise _invalid(True, f"filename of part '{name}' must be a string")
    if content_type is not None and (not isinstance(content_type, str) or re.search(r"[\r\n\x00]", content_type)):
        raise _Fail(f"Invalid content_type for part '{name}'", "invalid")
    stripped = re.sub(r"[ \t\n\r\x0b\x0c]", "", raw["data_b64"])
    try:
        data = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Fail(f"Invalid base64 in part '{name}': {exc}", "invalid") from None
    return _Part(name, data, filename, content_type)


def _parse(request_json: str, multipart: bool) -> _Spec:
    try:
        config = json.loads(request_json)
    except ValueError as exc:
        raise _invalid(multipart, str(exc)) from None
    if not isinstance(config, dict):
        raise _invalid(multipart, "expected a JSON object")
    url, method, timeout = config.get("url"), config.get("method"), config.get("timeout_seconds")
    if not isinstance(url, str) or not isinstance(method, str):
        raise _invalid(multipart, "url and method must be strings")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise _invalid(multipart, "timeout_seconds must be a positive number")
    if multipart and method not in _MULTIPART_METHODS:
        raise _Fail(f"Unsupported HTTP method for multipart: {method}", "invalid")
    if not multipart and method not in _METHODS:
        raise _Fail(f"Unsupported HTTP method: {method}", "invalid")
    raw_headers = config.get("headers")  # pg_durable: a non-object map, and non-string values, are dropped
    headers = tuple(
        (k, v) for k, v in (raw_headers.items() if isinstance(raw_headers, dict) else ()) if isinstance(v, str)
    )
    for name, _ in headers:
        if not _TOKEN.fullmatch(name):
            raise _Fail(f"Invalid HTTP header name '{name}'", "invalid")
    body, parts = config.get("body"), None
    if multipart:
        raw_parts = config.get("parts")
        if not isinstance(raw_parts, list) or not raw_parts:
            raise _invalid(True, "parts must be a non-empty array")
        parts = tuple(_parse_part(i, p) for i, p in enumerate(raw_parts, 1))
        body = None
    elif body is not None and not isinstance(body, str):
        raise _invalid(False, "body must be a string or null")
    return _Spec(url, method, headers, body, parts, float(timeout))


class _Secrets:
    """Resolves `{secret:NAME}` in one pass (values are never rescanned) and scrubs used values from text."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self._secrets = secrets
        self.used: dict[str, str] = {}

    def resolve(self, text: str) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self._secrets:
                raise _Fail(f"HTTP step refers to secret '{name}', which is not defined", "secret")
            self.used[name] = self._secrets[name]
            return self._secrets[name]

        return _SECRET.sub(one, text)

    def scrub(self, text: str) -> str:
        for name, value in sorted(self.used.items(), key=lambda item: -len(item[1])):
            if value:
                text = text.replace(value, f"[secret:{name}]")
        return text


def _is_textual(content_type: str | None) -> bool:
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    return mime.startswith("text/") or mime.endswith(("+json", "+xml", "+yaml")) or mime in _TEXT_TYPES


def _decode_body(raw: bytes, content_type: str | None) -> tuple[str, str]:
    """(body, encoding) per §5.7. A NUL makes it base64 even for text types (jsonb cannot hold U+0000)."""
    if _is_textual(content_type):
        match = re.search(r"charset=\"?([^\";]+)", content_type or "", re.IGNORECASE)
        name = match.group(1).strip() if match else "utf-8"
        try:
            codecs.lookup(name)
        except LookupError:
            name = "utf-8"
        text: str | None = raw.decode(name, errors="replace")
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is None or "\x00" in text:
        return base64.b64encode(raw).decode("ascii"), "base64"
    return text, "text"


def _preview(body: str) -> str:
    """pg_durable's error preview: the first 512 bytes (on a character boundary), then how much there was."""
    data = body.encode()
    if len(data) <= _ERROR_PREVIEW_BYTES:
        return body
    cut = data[:_ERROR_PREVIEW_BYTES].decode("utf-8", errors="ignore")
    return f"{cut}... [truncated, {len(data)} bytes total]"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


class HttpExecutor:
    """Runs HTTP and multipart steps through one pooled, guarded httpx client. Thread-safe; `close()` it."""

    def __init__(
        self, policy: HttpPolicy, *, resolver: Resolver | None = None, verify: ssl.SSLContext | str | bool = True
    ) -> None:
        """`verify`: certifi's CA bundle by default; a CA file path or an `ssl.SSLContext` for private CAs."""
        self.policy = policy
        self._client = httpx.Client(
            transport=GuardedTransport(policy, resolver=resolver, verify=verify),
            trust_env=False,
            follow_redirects=False,  # hops are taken in `_send`, each through the transport's checks
            headers={"User-Agent": policy.user_agent},
            # no cookie jar shared between steps (or between the roles the worker serves)
            cookies=http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def execute(self, request_json: str, *, multipart: bool, idempotency_key: str, secrets: Mapping[str, str]) -> str:
        """Send one rendered request; return the envelope JSON (2xx, 3xx, 4xx), or raise `StepError`.

        Failures: invalid request, missing secret, blocked destination, transport error, timeout (the node's
        `timeout_seconds` bounds the whole exchange, hops and body included), a body over the limit, and 5xx
        (`HTTP <method> <url> returned <code>: <preview>`). Messages name the URL as written, with
        `{secret:NAME}` unresolved; any secret value that still shows up (an echoing server) is replaced by
        `[secret:NAME]`, in messages and in the envelope's text body and headers.
        """
        started = time.monotonic()
        vault = _Secrets(secrets)
        label = "HTTP_MULTIPART" if multipart else "HTTP"
        url_shown = "<invalid request>"
        try:
            spec = _parse(request_json, multipart)
            url_shown = spec.url
            return self._exchange(spec, label, vault, idempotency_key, started)
        except _Fail as exc:
            detail: dict[str, Any] = {"reason": exc.reason, "url": vault.scrub(url_shown)}
            if exc.status is not None:
                detail["status"] = exc.status
            raise StepError(vault.scrub(exc.message), detail=detail) from None
        except BlockedRequest as exc:
            detail = {"reason": "blocked", "check": exc.check, "url": vault.scrub(url_shown)}
            raise StepError(vault.scrub(exc.message), detail=detail) from None

    def _exchange(self, spec: _Spec, label: str, vault: _Secrets, key: str, started: float) -> str:
        deadline = started + spec.timeout
        url = vault.resolve(spec.url)
        headers: dict[str, tuple[str, str]] = {"idempotency-key": ("Idempotency-Key", key)}
        secret_headers = set()
        for name, value in spec.headers:
            lowered = name.lower()
            if lowered in _FRAMING or (spec.parts is not None and lowered == "content-type"):
                continue  # we own framing; the multipart boundary owns Content-Type
            resolved = vault.resolve(value)
            if not resolved.isascii() or re.search(r"[\r\n\x00]", resolved):  # never echo the value
                raise _Fail(f"Invalid value for HTTP header '{name}': only ASCII without CR, LF or NUL", "invalid")
            headers[lowered] = (name, resolved)
            if _SECRET.search(value):
                secret_headers.add(lowered)
        body = None if spec.body is None else vault.resolve(spec.body).encode()
        body_has_secret = spec.body is not None and _SECRET.search(spec.body) is not None
        files = None
        if spec.parts is not None:
            files = [(p.name, (p.filename, p.data, p.content_type)) for p in spec.parts]
        _check_scheme(url.split("://", 1)[0] if "://" in url else "")  # pg_durable's check, on the text
        try:
            request = self._client.build_request(
                spec.method,
                url,
                headers=list(headers.values()),
                content=body,
                files=files,
                timeout=spec.timeout,
            )
            response = self._send(request, deadline, spec, secret_headers, body_has_secret)
            try:
                raw = self._read(response, deadline, spec)
            finally:
                response.close()
        except httpx.TimeoutException:
            raise _Fail(f"HTTP timeout after {spec.timeout:g}s: {spec.url}", "timeout") from None
        except httpx.ConnectError as exc:
            raise _Fail(f"HTTP connection failed: {spec.url} - {exc}", "connect") from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            raise _Fail(f"HTTP request failed: {spec.url} - {exc}", "transport") from None
        return self._envelope(response, raw, label, spec, vault, started)

    def _send(
        self, request: httpx.Request, deadline: float, spec: _Spec, secret_headers: set[str], body_secret: bool
    ) -> httpx.Response:
        hops = 0
        while True:
            response = self._client.send(request, stream=True)
            following = response.next_request
            if following is None or self.policy.max_redirects == 0:
                return response
            response.close()
            if hops >= self.policy.max_redirects:
                raise _Fail(
                    f"HTTP request failed: {spec.url} - more than {self.policy.max_redirects} redirects", "redirect"
                )
            hops += 1
            if _origin(following.url) != _origin(request.url):
                for name in secret_headers:
                    following.headers.pop(name, None)
                if body_secret and following.method == request.method and request.method != "GET":
                    raise _Fail(
                        f"HTTP request failed: {spec.url} - a redirect to another origin would re-send a body "
                        "that holds a secret",
                        "redirect",
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise httpx.TimeoutException("deadline passed during redirects")
            following.extensions = {**following.extensions, "timeout": httpx.Timeout(remaining).as_dict()}
            request = following

    def _read(self, response: httpx.Response, deadline: float, spec: _Spec) -> bytes:
        limit = self.policy.max_response_bytes
        too_large = _Fail(
            f"HTTP response from {spec.url} is larger than the limit of {limit} bytes "
            "(df.settings http_max_response_bytes)",
            "too_large",
        )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > limit:
                raise too_large
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise httpx.TimeoutException("deadline passed while reading the body")
        return b"".join(chunks)

    def _envelope(
        self, response: httpx.Response, raw: bytes, label: str, spec: _Spec, vault: _Secrets, started: float
    ) -> str:
        body, encoding = _decode_body(raw, response.headers.get("content-type"))
        if encoding == "text":
            body = vault.scrub(body)
        headers: dict[str, str] = {}
        for name, value in response.headers.raw:
            with contextlib.suppress(UnicodeDecodeError):
                headers[name.decode("latin-1").lower()] = vault.scrub(value.decode("utf-8"))  # last one wins
        status = response.status_code
        if status >= 500:
            raise _Fail(f"{label} {spec.method} {spec.url} returned {status}: {_preview(body)}", "status", status)
        envelope = {
            "status": status,
            "body": body,
            "encoding": encoding,
            "headers": headers,
            "ok": 200 <= status < 300,
            "duration_ms": int((time.monotonic() - started) * 1000),
        }
        return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
