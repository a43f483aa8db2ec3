"""Retry policies: an extension of the graph JSON (key `retry`, after `result_name`).

A policy says how often a failed step is tried again and how long to wait in between. Pure values; the
engine applies them. Both front ends render a policy with the same keys in the same order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from attrs import field, frozen

from pgdurable.dsl import _jsonb
from pgdurable.errors import GraphError

__all__ = ["DEFAULT_RETRY_ON", "RetryPolicy", "retry_policy_from_config"]

# What a policy retries when it names nothing: serialization failures, deadlocks, lost connections,
# and a server that is shutting down or not yet accepting connections.
DEFAULT_RETRY_ON: Final = ("40001", "40P01", "08", "57P01", "57P02", "57P03")
_SQLSTATE: Final = re.compile(r"[0-9A-Z]{2}(?:[0-9A-Z]{3})?")
_LIMITS: Final = {
    "max_attempts": (1, 100),
    "backoff_ms": (0, 86_400_000),
    "max_backoff_ms": (0, 86_400_000),
    "multiplier": (1, 10),
    "jitter_pct": (0, 100),
}


def _bounded(name: str) -> Any:
    low, high = _LIMITS[name]

    def check(_: object, __: object, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise GraphError(f"invalid retry policy: {name} must be an integer from {low} to {high}")

    return check


def _codes(value: Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise GraphError("invalid retry policy: retry_on must be a non-empty list of SQLSTATE codes or classes")
    for code in value:
        if not isinstance(code, str) or _SQLSTATE.fullmatch(code) is None:
            raise GraphError(
                f"invalid retry policy: retry_on entry {code!r} is not a SQLSTATE code (5 characters) or class (2)"
            )
    return tuple(value)


@frozen
class RetryPolicy:
    """Try a failed step again, up to `max_attempts` in all, waiting `backoff_ms` times `multiplier` to the
    power of the attempts so far (at most `max_backoff_ms`), give or take `jitter_pct` percent.

    `retry_on` lists the SQLSTATE codes or two-character classes that retry; by default serialization
    failures, deadlocks and connection loss (`DEFAULT_RETRY_ON`).

    >>> RetryPolicy(max_attempts=5).to_json()
    '{"max_attempts":5,"backoff_ms":1000,"max_backoff_ms":60000,"multiplier":2,"jitter_pct":20}'
    """

    max_attempts: int = field(default=3, validator=_bounded("max_attempts"))
    backoff_ms: int = field(default=1000, validator=_bounded("backoff_ms"))
    max_backoff_ms: int = field(default=60_000, validator=_bounded("max_backoff_ms"))
    multiplier: int = field(default=2, validator=_bounded("multiplier"))
    jitter_pct: int = field(default=20, validator=_bounded("jitter_pct"))
    retry_on: tuple[str, ...] | None = field(default=None, converter=_codes)

    def __attrs_post_init__(self) -> None:
        if self.max_backoff_ms < self.backoff_ms:
            raise GraphError("invalid retry policy: max_backoff_ms must be at least backoff_ms")

    def to_json(self) -> str:
        text = (
            f'{{"max_attempts":{self.max_attempts},"backoff_ms":{self.backoff_ms},'
            f'"max_backoff_ms":{self.max_backoff_ms},"multiplier":{self.multiplier},"jitter_pct":{self.jitter_pct}'
        )
        if self.retry_on is not None:
            text += ',"retry_on":[' + ",".join(_jsonb.to_text(code) for code in self.retry_on) + "]"
        return text + "}"

    def retries(self, sqlstate: str | None) -> bool:
        """Whether an error with this SQLSTATE is one to try again."""
        if sqlstate is None:
            return False
        return any(sqlstate.startswith(code) for code in self.retry_on or DEFAULT_RETRY_ON)

    def delay_ms(self, attempt: int, jitter: float) -> int:
        """The wait after failed attempt `attempt` (1-based); `jitter` in [-1, 1) scales the jitter."""
        growth: int = self.multiplier ** (attempt - 1)
        base = min(self.max_backoff_ms, self.backoff_ms * growth)
        return max(0, round(base * (1 + jitter * self.jitter_pct / 100)))


def retry_policy_from_config(config: object) -> RetryPolicy:
    """A policy from its JSON object (as parsed), with the same checks and messages as the builders."""
    keys = {"max_attempts", "backoff_ms", "max_backoff_ms", "multiplier", "jitter_pct", "retry_on"}
    if not isinstance(config, dict):
        raise GraphError("invalid retry policy: expected a JSON object")
    unknown = sorted(set(config) - keys)
    if unknown:
        raise GraphError(f"invalid retry policy: unknown key '{unknown[0]}'")
    missing = sorted(keys - {"retry_on"} - set(config))
    if missing:
        raise GraphError(f"invalid retry policy: missing key '{missing[0]}'")
    return RetryPolicy(**config)
