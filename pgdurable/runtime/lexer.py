"""Counting the statements in a SQL step's text, so that a step is exactly one statement (design §2).

Pure: no I/O, no clock. A small lexer in the spirit of psql's: it knows quotes, E'' strings, quoted
identifiers, dollar quotes, both comment styles, parentheses and `CREATE FUNCTION ... BEGIN ATOMIC ... END`
bodies, so a `;` inside any of them does not end a statement. It assumes `standard_conforming_strings = on`.
"""

from __future__ import annotations

import re
from typing import Final

from pgdurable.errors import PgdurableError

__all__ = ["MultipleStatementsError", "check_single_statement", "count_statements"]

_WHITESPACE: Final = frozenset(" \t\n\r\f\v")
# A dollar-quote delimiter: `$$` or `$tag$`, where a tag is an identifier without `$` (non-ASCII allowed).
_DOLLAR_TAG: Final = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_ROUTINE_WORDS: Final = {"create": "c", "function": "f", "procedure": "p", "or": "o", "replace": "r"}


class MultipleStatementsError(PgdurableError, ValueError):
    """A SQL step's text holds more than one statement; `.count` says how many.

    >>> str(MultipleStatementsError(2))
    'a SQL step must be exactly one statement, found 2; split it into separate steps'
    """

    def __init__(self, count: int) -> None:
        super().__init__(f"a SQL step must be exactly one statement, found {count}; split it into separate steps")
        self.count = count

    def __reduce__(self) -> tuple[type[MultipleStatementsError], tuple[int]]:
        return (type(self), (self.count,))


def check_single_statement(sql: str) -> None:
    """Raise `MultipleStatementsError` if `sql` holds more than one statement (none at all is not an error here)."""
    if ";" not in sql:  # only a semicolon separates statements: most steps need no scan
        return
    count = count_statements(sql)
    if count > 1:
        raise MultipleStatementsError(count)


def count_statements(sql: str) -> int:
    """The number of non-empty statements in `sql`.

    Trailing semicolons, empty statements (`;;`) and statements made only of whitespace and comments do not
    count. An unterminated quote or comment runs to the end of the text.

    >>> count_statements("SELECT ';' AS a; -- done;")
    1
    >>> count_statements("INSERT INTO t VALUES ($$a;b$$);; SELECT $1;")
    2
    """
    return _Scanner(sql).run()


class _Scanner:
    """One pass over a text: statements seen so far, and the state of the statement being read."""

    __slots__ = ("begin_depth", "has_content", "paren_depth", "position", "statements", "text", "words")

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0
        self.statements = 0
        self.has_content = False
        self.paren_depth = 0
        self.begin_depth = 0
        self.words: list[str] = []  # per word of the statement: its letter in _ROUTINE_WORDS, else ""

    def run(self) -> int:
        while self.position < len(self.text):
            self.step()
        return self.statements + self.has_content

    def step(self) -> None:
        text, start = self.text, self.position
        char = text[start]
        if char in _WHITESPACE:
            self.position += 1
            return
        if text.startswith("--", start):
            self.position = _line_end(text, start)
            return
        if text.startswith("/*", start):
            self.position = _block_comment_end(text, start)
            return
        if char == ";" and self.paren_depth == 0 and self.begin_depth == 0:
            self.end_statement()
            return
        self.has_content = True
        self.position = self.token_end(start)

    def end_statement(self) -> None:
        self.statements += self.has_content
        self.has_content = False
        self.words = []
        self.position += 1

    def token_end(self, start: int) -> int:
        """Consume one token at `start` (not whitespace or a comment) and return where it ends."""
        text, char = self.text, self.text[start]
        if char == "'":
            return _quoted_end(text, start + 1, "'", backslashes=False)
        if char == '"':
            return _quoted_end(text, start + 1, '"', backslashes=False)
        if char == "$":
            return _dollar_end(text, start)
        if char == "(":
            self.paren_depth += 1
        elif char == ")":
            self.paren_depth = max(0, self.paren_depth - 1)
        elif _is_word_start(char):
            return self.word_end(start)
        elif char.isascii() and char.isdigit():
            return _word_end(text, start)
        return start + 1

    def word_end(self, start: int) -> int:
        text = self.text
        if text[start] in "eE" and text.startswith("'", start + 1):
            return _quoted_end(text, start + 2, "'", backslashes=True)
        end = _word_end(text, start)
        self.track_routine_body(text[start:end].lower())
        return end

    def track_routine_body(self, word: str) -> None:
        """psql's rule: inside `CREATE [OR REPLACE] FUNCTION|PROCEDURE`, BEGIN ... END (and CASE ... END) nest."""
        self.words.append(_ROUTINE_WORDS.get(word, ""))
        head = "".join(letter or " " for letter in self.words[:4])
        if not (head.startswith(("cf", "cp", "corf", "corp")) and self.paren_depth == 0):
            return
        if word == "begin" or (word == "case" and self.begin_depth > 0):
            self.begin_depth += 1
        elif word == "end" and self.begin_depth > 0:
            self.begin_depth -= 1


def _is_word_start(char: str) -> bool:
    return not char.isascii() or char.isalpha() or char == "_"


def _is_word_char(char: str) -> bool:
    return not char.isascii() or char.isalnum() or char in "_$"


def _word_end(text: str, start: int) -> int:
    """End of an identifier, keyword or number: ASCII letters and digits, `_`, `$` and non-ASCII characters."""
    end = start + 1
    while end < len(text) and _is_word_char(text[end]):
        end += 1
    return end


def _line_end(text: str, start: int) -> int:
    newline = min((index for index in (text.find("\n", start), text.find("\r", start)) if index != -1), default=-1)
    return len(text) if newline == -1 else newline + 1


def _block_comment_end(text: str, start: int) -> int:
    """End of a (possibly nested) `/* ... */` comment starting at `start`."""
    depth, position = 0, start
    while position < len(text):
        if text.startswith("/*", position):
            depth += 1
            position += 2
        elif text.startswith("*/", position):
            depth -= 1
            position += 2
            if depth == 0:
                return position
        else:
            position += 1
    return len(text)


def _quoted_end(text: str, position: int, quote: str, *, backslashes: bool) -> int:
    """End of a quoted string or identifier whose body starts at `position` (a doubled quote is an escape)."""
    while position < len(text):
        char = text[position]
        if backslashes and char == "\\":
            position += 2
        elif char == quote:
            if not text.startswith(quote, position + 1):
                return position + 1
            position += 2
        else:
            position += 1
    return len(text)


def _dollar_end(text: str, start: int) -> int:
    """End of a dollar-quoted string at `start`, or of the lone `$` / `$1` parameter that is not one."""
    match = _DOLLAR_TAG.match(text, start)
    if match is None:
        is_parameter = start + 1 < len(text) and text[start + 1].isascii() and text[start + 1].isdigit()
        return _word_end(text, start) if is_parameter else start + 1
    closing = text.find(match.group(), match.end())
    return len(text) if closing == -1 else closing + len(match.group())
