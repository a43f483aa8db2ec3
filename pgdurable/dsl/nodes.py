"""The twelve workflow node types, as immutable values, and the operators that compose them.

Each class mirrors one pg_durable `node_type`; `result_name` is a field of every node. Nodes are values: they
are never mutated, and `node | "name"` returns a renamed copy. Rendering lives in `codec`, `sqltext` and
`explain`; this module only defines the values, their build-time checks and the operator dunders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar, cast, overload

import attrs
from attrs import field, frozen
from typing_extensions import Self

from pgdurable.dsl import _jsonb
from pgdurable.dsl.cron import CronError, check_cron
from pgdurable.dsl.policy import RetryPolicy
from pgdurable.errors import GraphError

__all__ = [
    "HTTP_METHODS",
    "MULTIPART_METHODS",
    "NODE_CLASSES",
    "Bind",
    "Break",
    "Call",
    "Http",
    "HttpMultipart",
    "If",
    "Loop",
    "Node",
    "Parallel",
    "Race",
    "Sleep",
    "Step",
    "Then",
    "WaitForSchedule",
    "WaitForSignal",
]

IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HTTP_METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH")
MULTIPART_METHODS: Final = ("POST", "PUT", "PATCH")


# -- build-time checks (their messages are the SQL builders' messages; see docs/graph-format.md) ----------


def check_text(value: str, what: str = "text") -> str:
    """Reject what a PostgreSQL `text` cannot hold: NUL, and strings that are not valid Unicode."""
    if not isinstance(value, str):
        raise GraphError(f"{what} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise GraphError("strings may not contain NUL (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise GraphError("strings must be valid Unicode (no lone surrogates)") from None
    return value


def _text(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    check_text(value, attribute.name)


def _optional_text(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        check_text(value, attribute.name)


def check_result_name(name: str) -> str:
    if not isinstance(name, str) or IDENTIFIER.fullmatch(name) is None:
        raise GraphError(
            f"df.as: result name {_quote(name)} is not a valid identifier (must match ^[A-Za-z_][A-Za-z0-9_]*$)"
        )
    return name


def _result_name(_: object, __: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        check_result_name(value)


def _optional_policy(_: object, __: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, RetryPolicy):
        raise GraphError(f"retry must be a RetryPolicy, got {type(value).__name__}")


def _step_timeout(_: object, __: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1):
        raise GraphError("timeout_seconds must be an integer from 1 to 2147483647")


def _node(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, NODE_CLASSES):
        raise GraphError(f"{attribute.name} must be a workflow node, got {type(value).__name__}")


def _optional_node(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _node(instance, attribute, value)


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GraphError(f"{what} must be an integer, got {type(value).__name__}")
    return value


def _quote(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value)


# -- operators -------------------------------------------------------------------------------------------


class _Composable:
    """Operator dunders shared by every node. Python's precedence: `>>` over `&` over `|`.

    Each dunder is one line into `_combine`, which returns `NotImplemented` for operands that are neither a
    node nor a `str`.
    """

    __slots__ = ()

    def __rshift__(self, other: Node | str) -> Then:
        """`a >> b` is THEN: run a, then b.

        >>> (Step("SELECT 1") >> "SELECT 2").right
        Step(query='SELECT 2', result_name=None, retry=None, timeout=None)
        """
        return cast(Then, _combine(">>", self, other))

    def __rrshift__(self, other: str) -> Then:
        return cast(Then, _combine(">>", other, self))

    def __and__(self, other: Node | str) -> Parallel:
        """`a & b` is JOIN: run both, wait for both. `a & b & c` nests, as `'a' & 'b' & 'c'` does in SQL.

        >>> [branch.query for branch in (Step("SELECT 1") & "SELECT 2").branches]
        ['SELECT 1', 'SELECT 2']
        """
        return cast(Parallel, _combine("&", self, other))

    def __rand__(self, other: str) -> Parallel:
        return cast(Parallel, _combine("&", other, self))

    @overload
    def __or__(self, other: str) -> Self: ...
    @overload
    def __or__(self, other: Node) -> Race: ...
    def __or__(self, other: object) -> Any:
        """`node | "name"` names the node's result; `node | node` is RACE (first finisher wins).

        >>> Step("SELECT 1") | "one"
        Step(query='SELECT 1', result_name='one', retry=None, timeout=None)
        >>> type(Step("SELECT 1") | Step("SELECT 2")).__name__
        'Race'
        """
        return _combine("|", self, other)

    def __ror__(self, other: str) -> Race:
        return cast(Race, _combine("|", other, self))

    def __bool__(self) -> bool:
        raise TypeError("a workflow node has no truth value: compose nodes with >>, & and |, not with and/or/not")

    # One-line delegations to the rendering functions (imported lazily: they import this module).
    def to_json(self) -> str:
        """The canonical graph JSON, byte-identical to what the SQL builders return."""
        from pgdurable.dsl.codec import to_json

        return to_json(cast("Node", self))

    def to_sql(self) -> str:
        """SQL DSL text (builder calls and operators) that builds this same graph when PostgreSQL evaluates it."""
        from pgdurable.dsl.sqltext import to_sql

        return to_sql(cast("Node", self))

    def explain(self) -> str:
        """The dry-run text tree, exactly as `df.explain` prints it."""
        from pgdurable.dsl.explain import explain

        return explain(cast("Node", self))

    def _repr_markdown_(self) -> str:
        """Jupyter renders a graph as a Mermaid diagram."""
        from pgdurable.dsl.mermaid import to_markdown

        return to_markdown(cast("Node", self))


_OPERATOR_NAMES: Final = {">>": "THEN (>>)", "&": "JOIN (&)", "|": "RACE (|)"}


def _combine(op: Literal[">>", "&", "|"], left: object, right: object) -> Any:
    """Build the node for `left op right`, or `NotImplemented` so that Python raises its usual TypeError."""
    from pgdurable.dsl._coerce import as_node

    if not isinstance(left, (str, *NODE_CLASSES)) or not isinstance(right, (str, *NODE_CLASSES)):
        return NotImplemented
    if op == "|" and isinstance(right, str) and isinstance(left, NODE_CLASSES):
        if IDENTIFIER.fullmatch(right) is None:
            raise TypeError(
                f"node | {right!r}: the right side of | must be a result name (an identifier) or a node; "
                "to race a SQL string use Step(...)"
            )
        return attrs.evolve(left, result_name=right)
    name = _OPERATOR_NAMES[op]
    lhs = as_node(left, where=f"left operand of {name}")
    rhs = as_node(right, where=f"right operand of {name}")
    if op == ">>":
        return Then(lhs, rhs)
    if op == "&":
        return Parallel((lhs, rhs))
    return Race(lhs, rhs)


# -- the node classes ------------------------------------------------------------------------------------


@frozen(cache_hash=True)
class Step(_Composable):
    """A SQL statement (node type SQL): one statement, run as the submitting role.

    `retry` tries it again on transient errors; `timeout` (seconds) is its `statement_timeout`.
    """

    query: str = field(validator=_text)
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)
    retry: RetryPolicy | None = field(default=None, kw_only=True, validator=_optional_policy)
    timeout: int | None = field(default=None, kw_only=True, validator=_step_timeout)


@frozen(cache_hash=True)
class Then(_Composable):
    """Run `left`, then `right`; the result is `right`'s (node type THEN)."""

    left: Node = field(validator=_node)
    right: Node = field(validator=_node)
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)


def _as_tuple(branches: Iterable[Node]) -> tuple[Node, ...]:
    return tuple(branches)


def _branches(_: object, __: attrs.Attribute[Any], value: tuple[Node, ...]) -> None:
    if len(value) < 2:
        raise GraphError(f"a JOIN needs at least 2 branches, got {len(value)}")
    for branch in value:
        if not isinstance(branch, NODE_CLASSES):
            raise GraphError(f"JOIN branches must be workflow nodes, got {type(branch).__name__}")


@frozen(cache_hash=True)
class Parallel(_Composable):
    """Run every branch concurrently and wait for all (node type JOIN); the result is their array."""

    branches: tuple[Node, ...] = field(converter=_as_tuple, validator=_branches)
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)


@frozen(cache_hash=True)
class Race(_Composable):
    """Run both branches; the first to finish decides (node type RACE)."""

    left: Node = field(validator=_node)
    right: Node = field(validator=_node)
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)


@frozen(cache_hash=True)
class If(_Composable):
    """Run `then_branch` or `else_branch` (node type IF).

    The choice comes from running `condition` (any node; its result's truthiness decides), or, with
    `if_rows`, from whether the named earlier result has rows.
    """

    condition: Node | None = field(validator=_optional_node)
    then_branch: Node = field(validator=_node)
    else_branch: Node = field(validator=_node)
    if_rows: str | None = field(default=None, kw_only=True)
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)

    def __attrs_post_init__(self) -> None:
        if (self.condition is None) == (self.if_rows is None):
            raise GraphError("IF requires exactly one of condition_node or an if_rows query")
        if self.if_rows is not None:
            check_text(self.if_rows, "if_rows")


@frozen(cache_hash=True)
class Loop(_Composable):
    """Repeat `body` until a BREAK, or, with `condition`, while the condition (run after each body) is truthy."""

    body: Node = field(validator=_node)
    condition: Node | None = field(default=None, validator=_optional_node)
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)


@frozen(cache_hash=True)
class Break(_Composable):
    """Leave the nearest enclosing loop, which completes with `value` (JSON if it parses, else a string)."""

    value: str | None = field(default=None, validator=_optional_text)
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)


INT4_MAX: Final = 2**31 - 1
INT8_MAX: Final = 2**63 - 1


def _seconds(_: object, __: attrs.Attribute[Any], value: int) -> None:
    if _int(value, "seconds") < 0:
        raise GraphError(f"df.sleep: seconds must be >= 0, got {value}")
    if value > INT8_MAX:
        raise GraphError(f"df.sleep: seconds must be at most {INT8_MAX} (bigint), got {value}")


@frozen(cache_hash=True)
class Sleep(_Composable):
    """A durable timer of `seconds` (node type SLEEP)."""

    seconds: int = field(validator=_seconds)
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)


def _cron(_: object, __: attrs.Attribute[Any], value: str) -> None:
    check_text(value, "cron_expr")
    try:
        check_cron(value)
    except CronError as error:
        raise GraphError(f"df.wait_for_schedule: invalid cron expression '{value}': {error}") from None


@frozen(cache_hash=True)
class WaitForSchedule(_Composable):
    """Wait until the next time the 5-field cron expression matches (node type WAIT_SCHEDULE)."""

    cron_expr: str = field(validator=_cron)
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)


def _signal_name(_: object, __: attrs.Attribute[Any], value: str) -> None:
    if check_text(value, "signal_name") == "":
        raise GraphError("df.wait_for_signal: signal name must not be empty")


def _signal_timeout(_: object, __: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and _int(value, "timeout_seconds") <= 0:
        raise GraphError(f"df.wait_for_signal: timeout_seconds must be > 0, got {value}")
    if value is not None and value > INT4_MAX:
        raise GraphError(f"df.wait_for_signal: timeout_seconds must be at most {INT4_MAX}, got {value}")


@frozen(cache_hash=True)
class WaitForSignal(_Composable):
    """Wait for a signal sent with `df.signal`, optionally giving up after `timeout_seconds` (node type SIGNAL)."""

    signal_name: str = field(validator=_signal_name)
    timeout_seconds: int | None = field(default=None, validator=_signal_timeout)
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)


# HTTP nodes keep their jsonb arguments as canonical text, so that equal graphs compare equal and hash.


def _headers_text(builder: str, headers: Mapping[str, str] | str | None) -> str | None:
    if headers is None:
        return None
    if isinstance(headers, str):
        headers = _jsonb.parse(headers, f"{builder}: headers")
    if not isinstance(headers, Mapping):
        raise GraphError(f"{builder}: headers must be a JSON object")
    for key, value in headers.items():
        check_text(key, "header name")
        if not isinstance(value, str):
            raise GraphError(f"{builder}: header '{key}' must have a string value")
        check_text(value, "header value")
    return _jsonb.render(headers)


def _http_headers(headers: Mapping[str, str] | str | None) -> str | None:
    return _headers_text("df.http", headers)


def _multipart_headers(headers: Mapping[str, str] | str | None) -> str | None:
    return _headers_text("df.http_multipart", headers)


def _parts_text(parts: Sequence[Mapping[str, Any]] | str) -> str:
    if isinstance(parts, str):
        parts = _jsonb.parse(parts, "df.http_multipart: parts")
    if isinstance(parts, Mapping) or not isinstance(parts, Sequence) or len(parts) == 0:
        raise GraphError("df.http_multipart: parts must be a non-empty JSON array")
    try:
        return _jsonb.render(parts)
    except (TypeError, ValueError) as error:
        raise GraphError(f"df.http_multipart: parts must be JSON: {error}") from None


def _check_http(builder: str, url: str, method: str, timeout_seconds: int, methods: tuple[str, ...]) -> None:
    check_text(url, "url")
    if "{" not in url and not url.lower().startswith(("http://", "https://")):
        raise GraphError(f"{builder}: URL scheme must be http or https: {url}")
    if method not in methods:
        expected = ", ".join(methods[:-1]) + " or " + methods[-1]
        raise GraphError(f"{builder}: unsupported method '{method}' (expected {expected})")
    if _int(timeout_seconds, "timeout_seconds") <= 0:
        raise GraphError(f"{builder}: timeout_seconds must be > 0, got {timeout_seconds}")
    if timeout_seconds > INT4_MAX:
        raise GraphError(f"{builder}: timeout_seconds must be at most {INT4_MAX}, got {timeout_seconds}")


def _upper(method: str) -> str:
    return check_text(method, "method").upper()


@frozen(cache_hash=True)
class Http(_Composable):
    """An HTTP request (node type HTTP). `headers` is kept as canonical jsonb text; see `header_map`."""

    url: str
    method: str = field(default="POST", converter=_upper)
    body: str | None = field(default=None, validator=_optional_text)
    headers: str | None = field(default=None, converter=_http_headers)
    timeout_seconds: int = 30
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)
    retry: RetryPolicy | None = field(default=None, kw_only=True, validator=_optional_policy)
    timeout: int | None = field(default=None, kw_only=True, validator=_step_timeout)

    def __attrs_post_init__(self) -> None:
        _check_http("df.http", self.url, self.method, self.timeout_seconds, HTTP_METHODS)


@frozen(cache_hash=True)
class HttpMultipart(_Composable):
    """A multipart/form-data request (node type HTTP_MULTIPART); `parts` is kept as canonical jsonb text."""

    url: str
    method: str = field(default="POST", converter=_upper)
    parts: str = field(default="", converter=_parts_text)
    headers: str | None = field(default=None, converter=_multipart_headers)
    timeout_seconds: int = 30
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)
    retry: RetryPolicy | None = field(default=None, kw_only=True, validator=_optional_policy)
    timeout: int | None = field(default=None, kw_only=True, validator=_step_timeout)

    def __attrs_post_init__(self) -> None:
        if not self.parts.startswith("[") or self.parts == "[]":
            raise GraphError("df.http_multipart: parts must be a non-empty JSON array")
        _check_http("df.http_multipart", self.url, self.method, self.timeout_seconds, MULTIPART_METHODS)


FUNCTION_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,199}")


def _function_name(_: object, __: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or FUNCTION_NAME.fullmatch(value) is None:
        raise GraphError(
            f"df.call: function name {_quote(value)} is not valid (letters, digits, _ and ., up to 200 characters)"
        )


def _args_text(args: Mapping[str, Any] | str | None) -> str:
    if args is None:
        return "{}"
    if isinstance(args, str):
        args = _jsonb.parse(args, "df.call: args")
    if not isinstance(args, Mapping):
        raise GraphError("df.call: args must be a JSON object")
    try:
        return _jsonb.render(args)
    except (TypeError, ValueError) as error:
        raise GraphError(f"df.call: args must be JSON: {error}") from None


@frozen(cache_hash=True)
class Call(_Composable):
    """Call a Python function registered with `@pgdurable.function` (node type CALL, a pgdurable extension).

    `args` is a JSON object (kept as canonical jsonb text); a string value that is exactly one reference,
    such as `"$chunks"` or `"$doc.id"`, receives that result as a JSON value.
    """

    function: str = field(validator=_function_name)
    args: str = field(default="{}", converter=_args_text)
    result_name: str | None = field(default=None, kw_only=True, validator=_result_name)
    retry: RetryPolicy | None = field(default=None, kw_only=True, validator=_optional_policy)
    timeout: int | None = field(default=None, kw_only=True, validator=_step_timeout)

    @property
    def arguments(self) -> dict[str, Any]:
        """`args` as a dict."""
        parsed: dict[str, Any] = json.loads(self.args)
        return parsed


Node = (
    Step
    | Then
    | Parallel
    | Race
    | If
    | Loop
    | Break
    | Sleep
    | WaitForSchedule
    | WaitForSignal
    | Http
    | HttpMultipart
    | Call
)
"""Any workflow node."""

NODE_CLASSES: Final = (
    Step,
    Then,
    Parallel,
    Race,
    If,
    Loop,
    Break,
    Sleep,
    WaitForSchedule,
    WaitForSignal,
    Http,
    HttpMultipart,
    Call,
)

N = TypeVar("N", bound=Node)


def Bind(node: N, name: str) -> N:
    """Name `node`'s result: the same node with `result_name` set (not a wrapper), like `node | name`.

    >>> Bind(Step("SELECT 1"), "one") == (Step("SELECT 1") | "one")
    True
    """
    return attrs.evolve(node, result_name=check_result_name(name))
