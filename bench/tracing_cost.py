"""What OpenTelemetry tracing costs a durable run: the chain workload, tracing off and on.

    python bench/tracing_cost.py [--backend sqlite] [--rounds 5] [--runs 20] [--before DIR]

Each round starts one fresh process per mode, in turn (so drift hits every mode
alike): ``off`` (no OpenTelemetry imported, the default of every application),
``on`` (the OpenTelemetry SDK's `TracerProvider` with a batch processor and an
exporter that drops the spans: what tracing costs dbos_llama and DBOS, not the
export) and, with ``--before DIR`` (a checkout of the commit before tracing, e.g. a
``git worktree``), ``before`` (that checkout, off). A process runs ``--runs`` chains of
10 steps (bench.workloads' ``chain``, one warm-up first) and prints the median ms per
llama step. Writes ``tracing_cost.md`` and ``tracing_cost.json`` to ``--out``.
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
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _install_provider() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Dropping(SpanExporter):
        exported = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            Dropping.exported += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    trace.set_tracer_provider(provider)


async def _measure(url: str, runs: int, mode: str) -> dict[str, Any]:
    from dbos import DBOS

    from bench import workloads as w
    from bench.plain_workflows import CHAIN

    flow = w.DURABLE["chain"](timeout=None)
    config: dict[str, Any] = {
        "name": "bench",
        "system_database_url": url,
        "log_level": "ERROR",
        "notification_listener_polling_interval_sec": 0.05,
        "application_version": "bench",
        "run_admin_server": False,
    }
    if mode == "on":
        config["enable_otlp"] = True  # DBOS's spans too, to the provider above
    DBOS(config=config)
    DBOS.launch()
    times, cpu = [], []
    try:
        for i in range(runs + 1):
            started, cpu_started = time.perf_counter(), time.process_time()
            await flow.run(run_id=f"chain-{uuid.uuid4().hex[:8]}")
            if i:  # the first run warms up
                times.append((time.perf_counter() - started) * 1000 / CHAIN)
                cpu.append((time.process_time() - cpu_started) * 1000 / CHAIN)
    finally:
        DBOS.destroy()
    import dbos_llama

    otel = "opentelemetry.trace" in sys.modules
    return {
        "ms_per_step": statistics.median(times),
        "cpu_ms_per_step": statistics.median(cpu),
        "otel_imported": otel,
        "lib": dbos_llama.__file__,
    }


def _hooks() -> dict[str, float]:
    """ns per call of each tracing hook on the path of a run with tracing off."""
    import timeit

    from dbos_llama import _tracing

    def call() -> None:
        with _tracing.call("bench.call") as traced:
            traced.ran()

    def step_call() -> None:
        with _tracing.step_call("r", "r/s/0", "s"):
            pass

    hooks = {
        "enabled()": _tracing.enabled,
        "start_attributes + propagate (per run)": lambda: (
            _tracing.propagate("r") if not _tracing.start_attributes("r") else None
        ),
        "step_call (per step invocation)": step_call,
        "call (per durable call)": call,
    }
    n = 200_000
    result = {k: min(timeit.repeat(f, number=n, repeat=5)) / n * 1e9 for k, f in hooks.items()}
    assert "opentelemetry.trace" not in sys.modules
    return result


def _child(mode: str, url: str, runs: int) -> None:
    if mode == "hooks":
        print(json.dumps(_hooks()), flush=True)
        return
    if mode == "on":
        _install_provider()
    sys.path.append(str(ROOT))  # bench's workloads, after PYTHONPATH (the checkout measured)
    print(json.dumps(asyncio.run(_measure(url, runs, mode))), flush=True)


def _fresh_database(backend: str) -> tuple[str, Any]:
    sys.path.insert(0, str(ROOT))
    from bench.databases import make_backend

    made = make_backend(backend)
    return made.url, made.cleanup


def _run_mode(mode: str, backend: str, runs: int, before: Path | None) -> dict[str, Any]:
    url, cleanup = _fresh_database(backend)
    checkout = before if mode == "before" and before is not None else ROOT
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--url", url, "--runs", str(runs)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=checkout,
        )
    finally:
        cleanup()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--before", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--child", default=None)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.url, args.runs)
        return
    modes = ["off", "on"] + (["before"] if args.before else [])
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for round_ in range(args.rounds):
        for mode in modes:
            result = _run_mode(mode, args.backend, args.runs, args.before)
            assert result["otel_imported"] == (mode == "on"), (mode, result)
            checkout = args.before if mode == "before" else ROOT
            assert result["lib"].startswith(str(checkout)), (mode, result)
            wall[mode].append(result["ms_per_step"])
            cpu[mode].append(result["cpu_ms_per_step"])
            print(
                f"round {round_} {mode}: {result['ms_per_step']:.2f} ms/step, "
                f"{result['cpu_ms_per_step']:.2f} CPU ms/step",
                flush=True,
            )
    hooks = _run_mode("hooks", args.backend, 0, None)
    summary = {
        "hooks_ns_per_call_off": hooks,
        "date": date.today().isoformat(),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} vCPUs, Python {platform.python_version()}"
        ),
        "backend": args.backend,
        "rounds": args.rounds,
        "runs_per_process": args.runs,
        "wall_ms_per_step": wall,
        "cpu_ms_per_step": cpu,
        "median_wall_ms_per_step": {m: statistics.median(v) for m, v in wall.items()},
        "median_cpu_ms_per_step": {m: statistics.median(v) for m, v in cpu.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tracing_cost.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# What tracing costs a durable run (issue #19)",
        "",
        f"`python bench/tracing_cost.py --backend {args.backend} --rounds {args.rounds} "
        f"--runs {args.runs}{' --before <checkout>' if args.before else ''}` "
        f"({summary['date']}; {summary['machine']}). Chains of 10 steps; each process "
        "runs the chains of one mode; median over processes of each process's median, "
        "wall-clock and CPU time of the process (all its threads) per llama step.",
        "",
        "| mode | wall ms per step | CPU ms per step | CPU ms per step, per process |",
        "|---|---|---|---|",
    ]
    for mode in modes:
        per = ", ".join(f"{v:.2f}" for v in cpu[mode])
        w, c = summary["median_wall_ms_per_step"][mode], summary["median_cpu_ms_per_step"][mode]
        lines.append(f"| {mode} | {w:.2f} | {c:.2f} | {per} |")
    lines += [
        "",
        "The hooks on a run's path with tracing off (no OpenTelemetry imported), ns per",
        "call (best of 5 x 200,000 calls, `timeit`):",
        "",
        "| hook | ns per call |",
        "|---|---|",
    ]
    lines += [f"| {name} | {ns:.0f} |" for name, ns in hooks.items()]
    (args.out / "tracing_cost.md").write_text("\n".join(lines) + "\n")
    print(
        json.dumps(
            {"wall": summary["median_wall_ms_per_step"], "cpu": summary["median_cpu_ms_per_step"]}
        )
    )


if __name__ == "__main__":
    main()
