"""``make demo``: synthetic EM volume -> ``pytc run`` with the shipped demo model -> Dice.

Everything runs on the embedded default (a local Dask cluster, CPU). The data lands in
``demo-data/`` (or ``--dir``); running it again reuses the volume and resumes the finished job.
The shipped model itself is trained by :mod:`service.demo.model` (``make demo-model``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

import numpy as np
import yaml

from service.cli import main as pytc_main
from volumes.box import Box
from volumes.open import open_volume

# The architecture the shipped checkpoint was trained with (service/demo/model.py).
DEMO_CONFIG = {"in_channels": 1, "out_channels": 1, "filters": [8, 12, 16, 20, 24]}
DEMO_CHECKPOINT = "demo_unet3d.pth.tar"
DEMO_SHAPE = (48, 384, 384)
DEMO_SEED = 7


def demo_job(
    patch: Sequence[int] = (17, 129, 129),
    *,
    image: str = "em.zarr",
    checkpoint: str = f"models/{DEMO_CHECKPOINT}",
    output: str = "pred.zarr",
) -> dict[str, object]:
    """The demo's inference job: mitochondria probabilities of ``image`` (dataset ``raw``) with the
    demo architecture loaded from ``checkpoint``, written to ``output`` (dataset ``mito``, uint8).
    ``service.demo.model`` scores the models it trains with this same job."""
    return {
        "kind": "inference",
        "input": {"path": image, "dataset": "raw"},
        "model": {"architecture": "unet3d", "config": DEMO_CONFIG, "checkpoint": checkpoint},
        "window": {"patch_size": list(patch), "overlap": 0.5, "blending": "gaussian", "batch_size": 4},
        "output": {
            "path": output,
            "dataset": "mito",
            "dtype": "uint8",
            "activation": ["sigmoid"],
            "chunks": [16, 128, 128],
        },
        "compute": {"block_shape": [32, 256, 256]},
    }


def prepare(root: Path) -> Path:
    """The synthetic volume, the model file inside the data root, and the job document."""
    from volumes.synth import generate_em_volume, write_synth

    root.mkdir(parents=True, exist_ok=True)
    if not (root / "em.zarr").exists():
        print(f"generating a synthetic EM volume {DEMO_SHAPE} (seed {DEMO_SEED}) ...", flush=True)
        write_synth(root / "em.zarr", generate_em_volume(DEMO_SHAPE, seed=DEMO_SEED), chunks=(16, 128, 128))
    (root / "models").mkdir(exist_ok=True)
    shipped = files("models") / "weights" / DEMO_CHECKPOINT
    with shipped.open("rb") as src, open(root / "models" / DEMO_CHECKPOINT, "wb") as dst:
        shutil.copyfileobj(src, dst)
    job = root / "demo-job.yaml"
    job.write_text(yaml.safe_dump(demo_job(), sort_keys=False))
    return job


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    return float(2.0 * inter / total) if total else 1.0


def score(root: Path) -> tuple[float, float]:
    """Foreground Dice and IoU of the thresholded prediction against the generator's ground truth."""
    d = prediction_dice(root / "pred.zarr", root / "em.zarr")
    return d, d / (2.0 - d)


def prediction_dice(prediction: Path, truth: Path) -> float:
    """Foreground Dice of a uint8 ``mito`` prediction (``demo_job``'s output) thresholded at 0.5
    as PyTC thresholds uint8 maps (stored values ``int(255 p) > int(255 * 0.5)``, i.e. ``>= 128``)
    against the ``mito`` ground truth of ``truth``."""
    pred_volume = open_volume(prediction, "mito")
    pred = pred_volume.read(Box.of_shape(pred_volume.shape))[0] >= 128
    truth_volume = open_volume(truth, "mito")
    return dice(pred, truth_volume.read(Box.of_shape(truth_volume.shape)) > 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pytc-demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("demo-data"))
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    job = prepare(root)
    started = time.perf_counter()
    code = pytc_main(["run", str(job), "--data-root", str(root)])
    if code != 0:
        return code
    d, iou = score(root)
    print(
        f"\nprediction: {root / 'pred.zarr' / 'mito'} (an OME-Zarr image with its pyramid; level 0, "
        "uint8 probabilities (c, z, y, x), at mito/0)"
    )
    print(f"ground truth: {root / 'em.zarr' / 'mito'} (an OME-Zarr image; level 0 at mito/0)")
    elapsed = time.perf_counter() - started
    print(f"mitochondria foreground Dice {d:.3f}, IoU {iou:.3f} (threshold 0.5) in {elapsed:.0f}s")
    return 0 if d >= 0.9 else 1
