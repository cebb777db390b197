"""The price of durability: dbos_llama next to plain workflows, raw DBOS and the alternative.

    python bench/run.py                         # full sizes, SQLite and PostgreSQL
    python bench/run.py --quick --backends sqlite   # the CI smoke run

Implementations, interleaved run by run in one process per backend (median of
``--repeat`` runs): plain in-memory workflows, raw DBOS floor-a (one ``@DBOS.step`` per
llama step) and floor-b (one child ``@DBOS.workflow`` per llama step), dbos_llama, and
``llama-agents-dbos`` when its own virtualenv exists (``bench/alternative.py``).
Writes ``results.md`` and ``results.json`` to ``--out`` (default ``bench/results``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dbos import DBOS  # noqa: E402
from workflows.events import InputRequiredEvent  # noqa: E402

from bench import workloads as w  # noqa: E402
from bench.databases import Backend, make_backend  # noqa: E402

ALT_PYTHON = Path(os.environ.get("BENCH_ALT_PYTHON", "/work/venv-lad/bin/python"))
#: DBOS config shared by every implementation (SQLite's notification listener polls
#: at this interval: DBOS's default of 1 s would dominate every cross-process wait).
POLL = 0.05
IMPLS = ("plain", "floor-a", "floor-b", "dbos_llama")
PER_RUN = ("chain", "loop", "fanout", "calls")


def dbos_config(url: str) -> dict[str, Any]:
    return {
        "name": "bench",
        "system_database_url": url,
        "log_level": "ERROR",
        "notification_listener_polling_interval_sec": POLL,
        "application_version": "bench",
        "run_admin_server": False,
        # DBOS's executor otherwise grows a thread for every concurrent blocking call.
        "max_executor_threads": int(os.environ.get("BENCH_MAX_THREADS", "64")),
    }


# -- in-process workloads ----------------------------------------------------------------------
@dataclass
class Sizes:
    repeat: int
    concurrent: int
    waiting: int
    recovery_repeat: int
    skip_alternative: bool = False


@dataclass
class Results:
    per_run: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    concurrent: dict[str, float] = field(default_factory=dict)
    hitl: dict[str, float] = field(default_factory=dict)
    recovery: dict[str, float] = field(default_factory=dict)
    waiting: dict[str, dict[str, float]] = field(default_factory=dict)


class Runner:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.plain = {name: cls(timeout=None) for name, cls in w.PLAIN.items()}
        self.durable = {name: cls(timeout=None) for name, cls in w.DURABLE.items()}

    def one(self, impl: str, workload: str) -> Callable[[], Awaitable[Any]]:
        if impl == "plain":
            return lambda: self.plain[workload].run()
        if impl == "dbos_llama":
            return lambda: self.durable[workload].run(run_id=uuid.uuid4().hex)
        floor_a, floor_b, units = w.FLOORS[workload]
        floor = floor_a if impl == "floor-a" else floor_b
        return lambda: floor(units)

    async def per_run(self, workload: str, repeat: int) -> dict[str, dict[str, float]]:
        times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        rows: dict[str, int] = {}
        calls = {impl: self.one(impl, workload) for impl in IMPLS}
        for impl in IMPLS:  # warm-up
            await calls[impl]()
        for _ in range(repeat):
            for impl in IMPLS:  # interleaved
                before = self.backend.rows()
                start = time.perf_counter()
                await calls[impl]()
                times[impl].append(time.perf_counter() - start)
                rows[impl] = self.backend.rows() - before
        invocations = w.INVOCATIONS[workload]
        return {
            impl: {
                "ms_per_run": statistics.median(times[impl]) * 1000,
                "ms_per_step": statistics.median(times[impl]) * 1000 / invocations,
                "rows_per_step": rows[impl] / invocations,
            }
            for impl in IMPLS
        }

    async def concurrent(self, runs: int, repeat: int) -> dict[str, float]:
        """Runs per second with ``runs`` chain runs at once."""
        rates: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        for _ in range(repeat):
            for impl in IMPLS:
                call = self.one(impl, "chain")
                start = time.perf_counter()
                await asyncio.gather(*(call() for _ in range(runs)))
                rates[impl].append(runs / (time.perf_counter() - start))
        return {impl: statistics.median(r) for impl, r in rates.items()}

    async def hitl(self, repeat: int) -> dict[str, float]:
        """Milliseconds from sending the answer in another process to the next step."""
        latencies: dict[str, list[float]] = {"floor": [], "dbos_llama": []}
        for _ in range(repeat):
            for impl in latencies:
                run_id = uuid.uuid4().hex
                if impl == "dbos_llama":
                    handler = self.durable["hitl"].run(run_id=run_id)
                    async for event in handler.stream_events():
                        if isinstance(event, InputRequiredEvent):
                            break
                    result: Awaitable[Any] = handler
                else:
                    from dbos import SetWorkflowID

                    with SetWorkflowID(run_id):
                        handle = await DBOS.start_workflow_async(w.floor_wait)
                    result = handle.get_result(polling_interval_sec=0.01)
                await asyncio.sleep(0.3)  # the run is now waiting in its receive
                sent = await asyncio.to_thread(answer_elsewhere, self.backend, impl, run_id)
                latencies[impl].append((await result - sent) * 1000)
        return {impl: statistics.median(v) for impl, v in latencies.items()}


def answer_elsewhere(backend: Backend, impl: str, run_id: str) -> float:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "answer.py"), backend.url, impl, run_id],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


# -- workloads in their own processes --------------------------------------------------------------
def in_subprocess(script: str, *args: str, python: Path | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [str(python or sys.executable), str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{script} {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def recovery(backend_name: str, repeat: int) -> dict[str, float]:
    """Seconds from DBOS.launch() to the result of a chain killed after 5 steps."""
    times: dict[str, list[float]] = {"floor-a": [], "floor-b": [], "dbos_llama": []}
    for _ in range(repeat):
        for impl in times:
            backend = make_backend(backend_name)
            try:
                times[impl].append(in_subprocess("recovery.py", backend.url, impl)["seconds"])
            finally:
                backend.cleanup()
    return {impl: statistics.median(v) for impl, v in times.items()}


def waiting(backend_name: str, runs: int) -> dict[str, dict[str, float]]:
    """Memory per waiting run and time to finish them all once answered."""
    found: dict[str, dict[str, float]] = {}
    for impl in ("plain", "floor", "dbos_llama"):
        backend = make_backend(backend_name)
        try:
            found[impl] = in_subprocess("waiting.py", backend.url, impl, str(runs))
        finally:
            backend.cleanup()
    return found


def alternative(backend_name: str, sizes: Sizes) -> dict[str, Any] | None:
    if not ALT_PYTHON.exists():
        return None
    backend = make_backend(backend_name)
    try:
        return in_subprocess(
            "alternative.py",
            backend.url,
            str(sizes.repeat),
            str(sizes.concurrent),
            python=ALT_PYTHON,
        )
    except RuntimeError as error:
        return {"error": str(error)[-500:]}
    finally:
        backend.cleanup()


async def bench_backend(backend_name: str, sizes: Sizes) -> dict[str, Any]:
    backend = make_backend(backend_name)
    DBOS(config=dbos_config(backend.url))
    DBOS.launch()
    results = Results()
    try:
        runner = Runner(backend)
        for workload in PER_RUN:
            results.per_run[workload] = await runner.per_run(workload, sizes.repeat)
        results.concurrent = await runner.concurrent(sizes.concurrent, max(1, sizes.repeat // 2))
        results.hitl = await runner.hitl(sizes.repeat)
    finally:
        DBOS.destroy()
        backend.cleanup()
    results.recovery = recovery(backend_name, sizes.recovery_repeat)
    results.waiting = waiting(backend_name, sizes.waiting)
    alt = None if sizes.skip_alternative else alternative(backend_name, sizes)
    return {**results.__dict__, "alternative": alt}


# -- report -------------------------------------------------------------------------------------
def report(all_results: dict[str, Any], sizes: Sizes) -> str:
    lines = [
        "# dbos_llama benchmark",
        "",
        f"{date.today()} · {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()} · dbos {_version('dbos')}"
        f" · llama-index-workflows {_version('llama-index-workflows')} · median of "
        f"{sizes.repeat} interleaved runs",
        "",
    ]
    for backend, res in all_results.items():
        lines += [f"## {backend}", "", "Per llama step (ms) and rows written per llama step:", ""]
        lines += [
            "| workload | plain | floor-a | floor-b | dbos_llama | x floor-b | rows floor-b "
            "| rows dbos_llama |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for workload, by_impl in res["per_run"].items():
            ms = {impl: by_impl[impl]["ms_per_step"] for impl in IMPLS}
            lines.append(
                f"| {workload} | {ms['plain']:.2f} | {ms['floor-a']:.2f} | {ms['floor-b']:.2f} "
                f"| {ms['dbos_llama']:.2f} | {ms['dbos_llama'] / ms['floor-b']:.2f} "
                f"| {by_impl['floor-b']['rows_per_step']:.1f} "
                f"| {by_impl['dbos_llama']['rows_per_step']:.1f} |"
            )
        c = res["concurrent"]
        lines += [
            "",
            f"Concurrent chain runs (runs/s): plain {c['plain']:.1f}, floor-a {c['floor-a']:.1f}, "
            f"floor-b {c['floor-b']:.1f}, dbos_llama {c['dbos_llama']:.1f} "
            f"({100 * c['dbos_llama'] / c['floor-b']:.0f}% of floor-b)",
            f"Human in the loop, answer sent from another process to next step: raw DBOS recv "
            f"{res['hitl']['floor']:.0f} ms, dbos_llama {res['hitl']['dbos_llama']:.0f} ms",
            "Recovery, DBOS.launch() to result of a chain killed after step 5: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in res["recovery"].items()),
            "Waiting runs: "
            + "; ".join(
                f"{k} {v['kb_per_run']:.0f} KB/run, all done {v['finish_seconds']:.2f} s after "
                f"answers, peak RSS {v['peak_rss_mb']:.0f} MB"
                for k, v in res["waiting"].items()
            ),
        ]
        alt = res.get("alternative")
        if alt and "error" not in alt:
            lines.append(
                "llama-agents-dbos (own venv, dbos "
                f"{alt['dbos_version']}): "
                + ", ".join(
                    f"{k} {v['ms_per_step']:.2f} ms/step {v['rows_per_step']:.1f} rows/step"
                    for k, v in alt["per_run"].items()
                )
                + f"; concurrent {alt['concurrent']:.1f} runs/s"
            )
        elif alt:
            lines.append(f"llama-agents-dbos: failed ({alt['error'].splitlines()[-1]})")
        lines.append("")
    return "\n".join(lines)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument(
        "--no-alternative", action="store_true", help="skip llama-agents-dbos (implied by --quick)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    sizes = (
        Sizes(repeat=1, concurrent=3, waiting=5, recovery_repeat=1)
        if args.quick
        else Sizes(repeat=7, concurrent=50, waiting=1000, recovery_repeat=3)
    )
    if args.repeat:
        sizes.repeat = args.repeat
    sizes.skip_alternative = args.quick or args.no_alternative
    all_results: dict[str, Any] = {}
    for backend in args.backends.split(","):
        print(f"benchmarking on {backend} ...", file=sys.stderr, flush=True)
        all_results[backend] = asyncio.run(bench_backend(backend, sizes))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(all_results, indent=2))
    markdown = report(all_results, sizes)
    (args.out / "results.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
