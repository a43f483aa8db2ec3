"""Every example runs, as a user would run it: a fresh process on a fresh embedded PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgdurable import embedded

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Run `examples/<name>` in a fresh process on the embedded default in `home` (no PGDURABLE_* settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGDURABLE_")}
    env["PGDURABLE_HOME"] = str(home)
    try:
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / name)], env=env, capture_output=True, text=True, timeout=240
        )
    finally:
        embedded.stop(home)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.timeout(300)
def test_quickstart_runs_on_the_embedded_default(tmp_path: Path) -> None:
    done = run_example("quickstart.py", tmp_path)
    assert "Python and SQL front ends gave the same result: True" in done.stdout
    assert done.stdout.count(": completed") == 2


@pytest.mark.timeout(300)
def test_the_embedding_pipeline_survives_a_crash_without_embedding_twice(tmp_path: Path) -> None:
    done = run_example("embedding_pipeline.py", tmp_path)
    out = done.stdout
    assert "crashing as it starts batch 3 (SIGKILL)" in out
    assert "the first worker died (exit code -9) with 16 of 24 chunks embedded;" in out
    for line in (
        "chunks with an embedding     24",
        "most upserts of one chunk    1",
        "embeddings computed          24",
        "chunks embedded twice        0",
        "workers that embedded        2",
    ):
        assert line in out
    assert "every chunk was embedded once and upserted once, across a crash: OK" in out


@pytest.mark.timeout(300)
def test_the_maintenance_runbook_vacuums_only_after_approval(tmp_path: Path) -> None:
    out = run_example("maintenance_runbook.py", tmp_path).stdout
    assert "'outcome': 'not approved in time: nothing done'" in out
    assert "VACUUM ran after approval: dead tuples 15000 -> " in out


@pytest.mark.timeout(300)
def test_the_fanout_matches_a_single_query(tmp_path: Path) -> None:
    out = run_example("fanout.py", tmp_path).stdout
    assert "the fan-out's totals match the single query: OK" in out


def test_the_committed_notebook_has_no_outputs() -> None:
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(EXAMPLES / "embedding_pipeline.ipynb", as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source


@pytest.mark.timeout(300)
def test_the_notebook_runs_and_renders_mermaid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for name in [k for k in os.environ if k.startswith("PGDURABLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PGDURABLE_HOME", str(tmp_path))  # the kernel inherits this process's environment
    notebook = nbformat.read(EXAMPLES / "embedding_pipeline.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    )
    try:
        client.execute()
    finally:
        embedded.stop(tmp_path)
    markdown = [
        output["data"]["text/markdown"]
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "text/markdown" in output.get("data", {})
    ]
    graph, instance = markdown
    assert graph.startswith("```mermaid\nflowchart TD\n") and "CALL notebook_embed_chunks" in graph
    assert instance.startswith("**Instance** `") and "· completed\n\n```mermaid\n" in instance
    assert "classDef completed " in instance
    printed = [output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])]
    assert any("Baking bread" in text for text in printed)
