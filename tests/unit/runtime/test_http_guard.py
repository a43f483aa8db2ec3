"""The SSRF guard of HTTP steps, with an injected resolver and no network: literal address forms, the block
list, names that resolve to private addresses, connecting to the vetted address only, the allow-list and the
policy read from df.settings."""

from __future__ import annotations

import ipaddress
import pickle
from collections.abc import Iterable
from typing import Any

import httpcore
import pytest

from pgdurable.runtime.executors.http import (
    AddressGuard,
    BlockedRequest,
    GuardedBackend,
    HttpExecutor,
    HttpPolicy,
    IPAddress,
    parse_ip_literal,
)
from pgdurable.runtime.executors.sql import StepError

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:4700:4700::1111"


class FakeResolver:
    """A DNS stand-in: a fixed table, and a record of every lookup."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        return self.table[host]


def guard(resolver: FakeResolver | None = None, **policy: Any) -> AddressGuard:
    return AddressGuard(HttpPolicy(allow_hosts=["*"], **policy), resolver or FakeResolver({}))


def refused(g: AddressGuard, host: str) -> str:
    with pytest.raises(BlockedRequest) as caught:
        g.vet(host, 443)
    return caught.value.message


# ---------------------------------------------------------------------------------------------------------------
# Literal forms
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # decimal
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("0177.0.0.01", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),  # hex
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),  # short forms, as inet_aton reads them
        ("127.0.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),  # trailing dot
        ("0", "0.0.0.0"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("[::1]", "::1"),
    ],
)
def test_literal_forms_are_normalised_like_browsers_and_libc(host: str, address: str) -> None:
    assert parse_ip_literal(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "localhost", "a.b.c", "1.2.3.example", "xn--bcher-kva.example"])
def test_names_are_not_literals(host: str) -> None:
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize("host", ["1.2.3.256", "08.0.0.1", "1.2.3.4.5", "256.1", "1..2.3", "1.09", "[::zz]"])
def test_numeric_hosts_that_are_no_valid_address_are_refused(host: str) -> None:
    with pytest.raises(BlockedRequest):
        parse_ip_literal(host)


@pytest.mark.parametrize(
    "host",
    ["[::ffff:127.0.0.1]", "::ffff:7f00:1", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "017700000001"],
)
def test_loopback_in_any_literal_form_is_blocked_without_a_lookup(host: str) -> None:
    resolver = FakeResolver({})
    message = refused(guard(resolver), host)
    assert "is in a restricted range" in message
    assert "127.0.0.1" in message
    assert resolver.calls == []


def test_zone_identifiers_are_refused() -> None:
    assert "zone" in refused(guard(), "fe80::1%eth0")


# ---------------------------------------------------------------------------------------------------------------
# The block list
# ---------------------------------------------------------------------------------------------------------------

BLOCKED = [
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("169.254.1.1", "link-local"),
    ("10.0.0.5", "private (10.0.0.0/8)"),
    ("172.16.0.1", "private (172.16.0.0/12)"),
    ("172.31.255.254", "private (172.16.0.0/12)"),
    ("192.168.1.1", "private (192.168.0.0/16)"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("100.64.0.1", "shared address space"),
    ("100.100.100.200", "shared address space"),  # Alibaba Cloud's metadata address
    ("198.18.0.1", "benchmarking (198.18.0.0/15)"),
    ("198.19.255.254", "benchmarking (198.18.0.0/15)"),
    ("192.0.0.8", "IETF protocol assignments (192.0.0.0/24)"),
    ("192.0.0.170", "IETF protocol assignments (192.0.0.0/24)"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.1", "documentation"),
    ("203.0.113.1", "documentation"),
    ("224.0.0.1", "multicast (224.0.0.0/4)"),
    ("239.255.255.250", "multicast (224.0.0.0/4)"),
    ("240.0.0.1", "reserved (240.0.0.0/4)"),
    ("255.255.255.255", "reserved (240.0.0.0/4)"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("::7f00:1", "reserved"),  # IPv4-compatible
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation (2001:db8::/32)"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "IETF protocol assignments"),  # Teredo
    ("::ffff:10.0.0.5", "IPv4-mapped form of 10.0.0.5, private"),
    ("::ffff:169.254.169.254", "IPv4-mapped form of 169.254.169.254, the cloud metadata endpoint"),
    ("64:ff9b::a00:5", "NAT64 form of 10.0.0.5, private"),
    ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1, loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2002:a00:5::1", "6to4 form of 10.0.0.5, private"),
    ("2002:7f00:1::", "6to4 form of 127.0.0.1, loopback"),
    ("2002:c612:1::1", "6to4 form of 198.18.0.1, benchmarking"),
]


@pytest.mark.parametrize(("address", "why"), BLOCKED)
def test_blocked_literals(address: str, why: str) -> None:
    message = refused(guard(), address)
    assert message.startswith("Blocked: the resolved IP address for")
    assert why in message


@pytest.mark.parametrize(("address", "why"), BLOCKED)
def test_names_that_resolve_to_blocked_addresses(address: str, why: str) -> None:
    resolver = FakeResolver({"internal.test": [address]})
    message = refused(guard(resolver), "internal.test")
    assert message.startswith(
        "Blocked: the resolved IP address for 'internal.test' is in a restricted range. "
        "df.http() cannot access private or internal network addresses."
    )
    assert why in message
    assert resolver.calls == [("internal.test", 443)]


def test_one_private_answer_among_public_ones_refuses_the_name() -> None:
    resolver = FakeResolver({"mixed.test": [PUBLIC_V4, "10.0.0.5", PUBLIC_V6]})
    assert "10.0.0.5 is private" in refused(guard(resolver), "mixed.test")


@pytest.mark.parametrize(
    "address",
    [PUBLIC_V4, "8.8.8.8", "1.1.1.1", "172.15.255.255", "172.32.0.1", "198.17.255.255", "198.20.0.1", PUBLIC_V6,
     "::ffff:93.184.215.14", "64:ff9b::5db8:d70e", "2002:5db8:d70e::1"],
)  # fmt: skip
def test_public_addresses_pass(address: str) -> None:
    resolver = FakeResolver({"public.test": [address]})
    assert guard(resolver).vet("public.test", 443) == (ipaddress.ip_address(address),)
    assert guard().vet(address, 443) == (ipaddress.ip_address(address),)


def test_answers_are_deduplicated_in_order() -> None:
    resolver = FakeResolver({"public.test": [PUBLIC_V6, PUBLIC_V4, PUBLIC_V6]})
    assert [str(a) for a in guard(resolver).vet("public.test", 80)] == [PUBLIC_V6, PUBLIC_V4]


def test_resolver_failures_and_garbage() -> None:
    with pytest.raises(OSError):
        guard(FakeResolver({})).vet("nowhere.test", 80)
    with pytest.raises(OSError):
        guard(FakeResolver({"empty.test": []})).vet("empty.test", 80)
    assert "non-address" in refused(guard(FakeResolver({"odd.test": ["not-an-ip"]})), "odd.test")


# ---------------------------------------------------------------------------------------------------------------
# Exemptions
# ---------------------------------------------------------------------------------------------------------------


def test_allow_loopback_exempts_loopback_only() -> None:
    g = guard(FakeResolver({"localhost": ["127.0.0.1", "::1"]}), allow_loopback=True)
    assert len(g.vet("localhost", 80)) == 2
    assert g.vet("[::ffff:127.0.0.1]", 80) == (ipaddress.ip_address("::ffff:7f00:1"),)
    for address in ("10.0.0.5", "169.254.169.254", "0.0.0.0", "::"):
        refused(g, address)


def test_allow_networks_exempts_exactly_those_networks() -> None:
    g = guard(allow_networks=["10.1.2.3/32", "fd00:1::/64"])
    assert g.vet("10.1.2.3", 80) == (ipaddress.ip_address("10.1.2.3"),)
    assert g.vet("fd00:1::5", 80) == (ipaddress.ip_address("fd00:1::5"),)
    refused(g, "10.1.2.4")
    refused(g, "127.0.0.1")


# ---------------------------------------------------------------------------------------------------------------
# Connecting: the vetted address, resolved once
# ---------------------------------------------------------------------------------------------------------------


class RecordingBackend(httpcore.NetworkBackend):
    """Stands in for the socket layer: records where it was asked to connect, and connects nowhere."""

    def __init__(self, refuse: Iterable[str] = ()) -> None:
        self.connects: list[tuple[str, int]] = []
        self.refuse = set(refuse)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        self.connects.append((host, port))
        if host in self.refuse:
            raise httpcore.ConnectError("refused")
        return httpcore.NetworkStream()


class RebindingResolver:
    """Answers public first and private afterwards: the DNS rebinding attack."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        return [PUBLIC_V4] if self.calls == 1 else ["169.254.169.254"]


def test_backend_connects_to_the_vetted_address_after_one_lookup() -> None:
    resolver = RebindingResolver()
    inner = RecordingBackend()
    backend = GuardedBackend(AddressGuard(HttpPolicy(allow_hosts=["*"]), resolver), inner)
    backend.connect_tcp("rebind.test", 443, timeout=1.0)
    assert resolver.calls == 1
    assert inner.connects == [(PUBLIC_V4, 443)]
    with pytest.raises(BlockedRequest):
        backend.connect_tcp("rebind.test", 443)  # a later connection asks again, and is refused
    assert inner.connects == [(PUBLIC_V4, 443)]


def test_backend_tries_the_next_vetted_address_and_maps_resolution_failures() -> None:
    inner = RecordingBackend(refuse=[PUBLIC_V6])
    resolver = FakeResolver({"two.test": [PUBLIC_V6, PUBLIC_V4]})
    backend = GuardedBackend(AddressGuard(HttpPolicy(allow_hosts=["*"]), resolver), inner)
    backend.connect_tcp("two.test", 80)
    assert inner.connects == [(PUBLIC_V6, 80), (PUBLIC_V4, 80)]
    with pytest.raises(httpcore.ConnectError, match=r"could not resolve host 'missing\.test'"):
        backend.connect_tcp("missing.test", 80)


def test_blocked_literal_never_reaches_the_socket_layer() -> None:
    inner = RecordingBackend()
    backend = GuardedBackend(AddressGuard(HttpPolicy(allow_hosts=["*"])), inner)
    for host in ("169.254.169.254", "2130706433", "::ffff:127.0.0.1"):
        with pytest.raises(BlockedRequest):
            backend.connect_tcp(host, 80)
    with pytest.raises(BlockedRequest):
        backend.connect_unix_socket("/var/run/docker.sock")
    assert inner.connects == []


# ---------------------------------------------------------------------------------------------------------------
# Through the executor (refused before any connection is made)
# ---------------------------------------------------------------------------------------------------------------


def run(executor: HttpExecutor, url: str) -> StepError:
    request = f'{{"url":"{url}","method":"GET","body":null,"headers":null,"timeout_seconds":5}}'
    with pytest.raises(StepError) as caught:
        executor.execute(request, multipart=False, idempotency_key="i:root:1", secrets={})
    return caught.value


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://internal.test/", "10.0.0.5 is private (10.0.0.0/8)"),
        ("http://169.254.169.254/latest/meta-data/", "the cloud metadata endpoint"),
        ("http://[::ffff:127.0.0.1]:8080/", "IPv4-mapped form of 127.0.0.1, loopback"),
        ("http://2130706433/", "127.0.0.1 is loopback"),
        ("http://0x7f.1/", "127.0.0.1 is loopback"),
        ("http://[64:ff9b::a00:5]/", "NAT64 form of 10.0.0.5"),
        ("http://[2002:a00:5::1]/", "6to4 form of 10.0.0.5"),
    ],
)
def test_executor_reports_blocked_addresses(url: str, shown: str) -> None:
    with HttpExecutor(HttpPolicy(allow_hosts=["*"]), resolver=FakeResolver({"internal.test": ["10.0.0.5"]})) as ex:
        error = run(ex, url)
    assert error.message.startswith("Blocked: the resolved IP address for")
    assert shown in error.message
    assert error.detail == {"reason": "blocked", "check": "ip", "url": url}


def test_octal_literal_is_refused_by_url_parsing_before_the_guard() -> None:
    with HttpExecutor(HttpPolicy(allow_hosts=["*"]), resolver=FakeResolver({})) as ex:
        error = run(ex, "http://0177.0.0.1/")
    assert error.message.startswith("HTTP request failed: http://0177.0.0.1/ - Invalid IPv4 address")


def test_executor_checks_scheme_then_allow_list_before_resolving() -> None:
    resolver = FakeResolver({"public.test": [PUBLIC_V4]})
    with HttpExecutor(HttpPolicy(allow_hosts=["api.example.com"]), resolver=resolver) as ex:
        error = run(ex, "ftp://public.test/x")
        assert error.message == "Blocked: unsupported URL scheme 'ftp'. Only http and https are allowed."
        assert run(ex, "file:///etc/passwd").message.startswith("Blocked: unsupported URL scheme 'file'")
        error = run(ex, "https://public.test/x")
        assert (
            error.message == "Blocked: host 'public.test' is not in the HTTP allow-list (df.settings http_allow_hosts)"
        )
        assert error.detail is not None and error.detail["check"] == "allowlist"
    assert resolver.calls == []


# ---------------------------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "host", "allowed"),
    [
        (["api.example.com"], "api.example.com", True),
        (["api.example.com"], "API.Example.com.", True),
        (["api.example.com"], "x.api.example.com", False),
        (["*.example.com"], "a.b.example.com", True),
        (["*.example.com"], "example.com", False),
        (["*.example.com"], "evilexample.com", False),
        (["*.example.com"], "example.com.evil.test", False),
        (["*"], "anything.test", True),
        (["*"], "10.0.0.5", True),  # the allow-list passes it; the guard then refuses it
        ([], "api.example.com", False),
        (["203.0.113.7"], "203.0.113.7", True),
        (["203.0.113.7"], "3405803783", True),  # the same address, decimal
        (["[2001:db8::1]"], "2001:db8::1", True),
        (["api.example.com"], "203.0.113.7", False),
    ],
)
def test_allow_list(patterns: list[str], host: str, allowed: bool) -> None:
    assert HttpPolicy(allow_hosts=patterns).allows_host(host) is allowed


def test_policy_defaults_and_settings() -> None:
    policy = HttpPolicy()
    assert policy.allow_hosts == () and not policy.allow_loopback and policy.max_redirects == 0
    assert policy.user_agent.startswith("pgdurable/")
    policy = HttpPolicy.from_settings(
        {
            "http_allow_hosts": ["API.example.com", "*.openai.azure.com"],
            "http_allow_loopback": True,
            "http_allow_networks": ["10.1.0.0/16"],
            "http_max_response_bytes": 1000,
            "http_max_redirects": 3,
            "http_user_agent": "acme/1",
            "unrelated": 1,
        }
    )
    assert policy == HttpPolicy(
        allow_hosts=("api.example.com", "*.openai.azure.com"),
        allow_loopback=True,
        allow_networks=(ipaddress.ip_network("10.1.0.0/16"),),
        max_response_bytes=1000,
        max_redirects=3,
        user_agent="acme/1",
    )
    assert HttpPolicy.from_settings({}) == HttpPolicy()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"http_allow_hosts": [1]}, "http_allow_hosts must be an array of strings"),
        ({"http_allow_loopback": "yes"}, "http_allow_loopback must be true or false"),
        ({"http_max_response_bytes": 0}, "max_response_bytes must be a positive integer"),
        ({"http_max_redirects": -1}, "max_redirects must be zero or a positive integer"),
        ({"http_allow_networks": ["10.0.0.0/33"]}, "10.0.0.0/33"),
    ],
)
def test_bad_settings_are_named(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=r"df\.settings") as caught:
        HttpPolicy.from_settings(settings)
    assert message in str(caught.value)


@pytest.mark.parametrize("pattern", ["https://api.example.com", "api.*.com", "*example.com", "a.test/x", "*."])
def test_malformed_allow_list_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="allow-list pattern"):
        HttpPolicy(allow_hosts=[pattern])


def test_allow_list_patterns_are_normalised() -> None:
    policy = HttpPolicy(allow_hosts=[" API.Example.com. ", "*.Bücher.example", "[2001:DB8::1]"])
    assert policy.allow_hosts == ("api.example.com", "*.xn--bcher-kva.example", "[2001:db8::1]")
    assert policy.allows_host("shop.xn--bcher-kva.example")


def test_blocked_request_pickles() -> None:
    error = pickle.loads(pickle.dumps(BlockedRequest("Blocked: x", "allowlist")))
    assert (error.message, error.check, str(error)) == ("Blocked: x", "allowlist", "Blocked: x")


def test_ip_address_alias_is_usable() -> None:
    address: IPAddress = ipaddress.ip_address("::1")
    assert address.is_loopback
