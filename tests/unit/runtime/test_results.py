"""The SQL result envelope (reference §5.1, design §4), the exact-number JSON model and the size check."""

from __future__ import annotations

import base64
import json
import math
import pickle
import re
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgdurable.runtime.results import (
    JsonNumber,
    ResultTooLarge,
    RunnerOutputError,
    check_size,
    dump_json,
    encode_result,
    format_double,
    parse_json,
)


def runner(types: list[str] | None, *row_texts: str) -> str:
    """The runner's raw output, rows written as JSON text (duplicate keys and exact numbers survive)."""
    return '{"types":' + json.dumps(types) + ',"rows":[' + ",".join(row_texts) + "]}"


def one(type_name: str, value_json: str) -> Any:
    """The encoded value of a one-column, one-row result."""
    return json.loads(encode_result(runner([type_name], f'{{"v":{value_json}}}')))["rows"][0]["v"]


def one_text(type_name: str, value_json: str) -> str:
    """The encoded value's JSON text."""
    encoded = encode_result(runner([type_name], f'{{"v":{value_json}}}'))
    return encoded.removeprefix('{"rows":[{"v":').removesuffix('}],"row_count":1}')


class TestEnvelope:
    def test_conformance_seq_001(self) -> None:
        assert encode_result(runner(["int4"], '{"answer":42}')) == '{"rows":[{"answer":42}],"row_count":1}'

    def test_conformance_seq_002_several_rows(self) -> None:
        encoded = encode_result(runner(["int4", "text"], '{"col1":1,"col2":"a"}', '{"col1":2,"col2":"b"}'))
        assert encoded == '{"rows":[{"col1":1,"col2":"a"},{"col1":2,"col2":"b"}],"row_count":2}'

    def test_statement_without_rows(self) -> None:
        assert encode_result('{"types":null,"rows":[]}') == '{"rows":[],"row_count":0}'

    def test_query_returning_no_rows(self) -> None:
        assert encode_result('{"types":["int4"],"rows":[]}') == '{"rows":[],"row_count":0}'

    def test_conformance_type_003_typed_nulls_keep_their_keys(self) -> None:
        raw = runner(["numeric", "uuid", "timestamptz", "jsonb"], '{"n":null,"u":null,"ts":null,"j":null}')
        assert encode_result(raw) == '{"rows":[{"n":null,"u":null,"ts":null,"j":null}],"row_count":1}'

    def test_conformance_type_003_nan_and_infinity_become_null(self) -> None:
        raw = runner(["float8", "float8", "int4"], '{"nan_col":"NaN","inf_col":"Infinity","normal":1}')
        assert encode_result(raw) == '{"rows":[{"nan_col":null,"inf_col":null,"normal":1}],"row_count":1}'

    def test_conformance_type_002_jsonb_stays_nested(self) -> None:
        assert one("jsonb", '{"key":"world","count":42}') == {"key": "world", "count": 42}

    def test_duplicate_column_names_collapse_first_position_last_value(self) -> None:
        raw = runner(["int4", "int4", "numeric"], '{"a":1,"b":2,"a":3.50}')
        assert encode_result(raw) == '{"rows":[{"a":"3.50","b":2}],"row_count":1}'

    def test_each_duplicate_is_mapped_with_its_own_type(self) -> None:
        raw = runner(["numeric", "float4"], '{"x":1.5,"x":3.14}')
        assert encode_result(raw) == '{"rows":[{"x":3.140000104904175}],"row_count":1}'

    def test_unnamed_columns_keep_postgresqls_names(self) -> None:
        assert encode_result(runner(["int4"], '{"?column?":1}')) == '{"rows":[{"?column?":1}],"row_count":1}'

    def test_compact_and_not_ascii_escaped(self) -> None:
        assert encode_result(runner(["text"], '{"名":"é\\n\\u0001"}')) == (
            '{"rows":[{"名":"é\\n\\u0001"}],"row_count":1}'
        )


class TestTypes:
    @pytest.mark.parametrize(
        ("type_name", "value", "expected"),
        [
            ("numeric", "123456.78900000", '"123456.78900000"'),
            ("numeric", "1E+3", '"1E+3"'),  # exact text, whatever the runner wrote
            ("numeric", '"NaN"', '"NaN"'),
            ("numeric", "-0.00", '"-0.00"'),
            ("float4", "3.14", "3.140000104904175"),
            ("float4", "1", "1.0"),
            ("float4", "1e-45", "1.401298464324817e-45"),
            ("float4", '"-Infinity"', "null"),
            ("float8", "3.14", "3.14"),
            ("float8", "1", "1.0"),
            ("float8", "1e+300", "1e+300"),
            ("float8", "0.1", "0.1"),
            ("float8", "-0", "-0.0"),
            ("float8", '"NaN"', "null"),
            ("int8", "9223372036854775807", "9223372036854775807"),
            ("int2", "-5", "-5"),
            ("bool", "true", "true"),
            ("text", '"O\'Brien"', '"O\'Brien"'),
            ("uuid", '"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"', '"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"'),
            ("date", '"2024-06-15"', '"2024-06-15"'),
            ("void", '""', "null"),
            ("interval", '"P1DT2H"', '"P1DT2H"'),
            ("mood", '"happy"', '"happy"'),  # an enum
            ("json", '{"b":1,"a":[1.50,{"c":null}]}', '{"b":1,"a":[1.50,{"c":null}]}'),
            ("json", '{"a":1,"a":2}', '{"a":2}'),
        ],
    )
    def test_scalar_mapping(self, type_name: str, value: str, expected: str) -> None:
        assert one_text(type_name, value) == expected

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2024-06-15T14:30:00+02:00", "2024-06-15T12:30:00+00:00"),
            ("2024-06-15T12:30:00+00:00", "2024-06-15T12:30:00+00:00"),
            ("2024-06-15T12:30:00Z", "2024-06-15T12:30:00+00:00"),
            ("2024-06-15T12:30:00.5+00:00", "2024-06-15T12:30:00.500+00:00"),  # chrono: 3, 6 or 9 digits
            ("2024-06-15T12:30:00.12+00:00", "2024-06-15T12:30:00.120+00:00"),
            ("2024-06-15T12:30:00.123456+00:00", "2024-06-15T12:30:00.123456+00:00"),
            ("2024-06-15T12:30:00.1234+00:00", "2024-06-15T12:30:00.123400+00:00"),
            ("2024-06-15T12:30:00.000000+00:00", "2024-06-15T12:30:00+00:00"),
            ("2024-01-01T01:00:00+05", "2023-12-31T20:00:00+00:00"),
            ("2024-12-31T20:00:00-05:00", "2025-01-01T01:00:00+00:00"),
            ("2024-03-01T00:30:00+01:00", "2024-02-29T23:30:00+00:00"),
            ("1890-01-01T00:00:00+00:53:28", "1889-12-31T23:06:32+00:00"),
            ("0044-03-15T12:00:00+00:00 BC", "-0043-03-15T12:00:00+00:00"),
            ("0001-01-01T00:30:00+01:00", "0000-12-31T23:30:00+00:00"),
            ("10000-01-01T00:00:00+00:00", "+10000-01-01T00:00:00+00:00"),
            ("infinity", "infinity"),
            ("-infinity", "-infinity"),
        ],
    )
    def test_timestamptz_becomes_utc(self, value: str, expected: str) -> None:
        assert one("timestamptz", json.dumps(value)) == expected

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2024-06-15T12:30:00", "2024-06-15T12:30:00"),
            ("2024-06-15T12:30:00.5", "2024-06-15T12:30:00.500"),
            ("2024-06-15T12:30:00.000001", "2024-06-15T12:30:00.000001"),
            ("0001-01-01T00:00:00 BC", "0000-01-01T00:00:00"),
        ],
    )
    def test_timestamp_keeps_local_time(self, value: str, expected: str) -> None:
        assert one("timestamp", json.dumps(value)) == expected

    def test_date_before_christ(self) -> None:
        assert one("date", '"0044-03-15 BC"') == "-0043-03-15"

    def test_bytea_becomes_base64_without_newlines(self) -> None:
        data = bytes(range(256))
        encoded = one("bytea", json.dumps("\\x" + data.hex()))
        assert "\n" not in encoded
        assert base64.b64decode(encoded) == data
        assert one("bytea", '"\\\\x"') == ""

    @pytest.mark.parametrize("type_name", ["vector", "halfvec"])
    def test_vectors_become_number_arrays(self, type_name: str) -> None:
        assert one_text(type_name, '"[1,2.5,-3e-05]"') == "[1,2.5,-3e-05]"
        assert one(type_name, '"[]"') == []

    @pytest.mark.parametrize(
        ("type_name", "value", "expected"),
        [
            ("_int4", "[1,null,3]", "[1,null,3]"),
            ("int4[]", "[[1,2],[3,4]]", "[[1,2],[3,4]]"),
            ("_numeric", "[1.50,[2]]", '["1.50",["2"]]'),
            ("_float8", '[1,"NaN",null]', "[1.0,null,null]"),
            ("_float4", "[[3.14]]", "[[3.140000104904175]]"),
            ("_timestamptz", '["2024-06-15T14:30:00+02:00"]', '["2024-06-15T12:30:00+00:00"]'),
            ("_bytea", '["\\\\x00ff"]', '["AP8="]'),
            ("_text", '["a",null]', '["a",null]'),
            ("_jsonb", "[[1,2],{}]", "[[1,2],{}]"),
        ],
    )
    def test_arrays_map_their_elements(self, type_name: str, value: str, expected: str) -> None:
        assert one_text(type_name, value) == expected


class TestRunnerContract:
    @pytest.mark.parametrize(
        "raw",
        [
            "not json",
            "[]",
            '{"rows":[]}',
            '{"types":null,"rows":[],"extra":1}',
            '{"types":null,"rows":[{"a":1}]}',
            '{"types":["int4"],"rows":[1]}',
            '{"types":[1],"rows":[{"a":1}]}',
            '{"types":["int4","int4"],"rows":[{"a":1}]}',
            '{"types":["float4"],"rows":[{"a":"x"}]}',
            '{"types":["float8"],"rows":[{"a":true}]}',
            '{"types":["numeric"],"rows":[{"a":[1]}]}',
            '{"types":["bytea"],"rows":[{"a":"0102"}]}',
            '{"types":["bytea"],"rows":[{"a":"\\\\xzz"}]}',
            '{"types":["timestamptz"],"rows":[{"a":"2024-06-15T12:30:00"}]}',
            '{"types":["timestamp"],"rows":[{"a":"yesterday"}]}',
            '{"types":["vector"],"rows":[{"a":"[1,x]"}]}',
            '{"types":["vector"],"rows":[{"a":"1,2"}]}',
        ],
    )
    def test_broken_runner_output_is_reported(self, raw: str) -> None:
        with pytest.raises(RunnerOutputError):
            encode_result(raw)


class TestJsonModel:
    def test_numbers_keep_their_text(self) -> None:
        assert parse_json("[3.50, 1E+2, -0, 12345678901234567890123]") == [
            JsonNumber("3.50"),
            JsonNumber("1E+2"),
            JsonNumber("-0"),
            JsonNumber("12345678901234567890123"),
        ]

    def test_key_order_is_kept_and_duplicates_collapse(self) -> None:
        parsed = parse_json('{"z":1,"a":2,"z":3}')
        assert isinstance(parsed, dict)
        assert list(parsed) == ["z", "a"]
        assert parsed["z"] == JsonNumber("3")

    @pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "[NaN]", "{'a':1}", "", "1 2"])
    def test_not_json(self, text: str) -> None:
        with pytest.raises(ValueError):
            parse_json(text)

    def test_deep_nesting_is_not_json_rather_than_a_crash(self) -> None:
        with pytest.raises(ValueError):
            parse_json("[" * 100_000 + "]" * 100_000)

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
            lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
            max_leaves=20,
        )
    )
    def test_compact_text_round_trips_exactly(self, value: object) -> None:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        assert dump_json(parse_json(text)) == text


class TestFormatDouble:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (100.0, "100.0"),
            (1e15, "1000000000000000.0"),
            (1234567890123456.0, "1234567890123456.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (0.0001, "0.0001"),
            (0.00001, "0.00001"),
            (0.000012345, "0.000012345"),
            (1e-6, "1e-6"),
            (1.25e-7, "1.25e-7"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.30000000000000004, "0.30000000000000004"),
        ],
    )
    def test_serde_json_rendering(self, value: float, expected: str) -> None:
        assert format_double(value) == expected

    @given(st.floats(allow_nan=False, allow_infinity=False))
    def test_round_trips_and_is_valid_json(self, value: float) -> None:
        text = format_double(value)
        assert struct.pack("<d", float(text)) == struct.pack("<d", value)
        assert re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?(e[+-][1-9]\d*)?", text), text
        assert isinstance(json.loads(text), float)

    def test_non_finite_is_refused(self) -> None:
        for value in (math.nan, math.inf):
            with pytest.raises(ValueError):
                format_double(value)


class TestSize:
    def test_within_and_at_the_limit(self) -> None:
        check_size("abc", 3)
        check_size("", 0)

    def test_counts_utf8_bytes(self) -> None:
        with pytest.raises(ResultTooLarge) as caught:
            check_size("é" * 3, 5)
        assert str(caught.value) == "result of 6 bytes exceeds the limit of 5 bytes"
        assert (caught.value.size, caught.value.limit) == (6, 5)

    def test_is_a_value_error_and_pickles(self) -> None:
        error = pickle.loads(pickle.dumps(ResultTooLarge(10, 4)))
        assert isinstance(error, ResultTooLarge)
        assert isinstance(error, ValueError)
        assert (str(error), error.size, error.limit) == ("result of 10 bytes exceeds the limit of 4 bytes", 10, 4)
