"""Service benchmark: a real ``pytc-serve`` (embedded cluster, two workers, one torch thread each, so
a job keeps both cores busy) answering clients while a job runs.

Figures: ``GET /v1/jobs/{id}`` latency p50/p99 with N concurrent clients, each polling once every
``--every`` seconds during a whole job (watchers, as ``pytc wait`` or a dashboard); the job's own
slowdown from that load (its duration against the mean of two unwatched runs of the same job, one
before and one after); the same GET with the N clients back to back (saturation: requests per
second, and the latency a saturated service gives); and submissions per second of small jobs, all
while a job runs. Prints a table and appends it, with the command, to tests/benchmarks/RESULTS.md.

    .venv/bin/python tests/benchmarks/bench_service.py [--clients 50] [--every 1] [--shape 32 384 384]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from service.demo import DEMO_CHECKPOINT, DEMO_CONFIG  # noqa: E402
from tests.integration.service_fixtures import make_service, wait_for_state  # noqa: E402
from volumes.synth import generate_em_volume, write_synth  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
errors: list[float] = []  # requests that failed at the transport level, during the last poll()
FINAL = ("succeeded", "failed", "cancelled")


def job(output: str, volume: str = "em.zarr", block: int = 128) -> dict[str, Any]:
    return {
        "kind": "inference",
        "input": {"path": volume, "dataset": "raw"},
        "model": {"architecture": "unet3d", "config": DEMO_CONFIG, "checkpoint": f"models/{DEMO_CHECKPOINT}"},
        "window": {"patch_size": [17, 129, 129], "overlap": 0.5, "batch_size": 2},
        "output": {"path": output, "dataset": "pred", "activation": ["sigmoid"], "dtype": "uint8",
                   "chunks": [16, block, block]},
        "compute": {"block_shape": [16, block, block]},
    }  # fmt: skip


def prepare(root: Path, shape: tuple[int, int, int]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    write_synth(root / "em.zarr", generate_em_volume(shape, seed=3), chunks=(16, 128, 128))
    write_synth(root / "small.zarr", generate_em_volume((16, 64, 64), seed=4), chunks=(16, 64, 64))
    (root / "models").mkdir()
    with (
        (files("models") / "weights" / DEMO_CHECKPOINT).open("rb") as src,
        open(root / "models" / DEMO_CHECKPOINT, "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)


def run_alone(url: str, doc: dict[str, Any]) -> float:
    """Seconds the job ran (started_at to finished_at, as the service recorded them)."""
    job_id = httpx.post(f"{url}/v1/jobs", json=doc, timeout=120).raise_for_status().json()["id"]
    return _duration(wait_for_state(url, job_id, FINAL, timeout_s=1800))


def _duration(record: dict[str, Any]) -> float:
    assert record["state"] == "succeeded", record
    started = datetime.datetime.fromisoformat(record["started_at"])
    return (datetime.datetime.fromisoformat(record["finished_at"]) - started).total_seconds()


async def poll(
    url: str, job_id: str, clients: int, every_s: float | None, seconds: float | None
) -> list[float]:
    """``clients`` loops of ``GET /v1/jobs/{id}``: each every ``every_s`` (a progress watcher; None:
    back to back), until the job ends or ``seconds`` pass. The latencies, in seconds."""
    latencies: list[float] = []
    errors.clear()
    done = asyncio.Event()
    began = time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one(offset: float) -> None:
            await asyncio.sleep(offset)
            while not done.is_set() and (seconds is None or time.perf_counter() - began < seconds):
                start = time.perf_counter()
                try:
                    response = await client.get(f"/v1/jobs/{job_id}")
                except httpx.TransportError:  # a keep-alive connection closed under us: counted
                    errors.append(time.perf_counter() - start)
                    continue
                latencies.append(time.perf_counter() - start)
                if response.json()["state"] in FINAL:
                    done.set()
                if every_s is not None:
                    await asyncio.sleep(max(0.0, every_s - (time.perf_counter() - start)))

        spread = every_s or 0.0
        await asyncio.gather(*(one(spread * i / clients) for i in range(clients)))
    return latencies


def run_watched(url: str, doc: dict[str, Any], clients: int, every_s: float) -> tuple[float, list[float]]:
    """The job's duration while ``clients`` watchers poll it, and their latencies."""
    job_id = httpx.post(f"{url}/v1/jobs", json=doc, timeout=120).raise_for_status().json()["id"]
    wait_for_state(url, job_id, ("running", *FINAL), timeout_s=600)
    latencies = asyncio.run(poll(url, job_id, clients, every_s, None))
    return _duration(wait_for_state(url, job_id, FINAL, timeout_s=600)), latencies


async def submit_for(url: str, submitters: int, seconds: float) -> tuple[list[float], list[str], float]:
    """Small jobs posted back to back by ``submitters`` clients for ``seconds``."""
    latencies: list[float] = []
    ids: list[str] = []
    counter = iter(range(1 << 30))
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        began = time.perf_counter()

        async def one() -> None:
            while time.perf_counter() - began < seconds:
                start = time.perf_counter()
                response = await client.post(
                    "/v1/jobs", json=job(f"small/s{next(counter)}.zarr", "small.zarr", 64)
                )
                latencies.append(time.perf_counter() - start)
                ids.append(response.raise_for_status().json()["id"])

        await asyncio.gather(*(one() for _ in range(submitters)))
        return latencies, ids, time.perf_counter() - began


def run_busy(url: str, clients: int, submitters: int, seconds: float) -> dict[str, Any]:
    """While a job runs: back-to-back GETs by ``clients`` (saturation), then small submissions."""
    busy = httpx.post(f"{url}/v1/jobs", json=job("busy.zarr"), timeout=120).raise_for_status().json()["id"]
    wait_for_state(url, busy, ("running", *FINAL), timeout_s=600)
    began = time.perf_counter()
    saturated = asyncio.run(poll(url, busy, clients, None, seconds))
    saturation_s = time.perf_counter() - began
    latencies, ids, wall = asyncio.run(submit_for(url, submitters, seconds))
    for job_id in [*ids, busy]:  # what only had to be accepted need not run
        httpx.post(f"{url}/v1/jobs/{job_id}/cancel", timeout=120)
    return {"saturated": saturated, "saturation_s": saturation_s, "submit": latencies, "submitted": len(ids),
            "submit_s": wall}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--submitters", type=int, default=8)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between one watcher's polls")
    parser.add_argument("--busy-seconds", type=float, default=10.0, help="length of each busy phase")
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 256, 256])
    parser.add_argument("--rounds", type=int, default=3, help="unwatched and watched runs, interleaved")
    parser.add_argument("--worker-niceness", type=int, default=10, help="PYTC_LOCAL_WORKER_NICENESS")
    parser.add_argument("--no-record", action="store_true", help="print only; RESULTS.md untouched")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    print(f"{2 * args.rounds + 2} jobs, a few minutes on 2 cores ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        root = Path(tmp) / "root"
        prepare(root, tuple(args.shape))  # type: ignore[arg-type]
        service = make_service(root, Path(tmp) / "state", PYTC_LOCAL_WORKERS="2", PYTC_TORCH_THREADS="1",
                               PYTC_LOG_LEVEL="warning",
                               PYTC_LOCAL_WORKER_NICENESS=str(args.worker_niceness))  # fmt: skip
        service.start()
        try:
            run_alone(service.url, job("warmup.zarr"))  # models loaded, caches and allocators warm
            alone, watched, latencies, failed = [], [], [], 0
            for i in range(args.rounds):  # interleaved A B B A ..., so that drifts hit both alike
                for kind in ("alone", "watched")[:: 1 if i % 2 == 0 else -1]:
                    doc = job(f"{kind}{i}.zarr")
                    if kind == "alone":
                        alone.append(run_alone(service.url, doc))
                        continue
                    seconds, more = run_watched(service.url, doc, args.clients, args.every)
                    watched.append(seconds)
                    latencies += more
                    failed += len(errors)
            busy = run_busy(service.url, args.clients, args.submitters, args.busy_seconds)
        except BaseException:
            print(service.log.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            service.stop()

    def ms(values: list[float], q: float) -> str:
        return f"{1e3 * percentile(values, q):.1f}"

    def runs(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} (runs: {', '.join(f'{v:.1f}' for v in values)})"

    n, sat = args.clients, busy["saturated"]
    slowdown = statistics.median(watched) / statistics.median(alone) - 1
    rows = [
        (f"GET /v1/jobs/{{id}} p50 / p99, {n} clients each polling every {args.every:g} s, job running",
         f"{ms(latencies, 50)} / {ms(latencies, 99)} ms ({len(latencies)} requests, {failed} failed)",
         "p99 < 50 ms"),
        ("job alone, median (s)", runs(alone), ""),
        ("job while watched so, median (s)", runs(watched), ""),
        ("job slowdown from the load (medians)", f"{100 * slowdown:+.1f} %", "< 5 %"),
        (f"GET /v1/jobs/{{id}} p50 / p99, {n} clients back to back (saturation), job running",
         f"{ms(sat, 50)} / {ms(sat, 99)} ms, {len(sat) / busy['saturation_s']:.0f} requests/s", ""),
        (f"submissions of small jobs, {args.submitters} clients back to back, job running",
         f"{busy['submitted'] / busy['submit_s']:.1f}/s ({busy['submitted']} in {busy['submit_s']:.0f} s)",
         ""),
        ("submission latency p50 / p99", f"{ms(busy['submit'], 50)} / {ms(busy['submit'], 99)} ms", ""),
    ]  # fmt: skip
    load = (load_before[0], os.getloadavg()[0])
    report(rows, args, load)
    return 0


def report(rows: list[tuple[str, str, str]], args: argparse.Namespace, load: tuple[float, float]) -> None:
    table = [
        "| figure | value | goal |",
        "| --- | --- | --- |",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
    ]
    python = Path(sys.executable)
    shown = python.relative_to(REPO) if python.is_relative_to(REPO) else Path("python")
    command = f"{shown} tests/benchmarks/bench_service.py " + " ".join(sys.argv[1:])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = [
        f"## Service: API latency and job slowdown under load ({stamp})",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}; load average {load[0]:.1f} before the "
        f"run and {load[1]:.1f} after (other work shares this machine). Job: demo UNet3D, volume "
        f"{'x'.join(map(str, args.shape))}, patch 17x129x129, overlap 0.5, embedded cluster with two "
        f"workers of one torch thread each at niceness {args.worker_niceness}. Clients run on the same "
        "machine as the service.",
        "",
        *table,
        "",
    ]
    text = "\n".join(section)
    print(text)
    if args.no_record:
        return
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\n")
    with RESULTS.open("a") as out:
        out.write("\n" + text)


if __name__ == "__main__":
    raise SystemExit(main())
