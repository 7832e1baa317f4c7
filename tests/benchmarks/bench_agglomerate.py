"""``affinity_agglomerate`` figures: block by block against the whole-volume run, against waterz on
the whole volume, and against the ground truth (tests/agglomerate_figures.py draws the data:
``volumes.synth`` cells, affinities from them with blur and noise); and one job with several
thresholds against a job per threshold.

Columns, per merge function and threshold: segments (blockwise / whole-volume); fragments that hold
voxels of two whole-volume objects ("crossings", goal 0); adapted Rand error and VOI (split,
merge) of the blockwise labels against the whole-volume run's; against the ground truth (blockwise,
and the whole-volume run's adapted Rand); waterz's own agglomeration of the whole-volume fragments
against ours (its queue breaks ties in another order); waterz with its own fragments against the
ground truth (what PyTC's tutorial would give). Then the job (``run_serially``, one process) with
the three thresholds, against three single-threshold jobs: wall time, and whether every image equals
its single-threshold job's labels. Prints the tables and appends them, with the command and the
load, to tests/benchmarks/RESULTS.md.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_agglomerate.py [--no-record]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from tests.agglomerate_figures import BLOCK, SHAPE, THRESHOLDS, figures, synthetic_cells

RESULTS = Path(__file__).with_name("RESULTS.md")


def jobs(pred: np.ndarray, merge_function: str) -> tuple[float, float, bool, dict[str, int]]:
    """(seconds of one job with every threshold, seconds of a job per threshold, every image equal
    to its single job's, the region graph's size) on the volume, blocks BLOCK, in one process."""
    from service.documents.segmentation import parse_segmentation
    from volumes.box import Box
    from volumes.open import open_volume
    from workers.segmentation.run import SegmentationRun, run_serially

    def read(path: str, dataset: str) -> np.ndarray:
        volume = open_volume(path, dataset)
        return volume.read(Box((0, 0, 0), volume.shape))

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        zarr.save_array(str(root / "aff.zarr"), pred)

        def job(output: str, thresholds: list[float]) -> Any:
            doc = {
                "kind": "segmentation",
                "input": {"path": "aff.zarr"},
                "decoder": {
                    "name": "affinity_agglomerate",
                    "thresholds": thresholds,
                    "merge_function": merge_function,
                },
                "output": {"path": output, "dataset": "cells", "chunks": list(BLOCK), "pyramid": False},
                "compute": {"block_shape": list(BLOCK)},
            }
            return parse_segmentation(doc, [root])

        several = job("several.zarr", list(THRESHOLDS))
        graph = {}

        def keep_graph(run: SegmentationRun) -> None:
            found = run.plan.run_dir.root / "graph.json"
            if found.is_file() and not graph:
                import json

                graph.update(json.loads(found.read_text()))

        t0 = time.perf_counter()
        run_serially(several, keep_graph)
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        singles = [job(f"single_{t}.zarr", [t]) for t in THRESHOLDS]
        for single in singles:
            run_serially(single)
        apart = time.perf_counter() - t0
        equal = all(
            np.array_equal(read(several.output.path, f"cells/threshold_{t:g}"), read(s.output.path, "cells"))
            for t, s in zip(THRESHOLDS, singles, strict=True)
        )
    return one, apart, equal, graph


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    pred, gt = synthetic_cells()
    lines = [
        "| merge function | threshold | segments (blocks / whole) | crossings | ARE vs whole "
        "| VOI split / merge vs whole | ARE vs truth (blocks / whole) | VOI split / merge vs truth "
        "| waterz same fragments: ARE vs ours | waterz own fragments: ARE vs truth |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes = []
    t0 = time.perf_counter()
    every = figures(pred, gt)
    seconds = time.perf_counter() - t0
    for merge_function, f in every.items():
        notes.append(
            f"{merge_function}: {f.fragments} fragments, {f.identical_fragment_voxels:.6f} of voxels in the "
            f"same fragment as the whole-volume run; waterz's own watershed {f.waterz_fragments} fragments, "
            f"ours against them adapted Rand {f.are_fragments_waterz:.6f} (its plateau ties); region graph "
            f"{f.edges} edges = {f.graph_bytes} bytes; all in-memory runs (both merge functions, waterz "
            f"included) {seconds:.1f} s"
        )
        for r in f.rows:
            lines.append(
                f"| `{r.merge_function}` | {r.threshold} | {r.segments} / {r.whole_segments} | {r.crossings} "
                f"| {r.are_whole:.6f} | {r.voi_whole[0]:.4f} / {r.voi_whole[1]:.4f} "
                f"| {r.are_gt:.4f} / {r.are_gt_whole:.4f} | {r.voi_gt[0]:.4f} / {r.voi_gt[1]:.4f} "
                f"| {r.are_waterz_same:.4f} | {r.are_gt_waterz:.4f} |"
            )
    job_lines = [
        "| merge function | one job, thresholds " + ", ".join(map(str, THRESHOLDS)) + " (s) "
        "| a job per threshold (s) | ratio | images equal the single jobs' | region graph (edges) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for merge_function in every:
        one, apart, equal, graph = jobs(pred, merge_function)
        job_lines.append(
            f"| `{merge_function}` | {one:.1f} | {apart:.1f} | {apart / one:.2f} | {equal} "
            f"| {graph.get('edges')} |"
        )
    load = Path("/proc/loadavg").read_text().split()[:3]
    table, job_table = "\n".join(lines), "\n".join(job_lines)
    print(table)
    print("\n".join(notes))
    print(job_table)
    print("load", " ".join(load))
    if not args.no_record:
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as out:
            out.write(
                f"\n## affinity_agglomerate (issue 15), {when}\n\n"
                "`PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_agglomerate.py` on "
                f"{os.cpu_count()} cores, load {' '.join(load)} (shared machine). "
                f"Volume {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} (`volumes.synth` cells, `cell_size_nm` 400, "
                f"{int(gt.max())} ids), blocks {BLOCK}, `aff_threshold` [0.05, 0.995]; fragments: "
                "components of the steepest edges (no halo).\n\n"
                + table
                + "\n\n"
                + "\n".join(f"- {n}" for n in notes)
                + "\n\nOne job with several thresholds against a job per threshold (`run_serially`, one "
                "process, no pyramid):\n\n" + job_table + "\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
