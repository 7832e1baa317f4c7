"""Mask-restricted inference (``input.mask``): windows skipped and time saved on a sparse mask.

One synthetic volume (uint8 noise), run twice in this process through the engine's serial loop
(``workers.inference.run.run_serially``: the same blocks, passes and writes as a Dask worker runs),
once without a mask and once with a mask 4x coarser per axis (its own voxel size) whose nonzero
voxels are a few blobs covering ``--fraction`` of the volume (the rest is "resin"). The model is a
small torch network (two 3x3x3 convolutions, 8 features), run on CPU in this process, so that the
forward pass costs what a window costs rather than nothing.

Reports windows (total, computed, skipped), blocks (total, with no task), pass-1 and pass-2 tasks,
and each run's seconds (the run's own: start to completion mark), and the saving.

Usage: ``python tests/benchmarks/bench_mask.py [--shape 64 256 256] [--fraction 0.1] [--no-results]``
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.ref import ModelInfo, ModelRef
from volumes.box import Box
from volumes.open import open_volume
from workers.inference.job import (
    ComputeSpec,
    InferenceJob,
    InputSpec,
    MaskSpec,
    Normalize,
    OutputSpec,
    WindowSpec,
)
from workers.inference.run import run_serially

RESULTS = Path(__file__).with_name("RESULTS.md")
FACTOR = (4, 4, 4)


def make_data(root: Path, shape: tuple[int, int, int], fraction: float) -> float:
    rng = np.random.default_rng(0)
    group = zarr.open_group(root / "in.zarr", mode="w")
    raw = group.create_array("raw", data=rng.integers(0, 255, shape, dtype=np.uint8), chunks=(32, 128, 128))
    raw.attrs["resolution"] = [1.0, 1.0, 1.0]
    coarse = tuple(-(-n // f) for n, f in zip(shape, FACTOR, strict=True))
    mask = np.zeros(coarse, dtype=np.uint8)
    # blobs (ellipsoids, 0.14 of the volume across) at random centres until the fraction is reached
    grid = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) / n for n in coarse], indexing="ij"), axis=-1)
    while mask.mean() < fraction:
        centre = rng.uniform(0, 1, 3)
        mask[np.linalg.norm(grid - centre, axis=-1) < 0.07] = 1
    m = group.create_array("mask", data=mask, chunks=coarse)
    m.attrs["resolution"] = [float(f) for f in FACTOR]
    return float(mask.mean())


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 1, 3, padding=1)
    ).eval()


def job_for(root: Path, name: str, mask: bool) -> InferenceJob:
    return InferenceJob(
        input=InputSpec(
            str(root / "in.zarr"),
            "raw",
            None,
            Normalize(),
            MaskSpec(str(root / "in.zarr"), "mask") if mask else None,
        ),
        model=ModelRef("torchscript", path="unused.pt"),
        window=WindowSpec((16, 64, 64), (8, 32, 32), "gaussian", batch_size=4),
        output=OutputSpec(
            str(root / f"{name}.zarr"), "pred", "zarr3", "float32", (), ("none",), (16, 64, 64)
        ),
        compute=ComputeSpec(block_shape=(32, 128, 128)),
        document="{}",
    )


def run(root: Path, name: str, mask: bool, net: torch.nn.Module) -> tuple[dict, float]:  # type: ignore[type-arg]
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(batch)).numpy()

    job = job_for(root, name, mask)
    t0 = time.perf_counter()
    summary = run_serially(job, ModelInfo(1, 1, "bench-" + uuid.uuid4().hex), predict=predict)
    return summary.to_json(), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        covered = make_data(root, tuple(args.shape), args.fraction)
        net = make_model()
        with torch.inference_mode():  # warm up, so neither run pays torch's first call
            net(torch.zeros((4, 1, 16, 64, 64)))
        full, full_s = run(root, "full", False, net)
        masked, masked_s = run(root, "masked", True, net)
        b = open_volume(str(root / "masked.zarr"), "pred")
        covered_out = float(np.mean(np.asarray(b.read(Box.of_shape(b.shape))) != 0))
    total = full["windows"]
    rows = [
        ("windows total", f"{total:,}"),
        ("windows computed (masked run)", f"{masked['windows']:,}"),
        ("windows skipped", f"{masked['windows_masked']:,} ({masked['windows_masked'] / total:.0%})"),
        ("blocks total / with no task", f"{full['blocks_total']} / {masked['blocks_masked']}"),
        ("tasks pass 1 + pass 2, unmasked", f"{full['tasks_run']['pass1']} + {full['tasks_run']['pass2']}"),
        ("tasks pass 1 + pass 2, masked", f"{masked['tasks_run']['pass1']} + {masked['tasks_run']['pass2']}"),
        ("seconds, unmasked", f"{full_s:.1f}"),
        ("seconds, masked", f"{masked_s:.1f}"),
        ("time saved", f"{full_s - masked_s:.1f} s ({1 - masked_s / full_s:.0%})"),
    ]
    table = "| figure | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    print(f"mask covers {covered:.1%} of its voxels; the masked output is nonzero on {covered_out:.1%}")
    if not args.no_results:
        command = "python tests/benchmarks/bench_mask.py " + " ".join(sys.argv[1:])
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
        with RESULTS.open("a") as handle:
            handle.write(
                f"\n### Mask-restricted inference (issue 17), {stamp}\n\n"
                f"`{command.strip()}` on {platform.machine()}, {'x'.join(map(str, args.shape))} uint8, "
                f"mask 4x coarser per axis covering {covered:.1%} of its voxels (a few blobs), patch "
                "16x64x64, stride 8x32x32, blocks 32x128x128, chunks 16x64x64, a two-layer 3x3x3 "
                "convolution (8 features) on one CPU thread, `run_serially` (in process, no Dask); "
                f"the masked output is nonzero (covered by a kept window) on {covered_out:.1%} "
                "of its voxels.\n\n"
                f"{table}\n"
            )


if __name__ == "__main__":
    main()
