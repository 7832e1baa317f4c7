"""The inference driver and its bookkeeping at 10^4, 10^5 and 10^6 blocks, in this process.

Drives planned jobs through the real run object (``workers.inference.run.InferenceRun``: the
schedule, the done record, progress, spill-file drops) with a block runner that computes nothing:
it creates the one spill file a real pass 1 would publish (empty) and returns. The plan is the
issue's: blocks of 64x512x512, chunks 32x256x256, patch 17x129x129, stride 8x64x64; every block
has border chunks, so a job of n blocks is 2n tasks. 64 tasks are in flight, finished in order.

Reports per size (each in a fresh process, so that peak memory is its own):
- start-up: the run object built over an empty run folder (plan, tables, record);
- driver CPU per task: thread CPU time spent in ``next_task`` and ``finished`` only (the runner's
  file creation is not the driver's), averaged over every task;
- driver peak memory: the process's peak RSS less what it held before the run was built;
- resume start-up with half the blocks done: the run killed (abandoned) once half the blocks are
  done, then built again from its folder (reading the record, listing the scratch folder);
- files created per block: the done record's files plus every spill file, over the blocks (output
  chunks excluded; a real run writes the same spill files).

With ``--cluster N [N ...]``: a real run instead, ``pytc run`` on its embedded Dask cluster (one
worker), of N tiny blocks (8x32x32, chunks 8x32x32) with a 1x1x1 convolution (one torch thread),
against the same job run in one process (``run_serially``, the same model through the same
predictor): the difference, per task, is what Dask, the driver and the task payload cost. Windows
are 8x32x32 every 4x16x16 (50% overlap, so every block has border chunks: two tasks a block, and
about 3.5 windows a block: one batch); ``TINY_PATCH`` / ``TINY_STRIDE`` (``z,y,x``) change them. The
window count is not what the issue fixes (tiny blocks, a cheap model): fewer windows a block keep a
run at 10^4 blocks to minutes on two shared cores, where 4x16x16 every 2x8x8 (64 windows a block)
took over an hour. No pyramid (a stage after the blocks, not a cost per block task). Both figures
are the run's own seconds (the result's ``seconds``: from the run's start to its completion mark),
so neither counts process or cluster start-up. Also reported: the run's seconds less the time
inside its block tasks' bodies (their ``seconds.total``), per task: everything outside a task
(scheduling, the job reference, the driver, idle gaps), a bound that the machine's other load
does not inflate as much, and the process's CPU per task in each run (the embedded worker, the
scheduler and the driver are threads of the ``pytc run`` process; its start is counted). The two
outputs must be equal. ``--tmp /dev/shm`` keeps the volumes and
run folders in memory: the spill file's one fsync a block costs 20 to 110 ms on this VM's shared
disk, the same in both runs, and would make the runs hours long without being overhead.

Usage: ``python tests/benchmarks/bench_scale.py [--sizes 10000 100000 1000000] [--cluster 1024 8192 10240]
[--tmp DIR] [--no-results]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BLOCK = (64, 512, 512)
CHUNKS = (32, 256, 256)
PATCH = (17, 129, 129)
STRIDE = (8, 64, 64)
IN_FLIGHT = 64


def counts_for(n: int) -> tuple[int, int, int]:
    return {10_000: (25, 20, 20), 100_000: (40, 50, 50), 1_000_000: (100, 100, 100)}.get(n) or (
        n // 100,
        10,
        10,
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(n: int, folder: Path) -> dict[str, Any]:
    from models.ref import ModelInfo
    from tests.helpers import make_job
    from volumes.blocks import plan_blocks
    from volumes.box import Box
    from volumes.windows import WindowGrid
    from workers.inference.engine import BlockResult
    from workers.inference.geometry import JobGeometry
    from workers.inference.job import WindowSpec
    from workers.inference.run import InferenceRun
    from workers.inference.rundir import RunDir

    counts = counts_for(n)
    roi = tuple(c * b for c, b in zip(counts, BLOCK, strict=True))
    window = WindowSpec(PATCH, STRIDE, "gaussian", batch_size=4)
    job = make_job(folder / "in.zarr", folder / "out.zarr", window, block_shape=BLOCK, chunks=CHUNKS)
    info = ModelInfo(1, 1, "bench")
    base_rss = peak_rss_mb()

    def build() -> tuple[InferenceRun, float]:
        t0 = time.perf_counter()
        grid = WindowGrid.over_roi(roi, PATCH, STRIDE, (0, 0, 0))
        plan = plan_blocks(roi, CHUNKS, BLOCK, grid)
        geometry = JobGeometry(Box.of_shape(roi), roi, plan, "gaussian")
        run = InferenceRun(job, info, geometry, RunDir(folder / "run"))
        return run, time.perf_counter() - t0

    run, startup = build()
    (folder / "run" / "scratch").mkdir(parents=True, exist_ok=True)
    assert run.plan.n_blocks == n, (run.plan.n_blocks, n)
    spills = run._schedule.spills
    created = 0
    driver_cpu = 0.0
    tasks = 0
    in_flight: list[Any] = []
    resumed: dict[str, float] = {}
    clock = time.thread_time  # this thread's CPU: the janitor's deletions run on another
    mark = clock()
    while True:
        while len(in_flight) < IN_FLIGHT and (task := run.next_task()) is not None:
            in_flight.append(task)
        if not in_flight:
            break
        task = in_flight.pop(0)
        index = run._schedule.index(task.block)
        if task.phase == 1 and spills[index]:  # the one file a real pass 1 publishes: not the driver's
            now = clock()
            driver_cpu += now - mark
            os.close(os.open(run.run_dir.spill_path(task.block), os.O_CREAT | os.O_WRONLY, 0o644))
            created += 1
            mark = clock()
        run.finished(task, BlockResult(task.block, task.phase))
        tasks += 1
        if not resumed and run.blocks_done >= n // 2:
            driver_cpu += clock() - mark
            run.ledger.flush()
            peak = peak_rss_mb() - base_rss
            t0 = time.perf_counter()
            run, _ = build()  # killed here: a new driver starts from the folder and goes on
            resumed = {"resume_s": time.perf_counter() - t0, "done_at_resume": run.blocks_done}
            resumed["lost_at_resume"] = len(run._schedule.lost)
            in_flight.clear()  # the tasks the killed driver had handed out: the new one hands them out again
            mark = clock()
    driver_cpu += clock() - mark
    run.close()
    files = sum(1 for p in (folder / "run").iterdir() if p.is_file())
    return {
        "blocks": n,
        "tasks": tasks,
        "startup_s": startup,
        "driver_ms_per_task": 1e3 * driver_cpu / tasks,
        "driver_peak_mb": max(peak, peak_rss_mb() - base_rss),
        **resumed,
        "files_per_block": (created + files) / n,
        "spill_files_left": sum(1 for _ in (folder / "run" / "scratch").iterdir()),
    }


TINY_PATCH = tuple(int(v) for v in os.environ.get("TINY_PATCH", "8,32,32").split(","))
TINY_STRIDE = tuple(int(v) for v in os.environ.get("TINY_STRIDE", "4,16,16").split(","))
TINY = {1024: (16, 8, 8), 4096: (16, 16, 16), 8192: (32, 16, 16), 16384: (64, 16, 16)}


def cluster_one(n: int, folder: Path) -> dict[str, Any]:
    """``pytc run`` of n tiny blocks on the embedded cluster, and the same job in this process."""
    import numpy as np
    import torch
    import yaml
    import zarr

    from models.ref import ModelInfo
    from service.cli import main as pytc_main
    from service.documents.inference import parse_inference
    from workers.inference.run import run_serially

    load_start = os.getloadavg()[0]
    os.environ["PYTC_TORCH_THREADS"] = "1"  # both runs: one torch thread (spinning threads on shared cores)
    counts = TINY.get(n) or (n // 64, 8, 8)
    shape = (counts[0] * 8, counts[1] * 32, counts[2] * 32)
    data = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    zarr.open_group(folder / "em.zarr", mode="w").create_array("raw", data=data, chunks=(8, 32, 32))
    torch.manual_seed(0)
    torch.jit.script(torch.nn.Conv3d(1, 1, 1).eval()).save(str(folder / "net.pt"))
    doc: dict[str, Any] = {
        "kind": "inference",
        "input": {"path": str(folder / "em.zarr"), "dataset": "raw"},
        "model": {"torchscript": str(folder / "net.pt")},
        "window": {"patch_size": list(TINY_PATCH), "stride": list(TINY_STRIDE), "batch_size": 16},
        # no pyramid: a stage after the blocks, not a cost per block task
        "output": {
            "path": str(folder / "dask.zarr"),
            "dataset": "pred",
            "chunks": [8, 32, 32],
            "pyramid": False,
        },
        "compute": {"block_shape": [8, 32, 32], "device": "cpu"},
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(doc))
    cpu0 = process_cpu_s()
    t0 = time.perf_counter()
    code = pytc_main(
        [
            "run",
            str(folder / "job.yaml"),
            "--data-root",
            str(folder),
            "--quiet",
            "--report",
            str(folder / "r.json"),
        ]
    )
    wall = time.perf_counter() - t0
    dask_cpu = process_cpu_s() - cpu0
    assert code == 0, code
    dask_run = json.loads((folder / "r.json").read_text())
    serial_doc = {**doc, "output": {**doc["output"], "path": str(folder / "serial.zarr")}}
    job = parse_inference(serial_doc, (folder,))
    cpu0 = process_cpu_s()
    serial = run_serially(job, ModelInfo(1, 1, dask_run_sha(folder)))
    serial_cpu = process_cpu_s() - cpu0
    tasks = sum(dask_run["tasks_run"].values())
    dask_out = zarr.open_array(folder / "dask.zarr" / "pred" / "0")[...]
    assert np.array_equal(dask_out, zarr.open_array(folder / "serial.zarr" / "pred" / "0")[...]), (
        "outputs differ"
    )
    inside = float(dask_run["task_seconds"].get("total", 0.0))
    return {
        "load": f"{load_start:.1f}-{os.getloadavg()[0]:.1f}",
        "inside_tasks_s": inside,
        "task_seconds": dask_run["task_seconds"],
        "serial_task_seconds": serial.task_seconds,
        "outside_ms_per_task": 1e3 * (dask_run["seconds"] - inside) / tasks,
        "blocks": n,
        "tasks": tasks,
        "pytc_run_wall_s": wall,
        "dask_run_s": dask_run["seconds"],
        "serial_run_s": serial.seconds,
        "dask_ms_per_task": 1e3 * dask_run["seconds"] / tasks,
        "serial_ms_per_task": 1e3 * serial.seconds / tasks,
        "overhead_ms_per_task": 1e3 * (dask_run["seconds"] - serial.seconds) / tasks,
        # CPU of this process (the embedded worker, scheduler and driver are threads of it), which
        # other work on the machine inflates far less than wall time; pytc run's start included
        "dask_cpu_ms_per_task": 1e3 * dask_cpu / tasks,
        "serial_cpu_ms_per_task": 1e3 * serial_cpu / tasks,
    }


def process_cpu_s() -> float:
    """User and system CPU seconds of this process so far, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def dask_run_sha(folder: Path) -> str:
    import zarr

    return str(zarr.open_array(folder / "dask.zarr" / "pred" / "0").attrs["pytc"]["model_sha256"])


def cluster_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| blocks | tasks | pytc run (run seconds) | same job in one process | per task: Dask "
        "| per task: one process | overhead per task | outside task bodies, per task "
        "| CPU per task: Dask / one process | load (1 min, start-end) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['blocks']:,} | {r['tasks']:,} | {r['dask_run_s']:.1f} s | {r['serial_run_s']:.1f} s "
            f"| {r['dask_ms_per_task']:.1f} ms | {r['serial_ms_per_task']:.1f} ms "
            f"| {r['overhead_ms_per_task']:.1f} ms | {r['outside_ms_per_task']:.1f} ms "
            f"| {r['dask_cpu_ms_per_task']:.1f} / {r['serial_cpu_ms_per_task']:.1f} ms | {r['load']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--cluster", type=int, nargs="+", help="real runs of this many tiny blocks instead")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cluster-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--tmp", help="folder for the tiny runs' volumes and run folders (e.g. /dev/shm: no disk fsyncs)"
    )
    parser.add_argument("--no-results", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(prefix="pytc-bench-scale-") as tmp:
            print(json.dumps(one(args.one, Path(tmp))))
        return
    if args.cluster_one:
        with tempfile.TemporaryDirectory(prefix="pytc-bench-tiny-", dir=args.tmp) as tmp:
            print(json.dumps(cluster_one(args.cluster_one, Path(tmp))))
        return
    if args.cluster:
        run_cluster(args.cluster, not args.no_results, args.tmp)
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n)], check=True, capture_output=True, text=True, cwd=ROOT
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    table = [
        "| blocks | tasks | start-up | driver CPU per task | driver peak memory "
        "| resume start-up (half done) | files per block |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        table.append(
            f"| {r['blocks']:,} | {r['tasks']:,} | {r['startup_s']:.2f} s | {r['driver_ms_per_task']:.4f} ms "
            f"| {r['driver_peak_mb']:.0f} MB | {r['resume_s']:.2f} s | {r['files_per_block']:.3f} |"
        )
    ratio = rows[-1]["driver_ms_per_task"] / rows[0]["driver_ms_per_task"]
    text = "\n".join(table) + f"\n\nCPU per task, largest over smallest: {ratio:.2f}x\n"
    print(text)
    if not args.no_results:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = "python tests/benchmarks/bench_scale.py --sizes " + " ".join(str(s) for s in args.sizes)
        with open(ROOT / "tests" / "benchmarks" / "RESULTS.md", "a") as handle:
            handle.write(
                f"\n## Driver and bookkeeping at scale (issue 17), {stamp}\n\n"
                f"`{command}` on {platform.node()} ({os.cpu_count()} CPUs, shared), Python "
                f"{platform.python_version()}. In-process driver, no-op block runner (creates the "
                f"spill file a pass 1 publishes); plan of blocks 64x512x512, chunks 32x256x256, "
                f"patch 17x129x129, stride 8x64x64; {IN_FLIGHT} tasks in flight.\n\n{text}"
            )


def run_cluster(sizes: list[int], record: bool, tmp: str | None) -> None:
    rows = []
    for n in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--cluster-one", str(n), *(["--tmp", tmp] if tmp else [])],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    text = cluster_table(rows)
    print(text)
    if record:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = "python tests/benchmarks/bench_scale.py --cluster " + " ".join(str(s) for s in sizes)
        command += f" --tmp {tmp}" if tmp else ""
        window = ",".join(map(str, TINY_PATCH)) + " / " + ",".join(map(str, TINY_STRIDE))
        with open(ROOT / "tests" / "benchmarks" / "RESULTS.md", "a") as handle:
            handle.write(
                f"\n## Tiny blocks through pytc run against one process (issue 17), {stamp}\n\n"
                f"`{command}` on {platform.node()} ({os.cpu_count()} CPUs, shared with other work), "
                f"embedded cluster of one worker; blocks 8x32x32, chunks 8x32x32, windows / stride {window}, "
                "a 1x1x1 convolution on the CPU, no pyramid. Run seconds exclude process and cluster "
                f"start-up.\n\n{text}"
            )


if __name__ == "__main__":
    main()
