"""Failpoints: `PGDURABLE_FAILPOINT=after_runner|before_commit|after_commit_before_ack` makes a worker stop
dead (SIGKILL itself) at that moment, so that fault tests hit exact points instead of lucky timing.
Off unless the variable is set.
"""

from __future__ import annotations

import os
import signal
from typing import Final, Literal

__all__ = ["failpoint"]

_ARMED: Final = os.environ.get("PGDURABLE_FAILPOINT")


def failpoint(name: Literal["after_runner", "before_commit", "after_commit_before_ack"]) -> None:
    if name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
