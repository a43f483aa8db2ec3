"""One statement per SQL step: the lexer's quote, comment and body rules, and properties over random text."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgdurable.runtime.lexer import MultipleStatementsError, check_single_statement, count_statements


@pytest.mark.parametrize(
    ("sql", "count"),
    [
        ("", 0),
        ("   \n\t", 0),
        (";", 0),
        (";;  ;", 0),
        ("-- only a comment", 0),
        ("/* only */ /* comments */", 0),
        ("SELECT 1", 1),
        ("SELECT 1;", 1),
        ("SELECT 1;;;", 1),
        ("  SELECT 1 ; -- trailing; comment\n /* and; this */ ", 1),
        ("SELECT 1; SELECT 2", 2),
        ("SELECT 1;; SELECT 2;", 2),
        (";SELECT 1", 1),
        ("SELECT 1;\nSELECT 2;\nSELECT 3", 3),
        ("VACUUM", 1),
    ],
)
def test_statement_counts(sql: str, count: int) -> None:
    assert count_statements(sql) == count


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ';'",
        "SELECT 'it''s; fine'",
        "SELECT E'a\\'; b'",  # a backslash escapes in an E'' string (in a plain '' string it does not)
        "SELECT e'\\\\'",
        "SELECT E'x'';y'",
        'SELECT 1 AS "a;b"',
        'SELECT 1 AS "a"";b"',
        "SELECT $$;$$",
        "SELECT $tag$ ; $$ ; $tag$",
        "SELECT $a$ $b$ ; $b$ $a$",
        "SELECT $é$ ; $é$",
        "SELECT 1 -- ; SELECT 2",
        "SELECT 1 /* ; */",
        "SELECT 1 /* nested /* ; */ still ; */",
        "SELECT (1; 2)",  # psql does not split inside parentheses either
        "SELECT U&'\\0041;'",
        "SELECT date'2024-01-01;'",
        "SELECT 'unterminated; SELECT 2",
        "SELECT $$unterminated; SELECT 2",
        'SELECT "unterminated; SELECT 2',
        "SELECT 1 /* unterminated; SELECT 2",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
        "create or replace procedure p() language sql begin atomic insert into t values (1); end;",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; END",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$",
    ],
)
def test_semicolons_that_do_not_end_a_statement(sql: str) -> None:
    assert count_statements(sql) == 1


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'a\\'; SELECT 2",  # standard_conforming_strings: a backslash is a plain character
        "SELECT $1; SELECT 2",  # a parameter is no dollar quote
        "SELECT $a + $b; SELECT 2",  # nor is a result reference
        "SELECT a$b$ FROM t; SELECT '$b$'",  # `$` inside an identifier opens nothing
        "SELECT 1 -- c\nSELECT 2; SELECT 3",
        "SELECT 1 -- c\rSELECT 2; SELECT 3",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1; SELECT 2",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 2",
        "BEGIN; SELECT 1",
        "SELECT 1 /* a */; /* b */ SELECT 2",
    ],
)
def test_two_statements(sql: str) -> None:
    assert count_statements(sql) == 2


def test_check_single_statement() -> None:
    check_single_statement("SELECT 1;")
    check_single_statement("")
    with pytest.raises(MultipleStatementsError) as caught:
        check_single_statement("SELECT 1; SELECT 2; SELECT 3")
    assert str(caught.value) == "a SQL step must be exactly one statement, found 3; split it into separate steps"
    assert caught.value.count == 3


def test_error_is_a_value_error_and_pickles() -> None:
    error = pickle.loads(pickle.dumps(MultipleStatementsError(2)))
    assert isinstance(error, MultipleStatementsError)
    assert isinstance(error, ValueError)
    assert (error.count, str(error)) == (2, MultipleStatementsError(2).args[0])


# ---------------------------------------------------------------------------------------------------------------
# Properties: nothing inside a quote or comment is ever counted
# ---------------------------------------------------------------------------------------------------------------


def quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def e_quoted(text: str) -> str:
    return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def identifier(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def dollar_quoted(text: str) -> str:
    tag = "q"
    while f"${tag}$" in text or text.endswith(f"${tag}") or text.endswith("$"):
        tag += "q"
        text = text.removesuffix("$")
    return f"${tag}${text}${tag}$"


def line_comment(text: str) -> str:
    return "-- " + text.replace("\n", " ").replace("\r", " ") + "\n"


def block_comment(text: str) -> str:
    return "/* " + text.replace("/", " ").replace("*", " ") + " */"


QUOTES = [quoted, e_quoted, identifier, dollar_quoted]
COMMENTS = [line_comment, block_comment]


@given(st.text(), st.sampled_from(QUOTES + COMMENTS))
def test_nothing_inside_quotes_or_comments_counts(text: str, wrap: Callable[[str], str]) -> None:
    assert count_statements(f"SELECT {wrap(text)} AS x") == 1
    assert count_statements(f"SELECT {wrap(text)}; SELECT 2") == 2


@given(st.text(), st.sampled_from(QUOTES))
def test_a_quote_after_a_statement_makes_a_second_one(text: str, wrap: Callable[[str], str]) -> None:
    assert count_statements(f"SELECT 1; SELECT {wrap(text)}") == 2


@given(st.text(), st.sampled_from(COMMENTS))
def test_a_comment_after_the_last_statement_adds_none(text: str, wrap: Callable[[str], str]) -> None:
    assert count_statements(f"SELECT 1; {wrap(text)}") == 1


STATEMENTS = [
    "SELECT 1",
    "SELECT ';' AS s",
    "SELECT $$;;$$",
    "SELECT E'\\';'",
    'SELECT 1 AS ";"',
    "SELECT 1 /* ; */",
    "INSERT INTO t VALUES ($1, $a)",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
]
SEPARATORS = [";", "; ", ";;", ";\n-- note;\n", "; /* ; */ ", " ;\t"]


@given(st.lists(st.sampled_from(STATEMENTS), min_size=1, max_size=6), st.data())
def test_joined_statements_are_counted(statements: list[str], data: st.DataObject) -> None:
    text = ""
    for statement in statements:
        text += statement + data.draw(st.sampled_from(SEPARATORS))
    assert count_statements(text) == len(statements)
    assert count_statements(text.rstrip("; \n\t")) == len(statements)


@given(st.text())
def test_any_text_is_counted_without_error(text: str) -> None:
    count = count_statements(text)
    assert 0 <= count <= text.count(";") + 1
