"""Segmentation benchmark: ``pytc run`` of a segmentation job against the whole-volume decoder in memory.

For each connected-components decoder (binary_connected, bc_connected with its default dilation,
affinity_connected) on a synthetic uint8 prediction of ``--shape`` (default 64x512x512; smooth
random fields, so objects of many sizes cross block faces):

- in memory, one process: the prediction read whole, decoded by the library PyTC calls
  (``skimage.measure.label``, ``skimage.morphology.dilation``, the size filter; for affinities
  ``connected-components-3d`` on the affinity graph, our :mod:`volumes.labels.whole`), and by our
  whole-volume decoder (cc3d); each twice, in a fresh process, the faster run's decode time and
  peak RSS kept;
- ``pytc run`` end to end (a subprocess: start-up, every step, the labels written as zstd'ed
  uint32 chunks, the table of objects), with 1 worker of N tasks at once (the default: its steps
  in N processes forked from it, N the cores it may use, no Dask: :mod:`service.kinds.pool`), the
  same on N threads of the process (``PYTC_FORK_TASKS=0``), the same worker with ``--threads 1``,
  and 2 workers (the embedded Dask cluster, a thread each); wall time and
  CPU time (user + system, the process and the children it waited for: steadier than wall time on
  a shared machine) of runs nobody watches (the default worker twice, as the in-memory decodes,
  the faster kept), then one more run of each for the peak of its process tree's proportional set
  size (PSS: RSS with the pages a forked process shares with its parent counted once);
- a second's pause before every measured process (:func:`settle`);
- the labels of the run checked equal, voxel for voxel, to the in-memory ones.

The label image's pyramid (a stage of the job, for viewers) is not part of the decoder, so the runs
set ``output.pyramid: false`` unless ``--pyramid`` is given; the labels are read from level 0.

Ratio = in-memory decode time / ``pytc run`` time (goal >= 1.0 with one worker), against PyTC's
library (the goal's reference) and against the faster of the two in-memory decoders (the floor).
The in-memory side is the decode alone (the prediction already in memory, nothing written);
``pytc run`` includes Python's start, its imports, reading the prediction and writing the labels
and the table. Our modules are compiled to bytecode first (``compileall``, as ``pip install``
does), so that neither side compiles them at its start where ``PYTHONDONTWRITEBYTECODE`` is set.
Prints a table with the load average and appends it, with the command, to
tests/benchmarks/RESULTS.md.

    .venv/bin/python tests/benchmarks/bench_segmentation.py [--shape 64 512 512] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml
import zarr
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

RESULTS = Path(__file__).with_name("RESULTS.md")
DECODERS = {
    "binary_connected": {"name": "binary_connected", "thres": 0.6, "thres_small": 128},
    "bc_connected": {"name": "bc_connected", "thres1": 0.6, "thres2": 0.55, "thres_small": 128},
    "affinity_connected": {"name": "affinity_connected", "thres": 0.5, "thres_small": 128},
}
CHANNELS = {"binary_connected": 1, "bc_connected": 2, "affinity_connected": 3}


def make_prediction(path: Path, shape: tuple[int, int, int], names: list[str]) -> None:
    rng = np.random.default_rng(0)
    group = zarr.open_group(path, mode="w")
    for name in names:
        channels = CHANNELS[name]
        data = np.empty((channels, *shape), np.uint8)
        for c in range(channels):
            field = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), (2, 6, 6))
            field = (field - field.min()) / (field.max() - field.min())
            data[c] = (field * 255).astype(np.uint8)
        group.create_array(name, data=data, chunks=(channels, 64, 256, 256))


IN_MEMORY = r"""
import json, sys, time
import numpy as np
from skimage.measure import label
from skimage.morphology import dilation
sys.path.insert(0, sys.argv[1])
from volumes.box import Box
from volumes.labels.decoders import Decoder
from volumes.labels.whole import decode_in_memory, sequential
from volumes.open import open_volume
from service.documents.segmentation import DecoderSection, decoder_of
path, name, how, out = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
decoder = decoder_of(DecoderSection(**json.loads(sys.argv[6])))
source = open_volume(path, name)
pred = source.read(Box((0, 0, 0, 0), source.shape))
t, c = time.perf_counter(), time.process_time()
if how == "skimage" and decoder.name != "affinity_connected":
    cut = lambda v, t: v > int(255 * t)
    fg = cut(pred[0], decoder.thresholds[0])
    if decoder.name == "bc_connected":
        fg &= pred[1] < int(255 * decoder.thresholds[1])
    segm = label(fg)
    if decoder.dilation is not None:
        segm = dilation(segm, np.ones(decoder.dilation))
    sizes = np.bincount(segm.ravel())
    small = sizes < decoder.thres_small
    small[0] = False
    segm[small[segm]] = 0
else:
    segm = decode_in_memory(pred, decoder)
seconds, cpu = time.perf_counter() - t, time.process_time() - c
np.save(out, sequential(segm.astype(np.uint64)))
# VmHWM, not ru_maxrss: that keeps the peak of the bench process this one was forked from
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mib": peak}))
"""


def in_memory(root: Path, name: str, how: str, repeat: int = 2) -> dict[str, float]:
    """The in-memory decode in a fresh process, ``repeat`` times: the fastest run (its decode
    seconds, CPU, peak RSS and the process's wall time), so that the reference is its floor (the
    first of two identical runs was up to 1.6 times slower than the second on this machine)."""
    out = root / f"{name}-{how}.npy"
    args = [sys.executable, "-c", IN_MEMORY, str(REPO), str(root / "pred.zarr"), name, how, str(out)]
    best: dict[str, float] | None = None
    for _ in range(repeat):
        settle()
        start = time.perf_counter()
        done = subprocess.run([*args, json.dumps(DECODERS[name])], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
        run = {**json.loads(done.stdout.strip().splitlines()[-1]), "wall": wall}
        if best is None or run["seconds"] < best["seconds"]:
            best = run
    assert best is not None
    return best


def pytc_run(
    root: Path,
    name: str,
    workers: int,
    block: list[int],
    pyramid: bool = False,
    threads: int | None = None,
    fork: bool = True,
    repeat: int = 1,
) -> dict[str, float]:
    """``pytc run`` of the job in a subprocess; ``fork=False``: its tasks on threads of the process
    (``PYTC_FORK_TASKS=0``), not in forked processes. Timed ``repeat`` times with nothing watching
    it (the faster run's wall and CPU time kept), then run once more for its peak memory: reading
    a process's PSS every 0.1 s walks its page tables (``/proc/PID/smaps``), and the watched runs
    took about a tenth longer here (binary_connected at 128x1024x1024: 1.54-1.66 s watched,
    1.31-1.46 s not, minutes apart)."""
    doc = {
        "kind": "segmentation",
        "input": {"path": "pred.zarr", "dataset": name},
        "decoder": DECODERS[name],
        "output": {
            "path": f"seg-{workers}-{threads}{'' if fork else '-threads'}.zarr",
            "dataset": name,
            "chunks": [min(b, c) for b, c in zip(block, (32, 256, 256), strict=True)],
            "pyramid": pyramid,
        },
        "compute": {"block_shape": block},
    }
    job = root / f"{name}-{workers}-{threads}{'' if fork else '-threads'}.yaml"
    job.write_text(yaml.safe_dump(doc))
    cmd = [sys.executable, "-m", "service.cli", "run", str(job), "--quiet", "--workers", str(workers)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTC_DATA_ROOTS": str(root),
        "PYTC_FORK_TASKS": "1" if fork else "0",
    }
    output = root / doc["output"]["path"]  # each run from scratch (a run finds a complete one done)
    best: dict[str, float] | None = None
    for _ in range(repeat):
        shutil.rmtree(output, ignore_errors=True)
        settle()
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, cwd=root, capture_output=True)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode()[-3000:])
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if best is None or seconds < best["seconds"]:
            best = {"seconds": seconds, "cpu": cpu, "load": load}
    assert best is not None
    shutil.rmtree(output)
    settle()
    proc = psutil.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        rss = 0
        try:
            for p in [proc, *proc.children(recursive=True)]:
                rss += _proportional(p)
        except psutil.Error:
            pass
        peak = max(peak, rss)
        time.sleep(0.1)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.read().decode()[-3000:] if proc.stderr else "pytc run failed")
    return {**best, "peak_mib": peak / 2**20}


def settle(seconds: float = 1.0) -> None:
    """A pause before each measured process, so that none starts while the kernel still reclaims
    the GiBs the one before freed (``pytc run`` of binary_connected at 128x1024x1024 took 2.57 s
    in a bench run right after two in-memory decodes, watched as above; 1.3-1.7 s by hand)."""
    time.sleep(seconds)


def _proportional(process: psutil.Process) -> int:
    """A process's proportional set size (its shared pages split among the processes that map them:
    a forked task process shares its parent's imported modules), else its RSS."""
    try:
        return int(getattr(process.memory_full_info(), "pss", process.memory_info().rss))
    except psutil.AccessDenied:
        return int(process.memory_info().rss)


def labels_equal(root: Path, name: str, workers: int, threads: int | None = None, suffix: str = "") -> bool:
    from volumes.box import Box
    from volumes.open import open_volume

    volume = open_volume(root / f"seg-{workers}-{threads}{suffix}.zarr", name)
    got = volume.read(Box((0, 0, 0), volume.shape))
    return bool(np.array_equal(got, np.load(root / f"{name}-skimage.npy")))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 512, 512])
    parser.add_argument("--block", type=int, nargs=3, default=[64, 256, 256])
    parser.add_argument(
        "--decoders",
        nargs="*",
        default=list(DECODERS),
        help="the decoders to run; their predictions are drawn in this order from one seeded generator, "
        "so a decoder's data (and its object count) depends on the decoders listed before it",
    )
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--pyramid", action="store_true", help="write the label pyramid too")
    args = parser.parse_args()
    shape = tuple(args.shape)
    rows: list[tuple[str, str]] = []
    started_load = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    subprocess.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            *(str(REPO / p) for p in ("service", "volumes", "workers")),
        ],
        check=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_prediction(root / "pred.zarr", shape, args.decoders)  # type: ignore[arg-type]
        for name in args.decoders:
            skimage = in_memory(root, name, "skimage")
            ours = in_memory(root, name, "cc3d")
            one = pytc_run(root, name, 1, args.block, args.pyramid, repeat=2)
            threaded = pytc_run(root, name, 1, args.block, args.pyramid, fork=False)
            single = pytc_run(root, name, 1, args.block, args.pyramid, threads=1)
            two = pytc_run(root, name, 2, args.block, args.pyramid)
            same = all(labels_equal(root, name, w, t) for w, t in ((1, None), (1, 1), (2, None)))
            same = same and labels_equal(root, name, 1, None, "-threads")
            runs = (one, threaded, single, two)
            floor = min(skimage["seconds"], ours["seconds"])
            objects = int(np.load(root / f"{name}-skimage.npy").max())
            rows += [
                (f"{name}: {objects} objects", ""),
                (
                    "  in memory, PyTC's library (skimage; affinities: cc3d), faster of 2 runs (s)",
                    f"{skimage['seconds']:.2f}",
                ),
                (
                    "  in memory, our whole-volume decoder (cc3d), faster of 2 runs (s)",
                    f"{ours['seconds']:.2f}",
                ),
                (
                    "  in memory, PyTC's library, as a process: start, read, decode (s)",
                    f"{skimage['wall']:.2f}",
                ),
                (
                    f"  pytc run, 1 worker: {cores} processes (faster of 2) / {cores} threads / 1 thread; "
                    "2 workers (s)",
                    " / ".join(f"{r['seconds']:.2f}" for r in runs),
                ),
                (
                    "  pytc run, the same four, CPU user + system (s)",
                    " / ".join(f"{r['cpu']:.2f}" for r in runs),
                ),
                (
                    "  load average (1 min) at the start of each pytc run",
                    " / ".join(f"{r['load']:.1f}" for r in runs),
                ),
                (
                    f"  in-memory decode / pytc run 1 worker, {cores} processes (goal >= 1.0)",
                    f"{skimage['seconds'] / one['seconds']:.2f}",
                ),
                (
                    "  fastest in-memory decode (either way) / pytc run 1 worker (the floor's ratio)",
                    f"{floor / one['seconds']:.2f}",
                ),
                (
                    "  in-memory decode / pytc run 1 worker, 1 thread",
                    f"{skimage['seconds'] / single['seconds']:.2f}",
                ),
                ("  in-memory process / pytc run 1 worker", f"{skimage['wall'] / one['seconds']:.2f}"),
                (
                    "  the same in CPU time: decode CPU (s) / pytc run 1 worker CPU (s)",
                    f"{skimage['cpu'] / one['cpu']:.2f} ({skimage['cpu']:.2f} / {one['cpu']:.2f})",
                ),
                ("  pytc run 1 worker / 2 workers", f"{one['seconds'] / two['seconds']:.2f}"),
                (
                    f"  pytc run 1 worker, {cores} threads / {cores} processes",
                    f"{threaded['seconds'] / one['seconds']:.2f}",
                ),
                (
                    "  peak RSS in memory (skimage) / pytc run, the four, process tree's PSS (MiB)",
                    f"{skimage['peak_mib']:.0f} / " + " / ".join(f"{r['peak_mib']:.0f}" for r in runs),
                ),
                ("  labels of pytc run == in memory, voxel for voxel", "yes" if same else "NO"),
            ]
    width = max(len(r[0]) for r in rows)
    title = (
        f"segmentation, {'x'.join(map(str, shape))}, block {'x'.join(map(str, args.block))}, "
        f"1 worker = {cores} tasks at once, load {started_load:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    table = [f"| {title:<{width}} | |",
             f"|{'-' * (width + 2)}|---|"]  # fmt: skip
    table += [f"| {label:<{width}} | {value} |" for label, value in rows]
    text = "\n".join(table)
    print(text)
    if not args.no_record:
        command = "python tests/benchmarks/bench_segmentation.py " + " ".join(sys.argv[1:])
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        host = f"{platform.machine()}, {os.cpu_count()} CPUs"
        with RESULTS.open("a") as f:
            f.write(f"\n## Segmentation (issue 15), {stamp}, {host}\n\n`{command.strip()}`\n\n{text}\n")


if __name__ == "__main__":
    main()
