"""The fault suite, CI-sized: a few trials of each scenario on the suite's own PostgreSQL.

The module starts an embedded PostgreSQL in a temporary home (never the shared test server, since these
tests crash and reconfigure it) and stops it at the end, whatever happened; every worker subprocess is
killed by the trial that started it. The standalone command runs more trials and prints the figures:
``python -m tests.fault --trials 20`` (see docs/reliability.md). ``PGDURABLE_FAULT_TRIALS`` multiplies the
trial counts here, ``PGDURABLE_FAULT_SEED`` changes the random choices.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.fault.harness import Cluster
from tests.fault.scenarios import first_step_poison, retry_then_crash, run, stale_cache_after_failed_commit

SCALE = int(os.environ.get("PGDURABLE_FAULT_TRIALS", "1"))
SEED = int(os.environ.get("PGDURABLE_FAULT_SEED", "0"))

# Trials per scenario in CI: with the three regression probes, about 65 s in all on a 2-core machine.
CI_TRIALS = {"sigkill": 2, "pg_crash": 1, "terminate": 1, "fence": 1, "conflicts": 1}


class BugObserved(AssertionError):
    """A bug the suite found came back (any other failure of that test is a real failure)."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster() as own:
        yield own


@pytest.mark.timeout(300 * SCALE)
@pytest.mark.parametrize("scenario", list(CI_TRIALS))
def test_scenario(cluster: Cluster, scenario: str) -> None:
    """Each trial injects its scenario's faults, then checks the invariants: every instance completed, every
    step's effect exactly once and in its checkpoint's transaction, no checkpoint committed twice, history
    replays to the checkpoint; and the scenario's faults were observed as often as its trials require."""
    lines: list[str] = []
    tally = run(cluster, scenario, CI_TRIALS[scenario] * SCALE, seed=SEED, log=lines.append)
    print(tally.report())
    assert tally.ok, tally.report() + "\n" + "\n".join(lines[-40:])


@pytest.mark.timeout(300)
def test_one_crash_after_retries_is_not_a_poison_step(cluster: Cluster) -> None:
    """With poison_claims = 2, a step fails 3 times with a retryable error, then its worker crashes once:
    the instance must complete, not fail as a poison step."""
    outcome = retry_then_crash(cluster, limit=2)
    if outcome.status == "failed" and "worker crashed" in (outcome.output or ""):
        raise BugObserved(
            f"{outcome.output}: the worker crashed once; the step's work item already had "
            f"{outcome.claims_after_retries} claims after {outcome.failed_attempts} failed attempts"
        )
    assert outcome.status == "completed", outcome


@pytest.mark.timeout(300)
def test_a_failed_commit_leaves_no_state_behind(cluster: Cluster) -> None:
    """`first >> join(a, b) >> last`: W1's COMMIT of `first` fails (terminated while it waits for the
    notification lock), W2 runs `first` again and commits, then W1 runs `b`. The checkpoint W1 writes must be
    its history's replay, and `last` must see the xid that `first` returned in the attempt that committed,
    not the aborted one's."""
    probe = stale_cache_after_failed_commit(cluster)
    if probe.seen_xid == probe.aborted_xid != probe.recorded_xid:
        raise BugObserved(
            f"`last` was given $first.xid = {probe.seen_xid}, the aborted attempt's; history records `first` "
            f"with xid {probe.recorded_xid}; checkpoint diverged from its replay: {probe.checkpoint_diverged}"
        )
    assert not probe.checkpoint_diverged, probe
    assert probe.status == "completed", probe
    assert not probe.problems, probe
    assert probe.seen_xid == probe.recorded_xid, probe


@pytest.mark.timeout(300)
def test_a_first_step_that_crashes_workers_is_a_poison_step(cluster: Cluster) -> None:
    """With poison_claims = 2, the first step of a workflow kills 2 workers in a row: the 3rd must fail it as
    a poison step ("worker crashed 2 times on node ...") and live on."""
    probe = first_step_poison(cluster, limit=2)
    if probe.exits[-1] == -signal.SIGKILL and probe.status == "pending":
        raise BugObserved(
            f"{len(probe.exits)} workers died on the first step (its work item has {probe.claims} claims); "
            f"the instance is still {probe.status}"
        )
    assert probe.exits == (-signal.SIGKILL,) * 2 + (None,), probe
    assert probe.status == "failed" and "worker crashed 2 times" in (probe.output or ""), probe
