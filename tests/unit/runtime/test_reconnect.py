"""The worker's waits between attempts to reconnect: doubling, capped, jittered, and logged once each way."""

from __future__ import annotations

import logging

import pytest

from pgdurable.runtime.worker import _RECONNECT_MAX_WAIT, _Reconnect


def test_waits_double_from_the_poll_interval_up_to_the_cap() -> None:
    reconnect = _Reconnect("slot", 0.05)
    for attempt in range(1, 12):
        wait = reconnect.lost(OSError("gone"))
        full = min(_RECONNECT_MAX_WAIT, 0.05 * 2 ** (attempt - 1))
        assert full / 2 <= wait <= full, (attempt, wait)


def test_a_connection_back_starts_the_waits_over() -> None:
    reconnect = _Reconnect("slot", 0.05)
    for _ in range(8):
        reconnect.lost(OSError("gone"))
    reconnect.connected()
    assert reconnect.lost(OSError("gone again")) <= 0.05


def test_one_line_when_lost_and_one_when_back(caplog: pytest.LogCaptureFixture) -> None:
    reconnect = _Reconnect("listener", 0.05)
    with caplog.at_level(logging.WARNING, logger="pgdurable.worker"):
        reconnect.connected()  # connected at the first attempt: nothing to say
        for _ in range(5):
            reconnect.lost(OSError("server closed the connection"))
        reconnect.connected()
    assert [r.getMessage() for r in caplog.records] == [
        "listener lost its connection (server closed the connection); reconnecting",
        "listener reconnected after 5 attempts",
    ]
