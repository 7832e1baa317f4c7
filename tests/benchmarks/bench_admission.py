"""Admission benchmark: what checking a legal 10^15-voxel job costs the service, and what a poison
job costs it now that sizes are bounded.

The input is a zarr v3 array of 100000^3 uint8 in chunks of 64x512x512, written as metadata only
(zarr writes no chunk until data is), the model a scripted 3x3x3 convolution. Two measurements:

- in-process, as ``pytc run`` admits (the model check in this process, the model loaded once
  before): ``parse`` + ``admit`` of the inference kind, wall time per admission and the peak of
  Python allocations (tracemalloc) during one;
- through a real ``pytc-serve`` (embedded cluster): ``POST /v1/jobs`` of the same job whose output
  already exists, so every check runs (the input, the model on a worker, the bounds) and the answer
  is the 409 of the last one, with no job recorded and nothing run; then poison jobs
  (``window.pad_size: [1e11, 0, 0]``, an input whose ``zarr.json`` claims 10^12 per axis), each a 422.
  Latency per request and the service process's resident memory before and after.

Prints a table and appends it, with the command, to tests/benchmarks/RESULTS.md.

    .venv/bin/python tests/benchmarks/bench_admission.py [--requests 50] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import psutil
import zarr

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from service.kinds import parse_job  # noqa: E402
from service.kinds.base import AdmitEnv, ParseEnv  # noqa: E402
from service.kinds.inference import InferenceKind  # noqa: E402
from tests.integration.service_fixtures import job_doc, make_data, running_service  # noqa: E402
from workers.limits import Limits  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
PETA = (100_000, 100_000, 100_000)


def prepare(root: Path) -> None:
    make_data(root)
    zarr.create_array(root / "peta.zarr", shape=PETA, chunks=(64, 512, 512), dtype="uint8")
    zarr.open_group(root / "taken.zarr", mode="w").create_array("pred", shape=(1, 1, 1, 1), dtype="float32")
    huge = root / "huge.zarr"
    zarr.create_array(huge, shape=(10, 10, 10), dtype="uint8")
    meta = json.loads((huge / "zarr.json").read_text())
    (huge / "zarr.json").write_text(json.dumps({**meta, "shape": [10**12] * 3}))


def peta_job(output: str) -> dict[str, Any]:
    doc = job_doc(output)
    doc["input"] = {"path": "peta.zarr"}
    doc["window"] = {"patch_size": [17, 129, 129], "stride": [8, 64, 64], "batch_size": 4}
    doc["output"].update(chunks=[64, 512, 512])
    doc["compute"] = {"block_shape": [64, 512, 512]}
    return doc


def in_process(root: Path, rounds: int) -> dict[str, float]:
    kind, env = InferenceKind(), ParseEnv((root,))
    admit = AdmitEnv(lambda fn, *args: fn(*args), Limits())
    doc = peta_job("peta_out.zarr")
    for _ in range(2):  # loads the model once, as a first submission does, and lazy imports
        kind.admit(parse_job(doc, env)[1], admit)
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        _, job = parse_job(doc, env)
        kind.admit(job, admit)
        seconds.append(time.perf_counter() - started)
    tracemalloc.start()
    _, job = parse_job(doc, env)
    kind.admit(job, admit)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"median_ms": 1000 * statistics.median(seconds), "peak_kib": peak / 1024}


def through_service(root: Path, state: Path, requests: int) -> list[tuple[str, str]]:
    rows = []
    poison = job_doc("never.zarr", window__pad_size=[10**11, 0, 0])
    claims = job_doc("never.zarr", input={"path": "huge.zarr"})
    cases = [("legal 10^15-voxel job (409: output exists)", peta_job("taken.zarr"), 409),
             ("window.pad_size [1e11, 0, 0] (422)", poison, 422),
             ("zarr.json claiming 10^12 per axis (422)", claims, 422)]  # fmt: skip
    with running_service(root, state) as service, httpx.Client(base_url=service.url, timeout=120) as http:
        process = psutil.Process(service.service_pid())
        for name, doc, status in cases:
            answer = http.post("/v1/jobs", json=doc)  # warm: the model is checked once per service
            assert answer.status_code == status, answer.text
            before = process.memory_info().rss
            seconds = []
            for _ in range(requests):
                started = time.perf_counter()
                answer = http.post("/v1/jobs", json=doc)
                seconds.append(time.perf_counter() - started)
                assert answer.status_code == status, answer.text
            grown = (process.memory_info().rss - before) / 2**20
            p50, p99 = (
                1000 * statistics.median(seconds),
                1000 * sorted(seconds)[int(0.99 * (len(seconds) - 1))],
            )
            rows.append(
                (name, f"{p50:.1f} / {p99:.1f} ms; service RSS {before / 2**20:.0f} MiB, {grown:+.1f} MiB")
            )
        assert http.get("/v1/jobs").json()["jobs"] == [], "a job was recorded"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="requests per case through the service")
    parser.add_argument("--rounds", type=int, default=50, help="in-process admissions timed")
    parser.add_argument("--no-record", action="store_true", help="print only; RESULTS.md untouched")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "root"
        prepare(root)
        own = in_process(root, args.rounds)
        rows = [
            ("in-process parse + admit (as pytc run), median", f"{own['median_ms']:.2f} ms"),
            ("in-process parse + admit, peak Python allocations", f"{own['peak_kib']:.0f} KiB"),
        ]
        rows += [
            (f"POST {name}, p50 / p99", value)
            for name, value in through_service(root, Path(folder) / "state", args.requests)
        ]
    load = (load_before, os.getloadavg()[0])
    report(rows, args, load)


def report(rows: list[tuple[str, str]], args: argparse.Namespace, load: tuple[float, float]) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    width = max(len(name) for name, _ in rows)
    table = "\n".join(["| figure | value |", "| --- | --- |"] + [f"| {n:<{width}} | {v} |" for n, v in rows])
    text = (
        f"## Admission of a 10^15-voxel job ({stamp})\n\n"
        f"Command: `.venv/bin/python tests/benchmarks/bench_admission.py --requests {args.requests} "
        f"--rounds {args.rounds}`  \n"
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}; load average {load[0]:.1f} before and "
        f"{load[1]:.1f} after. Input: zarr v3 100000^3 uint8, chunks 64x512x512, metadata only; patch "
        "17x129x129, stride 8x64x64, blocks 64x512x512 (1563 x 196 x 196 = 6.0 10^7 blocks, 3.0 10^10 "
        "windows); model: a scripted 3x3x3 convolution, checked once per process and then cached.\n\n"
        f"{table}\n\n"
    )
    print(text)
    if not args.no_record:
        with RESULTS.open("a") as out:
            out.write(text)


if __name__ == "__main__":
    main()
