"""``make demo``: synthetic EM volume -> two segmentation jobs through ``pytc run``, each with the
demo model's inference as its first stage -> mitochondria and cells as objects, scored against the
generator's ground truth.

1. ``demo-mito.yaml``: ``kind: segmentation`` whose ``inference:`` stage predicts the volume with
   the shipped model (``pred.zarr``, dataset ``pred``, kept), then decodes mitochondria instances
   from the mitochondria channel (``binary_connected``) into ``seg.zarr`` (dataset ``mito``);
2. ``demo-cells.yaml``: the same inference stage (finished: nothing runs again), then cells by a
   watershed on the inside-a-cell and membrane channels (``bc_watershed``) into ``seg.zarr``
   (dataset ``cells``);
3. prints the mitochondria foreground Dice and IoU of the prediction, the mitochondria instances'
   AP-75, AP-50 and adapted Rand error, and the cells' adapted Rand error and VOI (split, merge),
   computed with :mod:`volumes.metrics` against the generator's truth (the mitochondria instances
   of the truth are its connected components: the generator draws them apart).

Everything runs on the embedded default (a local Dask cluster, CPU). The data lands in
``demo-data/`` (or ``--dir``); running it again reuses the volume and resumes the finished jobs.
The shipped model itself is trained by :mod:`service.demo.model` (``make demo-model``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage

from service.cli import main as pytc_main
from volumes.box import Box
from volumes.metrics.scores import Scores, score_table
from volumes.metrics.table import table_of
from volumes.open import open_volume

# The architecture the shipped checkpoint was trained with (service/demo/model.py).
# Four output channels in two heads: 0 inside a cell (sigmoid), then the classes membrane,
# cytoplasm and mitochondria (softmax); see ``CHANNELS``.
DEMO_CONFIG = {"in_channels": 1, "out_channels": 4, "filters": [8, 12, 16, 20, 24]}
DEMO_HEADS = [1, 3]
CHANNELS = {"cell": 0, "membrane": 1, "cytoplasm": 2, "mito": 3}
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
    """The demo's inference job: the probabilities of ``image`` (dataset ``raw``) with the demo
    architecture loaded from ``checkpoint``, written to ``output`` (dataset ``pred``, uint8, the
    channels of ``CHANNELS``: a sigmoid head inside-a-cell and a softmax head over membrane,
    cytoplasm and mitochondria).
    ``service.demo.model`` scores the models it trains with this same job."""
    return {
        "kind": "inference",
        "input": {"path": image, "dataset": "raw"},
        "model": {"architecture": "unet3d", "config": DEMO_CONFIG, "checkpoint": checkpoint},
        "window": {"patch_size": list(patch), "overlap": 0.5, "blending": "gaussian", "batch_size": 4},
        "output": {
            "path": output,
            "dataset": "pred",
            "dtype": "uint8",
            "heads": list(DEMO_HEADS),
            "activation": ["sigmoid", "softmax"],
            "chunks": [16, 128, 128],
        },
        "compute": {"block_shape": [32, 256, 256]},
    }


# The segmentation jobs: name -> (output dataset, the prediction's channels, decoder).
SEGMENTATIONS: dict[str, tuple[str, list[int], dict[str, object]]] = {
    "mito": ("mito", [CHANNELS["mito"]], {"name": "binary_connected", "thres": 0.5, "thres_small": 128}),
    # seeds well inside cells and away from membranes, face-connected (thin membranes along z leak
    # under 26-connectivity), grown over the inside of cells
    "cells": (
        "cells",
        [CHANNELS["cell"], CHANNELS["membrane"]],
        {
            "name": "bc_watershed",
            "thres1": 0.99,
            "thres2": 0.05,
            "thres3": 0.5,
            "thres_small": 512,
            "connectivity": 6,
        },
    ),
}


def segmentation_job(name: str, inference: dict[str, object] | None = None) -> dict[str, object]:
    """The demo's ``name`` segmentation (``SEGMENTATIONS``): ``inference`` (default
    :func:`demo_job`) as its first stage, the labels into ``seg.zarr``."""
    dataset, channels, decoder = SEGMENTATIONS[name]
    stage = {k: v for k, v in (inference or demo_job()).items() if k != "kind"}
    return {
        "kind": "segmentation",
        "inference": stage,
        "channels": channels,
        "decoder": decoder,
        "output": {"path": "seg.zarr", "dataset": dataset, "chunks": [16, 128, 128]},
        "compute": {"block_shape": [32, 256, 256]},
    }


def prepare(root: Path) -> list[Path]:
    """The synthetic volume, the model file inside the data root, and the job documents."""
    from volumes.synth import generate_em_volume, write_synth

    root.mkdir(parents=True, exist_ok=True)
    if not (root / "em.zarr").exists():
        print(f"generating a synthetic EM volume {DEMO_SHAPE} (seed {DEMO_SEED}) ...", flush=True)
        write_synth(root / "em.zarr", generate_em_volume(DEMO_SHAPE, seed=DEMO_SEED), chunks=(16, 128, 128))
    (root / "models").mkdir(exist_ok=True)
    shipped = files("models") / "weights" / DEMO_CHECKPOINT
    with shipped.open("rb") as src, open(root / "models" / DEMO_CHECKPOINT, "wb") as dst:
        shutil.copyfileobj(src, dst)
    jobs = []
    for name in SEGMENTATIONS:
        job = root / f"demo-{name}.yaml"
        job.write_text(yaml.safe_dump(segmentation_job(name), sort_keys=False))
        jobs.append(job)
    return jobs


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    return float(2.0 * inter / total) if total else 1.0


def score(root: Path) -> tuple[float, float]:
    """Foreground Dice and IoU of the thresholded prediction against the generator's ground truth."""
    d = prediction_dice(root / "pred.zarr", root / "em.zarr")
    return d, d / (2.0 - d)


@dataclass(frozen=True)
class Quality:
    """The objects against the generator's truth (:mod:`volumes.metrics`)."""

    mito: Scores  # against the connected components of the truth's mitochondria
    cells: Scores  # against the truth's cells (0 on membranes: not scored)


def quality(root: Path) -> Quality:
    """Score ``seg.zarr``'s ``mito`` and ``cells`` against ``em.zarr``'s truth, in memory."""
    truth = root / "em.zarr"
    mito_truth = ndimage.label(_whole(truth, "mito") > 0, structure=np.ones((3, 3, 3)))[0]
    mito = score_table(table_of(mito_truth, _whole(root / "seg.zarr", "mito")), ("adapted_rand", "ap"))
    cells = score_table(
        table_of(_whole(truth, "cells"), _whole(root / "seg.zarr", "cells")), ("adapted_rand", "voi")
    )
    return Quality(mito, cells)


def _whole(path: Path, dataset: str) -> np.ndarray:
    volume = open_volume(path, dataset)
    return volume.read(Box.of_shape(volume.shape))


def prediction_dice(prediction: Path, truth: Path) -> float:
    """Foreground Dice of the mitochondria channel of a uint8 ``pred`` prediction (``demo_job``'s
    output) thresholded at 0.5 as PyTC thresholds uint8 maps (stored values
    ``int(255 p) > int(255 * 0.5)``, i.e. ``>= 128``) against the ``mito`` ground truth of ``truth``."""
    pred_volume = open_volume(prediction, "pred")
    mito = CHANNELS["mito"]
    pred = pred_volume.read(Box(((mito, 0, 0, 0)), (1, *pred_volume.shape[1:])))[0] >= 128
    truth_volume = open_volume(truth, "mito")
    return dice(pred, truth_volume.read(Box.of_shape(truth_volume.shape)) > 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pytc-demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("demo-data"))
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    jobs = prepare(root)
    started = time.perf_counter()
    for job in jobs:
        code = pytc_main(["run", str(job), "--data-root", str(root)])
        if code != 0:
            return code
    d, iou = score(root)
    q = quality(root)
    elapsed = time.perf_counter() - started
    channels = ", ".join(CHANNELS)
    print(
        f"\nprediction: {root / 'pred.zarr' / 'pred'} (an OME-Zarr image with its pyramid; level 0, "
        f"uint8 probabilities (c, z, y, x), channels {channels}, at pred/0)"
    )
    print(f"labels: {root / 'seg.zarr'} (OME-Zarr label images mito and cells, each with a table of objects)")
    print(f"ground truth: {root / 'em.zarr'} (OME-Zarr images mito and cells; level 0 at <name>/0)")
    m, c = q.mito, q.cells
    print(f"mitochondria foreground Dice {d:.3f}, IoU {iou:.3f} (threshold 0.5)")
    print(
        f"mitochondria instances: {m.pred_objects} found, {m.gt_objects} true; AP-75 {m.ap_75:.3f}, "
        f"AP-50 {m.ap_50:.3f}, adapted Rand error {m.adapted_rand_error:.4f}"
    )
    print(
        f"cells: {c.pred_objects} found, {c.gt_objects} true; adapted Rand error "
        f"{c.adapted_rand_error:.4f}, VOI split {c.voi_split:.3f} merge {c.voi_merge:.3f}"
    )
    print(f"in {elapsed:.0f}s")
    return 0 if d >= 0.9 else 1
