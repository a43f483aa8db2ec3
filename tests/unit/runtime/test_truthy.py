"""Truthiness of condition results: reference §6.8 rule by rule, with Rust's string rules."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgdurable.runtime.truthy import is_truthy


def rows(*objects: str) -> str:
    return '{"rows":[' + ",".join(objects) + '],"row_count":' + str(len(objects)) + "}"


class TestRowsRule:
    def test_conformance_cond_001_select_true(self) -> None:
        assert is_truthy(rows('{"bool":true}')) is True

    def test_conformance_cond_002_select_false(self) -> None:
        assert is_truthy(rows('{"bool":false}')) is False

    def test_no_rows_is_false(self) -> None:
        assert is_truthy('{"rows":[],"row_count":0}') is False

    def test_first_column_of_the_first_row_decides(self) -> None:
        assert is_truthy(rows('{"a":0,"b":1}', '{"a":1,"b":1}')) is False
        assert is_truthy(rows('{"a":"yes","b":0}')) is True

    def test_first_column_in_document_order(self) -> None:
        assert is_truthy(rows('{"z":0,"a":1}')) is False

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("null", False), ("{}", False), ("[]", False), ('{"k":0}', True), ("[0]", True), ('""', False)],
    )
    def test_first_value_of_each_kind(self, value: str, expected: bool) -> None:
        assert is_truthy(rows(f'{{"v":{value}}}')) is expected

    def test_a_row_without_columns_falls_through_to_the_whole_object(self) -> None:
        assert is_truthy('{"rows":[{}]}') is True

    def test_a_first_row_that_is_not_an_object_falls_through(self) -> None:
        assert is_truthy('{"rows":[0]}') is True

    def test_rows_that_are_not_an_array_fall_through(self) -> None:
        assert is_truthy('{"rows":0}') is True


class TestOtherJson:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ('{"status":500,"ok":false}', True),  # an HTTP envelope is a non-empty object
            ('{"signal_name":"s","timed_out":true,"data":null}', True),
            ("[]", False),
            ('[{"rows":[],"row_count":0}]', True),  # a JOIN array
            ("{}", False),
            ("true", True),
            ("false", False),
            ("null", False),
            ("0", False),
            ("0.0", False),
            ("-0", False),
            ("1e-400", False),  # underflows to zero
            ("2", True),
            ("1e400", True),
            ('"0.00"', False),
            ('"no"', False),
            ('"ok"', True),
            ('  "t"  ', True),
        ],
    )
    def test_whole_value(self, text: str, expected: bool) -> None:
        assert is_truthy(text) is expected


class TestStrings:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("", False),
            ("   ", False),
            ("true", True),
            ("T", True),
            ("Yes", True),
            ("FALSE", False),
            ("f", False),
            (" No\n", False),
            ("0", False),  # JSON number
            ("0.00", False),
            ("+0", False),
            ("-0.0e10", False),
            ("0.", False),
            (".0", False),
            ("NaN", True),
            ("inf", True),
            ("-Infinity", True),
            ("1", True),
            ("maybe", True),
            (".", True),
            ("0x0", True),
            ("0_0", True),  # Rust's float parser rejects underscores (Python's accepts them)
            ("\u0660", True),  # an Arabic-Indic zero is no ASCII digit
            ("\u00a00\u00a0", False),  # Rust's trim strips Unicode White_Space
            ("\x1c0\x1c", True),  # ...but not the separators Python's strip also removes
            ("1 2", True),
        ],
    )
    def test_string_rules(self, text: str, expected: bool) -> None:
        assert is_truthy(text) is expected

    @pytest.mark.parametrize("text", ["0", "0.00", "NaN", "inf", "yes", "no", ""])
    def test_plain_text_and_json_strings_agree(self, text: str) -> None:
        assert is_truthy(text) is is_truthy(json.dumps(text))


@given(st.integers())
def test_integers_are_true_unless_zero(number: int) -> None:
    assert is_truthy(str(number)) is (number != 0)
    assert is_truthy(rows(f'{{"n":{number}}}')) is (number != 0)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_are_true_unless_zero(number: float) -> None:
    assert is_truthy(repr(number)) is (number != 0)
    assert is_truthy(json.dumps(str(number))) is (number != 0)


@given(st.booleans(), st.lists(st.integers(), max_size=3))
def test_a_boolean_first_column_decides(flag: bool, others: list[int]) -> None:
    row = json.dumps({"flag": flag, **{f"c{index}": value for index, value in enumerate(others)}})
    assert is_truthy(rows(row)) is flag
