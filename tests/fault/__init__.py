"""The fault suite: workers, connections and PostgreSQL itself die at chosen moments, and nothing is lost or
done twice (issue 5).

It runs on its OWN PostgreSQL (an embedded server in a temporary home, never the shared test server), with
test-size leases (2 s), polls (50 ms) and retry backoff (50 ms base). Five scenarios (`scenarios.py`):

- ``sigkill``: the worker is SIGKILLed at random moments and at its failpoints;
- ``pg_crash``: PostgreSQL stops with ``pg_ctl stop -m immediate`` mid-run and starts again;
- ``terminate``: worker backends are ended with ``pg_terminate_backend``, also inside COMMIT;
- ``fence``: a worker paused past its lease tries to commit late and the fence rejects it;
- ``conflicts``: steps deadlock and hit lock conflicts, and retry.

After the faults every scenario checks the same invariants (`harness.check_invariants`). Run it under pytest
(`tests/fault/test_fault.py`: a few trials, and three probes of bugs the suite found, as strict xfails) or
standalone with a trial count, which prints the figures of docs/reliability.md::

    python -m tests.fault --trials 20 --seed 0
"""
