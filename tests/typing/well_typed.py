"""Compositions that mypy --strict must accept (checked by tests/unit/test_typing.py)."""

from pgdurable import Parallel, Race, Step, Then, join, seq, sleep, wait_for_signal

named: Step = Step("SELECT 1") | "one"
then: Then = named >> "SELECT $one + 1"
reflected: Then = "SELECT 0" >> named
parallel: Parallel = Step("SELECT 1") & "SELECT 2"
race: Race = Step("SELECT pg_sleep(5)") | sleep(2)
race_from_str: Race = "SELECT 1" | wait_for_signal("go", 60)
chain = seq("SELECT 1", Step("SELECT 2"), join("SELECT 3", "SELECT 4"))
