"""``make demo-model``: train the shipped demo checkpoint with the product's own training and inference.

    python -m service.demo.model --out models/weights/demo_unet3d.pth.tar

1. draws a training volume (seed 1) and a validation volume (seed 2) with
   :func:`volumes.synth.generate_em_volume` into a work folder (``--dir``, default a new temporary
   folder that is kept), the data root of both jobs below;
2. writes ``demo-model-train.yaml``, a ``kind: training`` job (``DEMO_CONFIG`` UNet3D with two
   heads learnt from one label, ``classes`` (0 membrane, 1 cytoplasm, 2 mitochondria, drawn from the
   generator's cells and mitochondria): a binary head, inside a cell (BCE + Dice), and a semantic
   head over the three classes (cross-entropy + Dice); AdamW with a cosine schedule, augmented
   random crops) and runs it exactly as ``pytc run demo-model-train.yaml --data-root DIR`` does;
3. writes ``demo-model-score.yaml``, the demo's own inference job (:func:`service.demo.demo_job`:
   same window, blending, activation and uint8 output) over the validation volume with the final
   checkpoint, runs it the same way, and measures the foreground Dice of the prediction
   of the mitochondria channel thresholded at 0.5 against the generator's ground truth;
4. copies the final checkpoint to ``--out``, recording the command, the validation Dice, the wall
   time and both job documents in it (plain values only: it loads with ``weights_only=True``).

Every random draw comes from the seeds, so the same command on the same software gives the same
weights, up to the nondeterminism of multithreaded CPU kernels. Running it again in the same
``--dir`` reuses the volumes and continues an interrupted training job from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml
import zarr
from numpy.typing import NDArray

from models import checkpoint_keys as keys
from service.cli import main as pytc_main
from service.demo import DEMO_CONFIG, demo_job, prediction_dice
from volumes.ome import image_entry, put_image
from volumes.synth import SynthVolume, generate_em_volume, write_synth

Shape3 = tuple[int, int, int]
DEFAULT_OUT = Path("models/weights/demo_unet3d.pth.tar")
TRAIN_JOB, SCORE_JOB = "demo-model-train", "demo-model-score"
PREDICTION = "val-pred.zarr"
CLASSES = "classes"  # the training label's dataset
# An interrupted run loses at most this many iterations; a rerun in the same --dir continues.
SAVE_EVERY = 100


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the demo model; it lands in the job documents and the checkpoint."""

    volume_shape: Shape3 = (64, 384, 384)
    patch_size: Shape3 = (17, 129, 129)
    iterations: int = 400  # the shipped checkpoint's (cut from 600 to fit a loaded 2-core machine)
    batch_size: int = 2
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 1
    train_seed: int = 1
    val_seed: int = 2
    threads: int = 2

    def volume(self, role: str) -> str:
        """The work folder's name for the ``train`` or ``val`` volume. The shape is part of it, so
        a rerun with another shape in the same folder neither reuses the volume nor resumes from a
        checkpoint trained on it (the training job's key holds the data paths, not their shape)."""
        return f"{role}-{'x'.join(map(str, self.volume_shape))}-v2.zarr"  # v2: with ``classes``


@dataclass(frozen=True)
class Outcome:
    """What a finished recipe measured; ``checkpoint`` is the copy at ``--out``."""

    dice: float
    wall_seconds: float
    train_seconds: float
    checkpoint: Path
    prediction: Path


def training_document(recipe: Recipe) -> dict[str, Any]:
    """The ``kind: training`` job that trains the demo model (see ``docs/training.md``)."""
    train = recipe.volume("train")
    return {
        "kind": "training",
        "data": {
            "image": {"path": train, "dataset": "raw"},
            "label": {"path": train, "dataset": CLASSES},
            "normalize": "auto",
        },
        "model": {"architecture": "unet3d", "config": json.loads(json.dumps(DEMO_CONFIG))},
        # channel 0: inside a cell (class != membrane); 1-3: membrane, cytoplasm, mitochondria
        "targets": [
            {"kind": "binary", "loss": {"bce": 1.0, "dice": 0.5}},
            {"kind": "semantic", "classes": 3, "loss": {"ce": 1.0, "dice": 0.5}},
        ],
        "solver": {
            "optimizer": "adamw",
            "lr": recipe.lr,
            "weight_decay": recipe.weight_decay,
            # warmup 0: the closed form of torch's CosineAnnealingLR(T_max=iterations)
            "schedule": {"kind": "warmup_cosine", "warmup": 0},
            "iterations": recipe.iterations,
            "batch_size": recipe.batch_size,
            "save_every": SAVE_EVERY,
            "seed": recipe.seed,
        },
        "sampling": {
            "patch_size": list(recipe.patch_size),
            # every crop holds cells, and about 8% of the volume is mitochondria
            "reject": False,
            "augment": {"flip": True, "transpose": True, "rotate90": True, "intensity": 0.1},
            # the machine's cores go to torch; one thread keeps ahead of a CPU training step
            "prefetch": {"threads": 1},
        },
        "checkpoint": {"dir": "runs/demo_unet3d"},
        "compute": {"threads": recipe.threads},
    }


def scoring_document(recipe: Recipe, checkpoint: str) -> dict[str, Any]:
    """``make demo``'s inference job, over the validation volume with ``checkpoint``. ``overwrite``
    replaces a prediction an earlier run in the same folder made with other weights."""
    job = demo_job(recipe.patch_size, image=recipe.volume("val"), checkpoint=checkpoint, output=PREDICTION)
    job["output"] = {**cast(dict[str, Any], job["output"]), "overwrite": True}
    return job


def write_volumes(root: Path, recipe: Recipe) -> None:
    """The training and validation volumes; kept from an earlier run in the same folder. Each is
    written beside its name and renamed into place, so an interrupted write is never reused."""
    for role, seed in (("train", recipe.train_seed), ("val", recipe.val_seed)):
        path = root / recipe.volume(role)
        if path.exists():
            continue
        print(f"generating the {role} volume {recipe.volume_shape} (seed {seed}) ...", flush=True)
        partial = path.with_name(f".{path.name}.partial")
        synth = generate_em_volume(recipe.volume_shape, seed=seed)
        write_synth(partial, synth, chunks=(16, 128, 128))
        write_classes(partial, synth)
        partial.rename(path)


def class_map(synth: SynthVolume) -> NDArray[np.uint8]:
    """The training label: 0 on membranes (the generator's cells are 0 there), 1 in cytoplasm, 2 in
    mitochondria (which lie inside cells)."""
    classes = np.where(synth.cells > 0, 1, 0).astype(np.uint8)
    classes[synth.mito > 0] = 2
    return classes


def write_classes(path: Path, synth: SynthVolume) -> None:
    """``classes`` beside ``raw``, ``mito`` and ``cells``: an OME-Zarr image as they are."""
    resolution = [float(v) for v in synth.voxel_size_nm]
    container = zarr.open_group(str(path), mode="a")
    image = container.create_group(CLASSES)
    put_image(image, image_entry(CLASSES, [(1, 1, 1)], resolution))
    data = class_map(synth)
    array = image.create_array(
        "0", shape=data.shape, dtype=data.dtype, chunks=(16, 128, 128), fill_value=0,
        attributes={"resolution": resolution}, dimension_names=("z", "y", "x"),
    )  # fmt: skip
    array[...] = data


def run_job(root: Path, name: str, document: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``pytc run ROOT/NAME.yaml --data-root ROOT``; the exit status and the run's ``--report``."""
    job, report = root / f"{name}.yaml", root / f"{name}.report.json"
    job.write_text(yaml.safe_dump(document, sort_keys=False))
    report.unlink(missing_ok=True)
    code = pytc_main(["run", str(job), "--data-root", str(root), "--report", str(report)])
    if code != 0:
        print(f"error: {job} ended with exit status {code}", file=sys.stderr)
        return code, {}
    figures: dict[str, Any] = json.loads(report.read_text())
    return code, figures


def record(checkpoint: Path, out: Path, dice: float, notes: dict[str, Any]) -> None:
    """Copy the engine's final ``checkpoint`` to ``out`` with the recipe's figures added to its
    ``metrics`` and ``training`` records (everything the engine wrote is kept)."""
    # The one place this module needs torch: imported here so that importing service.demo.model,
    # like every service module, does not bring torch along.
    from models.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(checkpoint)
    payload[keys.METRICS] = {**payload.get(keys.METRICS, {}), "val_dice": dice}
    payload[keys.TRAINING] = {**payload.get(keys.TRAINING, {}), **notes}
    save_checkpoint(out, payload)


def make_demo_model(root: Path, out: Path, recipe: Recipe, command: str) -> Outcome | int:
    """The whole recipe in ``root``; the outcome, or the exit status of the job that failed."""
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    write_volumes(root, recipe)
    code, trained = run_job(root, TRAIN_JOB, training_document(recipe))
    if code != 0:
        return code
    checkpoint = Path(trained["checkpoint"])
    score_job = scoring_document(recipe, os.path.relpath(checkpoint, root))
    code, _ = run_job(root, SCORE_JOB, score_job)
    if code != 0:
        return code
    dice = prediction_dice(root / PREDICTION, root / recipe.volume("val"))
    wall = time.perf_counter() - started
    notes = {
        "command": command,
        "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(recipe).items()},
        "wall_seconds": round(wall, 1),
        "train_seconds": round(float(trained["seconds"]), 1),
        "start_iteration": int(trained["start_iteration"]),
        "score_job": score_job,
        "val_dice_threshold": 0.5,
    }
    record(checkpoint, out, dice, notes)
    return Outcome(dice, wall, float(trained["seconds"]), out, root / PREDICTION)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> tuple[Recipe, Path, Path | None]:
    base = Recipe()
    parser = argparse.ArgumentParser(prog="python -m service.demo.model", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint to write")
    parser.add_argument("--dir", type=Path, help="work folder (default: a new temporary folder, kept)")
    parser.add_argument("--volume-shape", type=_positive, nargs=3, default=base.volume_shape)
    parser.add_argument("--patch-size", type=_positive, nargs=3, default=base.patch_size)
    parser.add_argument("--iterations", type=_positive, default=base.iterations)
    parser.add_argument("--batch-size", type=_positive, default=base.batch_size)
    parser.add_argument("--threads", type=_positive, default=base.threads, help="torch threads")
    args = parser.parse_args(argv)
    recipe = Recipe(
        volume_shape=tuple(args.volume_shape),
        patch_size=tuple(args.patch_size),
        iterations=args.iterations,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    return recipe, args.out, args.dir


def main(argv: Sequence[str] | None = None) -> int:
    recipe, out, folder = parse_args(argv)
    root = (folder or Path(tempfile.mkdtemp(prefix="pytc-demo-model-"))).resolve()
    command = shlex.join(["python", "-m", "service.demo.model", *(sys.argv[1:] if argv is None else argv)])
    outcome = make_demo_model(root, out, recipe, command)
    if isinstance(outcome, int):
        return outcome
    print(
        f"val_dice={outcome.dice:.4f} wall={outcome.wall_seconds:.0f}s checkpoint={outcome.checkpoint} "
        f"(work folder {root})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
