"""The pyramid stage: its memory against the volume's size, and its time against the job's.

- memory: a 2-channel float32 output of two sizes (the second 8 times the first), level 0 filled
  chunk by chunk, then the pyramid stage run in this process under ``tracemalloc`` (numpy's buffers
  are traced): its peak must not grow with the volume (one chunk's source per task);
- time: ``pytc run`` of the inference benchmark's job (the demo model over synth's 64x512x512,
  ``tests/benchmarks/bench_inference.py``'s document) once, its report's ``pyramid_seconds``
  against its ``seconds`` (the whole run, blocks and pyramid).

Prints a table and appends it, with the command, to tests/benchmarks/RESULTS.md::

    PYTHONPATH=. python tests/benchmarks/bench_pyramid.py [--no-inference]
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from volumes.box import Box
from volumes.output import create_output
from volumes.pyramid import pyramid_factors
from workers.pyramid import PyramidStage, run_pyramid_task

RESULTS = Path(__file__).with_name("RESULTS.md")
CHUNKS = (16, 128, 128)
VOXEL = (30.0, 8.0, 8.0)
SIZES = ((32, 256, 256), (64, 512, 512))


def fill(volume: object, shape: tuple[int, ...], rng: np.random.Generator) -> None:
    """Level 0, chunk by chunk (never the whole volume in memory)."""
    for z in range(0, shape[1], CHUNKS[0]):
        for y in range(0, shape[2], CHUNKS[1]):
            for x in range(0, shape[3], CHUNKS[2]):
                box = Box(
                    (0, z, y, x),
                    (
                        shape[0],
                        *(min(c, s - o) for c, s, o in zip(CHUNKS, shape[1:], (z, y, x), strict=True)),
                    ),
                )
                volume.write(box, rng.random(box.shape, dtype=np.float32))  # type: ignore[attr-defined]


def stage_peak(root: Path, spatial: tuple[int, int, int]) -> tuple[float, int, int]:
    """(seconds, peak traced bytes, levels) of the pyramid stage over an output of ``spatial``."""
    shape = (2, *spatial)
    levels = pyramid_factors(spatial, CHUNKS, VOXEL)
    path = root / f"p{spatial[0]}.zarr"
    fill(
        create_output(path, "pred", "zarr3", shape, "float32", CHUNKS, VOXEL, levels=levels),
        shape,
        np.random.default_rng(0),
    )
    stage = PyramidStage(
        str(path), "pred", "zarr3", levels, CHUNKS, shape, "mean", root / f"markers{spatial[0]}"
    )
    tracemalloc.start()
    started = time.perf_counter()
    while (task := stage.next_task()) is not None:
        run_pyramid_task(task)
        stage.finished(task)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stage.check()
    return seconds, peak, len(levels)


def inference_figures(root: Path) -> dict[str, float]:
    from bench_inference import DEMO_CHECKPOINT, REPO, job_document, make_volume, run_pytc

    (root / DEMO_CHECKPOINT).write_bytes((REPO / "models" / "weights" / DEMO_CHECKPOINT).read_bytes())
    make_volume(root, "em.zarr", (64, 512, 512), seed=0)
    report = run_pytc(root, job_document("em.zarr", "out.zarr", None), "pyramid")
    return {
        "seconds": float(report["seconds"]),
        "pyramid_seconds": float(report["pyramid_seconds"]),
        "levels": report["levels"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-inference", action="store_true", help="the memory figures only")
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for spatial in SIZES:
            seconds, peak, levels = stage_peak(root, spatial)
            mib = 2 * 4 * np.prod(spatial) / 2**20
            rows.append(
                (
                    f"pyramid stage, 2 x {spatial} float32 ({mib:.0f} MiB), {levels} levels: time (s)",
                    f"{seconds:.2f}",
                )
            )
            rows.append(("  peak traced memory (MiB)", f"{peak / 2**20:.1f}"))
            print(*rows[-2:], sep="\n", flush=True)
        if not args.no_inference:
            figures = inference_figures(root)
            rows.append(
                ("pytc run, bench volume 64x512x512 (demo model): the run (s)", f"{figures['seconds']:.1f}")
            )
            rows.append(
                (
                    f"  of which the pyramid stage, {figures['levels']} levels (s)",
                    f"{figures['pyramid_seconds']:.2f}",
                )
            )
            rows.append(("  pyramid / run", f"{figures['pyramid_seconds'] / figures['seconds']:.3f}"))
    width = max(len(name) for name, _ in rows)
    table = "\n".join(f"| {name:<{width}} | {value} |" for name, value in rows)
    print(table)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    command = "PYTHONPATH=. python tests/benchmarks/bench_pyramid.py" + (
        " --no-inference" if args.no_inference else ""
    )
    with RESULTS.open("a") as out:
        head = f"\n## Pyramid stage ({stamp}, issue 16)\n\n`{command}`\n\n"
        out.write(f"{head}| figure | value |\n| --- | --- |\n{table}\n")


if __name__ == "__main__":
    main()
