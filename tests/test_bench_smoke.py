"""The benchmark script keeps working (tiny sizes; numbers are not asserted)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_chain_benchmark_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/chain.py", "--steps", "3", "--runs", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for kind in ("plain", "floor-a", "floor-b", "durable"):
        assert f"  {kind} " in proc.stdout
    assert "dbos_llama.next" in proc.stdout
