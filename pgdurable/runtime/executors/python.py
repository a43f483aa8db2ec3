"""Python function steps: `@pgdurable.function` registers a function under a stable name, a worker is given
its functions explicitly, and CALL nodes run them.

A plain call runs outside the step's transaction (at-least-once; its context carries the stable
idempotency key). A function declared `transactional=True` receives the step's connection and runs inside
its transaction, so its database writes commit exactly once with the checkpoint. Functions are trusted
code: they run with the worker's identity, not the submitter's, and on the worker's connection, whose
`search_path` is pinned to `pg_catalog, pg_temp`: schema-qualify the names they use.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar, overload

import psycopg
from attrs import frozen

from pgdurable.runtime.executors.sql import StepError

__all__ = ["CallContext", "FunctionDef", "FunctionRegistry", "function", "registered"]

F = TypeVar("F", bound=Callable[..., Any])


@frozen
class FunctionDef:
    """A registered function. `roles`: who may call it (None: the role the worker connects as)."""

    name: str
    fn: Callable[..., Any]
    roles: tuple[str, ...] | None = None
    transactional: bool = False


@frozen
class CallContext:
    """What a function learns about its call, if it takes a `context` parameter."""

    instance_id: str
    node: str
    idempotency_key: str
    attempt: int
    connection: psycopg.Connection[Any] | None = None  # only for transactional functions


_REGISTRY: Final[dict[str, FunctionDef]] = {}
_LOCK: Final = threading.Lock()


@overload
def function(fn: F, /) -> F: ...
@overload
def function(
    *, name: str | None = None, roles: Iterable[str] | None = None, transactional: bool = False
) -> Callable[[F], F]: ...
def function(
    fn: Any = None, /, *, name: str | None = None, roles: Iterable[str] | None = None, transactional: bool = False
) -> Any:
    """Register a function for CALL nodes under `name` (default: its `__name__`).

    Registering a name again (re-running a notebook cell) replaces the old function, with a warning.

    >>> @function(name="doc_add")
    ... def add(a: int, b: int) -> int:
    ...     return a + b
    >>> registered("doc_add").fn(2, 3)
    5
    """

    def register(target: F) -> F:
        definition = FunctionDef(
            name or target.__name__, target, None if roles is None else tuple(roles), transactional
        )
        with _LOCK:
            if definition.name in _REGISTRY:
                warnings.warn(f"pgdurable function {definition.name!r} registered again: replaced", stacklevel=3)
            _REGISTRY[definition.name] = definition
        target.__pgdurable_function__ = definition  # type: ignore[attr-defined]
        return target

    return register(fn) if fn is not None else register


def registered(name: str) -> FunctionDef:
    with _LOCK:
        found = _REGISTRY.get(name)
        known = sorted(_REGISTRY)
    if found is None:
        raise LookupError(f"no pgdurable function named {name!r} is registered (registered: {', '.join(known)})")
    return found


class FunctionRegistry:
    """The functions one worker runs, fixed when the worker is made (each looked up again at call time,
    so that re-registering a name in a notebook takes effect)."""

    def __init__(self, functions: Iterable[Callable[..., Any] | FunctionDef | str]) -> None:
        names = []
        for item in functions:
            if isinstance(item, FunctionDef):
                names.append(item.name)
            elif isinstance(item, str):
                names.append(registered(item).name)
            else:
                definition = getattr(item, "__pgdurable_function__", None)
                if not isinstance(definition, FunctionDef):
                    raise TypeError(f"{item!r} is not registered: decorate it with @pgdurable.function")
                names.append(definition.name)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"functions given twice: {', '.join(duplicates)}")
        self.names: Final = tuple(names)

    def call(
        self,
        payload: str,
        *,
        submitter: str,
        worker_role: str,
        context: CallContext,
        secrets: Mapping[str, str] | None = None,
    ) -> str:
        """Run the call in `payload` ({"function", "args"}); its JSON result text. `{secret:NAME}` in string
        arguments is resolved from `secrets` here, at the last moment, so it is never stored."""
        request = json.loads(payload)
        name = request["function"]
        if name not in self.names:
            raise StepError(f"function {name!r} is not run by this worker (it runs: {', '.join(self.names)})")
        definition = registered(name)
        allowed = definition.roles if definition.roles is not None else (worker_role,)
        if submitter not in allowed:
            raise StepError(f"role {submitter} may not call function {name!r} (allowed: {', '.join(allowed)})")
        return _invoke(definition, _with_secrets(request["args"], secrets or {}), context)


_SECRET: Final = re.compile(r"\{secret:([A-Za-z_][A-Za-z0-9_.-]*)\}")


def _with_secrets(value: Any, secrets: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _with_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_secrets(v, secrets) for v in value]
    if isinstance(value, str):

        def secret(match: re.Match[str]) -> str:
            if match[1] not in secrets:
                raise StepError(f"secret {match[1]!r} is not set for this role (df.set_secret)")
            return secrets[match[1]]

        return _SECRET.sub(secret, value)
    return value


def _invoke(definition: FunctionDef, args: Mapping[str, Any], context: CallContext) -> str:
    fn = definition.fn
    kwargs = dict(args)
    if "context" in inspect.signature(fn).parameters:
        kwargs["context"] = context
    try:
        value = fn(**kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_awaited(value))
    except StepError:
        raise
    except Exception as error:  # the user's function failed: that fails the step, with its text
        raise StepError(
            f"function {definition.name!r} failed: {type(error).__name__}: {error}",
            detail={
                "sqlstate": getattr(error, "sqlstate", None),
                "message": str(error),
                "exception": type(error).__name__,
            },
        ) from error
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise StepError(
            f"function {definition.name!r} returned a value that is not JSON-serializable: {error}"
        ) from error


async def _awaited(value: Any) -> Any:
    return await value
