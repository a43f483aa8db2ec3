"""Text substitution of `{variables}` and `$result` references into step templates (reference §5.4–§5.6).

Pure: no I/O, no clock. Byte-for-byte pg_durable's rules, including its pitfalls: raw `{var}` insertion, the
"next `}`" scan, no SQL parsing (references inside literals and comments are substituted too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from pgdurable.errors import PgdurableError
from pgdurable.runtime.results import JsonNumber, JsonValue, dump_json, parse_json

__all__ = ["ROW_SET_LIMIT", "Mode", "SubstitutionError", "substitute_results", "substitute_vars"]

Mode = Literal["sql", "raw"]

ROW_SET_LIMIT: Final = 10_000
"""The most rows a `$name.*` expansion may hold (pg_durable's fixed limit)."""

_IDENT_START: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_IDENT_CONTINUE: Final = _IDENT_START | frozenset("0123456789")


class SubstitutionError(PgdurableError, ValueError):
    """A result reference cannot be substituted; the message names the reference, in pg_durable's words.

    >>> substitute_results("SELECT $empty", {"empty": '{"rows":[],"row_count":0}'}, mode="sql")
    Traceback (most recent call last):
    ...
    pgdurable.runtime.subst.SubstitutionError: $empty has no rows — query returned zero results
    """


# --------------------------------------------------------------------------------------------------------------
# {variables}
# --------------------------------------------------------------------------------------------------------------


def substitute_vars(template: str, variables: Mapping[str, str]) -> str:
    """Replace each `{name}` whose name is an identifier present in `variables`, in one left-to-right pass.

    System variables (`sys_instance_id`, `sys_label`, `sys_idempotency_key`) are ordinary entries: the caller
    merges them over the user's variables. Values are inserted raw and never rescanned; unknown names stay
    literal; the text between a `{` and the NEXT `}` is the name, so a placeholder after an unmatched `{` is
    not substituted; an unclosed `{` ends the scan.

    >>> substitute_vars("SELECT * FROM {t} WHERE x = '{missing}'", {"t": "users"})
    "SELECT * FROM users WHERE x = '{missing}'"
    >>> substitute_vars('{"text": "{greeting}"}', {"greeting": "hi"})
    '{"text": "{greeting}"}'
    """
    out: list[str] = []
    position = 0
    while (opening := template.find("{", position)) != -1:
        closing = template.find("}", opening + 1)
        if closing == -1:
            break
        out.append(template[position:opening])
        name = template[opening + 1 : closing]
        value = variables.get(name) if _is_identifier(name) else None
        out.append(template[opening : closing + 1] if value is None else value)
        position = closing + 1
    out.append(template[position:])
    return "".join(out)


def _is_identifier(text: str) -> bool:
    return _identifier_length(text, 0) == len(text) > 0


def _identifier_length(text: str, start: int) -> int:
    """Length of the ASCII identifier `[A-Za-z_][A-Za-z0-9_]*` at `start` (0 if none)."""
    if start >= len(text) or text[start] not in _IDENT_START:
        return 0
    end = start + 1
    while end < len(text) and text[end] in _IDENT_CONTINUE:
        end += 1
    return end - start


# --------------------------------------------------------------------------------------------------------------
# $result references
# --------------------------------------------------------------------------------------------------------------


def substitute_results(template: str, results: Mapping[str, str], *, mode: Mode) -> str:
    """Replace `$name`, `$name?`, `$name.col`, `$name.col?` and `$name.*` references to named results.

    `results` maps each result name to its JSON text. At each `$` the known names are tried longest first; the
    first that matches and whose suffix rule holds wins, otherwise the `$` is copied (so `$1`, `$$` and unknown
    names pass through). `mode="sql"` renders SQL literals; `mode="raw"` renders plain text (URLs, bodies,
    headers). Raises `SubstitutionError` for a strict reference to no rows or NULL, and the other errors of §5.5.

    >>> doc = '{"rows":[{"id":42,"name":"O\\'Brien","amt":"12.50"}],"row_count":1}'
    >>> substitute_results("SELECT $doc, $doc.name, $doc.amt, $doc.nope, $document", {"doc": doc}, mode="sql")
    "SELECT 42, 'O''Brien', '12.50', $doc.nope, $document"
    >>> substitute_results("/users/$doc.id/orders?q=$doc.name", {"doc": doc}, mode="raw")
    "/users/42/orders?q=O'Brien"
    """
    for name in results:
        if not _is_identifier(name):
            raise ValueError(f"result name {name!r} is not a valid identifier")
    names = sorted(results, key=len, reverse=True)
    out: list[str] = []
    position = 0
    while (dollar := template.find("$", position)) != -1:
        out.append(template[position:dollar])
        replaced = _reference_at(template, dollar + 1, names, results, mode)
        if replaced is None:
            out.append("$")
            position = dollar + 1
        else:
            out.append(replaced[0])
            position = replaced[1]
    out.append(template[position:])
    return "".join(out)


def _reference_at(
    template: str, start: int, names: list[str], results: Mapping[str, str], mode: Mode
) -> tuple[str, int] | None:
    """The replacement for the reference whose name starts at `start`, and where the scan resumes; else None."""
    for name in names:
        if not template.startswith(name, start):
            continue
        after = start + len(name)
        text = results[name]
        if template.startswith(".*", after):
            return _expand_row_set(name, text, mode), after + 2
        if template.startswith(".", after) and (length := _identifier_length(template, after + 1)):
            column = template[after + 1 : after + 1 + length]
            null_safe = template.startswith("?", after + 1 + length)
            return _column_value(name, text, column, null_safe, mode), after + 1 + length + null_safe
        if template.startswith("?", after):
            return _first_value(name, text, True, mode), after + 1
        if after == len(template) or template[after] not in _IDENT_CONTINUE:
            return _first_value(name, text, False, mode), after
    return None


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _render(value: JsonValue, mode: Mode) -> str:
    """A non-null JSON value as SQL literal text (`mode="sql"`) or plain text (`mode="raw"`)."""
    if isinstance(value, str):
        return _quote(value) if mode == "sql" else value
    if isinstance(value, JsonNumber):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    text = dump_json(value)
    return _quote(text) if mode == "sql" else text


def _whole(text: str, mode: Mode) -> str:
    return _quote(text) if mode == "sql" else text


def _first_value(name: str, text: str, null_safe: bool, mode: Mode) -> str:
    """`$name` / `$name?`: the first column of the first row; the whole text for a non-row result."""
    try:
        parsed = parse_json(text)
    except ValueError:
        return _whole(text, mode)
    rows = parsed.get("rows") if isinstance(parsed, dict) else None
    if not isinstance(rows, list):
        return _whole(text, mode)
    if not rows:
        if null_safe:
            return "NULL"
        raise SubstitutionError(f"${name} has no rows — query returned zero results")
    first = rows[0]
    if not isinstance(first, dict):
        raise SubstitutionError(f"${name}: first row is not an object")
    if not first:
        raise SubstitutionError(f"${name}: first row has no columns")
    value = next(iter(first.values()))
    if value is None:
        if null_safe:
            return "NULL"
        raise SubstitutionError(f"${name} is NULL — first column of first row is NULL")
    return _render(value, mode)


def _column_value(name: str, text: str, column: str, null_safe: bool, mode: Mode) -> str:
    """`$name.col` / `$name.col?`: a column of the first row, or a top-level field of a non-row object."""
    reference = f"${name}.{column}"
    try:
        parsed = parse_json(text)
    except ValueError:
        raise SubstitutionError(f"{reference}: result is not valid JSON") from None
    rows = parsed.get("rows") if isinstance(parsed, dict) else None
    if isinstance(rows, list):
        if not rows:
            if null_safe:
                return "NULL"
            raise SubstitutionError(f"${name} has no rows — query returned zero results")
        fields = rows[0]
        if not isinstance(fields, dict):
            raise SubstitutionError(f"{reference}: first row is not an object")
    elif isinstance(parsed, dict):
        fields = parsed
    else:
        raise SubstitutionError(f"{reference}: result is neither a row set nor a JSON object")
    if column not in fields:
        if mode == "raw" and not null_safe:
            available = ", ".join(sorted(fields))
            raise SubstitutionError(f"{reference}: result has no field '{column}' (available: {available})")
        return reference + ("?" if null_safe else "")  # left verbatim: PostgreSQL reports it in SQL mode
    value = fields[column]
    if value is None:
        if null_safe:
            return "NULL"
        raise SubstitutionError(f"{reference} is NULL")
    return _render(value, mode)


def _expand_row_set(name: str, text: str, mode: Mode) -> str:
    """`$name.*`: a VALUES relation (SQL) or the JSON array of rows (raw)."""
    try:
        parsed = parse_json(text)
    except ValueError as exc:
        raise SubstitutionError(f"${name}.* — invalid result JSON: {exc}") from None
    rows = parsed.get("rows") if isinstance(parsed, dict) else None
    if not isinstance(rows, list):
        raise SubstitutionError(f"${name}.* — invalid result format")
    if len(rows) > ROW_SET_LIMIT:
        raise SubstitutionError(
            f"${name}.* — result has {len(rows)} rows, exceeding the maximum of {ROW_SET_LIMIT} for row-set "
            "expansion. Use pagination or intermediate tables for large result sets."
        )
    if mode == "raw":
        return dump_json(rows)
    if not rows:
        return f"(SELECT NULL WHERE false) AS {_quote_identifier(name)}"
    objects = [row for row in rows if isinstance(row, dict)]
    if len(objects) != len(rows):
        raise SubstitutionError(f"${name}.* — row is not an object")
    columns = list(objects[0])
    values = ", ".join("(" + ",".join(_row_set_value(row.get(column)) for column in columns) + ")" for row in objects)
    column_list = ", ".join(_quote_identifier(column) for column in columns)
    return f"(VALUES {values}) AS {_quote_identifier(name)}({column_list})"


def _row_set_value(value: JsonValue) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (JsonNumber, bool)):
        return _render(value, "sql")
    text = value if isinstance(value, str) else dump_json(value)
    return _quote(text) + "::text"


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
