"""Result JSON: a JSON model that keeps numbers' exact text, and the encoder of a SQL step's result envelope.

Pure: no I/O, no clock. `encode_result` turns the runner's raw output into pg_durable's
`{"rows":[...],"row_count":N}` (reference §5.1, design §4); `parse_json`/`dump_json` are shared with `subst`
and `truthy`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Callable, Sequence
from typing import Final, TypeAlias

from attrs import frozen

from pgdurable.errors import PgdurableError

__all__ = [
    "JsonNumber",
    "JsonValue",
    "ResultTooLarge",
    "RunnerOutputError",
    "check_size",
    "dump_json",
    "encode_result",
    "format_double",
    "parse_json",
]


@frozen
class JsonNumber:
    """A JSON number kept as its exact text (`3.50` stays `3.50`; never rounded through a float)."""

    text: str

    def as_float(self) -> float:
        return float(self.text)


JsonValue: TypeAlias = "bool | str | JsonNumber | list[JsonValue] | dict[str, JsonValue] | None"


class RunnerOutputError(PgdurableError, ValueError):
    """The runner's output breaks its contract (`{"types":[...],"rows":[...]}`); a bug, not a user error."""


class ResultTooLarge(PgdurableError, ValueError):
    """A result's JSON text is larger than the configured limit.

    >>> str(ResultTooLarge(2048, 1024))
    'result of 2048 bytes exceeds the limit of 1024 bytes'
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"result of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[type[ResultTooLarge], tuple[int, int]]:
        return (type(self), (self.size, self.limit))


def check_size(text: str, limit: int) -> None:
    """Raise `ResultTooLarge` when `text`, encoded as UTF-8, is longer than `limit` bytes."""
    size = len(text.encode("utf-8"))
    if size > limit:
        raise ResultTooLarge(size, limit)


# --------------------------------------------------------------------------------------------------------------
# The JSON model: parse keeping number text and key order, dump compactly
# --------------------------------------------------------------------------------------------------------------


class _Pairs(list[tuple[str, object]]):
    """An object's members in document order, duplicates included (collapsed later, or zipped with types)."""


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _raw_parse(text: str) -> object:
    """Parse strict JSON; numbers become `JsonNumber`, objects `_Pairs`. Raises ValueError."""
    try:
        return json.loads(
            text,
            parse_float=JsonNumber,
            parse_int=JsonNumber,
            parse_constant=_reject_constant,
            object_pairs_hook=_Pairs,
        )
    except RecursionError as exc:
        raise ValueError("JSON is nested too deeply") from exc


def _collapse(value: object) -> JsonValue:
    """Turn `_Pairs` into dicts: a duplicated key keeps its first position and its last value."""
    if isinstance(value, _Pairs):
        obj: dict[str, JsonValue] = {}
        for key, member in value:
            obj[key] = _collapse(member)
        return obj
    if isinstance(value, list):
        return [_collapse(item) for item in value]
    return value  # type: ignore[return-value]  # json.loads leaves only JSON scalars here


def parse_json(text: str) -> JsonValue:
    """Parse JSON text, keeping key order and each number's exact text. Raises ValueError if it is not JSON.

    >>> parse_json('{"a":3.50,"b":[1,true,null],"a":"x"}')
    {'a': 'x', 'b': [JsonNumber(text='1'), True, None]}
    """
    return _collapse(_raw_parse(text))


def dump_json(value: JsonValue) -> str:
    """Compact JSON text (no spaces, non-ASCII kept, numbers as their exact text).

    >>> dump_json({"k": [JsonNumber("3.50"), "é", None]})
    '{"k":[3.50,"é",null]}'
    """
    parts: list[str] = []
    _dump_into(value, parts)
    return "".join(parts)


def _dump_into(value: JsonValue, parts: list[str]) -> None:
    if isinstance(value, JsonNumber):
        parts.append(value.text)
    elif isinstance(value, dict):
        parts.append("{")
        for index, (key, member) in enumerate(value.items()):
            parts.append("," if index else "")
            parts.append(_dump_string(key))
            parts.append(":")
            _dump_into(member, parts)
        parts.append("}")
    elif isinstance(value, list):
        parts.append("[")
        for index, item in enumerate(value):
            parts.append("," if index else "")
            _dump_into(item, parts)
        parts.append("]")
    elif isinstance(value, str):
        parts.append(_dump_string(value))
    else:
        parts.append(json.dumps(value))  # None, True, False


def _dump_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------------------
# Doubles as serde_json writes them (shortest round-trip digits; pg_durable's float rendering)
# --------------------------------------------------------------------------------------------------------------

_REPR: Final = re.compile(r"(\d+)(?:\.(\d+))?(?:e([+-]\d+))?")


def format_double(value: float) -> str:
    """Render a finite double as serde_json does (shortest round-trip digits, `.0` on integral values).

    >>> [format_double(x) for x in (3.0, 3.140000104904175, 1e15, 1e16, 0.00001, 1.5e-7, -0.0)]
    ['3.0', '3.140000104904175', '1000000000000000.0', '1e+16', '0.00001', '1.5e-7', '-0.0']
    """
    sign = "-" if struct.pack(">d", value)[0] & 0x80 else ""
    if value == 0:
        return sign + "0.0"
    match = _REPR.fullmatch(repr(abs(value)))
    if match is None:
        raise ValueError(f"not a finite double: {value!r}")
    whole, fraction, exponent = match.group(1), match.group(2) or "", match.group(3) or "0"
    digits = (whole + fraction).lstrip("0")
    scale = int(exponent) - len(fraction)  # value = int(digits) * 10**scale
    stripped = digits.rstrip("0")
    scale += len(digits) - len(stripped)
    return sign + _place_point(stripped, scale)


def _place_point(digits: str, scale: int) -> str:
    point = len(digits) + scale  # 10**(point-1) <= value < 10**point
    if -4 <= point <= 16:
        if scale >= 0:
            return digits + "0" * scale + ".0"
        if point > 0:
            return digits[:point] + "." + digits[point:]
        return "0." + "0" * -point + digits
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    exponent = point - 1
    return f"{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"


def _widen_float4(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


# --------------------------------------------------------------------------------------------------------------
# Date and time texts from row_to_json, re-rendered as chrono does (pg_durable's rendering)
# --------------------------------------------------------------------------------------------------------------

_DATE_TIME: Final = re.compile(
    r"(?P<year>\d{4,})-(?P<month>\d\d)-(?P<day>\d\d)"
    r"(?:T(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)(?:\.(?P<fraction>\d{1,9}))?"
    r"(?P<offset>Z|[+-]\d\d(?::?\d\d(?::?\d\d)?)?)?)?"
    r"(?P<bc> BC)?"
)
_SPECIAL_TIMES: Final = frozenset({"infinity", "-infinity"})


@frozen
class _Moment:
    year: int  # astronomical: 1 BC is 0
    month: int
    day: int
    seconds: int  # of the day
    nanos: int
    offset: int | None  # seconds east of UTC


def _parse_moment(text: str, *, column: str, type_name: str) -> _Moment:
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise RunnerOutputError(f"column {column!r}: {text!r} is not an ISO {type_name} value")
    year = int(match["year"])
    if match["bc"]:
        year = 1 - year
    hour, minute, second = (int(match[name] or 0) for name in ("hour", "minute", "second"))
    nanos = int((match["fraction"] or "").ljust(9, "0"))
    return _Moment(
        year,
        int(match["month"]),
        int(match["day"]),
        hour * 3600 + minute * 60 + second,
        nanos,
        _offset(match["offset"]),
    )


def _offset(text: str | None) -> int | None:
    if text is None:
        return None
    if text == "Z":
        return 0
    numbers = text[1:].replace(":", "")
    hours, minutes, seconds = int(numbers[0:2]), int(numbers[2:4] or 0), int(numbers[4:6] or 0)
    magnitude = hours * 3600 + minutes * 60 + seconds
    return -magnitude if text[0] == "-" else magnitude


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar, for any year (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + (3 if shifted_month < 10 else -9)
    return year_of_era + era * 400 + (month <= 2), month, day


def _to_utc(moment: _Moment) -> _Moment:
    total = _days_from_civil(moment.year, moment.month, moment.day) * 86400 + moment.seconds - (moment.offset or 0)
    days, seconds = divmod(total, 86400)
    year, month, day = _civil_from_days(days)
    return _Moment(year, month, day, seconds, moment.nanos, 0)


def _render_date(moment: _Moment) -> str:
    year = f"{moment.year:04d}" if 0 <= moment.year <= 9999 else f"{moment.year:+05d}"
    return f"{year}-{moment.month:02d}-{moment.day:02d}"


def _render_date_time(moment: _Moment) -> str:
    hours, rest = divmod(moment.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    nanos = moment.nanos
    if nanos == 0:
        fraction = ""
    elif nanos % 1_000_000 == 0:
        fraction = f".{nanos // 1_000_000:03d}"
    elif nanos % 1_000 == 0:
        fraction = f".{nanos // 1_000:06d}"
    else:
        fraction = f".{nanos:09d}"
    zone = "+00:00" if moment.offset is not None else ""
    return f"{_render_date(moment)}T{hours:02d}:{minutes:02d}:{seconds:02d}{fraction}{zone}"


# --------------------------------------------------------------------------------------------------------------
# The per-type mapping (reference §5.1, design §4)
# --------------------------------------------------------------------------------------------------------------

_FLOAT_SPECIALS: Final = frozenset({"NaN", "Infinity", "-Infinity"})
_JSON_NUMBER: Final = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")

_Converter: TypeAlias = Callable[[object, str], JsonValue]


def _unexpected(value: object, column: str, type_name: str) -> RunnerOutputError:
    return RunnerOutputError(f"column {column!r}: unexpected {type(value).__name__} for type {type_name}")


def _numeric(value: object, column: str) -> JsonValue:
    if isinstance(value, JsonNumber):
        return value.text
    if isinstance(value, str):  # 'NaN', 'Infinity', '-Infinity' stay as text
        return value
    raise _unexpected(value, column, "numeric")


def _float8(value: object, column: str) -> JsonValue:
    if isinstance(value, str) and value in _FLOAT_SPECIALS:
        return None
    if isinstance(value, JsonNumber):
        return JsonNumber(format_double(value.as_float()))
    raise _unexpected(value, column, "float8")


def _float4(value: object, column: str) -> JsonValue:
    if isinstance(value, str) and value in _FLOAT_SPECIALS:
        return None
    if isinstance(value, JsonNumber):
        return JsonNumber(format_double(_widen_float4(value.as_float())))
    raise _unexpected(value, column, "float4")


def _text(value: object, column: str, type_name: str) -> str:
    if isinstance(value, str):
        return value
    raise _unexpected(value, column, type_name)


def _timestamptz(value: object, column: str) -> JsonValue:
    text = _text(value, column, "timestamptz")
    if text in _SPECIAL_TIMES:
        return text
    moment = _parse_moment(text, column=column, type_name="timestamptz")
    if moment.offset is None:
        raise RunnerOutputError(f"column {column!r}: timestamptz {text!r} has no UTC offset")
    return _render_date_time(_to_utc(moment))


def _timestamp(value: object, column: str) -> JsonValue:
    text = _text(value, column, "timestamp")
    if text in _SPECIAL_TIMES:
        return text
    return _render_date_time(_parse_moment(text, column=column, type_name="timestamp"))


def _date(value: object, column: str) -> JsonValue:
    text = _text(value, column, "date")
    if text in _SPECIAL_TIMES:
        return text
    return _render_date(_parse_moment(text, column=column, type_name="date"))


def _bytea(value: object, column: str) -> JsonValue:
    text = _text(value, column, "bytea")
    if not text.startswith("\\x"):
        raise RunnerOutputError(f"column {column!r}: bytea must arrive in hex format (bytea_output = 'hex')")
    try:
        data = binascii.unhexlify(text[2:])
    except (binascii.Error, ValueError) as exc:
        raise RunnerOutputError(f"column {column!r}: malformed bytea hex text") from exc
    return base64.b64encode(data).decode("ascii")


def _vector(value: object, column: str) -> JsonValue:
    body = _text(value, column, "vector").strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise RunnerOutputError(f"column {column!r}: {body!r} is not a vector")
    inner = body[1:-1]
    items = [item.strip() for item in inner.split(",")] if inner.strip() else []
    for item in items:
        if not _JSON_NUMBER.fullmatch(item):
            raise RunnerOutputError(f"column {column!r}: vector element {item!r} is not a number")
    return [JsonNumber(item) for item in items]


def _void(value: object, column: str) -> JsonValue:
    return None


def _as_is(value: object, column: str) -> JsonValue:
    return _collapse(value)


_CONVERTERS: Final[dict[str, _Converter]] = {
    "numeric": _numeric,
    "float4": _float4,
    "float8": _float8,
    "timestamptz": _timestamptz,
    "timestamp": _timestamp,
    "date": _date,
    "bytea": _bytea,
    "vector": _vector,
    "halfvec": _vector,
    "void": _void,
}


def _element_type(type_name: str) -> str | None:
    """The element type of an array type name (`_int4` or `int4[]`), else None."""
    if type_name.endswith("[]"):
        return type_name[:-2]
    if type_name.startswith("_"):
        return type_name[1:]
    return None


def _convert(value: object, type_name: str, column: str) -> JsonValue:
    if value is None:
        return None
    element = _element_type(type_name)
    if element is not None and isinstance(value, list):
        if element in ("json", "jsonb"):
            return _collapse(value)  # a JSON array element cannot be told apart from a sub-array; keep it
        # A nested list is the next dimension of a multidimensional array.
        return [_convert(item, type_name if isinstance(item, list) else element, column) for item in value]
    return _CONVERTERS.get(type_name, _as_is)(value, column)


# --------------------------------------------------------------------------------------------------------------
# The envelope
# --------------------------------------------------------------------------------------------------------------


def encode_result(raw: str) -> str:
    """The compact result envelope of a SQL step from the runner's output.

    `raw` is `{"types":[<type name per column>],"rows":[<row_to_json objects>]}`, or `{"types":null,"rows":[]}`
    for a statement that returns no rows.

    >>> encode_result('{"types":["int4","numeric","float4"],"rows":[{"id":1,"amt":12.50,"f":3.14}]}')
    '{"rows":[{"id":1,"amt":"12.50","f":3.140000104904175}],"row_count":1}'
    >>> encode_result('{"types":null,"rows":[]}')
    '{"rows":[],"row_count":0}'
    """
    types, rows = _read_envelope(raw)
    encoded: list[JsonValue] = [_encode_row(row, types) for row in rows]
    return '{"rows":' + dump_json(encoded) + ',"row_count":' + str(len(encoded)) + "}"


def _read_envelope(raw: str) -> tuple[list[str], list[_Pairs]]:
    try:
        parsed = _raw_parse(raw)
    except ValueError as exc:
        raise RunnerOutputError(f"runner output is not JSON: {exc}") from exc
    members = dict(parsed) if isinstance(parsed, _Pairs) else None
    if members is None or set(members) != {"types", "rows"}:
        raise RunnerOutputError('runner output must be an object with exactly "types" and "rows"')
    types, rows = members["types"], members["rows"]
    if not isinstance(rows, list) or not all(isinstance(row, _Pairs) for row in rows):
        raise RunnerOutputError('runner output "rows" must be an array of objects')
    if types is None:
        if rows:
            raise RunnerOutputError('runner output has rows but "types" is null')
        return [], []
    if not isinstance(types, list) or not all(isinstance(name, str) for name in types):
        raise RunnerOutputError('runner output "types" must be null or an array of type names')
    return types, rows


def _encode_row(row: Sequence[tuple[str, object]], types: Sequence[str]) -> JsonValue:
    if len(row) != len(types):
        raise RunnerOutputError(f"a row has {len(row)} columns but {len(types)} types were given")
    obj: dict[str, JsonValue] = {}
    for (column, value), type_name in zip(row, types, strict=True):
        obj[column] = _convert(value, type_name, column)  # a duplicated name: first position, last value
    return obj
