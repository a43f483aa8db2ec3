"""Compositions that mypy --strict must reject; each line marked `# error` must produce an error."""

from pgdurable import Step, sleep

step = Step("SELECT 1")
step >> 42  # error
42 & step  # error
step | 3.5  # error
wrong: Step = step | sleep(1)  # error
Step(42)  # error
sleep("ten")  # error
