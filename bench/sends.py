"""Answering waiting runs: the cost of a send, and what a waiting run costs its worker.

    python -m bench.sends [--runs N] [--repeat R] [--backends sqlite,postgres]

For each backend, R times, in fresh processes:

1. live: a worker starts N runs (`bench.plain_workflows.Ask`, ``wf.run()`` in
   batches of 50, handlers kept) that each wait for an answer; measured: time from
   the first ``run()`` until all wait, and RSS per waiting run above the worker's
   baseline (after one warm-up run). Then the worker dies (``os._exit``).
2. recovered (on the second database of step 4): a new worker launches and
   recovers the N runs; measured: ``DBOS.launch()`` until all wait again, and RSS
   per waiting run above the same baseline.
3. sends alone, on the first database, with no worker running (the runs stay
   PENDING, so nothing competes with the sender): a client process sends each run
   one answer per implementation: raw ``DBOSClient.send`` of the same JSON envelope
   (portable serialization, same topic), ``DurableClient.send_event``,
   ``DurableClient.send_events`` in batches of 100, and ``send_event`` with the
   idle-release table present (the send then also reads and claims release rows).
4. sends under load, on a second database filled the same way: the recovered worker
   stays up and executes every answered run while a client process answers them,
   raw ``DBOSClient.send`` and ``send_event`` in turn; measured:
   each kind's time per send, and the worker's time from the first answered run
   finished until all have.

Median over the repetitions; writes ``bench/results/sends.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dbos import DBOS, DBOSClient, WorkflowSerializationFormat
from workflows.events import HumanResponseEvent

from bench.databases import make_backend
from bench.idle import PROBE, asked, config, rss_mb
from bench.plain_workflows import Ask
from dbos_llama import DurableClient, durable
from dbos_llama._envelope import encode
from dbos_llama._naming import TICK_TOPIC
from dbos_llama._release import ReleaseTable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BATCH = 50
SEND_BATCH = 100
ASK = durable(Ask, name="bench.sends.ask")
IMPLS = ("raw", "send_event", "send_events", "send_event_release_table")


async def settled(runs: int) -> None:
    """Until this worker holds ``runs`` runs and its tasks stop changing (3 s)."""
    from dbos_llama import _run_state

    last: tuple[int, int] = (-1, -1)
    stable = 0
    while stable < 3:
        await asyncio.sleep(1.0)
        now = (len(_run_state._runs), len(asyncio.all_tasks()))
        stable = stable + 1 if now == last and now[0] >= runs else 0
        last = now


async def live(url: str, runs: int) -> dict[str, float]:
    flow = ASK(timeout=None)
    DBOS(config=config(url))
    DBOS.launch()
    await PROBE(timeout=None).run(run_id="warm-up")
    gc.collect()
    baseline = rss_mb()
    began = time.perf_counter()
    handlers = []
    for first in range(0, runs, BATCH):
        batch = [flow.run(run_id=f"run-{i}") for i in range(first, min(first + BATCH, runs))]
        await asyncio.gather(*(asked(h) for h in batch))
        handlers += batch
    started = time.perf_counter() - began
    await settled(runs)
    gc.collect()
    return {
        "baseline_mb": baseline,
        "start_seconds": started,
        "live_kb_per_run": (rss_mb() - baseline) * 1024 / runs,
    }


async def recovered(url: str, runs: int, baseline_mb: float) -> None:
    """Recover the runs, report, then execute the answered runs until all finished."""
    _instance = ASK(timeout=None)  # kept referenced: recovered runs execute on it
    began = time.perf_counter()
    DBOS(config=config(url))
    DBOS.launch()
    await settled(runs)
    took = time.perf_counter() - began - 3.0  # minus the settling
    gc.collect()
    figures = {
        "recover_seconds": took,
        "recovered_kb_per_run": (rss_mb() - baseline_mb) * 1024 / runs,
    }
    print(json.dumps(figures), flush=True)
    first_answer = None
    while True:
        ended = await DBOS.list_workflows_async(
            name="llama:bench.sends.ask", status="SUCCESS", load_input=False, load_output=False
        )
        if ended and first_answer is None:
            first_answer = time.perf_counter()
        if len(ended) >= runs:
            break
        await asyncio.sleep(0.05)
    assert first_answer is not None
    print(json.dumps({"drain_seconds": time.perf_counter() - first_answer}), flush=True)


async def sends(url: str, runs: int, impl: str) -> dict[str, float]:
    """Milliseconds per send of one answer to each run, by ``impl`` (``loaded``: raw
    and ``send_event`` in turn, each timed on its own)."""
    ids = [f"run-{i}" for i in range(runs)]
    answer = HumanResponseEvent(response="yes")
    body = encode(answer)
    portable = WorkflowSerializationFormat.PORTABLE
    raw = DBOSClient(system_database_url=url)
    if impl == "send_event_release_table":
        ReleaseTable(url).ensure().dispose()
    spent = {"raw": 0.0, "ours": 0.0}
    async with DurableClient(url) as ours:
        if impl == "loaded":  # one of each in turn, so both meet the same load
            for i, run_id in enumerate(ids):
                began = time.perf_counter()
                if i % 2 == 0:
                    await raw.send_async(run_id, body, TICK_TOPIC, serialization_type=portable)
                else:
                    await ours.send_event(run_id, answer)
                spent["raw" if i % 2 == 0 else "ours"] += time.perf_counter() - began
        else:
            # connections opened before the clock starts
            await raw.send_async(ids[0], body, TICK_TOPIC, serialization_type=portable)
            await ours.send_event(ids[0], answer)
            kind = "raw" if impl == "raw" else "ours"
            began = time.perf_counter()
            if impl == "send_events":
                for first in range(0, runs, SEND_BATCH):
                    chunk = ids[first : first + SEND_BATCH]
                    await ours.send_events([(run_id, answer) for run_id in chunk])
            else:
                for run_id in ids:
                    if kind == "raw":
                        await raw.send_async(run_id, body, TICK_TOPIC, serialization_type=portable)
                    else:
                        await ours.send_event(run_id, answer)
            spent[kind] = time.perf_counter() - began
    raw.destroy()
    if impl == "loaded":
        half = runs / 2
        return {
            "loaded_raw_ms": spent["raw"] * 1000 / half,
            "loaded_ms": spent["ours"] * 1000 / half,
        }
    return {"ms_per_send": (spent["raw"] + spent["ours"]) * 1000 / runs}


def child(phase: str, url: str, runs: int, extra: str) -> dict[str, Any]:
    """Run one phase in a fresh process; its last stdout line is its JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.sends", "--phase", phase, url, str(runs), extra],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{phase} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def one_backend(backend: str, runs: int) -> dict[str, Any]:
    alone, loaded = make_backend(backend), make_backend(backend)
    try:
        figures = child("live", alone.url, runs, "")
        for impl in IMPLS:
            figures[f"{impl}_ms"] = child("send", alone.url, runs, impl)["ms_per_send"]
        child("live", loaded.url, runs, "")
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.sends",
                "--phase",
                "recovered",
                loaded.url,
                str(runs),
                str(figures["baseline_mb"]),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert worker.stdout is not None
        figures |= json.loads(worker.stdout.readline())
        figures |= child("send", loaded.url, runs, "loaded")
        figures |= json.loads(worker.stdout.readline())
        worker.wait(timeout=60)
        return figures
    finally:
        alone.cleanup()
        loaded.cleanup()


def table(results: dict[str, dict[str, float]], runs: int, repeat: int) -> str:
    lines = [
        f"Answering {runs} waiting runs (median of {repeat}; `python -m bench.sends`).",
        "",
        "| | SQLite | PostgreSQL |",
        "|---|---|---|",
    ]
    rows = [
        ("raw `DBOSClient.send` (ms per send)", "raw_ms", "{:.2f}"),
        ("`DurableClient.send_event` (ms per send)", "send_event_ms", "{:.2f}"),
        ("… with the idle-release table present", "send_event_release_table_ms", "{:.2f}"),
        ("`DurableClient.send_events`, 100 per call (ms per send)", "send_events_ms", "{:.2f}"),
        ("`send_event` / raw", "send_event_ratio", "{:.2f}x"),
        ("`send_event` with release table / raw", "release_ratio", "{:.2f}x"),
        ("under load: raw `DBOSClient.send` (ms per send)", "loaded_raw_ms", "{:.2f}"),
        ("under load: `send_event` (ms per send)", "loaded_ms", "{:.2f}"),
        ("under load: `send_event` / raw", "loaded_ratio", "{:.2f}x"),
        (
            f"under load: first to last of {runs} answered runs finished (s)",
            "drain_seconds",
            "{:.1f}",
        ),
        (f"start {runs} waiting runs live (s)", "start_seconds", "{:.1f}"),
        (f"recover {runs} waiting runs at launch (s)", "recover_seconds", "{:.1f}"),
        ("RSS per waiting run, started live (KB)", "live_kb_per_run", "{:.0f}"),
        ("RSS per waiting run, recovered (KB)", "recovered_kb_per_run", "{:.0f}"),
    ]
    for label, key, fmt in rows:
        cells = [
            fmt.format(results[b][key]) if b in results else "–" for b in ("sqlite", "postgres")
        ]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("args", nargs="*")
    opts = parser.parse_args()
    if opts.phase:
        url, runs, extra = opts.args[0], int(opts.args[1]), opts.args[2]
        if opts.phase == "live":
            result = asyncio.run(live(url, runs))
        elif opts.phase == "recovered":
            asyncio.run(recovered(url, runs, float(extra)))
            os._exit(0)
        else:
            result = asyncio.run(sends(url, runs, extra))
        print(json.dumps(result), flush=True)
        os._exit(0)  # the worker dies with its runs waiting
    backends = opts.backends.split(",")
    samples: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
    for _ in range(opts.repeat):
        for backend in backends:  # interleaved: one of each backend per round
            samples[backend].append(one_backend(backend, opts.runs))
    medians: dict[str, dict[str, float]] = {}
    for backend, runs_of in samples.items():
        keys = runs_of[0].keys()
        medians[backend] = {k: statistics.median(s[k] for s in runs_of) for k in keys}
        med = medians[backend]
        med["send_event_ratio"] = med["send_event_ms"] / med["raw_ms"]
        med["release_ratio"] = med["send_event_release_table_ms"] / med["raw_ms"]
        med["loaded_ratio"] = med["loaded_ms"] / med["loaded_raw_ms"]
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "sends.json").write_text(
        json.dumps({"medians": medians, "samples": samples}, indent=1)
    )
    text = table(medians, opts.runs, opts.repeat)
    (opts.out / "sends.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
