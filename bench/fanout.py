"""Fan-out width sweep: per-invocation time, rows per item and peak RSS, dbos_llama next to
raw DBOS with the same step invocations (floor-b) and the official runtime.

    python -m bench.fanout                                  # full sweep, both backends
    python -m bench.fanout --widths 8 128 --repeat 3 --backends sqlite

One fan step sends W items with ``ctx.send_event``, a worker step (``num_workers`` 4 or 16)
squares each, a collector (``collect_events``) sums them: 1 + 2W step invocations per run.
floor-b runs the same 1 + 2W invocations as child ``@DBOS.workflow`` calls with the same
concurrency (`bench/fanout_flows.py`). Runs are interleaved (floor-b, dbos_llama, plain),
median of ``--repeat`` (more below ``--scale-below`` items: `runs_for`); each backend in
its own process. ``llama-agents-dbos`` runs in its own virtualenv when it exists
(``bench/setup_alternative.sh``). Writes ``fanout.md`` and ``fanout.json`` to ``--out``
(default ``bench/results``).
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
import threading
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ALT_PYTHON = Path(os.environ.get("BENCH_ALT_PYTHON", "/work/venv-lad/bin/python"))
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


class PeakRss:
    """The process's peak RSS above its level at the start, sampled every 5 ms."""

    def __init__(self) -> None:
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


async def collector_invocations(run_id: str) -> int:
    """Invocations of the collector step recorded for one durable run (child workflows,
    or records in the run's own workflow under decision rules 4)."""
    from dbos import DBOS

    from dbos_llama._history import step_calls

    calls = step_calls(await DBOS.list_workflow_steps_async(run_id))
    return sum(1 for call in calls if call.step == "collect")


#: Fan-outs narrower than this get proportionally more runs (``--scale-below``).
SCALE_BELOW = 64


def runs_for(width: int, repeat: int, scale_below: int = SCALE_BELOW) -> int:
    """Interleaved runs at ``width``: ``repeat``, more for fan-outs narrower than
    ``scale_below``, whose runs last a few hundred milliseconds and vary more (24 at
    W = 8 for ``repeat`` 3)."""
    return max(repeat, repeat * scale_below // width)


async def sweep_backend(
    backend_name: str,
    widths: list[int],
    workers: list[int],
    repeat: int,
    scale_below: int = SCALE_BELOW,
):
    sys.path.insert(0, str(ROOT))
    from dbos import DBOS

    from bench.databases import make_backend
    from bench.fanout_flows import expected, invocations, make_fan, make_floor
    from bench.run import dbos_config
    from dbos_llama import durable

    backend = make_backend(backend_name)
    plain = {(w, n): make_fan(w, n) for w in widths for n in workers}
    durables = {k: durable(cls, name=f"bench.fanout.{k[0]}x{k[1]}") for k, cls in plain.items()}
    floor_b = make_floor(DBOS)
    DBOS(config=dbos_config(backend.url))
    DBOS.launch()
    results: list[dict[str, Any]] = []
    try:
        for width in widths:
            for n in workers:
                fan, durable_fan = plain[(width, n)], durables[(width, n)]

                async def run_plain(fan: Any = fan) -> Any:
                    return await fan(timeout=None).run()

                async def run_floor(width: int = width, n: int = n) -> Any:
                    return await floor_b(width, n)

                async def run_durable(durable_fan: Any = durable_fan) -> Any:
                    return await durable_fan(timeout=None).run(run_id=uuid.uuid4().hex)

                flows = {"plain": run_plain, "floor-b": run_floor, "dbos_llama": run_durable}
                for flow in flows.values():  # warm-up
                    await flow()
                times: dict[str, list[float]] = {k: [] for k in flows}
                rows: dict[str, list[int]] = {k: [] for k in flows}
                peaks: dict[str, list[float]] = {k: [] for k in flows}
                collects: list[int] = []
                for _ in range(runs_for(width, repeat, scale_below)):
                    for impl, flow in flows.items():
                        before = backend.rows()
                        run_id = uuid.uuid4().hex
                        with PeakRss() as peak:
                            start = time.perf_counter()
                            if impl == "dbos_llama":
                                result = await durable_fan(timeout=None).run(run_id=run_id)
                            else:
                                result = await flow()
                            times[impl].append(time.perf_counter() - start)
                        assert result == expected(width), (impl, result)
                        rows[impl].append(backend.rows() - before)
                        peaks[impl].append(peak.mb)
                        if impl == "dbos_llama":
                            collects.append(await collector_invocations(run_id))
                row = {
                    "backend": backend_name,
                    "width": width,
                    "workers": n,
                    "runs": runs_for(width, repeat, scale_below),
                }
                for impl in flows:
                    median = statistics.median(times[impl])
                    row[impl] = {
                        "ms_per_run": median * 1000,
                        "ms_per_invocation": median * 1000 / invocations(width),
                        "rows_per_item": statistics.median(rows[impl]) / width,
                        "peak_rss_mb": statistics.median(peaks[impl]),
                    }
                row["collector_invocations"] = statistics.median(collects)
                row["x_floor_b"] = row["dbos_llama"]["ms_per_run"] / row["floor-b"]["ms_per_run"]
                # The floor plus what LlamaIndex's own runtime costs in process.
                with_plain = row["floor-b"]["ms_per_run"] + row["plain"]["ms_per_run"]
                row["x_floor_b_plus_plain"] = row["dbos_llama"]["ms_per_run"] / with_plain
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        DBOS.destroy()
        backend.cleanup()
    return results


#: The official runtime runs the widths up to this one (about 80 ms per invocation:
#: 512 items would take several minutes a run).
ALT_MAX_WIDTH = 128


def alternative(backend_name: str, widths: list[int], workers: list[int], repeat: int):
    """The official runtime on the same fan-outs, in its own virtualenv."""
    widths = [w for w in widths if w <= ALT_MAX_WIDTH]
    if not ALT_PYTHON.exists() or not widths:
        return None
    sys.path.insert(0, str(ROOT))
    from bench.databases import make_backend

    backend = make_backend(backend_name)
    try:
        out = subprocess.run(
            [str(ALT_PYTHON), "-m", "bench.fanout_alternative", backend.url, str(repeat)]
            + ["--widths", *map(str, widths), "--workers", *map(str, workers)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=3600,
        )
        if out.returncode != 0:
            return {"error": out.stderr[-2000:]}
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        backend.cleanup()


def report(rows: list[dict[str, Any]], alt: dict[str, Any], repeat: int) -> str:
    from importlib.metadata import version

    lines = [
        "# Fan-out width sweep",
        "",
        f"{date.today()} · {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()} · dbos {version('dbos')} · llama-index-workflows "
        f"{version('llama-index-workflows')} · median of interleaved runs ({repeat}, more"
        " for narrow fan-outs: the runs column)",
        "",
        "One fan step sends W items, `num_workers` workers square them, a `collect_events`"
        " step sums them: 1 + 2W step invocations. floor-b makes the same invocations as"
        " child DBOS workflows with the same concurrency. ms per invocation; rows written per"
        " item; peak RSS above the level before the run; collector invocations per run"
        " (W for an uninterrupted plain run). x (floor-b + plain) adds to the floor what"
        " LlamaIndex's own runtime costs for the same run in process (the plain column).",
        "",
        "| backend | W | workers | runs | plain ms | floor-b ms | dbos_llama ms | x floor-b "
        "| x (floor-b + plain) "
        "| llama-agents-dbos ms | rows/item floor-b | rows/item dbos_llama "
        "| peak RSS MB floor-b / dbos_llama | collector calls |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = (alt.get(r["backend"]) or {}).get(f"{r['width']}x{r['workers']}")
        alt_ms = f"{a['ms_per_invocation']:.2f}" if a else "–"
        lines.append(
            f"| {r['backend']} | {r['width']} | {r['workers']} | {r.get('runs', repeat)} "
            f"| {r['plain']['ms_per_invocation']:.2f} | {r['floor-b']['ms_per_invocation']:.2f} "
            f"| {r['dbos_llama']['ms_per_invocation']:.2f} | {r['x_floor_b']:.2f} "
            f"| {r.get('x_floor_b_plus_plain', float('nan')):.2f} | {alt_ms} "
            f"| {r['floor-b']['rows_per_item']:.1f} | {r['dbos_llama']['rows_per_item']:.1f} "
            f"| {r['floor-b']['peak_rss_mb']:.1f} / {r['dbos_llama']['peak_rss_mb']:.1f} "
            f"| {r['collector_invocations']:.0f} |"
        )
    errors = {b: a["error"] for b, a in alt.items() if a and "error" in a}
    for backend, error in errors.items():
        lines += ["", f"llama-agents-dbos on {backend}: failed ({error.strip().splitlines()[-1]})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--widths", nargs="+", type=int, default=None)
    parser.add_argument("--workers", nargs="+", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale-below", type=int, default=SCALE_BELOW)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a backend, in this process
    parser.add_argument("--skip-alternative", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench.fanout_flows import WIDTHS, WORKERS

    widths, workers = args.widths or list(WIDTHS), args.workers or list(WORKERS)
    if args.one:
        rows = asyncio.run(sweep_backend(args.one, widths, workers, args.repeat, args.scale_below))
        print(json.dumps(rows))
        return
    rows, alt = [], {}
    for backend in args.backends:
        out = subprocess.run(
            [sys.executable, "-m", "bench.fanout", "--one", backend, "--repeat", str(args.repeat)]
            + ["--scale-below", str(args.scale_below)]
            + ["--widths", *map(str, widths), "--workers", *map(str, workers)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            check=True,
        )
        rows += json.loads(out.stdout.strip().splitlines()[-1])
        if not args.skip_alternative:
            alt[backend] = alternative(backend, widths, workers, args.repeat)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fanout.json").write_text(json.dumps({"rows": rows, "alternative": alt}, indent=1))
    text = report(rows, alt, args.repeat)
    (args.out / "fanout.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
