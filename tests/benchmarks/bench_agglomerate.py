"""``affinity_agglomerate`` figures: block by block against the whole-volume run, against waterz on
the whole volume, and against the ground truth (tests/agglomerate_figures.py draws the data:
``volumes.synth`` cells, affinities from them with blur and noise).

Columns, per merge function and threshold: segments (blockwise / whole-volume); fragments that hold
voxels of two whole-volume objects ("crossings", goal 0); adapted Rand error and VOI (split,
merge) of the blockwise labels against the whole-volume run's; against the ground truth (blockwise,
and the whole-volume run's adapted Rand); waterz's own agglomeration of the whole-volume fragments
against ours (its queue breaks ties in another order); waterz with its own zwatershed fragments
against the ground truth (what PyTC's tutorial would give). Prints a table and appends it, with the
command and the load, to tests/benchmarks/RESULTS.md.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_agglomerate.py [--no-record]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

from tests.agglomerate_figures import BLOCK, SHAPE, figures, synthetic_cells

RESULTS = Path(__file__).with_name("RESULTS.md")


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
            f"same fragment as the whole-volume run, region graph {f.edges} edges = {f.graph_bytes} bytes "
            f"in the driver; all runs (both merge functions, waterz included) {seconds:.1f} s"
        )
        for r in f.rows:
            lines.append(
                f"| `{r.merge_function}` | {r.threshold} | {r.segments} / {r.whole_segments} | {r.crossings} "
                f"| {r.are_whole:.6f} | {r.voi_whole[0]:.4f} / {r.voi_whole[1]:.4f} "
                f"| {r.are_gt:.4f} / {r.are_gt_whole:.4f} | {r.voi_gt[0]:.4f} / {r.voi_gt[1]:.4f} "
                f"| {r.are_waterz_same:.4f} | {r.are_gt_waterz:.4f} |"
            )
    load = Path("/proc/loadavg").read_text().split()[:3]
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    print("load", " ".join(load))
    if not args.no_record:
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as out:
            out.write(
                f"\n## affinity_agglomerate (issue 15), {when}\n\n"
                "`PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_agglomerate.py` on "
                f"{os.cpu_count()} cores, load {' '.join(load)} (shared machine). "
                f"Volume {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} (`volumes.synth` cells, `cell_size_nm` 400, "
                f"{int(gt.max())} ids), blocks {BLOCK}, halo (4, 16, 16), "
                "`aff_threshold` [0.05, 0.995].\n\n"
                + table
                + "\n\n"
                + "\n".join(f"- {n}" for n in notes)
                + "\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
