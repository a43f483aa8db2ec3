"""Canonical graph JSON (pg_durable's Durofut envelope): `to_json` and the strict `from_json`.

Keys are written in explicit order with compact separators, so the text is byte-identical to what the SQL
builders return. `from_json` accepts only well-formed graphs and names the path of the first problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

import attrs
from typing_extensions import assert_never

from pgdurable.dsl import _jsonb
from pgdurable.dsl.nodes import (
    IDENTIFIER,
    Break,
    Call,
    Http,
    HttpMultipart,
    If,
    Loop,
    Node,
    Parallel,
    Race,
    Sleep,
    Step,
    Then,
    WaitForSchedule,
    WaitForSignal,
    check_text,
)
from pgdurable.dsl.policy import retry_policy_from_config
from pgdurable.dsl.validate import COUNT_ERROR, DEPTH_ERROR, MAX_DEPTH, MAX_NODES, check_limits
from pgdurable.errors import GraphError

__all__ = ["NODE_TYPES", "from_json", "node_type", "to_json"]

NODE_TYPES: Final = (
    "SQL",
    "THEN",
    "IF",
    "JOIN",
    "LOOP",
    "BREAK",
    "RACE",
    "SLEEP",
    "WAIT_SCHEDULE",
    "HTTP",
    "HTTP_MULTIPART",
    "SIGNAL",
    "CALL",
)
_KEYS: Final = frozenset(
    {
        "node_type",
        "left_node",
        "right_node",
        "condition_node",
        "extra_nodes",
        "query",
        "result_name",
        "retry",
        "timeout_seconds",
    }
)
# Nodes that do work, and so may carry the extension keys `retry` and `timeout_seconds`.
_WORK: Final = (Step, Http, HttpMultipart, Call)
_WORK_TYPES: Final = ("SQL", "HTTP", "HTTP_MULTIPART", "CALL")
_s = _jsonb.to_text


# -- encoding --------------------------------------------------------------------------------------------


def node_type(node: Node) -> str:
    """The pg_durable `node_type` of a node."""
    match node:
        case Step():
            return "SQL"
        case Then():
            return "THEN"
        case Parallel():
            return "JOIN"
        case Race():
            return "RACE"
        case If():
            return "IF"
        case Loop():
            return "LOOP"
        case Break():
            return "BREAK"
        case Sleep():
            return "SLEEP"
        case WaitForSchedule():
            return "WAIT_SCHEDULE"
        case WaitForSignal():
            return "SIGNAL"
        case Http():
            return "HTTP"
        case HttpMultipart():
            return "HTTP_MULTIPART"
        case Call():
            return "CALL"
        case _:
            assert_never(node)


def to_json(node: Node) -> str:
    """The canonical JSON text of a graph; raises `GraphError` if it breaks the depth or size limit.

    >>> to_json(Step("SELECT 1 AS a") | "a")
    '{"node_type":"SQL","query":"SELECT 1 AS a","result_name":"a"}'
    """
    check_limits(node)
    return _encode(node)


def _encode(node: Node) -> str:
    left: Node | None = None
    right: Node | None = None
    condition: Node | None = None
    query: str | None = None
    extras: tuple[Node, ...] = ()
    match node:
        case Step(query=sql):
            query = sql
        case Then(left=left, right=right) | Race(left=left, right=right):
            pass
        case Parallel(branches=(left, right, *rest)):
            extras = tuple(rest)
        case If(condition=condition, then_branch=left, else_branch=right, if_rows=rows):
            if rows is not None:
                query = f'{{"condition_type":"result_has_rows","result_name":{_s(rows)}}}'
        case Loop(body=left, condition=condition):
            pass
        case Break(value=value):
            query = f'{{"break_value":{_nullable(value)}}}'
        case Sleep(seconds=seconds):
            query = str(seconds)
        case WaitForSchedule(cron_expr=cron):
            query = f'{{"cron_expr":{_s(cron)}}}'
        case WaitForSignal(signal_name=name, timeout_seconds=timeout):
            query = f'{{"signal_name":{_s(name)},"timeout_seconds":{_number(timeout)}}}'
        case Http(url=url, method=method, body=body, headers=headers, timeout_seconds=timeout):
            query = (
                f'{{"url":{_s(url)},"method":{_s(method)},"body":{_nullable(body)},'
                f'"headers":{headers or "null"},"timeout_seconds":{timeout}}}'
            )
        case HttpMultipart(url=url, method=method, parts=parts, headers=headers, timeout_seconds=timeout):
            query = (
                f'{{"url":{_s(url)},"method":{_s(method)},"parts":{parts},'
                f'"headers":{headers or "null"},"timeout_seconds":{timeout}}}'
            )
        case Call(function=function, args=args):
            query = f'{{"function":{_s(function)},"args":{args}}}'
        case _:
            raise AssertionError(f"unhandled node {node!r}")  # pragma: no cover - Parallel with < 2 branches
    out = [f'{{"node_type":"{node_type(node)}"']
    if left is not None:
        out.append(f',"left_node":{_encode(left)}')
    if right is not None:
        out.append(f',"right_node":{_encode(right)}')
    if condition is not None:
        out.append(f',"condition_node":{_encode(condition)}')
    if extras:
        out.append(',"extra_nodes":[' + ",".join(_encode(extra) for extra in extras) + "]")
    if query is not None:
        out.append(f',"query":{_s(query)}')
    if node.result_name is not None:
        out.append(f',"result_name":{_s(node.result_name)}')
    if isinstance(node, _WORK) and node.retry is not None:
        out.append(f',"retry":{node.retry.to_json()}')
    if isinstance(node, _WORK) and node.timeout is not None:
        out.append(f',"timeout_seconds":{node.timeout}')
    out.append("}")
    return "".join(out)


def _nullable(text: str | None) -> str:
    return "null" if text is None else _s(text)


def _number(value: int | None) -> str:
    return "null" if value is None else str(value)


# -- decoding --------------------------------------------------------------------------------------------


def from_json(text: str) -> Node:
    """Parse graph JSON strictly: every rule of docs/graph-format.md, errors naming the path.

    >>> from_json('{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"}}')
    Traceback (most recent call last):
    ...
    pgdurable.GraphError: root: THEN requires left_node and right_node
    """
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise GraphError(DEPTH_ERROR, "root") from None
    except (ValueError, TypeError) as error:
        raise GraphError(f"not valid JSON: {error}", "root") from None
    decoder = _Decoder()
    return decoder.node(document, "root", 1)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate key '{key}'")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_PATH_STEPS: Final = {"left_node": "left", "right_node": "right", "condition_node": "condition_node"}
_LEAVES: Final = frozenset({"SQL", "BREAK", "SLEEP", "WAIT_SCHEDULE", "HTTP", "HTTP_MULTIPART", "SIGNAL", "CALL"})
_BRANCHING: Final = frozenset({"THEN", "JOIN", "RACE", "IF"})


class _Decoder:
    def __init__(self) -> None:
        self.count = 0

    def node(self, value: object, path: str, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise GraphError(DEPTH_ERROR, path)
        self.count += 1
        if self.count > MAX_NODES:
            raise GraphError(COUNT_ERROR, "root")
        if not isinstance(value, dict):
            raise GraphError("expected a JSON object", path)
        kind = value.get("node_type")
        if not isinstance(kind, str):
            raise GraphError("node_type must be a string", path)
        if kind not in NODE_TYPES:
            raise GraphError(f"Unknown node_type '{kind}'. Valid types: {', '.join(NODE_TYPES)}", path)
        for key in value:
            if key not in _KEYS:
                raise GraphError(f"unknown key '{key}'", path)
        self._check_shape(kind, value, path)
        result_name = value.get("result_name")
        if result_name is not None and (not isinstance(result_name, str) or not IDENTIFIER.fullmatch(result_name)):
            raise GraphError(
                f"result name '{result_name}' is not a valid identifier (must match ^[A-Za-z_][A-Za-z0-9_]*$)", path
            )

        def child(key: str) -> Node:
            return self.node(value[key], f"{path}.{_PATH_STEPS[key]}", depth + 1)

        try:
            node = self._build(kind, value, child, path, depth)
            extensions = _extensions(value)
            if result_name is not None or extensions:
                node = attrs.evolve(node, result_name=result_name, **extensions)
            return node
        except GraphError as error:
            raise error.at(path) from None

    def _check_shape(self, kind: str, value: dict[str, Any], path: str) -> None:
        for key in ("retry", "timeout_seconds"):
            if key in value and kind not in _WORK_TYPES:
                raise GraphError(f"{key} is only allowed on SQL, HTTP, HTTP_MULTIPART and CALL nodes", path)
        if "condition_node" in value and kind not in ("IF", "LOOP"):
            raise GraphError("condition_node is only allowed on IF and LOOP nodes", path)
        if "extra_nodes" in value and kind != "JOIN":
            raise GraphError("extra_nodes is only allowed on JOIN nodes", path)
        if kind in _LEAVES:
            for key in ("left_node", "right_node"):
                if key in value:
                    raise GraphError(f"{kind} does not take {key}", path)
            if not isinstance(value.get("query"), str):
                raise GraphError(f"{kind} requires a query string", path)
        elif kind in _BRANCHING and ("left_node" not in value or "right_node" not in value):
            raise GraphError(f"{kind} requires left_node and right_node", path)
        elif kind == "LOOP":
            if "left_node" not in value:
                raise GraphError("LOOP requires left_node", path)
            if "right_node" in value:
                raise GraphError("LOOP does not take right_node", path)
        if kind in ("THEN", "JOIN", "RACE", "LOOP") and "query" in value:
            raise GraphError(f"{kind} does not take a query", path)
        if kind == "IF" and ("condition_node" in value) == ("query" in value):
            raise GraphError("IF requires exactly one of condition_node or an if_rows query", path)

    def _build(self, kind: str, value: dict[str, Any], child: Callable[[str], Node], path: str, depth: int) -> Node:
        query = value.get("query")
        if kind == "SQL":
            return Step(check_text(query, "query"))  # type: ignore[arg-type]
        if kind == "THEN":
            return Then(child("left_node"), child("right_node"))
        if kind == "RACE":
            return Race(child("left_node"), child("right_node"))
        if kind == "JOIN":
            extras = value.get("extra_nodes", [])
            if not isinstance(extras, list):
                raise GraphError("extra_nodes must be an array", path)
            left, right = child("left_node"), child("right_node")
            rest = [self.node(extra, f"{path}.extra_nodes[{i}]", depth + 1) for i, extra in enumerate(extras)]
            return Parallel((left, right, *rest))
        if kind == "IF":
            then_branch, else_branch = child("left_node"), child("right_node")
            if "condition_node" in value:
                return If(child("condition_node"), then_branch, else_branch)
            config = _config(kind, query, {"condition_type", "result_name"})
            if config["condition_type"] != "result_has_rows" or not isinstance(config["result_name"], str):
                raise GraphError(
                    'invalid IF config: expected {"condition_type":"result_has_rows","result_name":"<name>"}'
                )
            return If(None, then_branch, else_branch, if_rows=config["result_name"])
        if kind == "LOOP":
            body = child("left_node")
            return Loop(body, child("condition_node") if "condition_node" in value else None)
        return _leaf(kind, query)  # type: ignore[arg-type]


def _extensions(value: dict[str, Any]) -> dict[str, Any]:
    """The extension keys of a node, as constructor arguments (validated by the node classes)."""
    extensions: dict[str, Any] = {}
    if "retry" in value:
        extensions["retry"] = retry_policy_from_config(value["retry"])
    if "timeout_seconds" in value:
        extensions["timeout"] = value["timeout_seconds"]
    return extensions


def _leaf(kind: str, query: str) -> Node:
    check_text(query, "query")
    if kind == "SLEEP":
        if not (query.isascii() and query.isdigit()):
            raise GraphError('invalid SLEEP config: expected a whole number of seconds, such as "60"')
        return Sleep(int(query))
    if kind == "BREAK":
        value = _config(kind, query, {"break_value"})["break_value"]
        if value is not None and not isinstance(value, str):
            raise GraphError("invalid BREAK config: break_value must be a string or null")
        return Break(value)
    if kind == "WAIT_SCHEDULE":
        cron = _config(kind, query, {"cron_expr"})["cron_expr"]
        if not isinstance(cron, str):
            raise GraphError("invalid WAIT_SCHEDULE config: cron_expr must be a string")
        return WaitForSchedule(cron)
    if kind == "SIGNAL":
        config = _config(kind, query, {"signal_name", "timeout_seconds"})
        if not isinstance(config["signal_name"], str):
            raise GraphError("invalid SIGNAL config: signal_name must be a string")
        return WaitForSignal(config["signal_name"], _optional_int(kind, config, "timeout_seconds"))
    if kind == "HTTP":
        config = _config(kind, query, {"url", "method", "body", "headers", "timeout_seconds"})
        _check_headers(config["headers"])
        return Http(
            _string(kind, config, "url"),
            _string(kind, config, "method"),
            _optional_string(kind, config, "body"),
            config["headers"],
            _required_int(kind, config, "timeout_seconds"),
        )
    if kind == "HTTP_MULTIPART":
        config = _config(kind, query, {"url", "method", "parts", "headers", "timeout_seconds"})
        _check_headers(config["headers"])
        return HttpMultipart(
            _string(kind, config, "url"),
            _string(kind, config, "method"),
            config["parts"],
            config["headers"],
            _required_int(kind, config, "timeout_seconds"),
        )
    if kind == "CALL":
        config = _config(kind, query, {"function", "args"})
        if not isinstance(config["args"], dict):
            raise GraphError("invalid CALL config: args must be a JSON object")
        return Call(_string(kind, config, "function"), config["args"])
    raise AssertionError(kind)  # pragma: no cover - every leaf kind is handled above


def _config(kind: str, query: object, keys: set[str]) -> dict[str, Any]:
    if not isinstance(query, str):
        raise GraphError(f"{kind} requires a query string")
    try:
        config = json.loads(query, object_pairs_hook=_unique_keys, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:
        raise GraphError(f"invalid {kind} config: not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise GraphError(f"invalid {kind} config: expected a JSON object")
    if "condition_node" in config or "extra_nodes" in config:
        raise GraphError("legacy condition_node/extra_nodes inside query is not supported")
    missing, unknown = keys - config.keys(), config.keys() - keys
    if missing or unknown:
        detail = f"missing key '{min(missing)}'" if missing else f"unknown key '{min(unknown)}'"
        raise GraphError(f"invalid {kind} config: {detail}")
    return config


def _check_headers(headers: object) -> None:
    if headers is None:
        return
    if not isinstance(headers, dict):
        raise GraphError("df.http: headers must be a JSON object")
    for key, value in headers.items():
        if not isinstance(value, str):
            raise GraphError(f"header '{key}' must have a string value")


def _string(kind: str, config: dict[str, Any], key: str) -> str:
    value = config[key]
    if not isinstance(value, str):
        raise GraphError(f"invalid {kind} config: {key} must be a string")
    return value


def _optional_string(kind: str, config: dict[str, Any], key: str) -> str | None:
    return None if config[key] is None else _string(kind, config, key)


def _required_int(kind: str, config: dict[str, Any], key: str) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise GraphError(f"invalid {kind} config: {key} must be an integer")
    return value


def _optional_int(kind: str, config: dict[str, Any], key: str) -> int | None:
    return None if config[key] is None else _required_int(kind, config, key)
