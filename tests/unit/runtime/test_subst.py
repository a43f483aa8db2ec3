"""`{var}` and `$result` substitution: reference §5.4–§5.6, the conformance cases that exercise it, and
pg_durable's error texts."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgdurable.runtime.subst import ROW_SET_LIMIT, SubstitutionError, substitute_results, substitute_vars


def rows(*objects: str) -> str:
    """A SQL result envelope from row objects written as JSON text (so key order and number text are exact)."""
    return '{"rows":[' + ",".join(objects) + '],"row_count":' + str(len(objects)) + "}"


def sql(template: str, **results: str) -> str:
    return substitute_results(template, results, mode="sql")


def raw(template: str, **results: str) -> str:
    return substitute_results(template, results, mode="raw")


DOC = rows('{"id":42,"name":"O\'Brien","active":true,"amt":"12.50"}')
EMPTY = '{"rows":[],"row_count":0}'
SIGNAL = '{"signal_name": "approve", "timed_out": false, "data": {"ok": 1}}'
HTTP = '{"status":200,"body":"hi","encoding":"text","headers":{"x":"1"},"ok":true,"duration_ms":5}'


# ---------------------------------------------------------------------------------------------------------------
# {variables}
# ---------------------------------------------------------------------------------------------------------------


class TestVariables:
    def test_conformance_vars_002_raw_text_inside_a_literal(self) -> None:
        template = "SELECT '{greeting}, {target}!' as message"
        assert (
            substitute_vars(template, {"greeting": "Hello", "target": "World"}) == "SELECT 'Hello, World!' as message"
        )

    def test_conformance_vars_004_identifiers_and_casts(self) -> None:
        template = "SELECT name FROM playground.{table_name} LIMIT {limit_val}::int"
        assert substitute_vars(template, {"table_name": "users", "limit_val": "5"}) == (
            "SELECT name FROM playground.users LIMIT 5::int"
        )

    def test_system_variables_are_plain_entries(self) -> None:
        variables = {"sys_instance_id": "1a2b3c4d", "sys_label": "", "sys_idempotency_key": "1a2b3c4d:n1:0"}
        assert substitute_vars("{sys_instance_id}|{sys_label}|{sys_idempotency_key}", variables) == (
            "1a2b3c4d||1a2b3c4d:n1:0"
        )

    def test_values_are_inserted_raw_without_quoting(self) -> None:
        assert substitute_vars("WHERE name = {v}", {"v": "'x'; DROP TABLE t"}) == "WHERE name = 'x'; DROP TABLE t"

    @pytest.mark.parametrize("template", ["{missing}", "{a b}", "{1a}", "{}", "{ a}", "{a-b}", "{é}"])
    def test_unknown_or_non_identifier_names_stay_literal(self, template: str) -> None:
        assert substitute_vars(template, {"a": "A", "a b": "X", "1a": "X", "": "X", "a-b": "X", "é": "X"}) == template

    def test_inserted_values_are_never_rescanned(self) -> None:
        assert substitute_vars("{a}", {"a": "{b}", "b": "B"}) == "{b}"

    def test_adjacent_and_repeated_placeholders(self) -> None:
        assert substitute_vars("{a}{b}{a}", {"a": "1", "b": "2"}) == "121"

    def test_next_closing_brace_pitfall_swallows_a_placeholder(self) -> None:
        # §5.4: the scan reads `"text": "{greeting` as the name, so the placeholder is not substituted.
        assert substitute_vars('{"text": "{greeting}"}', {"greeting": "hi"}) == '{"text": "{greeting}"}'

    def test_header_values_substitute_one_by_one(self) -> None:
        assert substitute_vars("Bearer {token}", {"token": "abc"}) == "Bearer abc"

    def test_scan_resumes_after_the_closing_brace(self) -> None:
        assert substitute_vars("{{a}}", {"a": "A"}) == "{{a}}"
        assert substitute_vars("{x {a}", {"a": "A"}) == "{x {a}"
        assert substitute_vars("} {a} }", {"a": "A"}) == "} A }"

    def test_an_unclosed_brace_ends_the_scan(self) -> None:
        assert substitute_vars("{a} and {a", {"a": "A"}) == "A and {a"
        assert substitute_vars("{", {}) == "{"

    def test_non_ascii_text_around_placeholders(self) -> None:
        assert substitute_vars("café {a} ☕", {"a": "ü"}) == "café ü ☕"

    @given(st.text())
    def test_no_variables_is_the_identity(self, template: str) -> None:
        assert substitute_vars(template, {}) == template

    @given(st.text(), st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), st.text()))
    def test_text_without_braces_is_unchanged(self, template: str, variables: dict[str, str]) -> None:
        template = template.replace("{", "")
        assert substitute_vars(template, variables) == template

    @given(st.text())
    def test_a_whole_placeholder_becomes_exactly_the_value(self, value: str) -> None:
        assert substitute_vars("<{v}>", {"v": value}) == f"<{value}>"


# ---------------------------------------------------------------------------------------------------------------
# $result references: the reference's worked example and the conformance cases
# ---------------------------------------------------------------------------------------------------------------


class TestReferenceExample:
    def test_scalars_and_a_missing_column(self) -> None:
        assert sql("SELECT $doc, $doc.name, $doc.active, $doc.amt, $doc.nope", doc=DOC) == (
            "SELECT 42, 'O''Brien', true, '12.50', $doc.nope"
        )

    def test_row_set(self) -> None:
        assert sql("FROM $doc.*", doc=DOC) == (
            """FROM (VALUES (42,'O''Brien'::text,true,'12.50'::text)) AS "doc"("id", "name", "active", "amt")"""
        )


class TestConformance:
    def test_bind_001_number_unquoted(self) -> None:
        assert sql("INSERT INTO t (val) VALUES ($x::text, 'op')", x=rows('{"num":100}')) == (
            "INSERT INTO t (val) VALUES (100::text, 'op')"
        )

    def test_seq_004_arithmetic(self) -> None:
        assert sql("SELECT ($a::int * 2) AS doubled", a=rows('{"num":21}')) == "SELECT (21::int * 2) AS doubled"

    def test_vars_002_string_result_is_quoted(self) -> None:
        assert sql("INSERT INTO logs (msg) VALUES ($msg)", msg=rows('{"message":"Hello, World!"}')) == (
            "INSERT INTO logs (msg) VALUES ('Hello, World!')"
        )

    def test_bind_007_null_safe_column(self) -> None:
        template = "INSERT INTO t (val) VALUES (COALESCE($x.val?, 'fallback'))"
        assert sql(template, x=rows('{"val":null}')) == "INSERT INTO t (val) VALUES (COALESCE(NULL, 'fallback'))"

    def test_bind_007_strict_column_on_null_fails(self) -> None:
        with pytest.raises(SubstitutionError, match=r"^\$x\.val is NULL$"):
            sql("SELECT $x.val", x=rows('{"val":null}'))

    def test_bind_008_strict_reference_to_no_rows_fails_with_pg_durables_words(self) -> None:
        with pytest.raises(SubstitutionError) as caught:
            sql("SELECT $empty", empty=EMPTY)
        assert str(caught.value) == "$empty has no rows — query returned zero results"
        assert "has no rows" in str(caught.value)  # the case's LIKE '%has no rows%'

    def test_bind_011_join_branch_names_and_a_join_array(self) -> None:
        template = "VALUES ($left_val::int, $right_val::int)"
        assert sql(template, left_val=rows('{"amount":100}'), right_val=rows('{"amount":200}')) == (
            "VALUES (100::int, 200::int)"
        )
        pair = '[{"rows":[{"x":1}],"row_count":1},{"rows":[{"x":2}],"row_count":1}]'
        assert sql("VALUES ($pair)", pair=pair) == f"VALUES ('{pair}')"

    def test_cond_014_dot_notation(self) -> None:
        assert sql("VALUES ($result.num)", result=rows('{"num":99}')) == "VALUES (99)"

    def test_sig_002_whole_signal_result_is_one_quoted_literal(self) -> None:
        assert sql("VALUES ('timeout_result', $sig::jsonb)", sig=SIGNAL) == (
            f"VALUES ('timeout_result', '{SIGNAL}'::jsonb)"
        )


# ---------------------------------------------------------------------------------------------------------------
# Matching rules
# ---------------------------------------------------------------------------------------------------------------


class TestMatching:
    def test_identifier_boundary(self) -> None:
        assert sql("$doc $document $doc_1 $doc2", doc=DOC) == "42 $document $doc_1 $doc2"

    def test_longest_name_first(self) -> None:
        results = {"a": rows('{"v":1}'), "ab": rows('{"v":2}')}
        assert substitute_results("$a $ab $abc $ab.v", results, mode="sql") == "1 2 $abc 2"

    def test_a_shorter_name_is_tried_when_the_longer_fails_its_suffix_rule(self) -> None:
        results = {"a": rows('{"v":1}'), "ab": rows('{"v":2}')}
        assert substitute_results("$abx", results, mode="sql") == "$abx"
        assert substitute_results("$a_", {"a": rows('{"v":1}')}, mode="sql") == "$a_"

    @pytest.mark.parametrize("template", ["$1", "$$", "$", "a $ b", "$ doc", "$$ $1 $"])
    def test_dollars_that_are_no_reference_pass_through(self, template: str) -> None:
        assert sql(template, doc=DOC) == template

    def test_dollar_quote_named_like_a_result_is_substituted(self) -> None:
        # §5.5: a result named like a dollar-quote tag is substituted inside $body$...$body$.
        assert sql("SELECT $body$text$body$", body=rows('{"v":"x"}')) == "SELECT 'x'$text'x'$"
        assert sql("$$doc$$", doc=DOC) == "$42$$"

    def test_column_names_are_ascii_only(self) -> None:
        assert sql("SELECT $doc.café", doc=DOC) == "SELECT $doc.café"  # $doc.caf is missing, left verbatim
        assert sql("SELECT $doc.idé", doc=DOC) == "SELECT 42é"

    @pytest.mark.parametrize(("template", "expected"), [("$doc.", "42."), ("$doc.1", "42.1"), ("$doc..id", "42..id")])
    def test_a_dot_without_an_identifier_falls_back_to_the_bare_reference(self, template: str, expected: str) -> None:
        assert sql(template, doc=DOC) == expected

    def test_the_question_mark_after_a_column_is_the_null_safe_marker(self) -> None:
        assert raw("/users/$doc.id?page=2", doc=DOC) == "/users/42page=2"
        assert raw("/users/$doc?page=2", doc=DOC) == "/users/42page=2"

    def test_substitution_happens_inside_literals_and_comments(self) -> None:
        assert sql("SELECT '$doc.name' -- $doc", doc=DOC) == "SELECT ''O''Brien'' -- 42"

    def test_values_are_never_rescanned(self) -> None:
        assert sql("SELECT $x", x=rows('{"v":"$x $x.v"}')) == "SELECT '$x $x.v'"

    def test_first_column_is_in_document_order_never_sorted(self) -> None:
        assert sql("$x", x=rows('{"zeta":1,"alpha":2}')) == "1"

    def test_duplicate_keys_keep_the_first_position_and_the_last_value(self) -> None:
        assert sql("$x, $x.b", x=rows('{"a":1,"b":2,"a":3}')) == "3, 2"

    def test_numbers_keep_their_exact_text(self) -> None:
        assert sql("$x.a $x.b $x.c $x.d", x=rows('{"a":3.50,"b":1E+2,"c":-0,"d":123456789012345678901234567890}')) == (
            "3.50 1E+2 -0 123456789012345678901234567890"
        )

    def test_only_the_first_row_is_addressable(self) -> None:
        assert sql("$x $x.v", x=rows('{"v":1}', '{"v":2}')) == "1 1"

    def test_invalid_result_names_are_a_caller_bug(self) -> None:
        with pytest.raises(ValueError, match="not a valid identifier"):
            substitute_results("$x", {"": DOC}, mode="sql")

    @given(st.text())
    def test_no_results_is_the_identity(self, template: str) -> None:
        assert substitute_results(template, {}, mode="sql") == template

    @given(st.text().map(lambda text: text.replace("$", "")))
    def test_text_without_a_dollar_is_unchanged(self, template: str) -> None:
        assert sql(template, doc=DOC, x=EMPTY) == template

    @given(st.text())
    def test_references_to_unknown_names_are_the_identity(self, template: str) -> None:
        # Names that cannot occur: a result name must start with a letter or _, and every `$` here is followed
        # by something else.
        template = template.replace("$", "$0")
        assert sql(template, doc=DOC) == template


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


class TestRendering:
    RESULT = rows('{"s":"it\'s \\\\ ok","n":3.5,"t":true,"f":false,"o":{"k":"v\'","é":[1,null]},"a":[1,"x"],"z":null}')

    def test_sql_literals(self) -> None:
        assert sql("$r.s|$r.n|$r.t|$r.f|$r.o|$r.a|$r.z?", r=self.RESULT) == (
            """'it''s \\ ok'|3.5|true|false|'{"k":"v''","é":[1,null]}'|'[1,"x"]'|NULL"""
        )

    def test_raw_text(self) -> None:
        assert raw("$r.s|$r.n|$r.t|$r.f|$r.o|$r.a|$r.z?", r=self.RESULT) == (
            """it's \\ ok|3.5|true|false|{"k":"v'","é":[1,null]}|[1,"x"]|NULL"""
        )

    def test_raw_strings_are_not_json_escaped(self) -> None:
        assert raw('{"msg": "$r"}', r=rows('{"v":"say \\"hi\\""}')) == '{"msg": "say "hi""}'

    def test_null_safe_first_column(self) -> None:
        assert sql("$x? $e?", x=rows('{"v":null}'), e=EMPTY) == "NULL NULL"
        assert raw("$x? $e?", x=rows('{"v":null}'), e=EMPTY) == "NULL NULL"

    def test_strict_first_column_null(self) -> None:
        with pytest.raises(SubstitutionError, match=r"^\$x is NULL — first column of first row is NULL$"):
            sql("$x", x=rows('{"v":null}'))


# ---------------------------------------------------------------------------------------------------------------
# Results that are not row sets
# ---------------------------------------------------------------------------------------------------------------


class TestNonRowResults:
    def test_bare_reference_is_the_whole_original_text(self) -> None:
        assert sql("$sig", sig=SIGNAL) == f"'{SIGNAL}'"
        assert sql("$sig?", sig=SIGNAL) == f"'{SIGNAL}'"
        assert raw("$sig", sig=SIGNAL) == SIGNAL
        assert sql("$b", b='"it\'s"') == "'\"it''s\"'"

    def test_dot_reads_top_level_fields(self) -> None:
        assert sql("$resp.status $resp.ok $resp.body $resp.headers", resp=HTTP) == "200 true 'hi' '{\"x\":\"1\"}'"
        assert raw("$resp.status/$resp.body", resp=HTTP) == "200/hi"

    def test_missing_field_in_sql_mode_is_left_verbatim(self) -> None:
        assert sql("SELECT $resp.nope, $resp.nope?", resp=HTTP) == "SELECT $resp.nope, $resp.nope?"

    def test_missing_field_in_raw_mode_fails_listing_the_fields(self) -> None:
        with pytest.raises(SubstitutionError) as caught:
            raw("$resp.nope", resp=HTTP)
        assert str(caught.value) == (
            "$resp.nope: result has no field 'nope' (available: body, duration_ms, encoding, headers, ok, status)"
        )
        assert raw("$resp.nope?", resp=HTTP) == "$resp.nope?"

    def test_missing_column_of_a_row_in_raw_mode_fails(self) -> None:
        with pytest.raises(SubstitutionError, match=r"^\$doc\.x: result has no field 'x' \(available: active, amt"):
            raw("$doc.x", doc=DOC)

    def test_text_that_is_not_json(self) -> None:
        assert sql("$t", t="it's plain") == "'it''s plain'"
        assert raw("$t?", t="it's plain") == "it's plain"
        with pytest.raises(SubstitutionError, match=r"^\$t\.x: result is not valid JSON$"):
            sql("$t.x", t="it's plain")
        with pytest.raises(SubstitutionError, match=r"^\$t\.\* — invalid result JSON: "):
            sql("$t.*", t="it's plain")

    def test_dot_on_an_array_or_scalar_fails(self) -> None:
        for text in ("[1,2]", "42", '"s"', "null"):
            with pytest.raises(SubstitutionError, match=r"^\$j\.x: result is neither a row set nor a JSON object$"):
                sql("$j.x", j=text)

    def test_json_constants_are_not_json(self) -> None:
        assert sql("$n", n="NaN") == "'NaN'"


# ---------------------------------------------------------------------------------------------------------------
# Malformed row sets
# ---------------------------------------------------------------------------------------------------------------


class TestRowErrors:
    def test_first_row_not_an_object(self) -> None:
        with pytest.raises(SubstitutionError, match=r"^\$x: first row is not an object$"):
            sql("$x", x='{"rows":[1]}')
        with pytest.raises(SubstitutionError, match=r"^\$x\.v: first row is not an object$"):
            sql("$x.v", x='{"rows":[1]}')

    def test_first_row_without_columns(self) -> None:
        with pytest.raises(SubstitutionError, match=r"^\$x: first row has no columns$"):
            sql("$x?", x='{"rows":[{}]}')

    def test_column_reference_to_no_rows(self) -> None:
        with pytest.raises(SubstitutionError, match=r"^\$e has no rows — query returned zero results$"):
            sql("$e.v", e=EMPTY)
        assert sql("$e.v?", e=EMPTY) == "NULL"

    def test_rows_that_are_not_an_array_make_a_non_row_result(self) -> None:
        assert sql("$x", x='{"rows":5}') == "'{\"rows\":5}'"
        assert sql("$x.rows", x='{"rows":5}') == "5"


# ---------------------------------------------------------------------------------------------------------------
# $name.*
# ---------------------------------------------------------------------------------------------------------------


class TestRowSet:
    def test_values_relation_with_every_kind_of_value(self) -> None:
        result = rows('{"id":1,"s":"a\'b","o":{"k":1},"z":null}', '{"id":2.50,"s":"c","o":[true],"extra":9}')
        assert sql("SELECT * FROM $r.*", r=result) == (
            "SELECT * FROM (VALUES (1,'a''b'::text,'{\"k\":1}'::text,NULL), (2.50,'c'::text,'[true]'::text,NULL))"
            ' AS "r"("id", "s", "o", "z")'
        )

    def test_columns_are_quoted_identifiers(self) -> None:
        assert sql("$r.*", r=rows('{"?column?":1,"a\\"b":2}')) == '(VALUES (1,2)) AS "r"("?column?", "a""b")'

    def test_empty_relation(self) -> None:
        assert sql("SELECT * FROM $e.*", e=EMPTY) == 'SELECT * FROM (SELECT NULL WHERE false) AS "e"'

    def test_raw_mode_is_the_json_array_of_rows(self) -> None:
        assert raw("$r.*", r=rows('{"a":1.0,"b":"é"}', '{"a":2}')) == '[{"a":1.0,"b":"é"},{"a":2}]'
        assert raw("$e.*", e=EMPTY) == "[]"

    def test_the_row_limit(self) -> None:
        at_limit = rows(*['{"a":1}'] * ROW_SET_LIMIT)
        assert sql("$r.*", r=at_limit).count("(1)") == ROW_SET_LIMIT
        over = rows(*['{"a":1}'] * (ROW_SET_LIMIT + 1))
        with pytest.raises(SubstitutionError) as caught:
            raw("$r.*", r=over)
        assert str(caught.value) == (
            "$r.* — result has 10001 rows, exceeding the maximum of 10000 for row-set expansion. "
            "Use pagination or intermediate tables for large result sets."
        )

    def test_non_row_results_fail(self) -> None:
        for text in (SIGNAL, "[1]", "42"):
            with pytest.raises(SubstitutionError, match=r"^\$r\.\* — invalid result format$"):
                sql("$r.*", r=text)

    def test_rows_that_are_not_objects_fail(self) -> None:
        with pytest.raises(SubstitutionError, match=r"^\$r\.\* — row is not an object$"):
            sql("$r.*", r='{"rows":[{"a":1},2]}')

    def test_dot_star_wins_over_a_column_and_the_bare_form(self) -> None:
        assert raw("$r.*x", r=rows('{"a":1}')) == '[{"a":1}]x'


def test_substitution_error_is_a_value_error_and_pickles() -> None:
    error = SubstitutionError("$x is NULL")
    assert isinstance(error, ValueError)
    assert str(pickle.loads(pickle.dumps(error))) == "$x is NULL"


@given(st.lists(st.dictionaries(st.from_regex(r"[a-z]{1,3}", fullmatch=True), st.integers(), min_size=1), max_size=5))
def test_raw_row_set_round_trips_the_rows(objects: list[dict[str, int]]) -> None:
    text = rows(*(json.dumps(obj, separators=(",", ":")) for obj in objects))
    assert json.loads(raw("$r.*", r=text)) == objects
