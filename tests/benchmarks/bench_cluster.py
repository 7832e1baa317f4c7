"""Cluster benchmark: ``pytc run --scheduler`` on a real ``dask scheduler`` with ``pytc-worker``s.

Figures: throughput of one worker and of two (one torch thread each, each worker pinned with
``pytc-worker --cpu-cores`` to a core of its own, so they do not share cores), the scaling
ratio, scheduler overhead per block task (the gap on a worker between one task's end and the
next one's start, from the scheduler's task stream), the model's idle fraction
inside a worker, and the time to resume a half-done job against the time of the remaining half
(the killed driver's in-flight tasks are let finish first, so the resumed run does only the rest).
Prints a table and appends it, with the command, to tests/benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml
from distributed import Client, get_task_stream

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from service.demo import DEMO_CHECKPOINT, DEMO_CONFIG  # noqa: E402
from tests.integration.cluster_fixtures import done_blocks, running_cluster, wait_until  # noqa: E402
from volumes.synth import generate_em_volume, write_synth  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")


def job(volume: str, output: str, block: list[int]) -> dict[str, object]:
    return {
        "kind": "inference",
        "input": {"path": volume, "dataset": "raw"},
        "model": {"architecture": "unet3d", "config": DEMO_CONFIG, "checkpoint": DEMO_CHECKPOINT},
        "window": {"patch_size": [17, 129, 129], "overlap": 0.5, "batch_size": 4},
        "output": {
            "path": output,
            "dataset": "pred",
            "activation": ["sigmoid"],
            "dtype": "uint8",
            "chunks": [16, 128, 128],
        },
        "compute": {"block_shape": block},
    }


def run(root: Path, doc: dict[str, object], address: str, tag: str, kill_at: int | None = None) -> dict:
    path = root / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(doc))
    report = root / f"{tag}.json"
    cmd = [
        sys.executable,
        "-m",
        "service",  # what the ``pytc`` script runs (service.entry)
        "run",
        str(path),
        "--quiet",
        "--report",
        str(report),
        "--data-root",
        str(root),
        "--scheduler",
        address,
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    if kill_at is not None:
        wait_until(lambda: done_blocks(root / str(doc["output"]["path"])) >= kill_at, timeout=3600)  # type: ignore[index]
        proc.kill()
        proc.wait()
        return {"wall_s": time.perf_counter() - t0}
    if proc.wait() != 0:
        raise SystemExit(f"{tag}: pytc run failed")
    return {"wall_s": time.perf_counter() - t0, **json.loads(report.read_text())}


def task_gaps(records: list[dict]) -> list[float]:
    """Per worker, the seconds between one task's compute end and the next one's start."""
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for record in records:
        for ss in record.get("startstops", ()):
            if ss["action"] == "compute":
                spans[record["worker"]].append((ss["start"], ss["stop"]))
    gaps: list[float] = []
    for worker_spans in spans.values():
        worker_spans.sort()
        gaps += [b[0] - a[1] for a, b in itertools.pairwise(worker_spans)]
    return gaps


def idle_workers(client: Client) -> bool:
    return not any(client.processing().values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 512, 512])
    parser.add_argument("--block", type=int, nargs=3, default=[32, 256, 256])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pytc-bench-cluster-"))
    shutil.copy(REPO / "models" / "weights" / DEMO_CHECKPOINT, root / DEMO_CHECKPOINT)
    write_synth(root / "em.zarr", generate_em_volume(tuple(args.shape), seed=5), chunks=(16, 128, 128))  # type: ignore[arg-type]
    os.environ["PYTC_TORCH_THREADS"] = "1"
    figures: dict[str, dict] = {}
    gaps: list[float] = []
    for n in (1, 2):
        with running_cluster(root, n, pin_cores=True) as cluster, Client(cluster.address) as client:
            with get_task_stream(client) as stream:
                figures[f"w{n}"] = run(
                    root, job("em.zarr", f"out{n}.zarr", args.block), cluster.address, f"w{n}"
                )
            if n == 2:
                gaps = task_gaps(stream.data)
    with running_cluster(root, 2, pin_cores=True) as cluster, Client(cluster.address) as client:
        n_blocks = figures["w2"]["blocks_total"]
        run(root, job("em.zarr", "half.zarr", args.block), cluster.address, "half", kill_at=n_blocks // 2)
        wait_until(lambda: idle_workers(client), timeout=3600)  # the killed driver's tasks end
        done_before = done_blocks(root / "half.zarr")
        resumed = run(root, job("em.zarr", "half.zarr", args.block), cluster.address, "resume")
    voxels = math.prod(args.shape)
    one, two = figures["w1"], figures["w2"]
    tasks = sum(two["tasks_run"].values())
    busy = two["task_seconds"].get("total", 0.0)
    overhead = (two["wall_s"] * 2 - busy) / tasks
    gap_median = statistics.median(gaps) if gaps else float("nan")
    gap_mean = statistics.fmean(gaps) if gaps else float("nan")
    idle = 1 - two["task_seconds"].get("forward", 0.0) / busy
    remaining = (n_blocks - done_before) / n_blocks * two["wall_s"]
    rows = [
        ("volume", f"{'x'.join(map(str, args.shape))}, blocks {tuple(args.block)}, {n_blocks} blocks"),
        ("1 worker: wall (s), Mvox/s", f"{one['wall_s']:.1f}, {voxels / one['wall_s'] / 1e6:.3f}"),
        ("2 workers: wall (s), Mvox/s", f"{two['wall_s']:.1f}, {voxels / two['wall_s'] / 1e6:.3f}"),
        ("scaling 2 workers / 1 (goal >= 1.8)", f"{one['wall_s'] / two['wall_s']:.2f}"),
        (
            "scheduler gap between tasks on a worker, median / mean (ms; goal < 5)",
            f"{gap_median * 1000:.1f} / {gap_mean * 1000:.1f} over {len(gaps)} gaps",
        ),
        ("all else per task: wall x workers - task time (ms)", f"{overhead * 1000:.0f}"),
        ("model idle fraction inside workers (goal < 10%)", f"{100 * idle:.1f}%"),
        ("resume: blocks done before the kill", f"{done_before}/{n_blocks}"),
        (
            "resume: tasks the resumed run ran, pass 1 / pass 2",
            f"{resumed['tasks_run'].get('pass1', 0)} / {resumed['tasks_run'].get('pass2', 0)}",
        ),
        ("resume: time of the resumed run (s)", f"{resumed['wall_s']:.1f}"),
        ("resume: the remaining part of a clean run (s)", f"{remaining:.1f}"),
        ("resume / remaining", f"{resumed['wall_s'] / remaining:.2f}" if remaining else "n/a (none left)"),
    ]
    width = max(len(k) for k, _ in rows)
    table = "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in rows)
    print(table)
    header = (
        f"\n## Cluster, {datetime.date.today()} ({platform.machine()}, {os.cpu_count()} cores, CPU workers, "
        "1 torch thread each, each pinned to its own core)\n\n"
        f"`python tests/benchmarks/bench_cluster.py {' '.join(sys.argv[1:])}`\n\n"
        "| figure | value |\n|---|---|\n"
    )
    with RESULTS.open("a") as handle:
        handle.write(header + table + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
