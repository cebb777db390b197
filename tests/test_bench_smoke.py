"""The benchmark keeps working: a smoke run at tiny sizes on SQLite (numbers not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def bench(*args: str) -> None:
    """Run a benchmark command in a fresh process; it must succeed."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_benchmark_smoke_run(tmp_path: Path) -> None:
    bench("bench/run.py", "--quick", "--backends", "sqlite", "--out", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())["sqlite"]
    for workload in ("chain", "loop", "fanout", "calls"):
        assert set(results["per_run"][workload]) == {"plain", "floor-a", "floor-b", "dbos_llama"}
    assert set(results["recovery"]) == {"floor-a", "floor-b", "dbos_llama"}
    assert set(results["waiting"]) == {"plain", "floor", "dbos_llama"}
    assert "| chain |" in (tmp_path / "results.md").read_text()


def test_idle_release_benchmark_smoke_run(tmp_path: Path) -> None:
    out = str(tmp_path)
    bench("-m", "bench.idle", "--runs", "4", "--repeat", "1", "--backends", "sqlite", "--out", out)
    results = json.loads((tmp_path / "idle.json").read_text())["sqlite"]
    assert set(results) == {"raw", "kept", "released"}
    assert all(figures["drain_seconds"] > 0 for figures in results.values())
    assert "| sqlite | idle_release=2 |" in (tmp_path / "idle.md").read_text()


def test_fanout_sweep_smoke_run(tmp_path: Path) -> None:
    out = str(tmp_path)
    bench(
        "-m", "bench.fanout", "--backends", "sqlite", "--widths", "4", "--workers", "2",
        "--repeat", "1", "--scale-below", "0", "--skip-alternative", "--out", out,
    )  # fmt: skip
    (row,) = json.loads((tmp_path / "fanout.json").read_text())["rows"]
    assert (row["width"], row["workers"], row["collector_invocations"]) == (4, 2, 4)
    assert {"plain", "floor-b", "dbos_llama"} <= set(row)
    assert "| sqlite | 4 | 2 | 1 |" in (tmp_path / "fanout.md").read_text()
