"""Train the shipped demo model (mitochondria foreground on synthetic EM), reproducibly on CPU.

    python -m models.demo_training --out models/weights/demo_unet3d.pth.tar

draws a training volume (seed 1) and a validation volume (seed 2) with
:func:`volumes.synth.generate_em_volume`, trains a small PyTC ``UNet3D`` on random augmented
crops with BCE + Dice, measures foreground Dice on the validation volume with a sliding window
(50% overlap, plain averaging) and writes a PyTC-style checkpoint. Every random draw comes from
the seeds, so the same command on the same software gives the same weights (up to the
nondeterminism of multithreaded CPU kernels).

Inputs are ``uint8 / 255`` (the engine's default ``normalize: auto``), the output is one logit
channel to be read through a sigmoid.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from models.checkpoint import save_checkpoint
from models.training import RandomCropSampler, train_steps
from models.unet3d import build_unet3d
from volumes.synth import generate_em_volume

logger = logging.getLogger(__name__)

Shape3 = tuple[int, int, int]
DEFAULT_OUT = "models/weights/demo_unet3d.pth.tar"


@dataclass(frozen=True)
class DemoConfig:
    """Everything that decides the demo model; recorded in the checkpoint."""

    seed: int = 1
    val_seed: int = 2
    volume_shape: Shape3 = (64, 384, 384)
    filters: tuple[int, ...] = (8, 12, 16, 20, 24)
    patch_size: Shape3 = (17, 129, 129)
    batch_size: int = 2
    iterations: int = 600
    lr: float = 3e-3
    weight_decay: float = 1e-4
    threads: int = 2

    def model_config(self) -> dict[str, Any]:
        return {"in_channels": 1, "out_channels": 1, "filters": list(self.filters)}


def normalize(raw: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The engine's ``normalize: auto`` for uint8 input."""
    return (raw.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """PyTC's window grid on one axis: ``1 + ceil((size - window) / stride)`` windows, the last
    snapped to the end; a single window at 0 when the axis is not larger than the window."""
    if size <= window:
        return [0]
    count = 1 + math.ceil((size - window) / stride)
    return [min(i * stride, size - window) for i in range(count)]


def predict_volume(
    model: nn.Module,
    image: NDArray[np.float32],
    window: Shape3,
    overlap: float = 0.5,
    batch_size: int = 2,
) -> NDArray[np.float32]:
    """Sigmoid of ``model`` over a whole in-memory (z, y, x) image: windows with ``overlap``,
    overlapping predictions averaged. Axes shorter than the window are edge-padded, then cropped."""
    pad = [(0, max(w - s, 0)) for s, w in zip(image.shape, window, strict=True)]
    padded = np.pad(image, pad, mode="edge")
    strides = [max(1, int(w * (1 - overlap))) for w in window]
    grids = [window_starts(s, w, st) for s, w, st in zip(padded.shape, window, strides, strict=True)]
    total = np.zeros(padded.shape, dtype=np.float32)
    count = np.zeros(padded.shape, dtype=np.float32)
    starts = list(itertools.product(*grids))
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(starts), batch_size):
            boxes = [
                tuple(slice(a, a + w) for a, w in zip(s, window, strict=True))
                for s in starts[i : i + batch_size]
            ]
            x = torch.from_numpy(np.stack([padded[b] for b in boxes])[:, None])
            prob = torch.sigmoid(model(x))[:, 0].numpy()
            for box, p in zip(boxes, prob, strict=True):
                total[box] += p
                count[box] += 1.0
    out = total / count
    return out[tuple(slice(0, s) for s in image.shape)]


def foreground_dice(pred: NDArray[np.bool_], truth: NDArray[np.bool_]) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    denom = int(pred.sum()) + int(truth.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & truth).sum()) / denom


def train_demo(config: DemoConfig) -> dict[str, Any]:
    """Generate the data, train, validate; returns the checkpoint payload (not yet saved)."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    train = generate_em_volume(config.volume_shape, seed=config.seed)
    val = generate_em_volume(config.volume_shape, seed=config.val_seed)
    logger.info(
        "volumes ready in %.1fs, mito fraction %.3f", time.perf_counter() - started, train.mito.mean()
    )
    sampler = RandomCropSampler(
        normalize(train.raw), train.mito, config.patch_size, rng=np.random.default_rng(config.seed)
    )
    model = build_unet3d(config.model_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.iterations)
    losses = train_steps(model, sampler, optimizer, config.iterations, config.batch_size, scheduler=scheduler)
    train_s = time.perf_counter() - started
    prob = predict_volume(model, normalize(val.raw), config.patch_size)
    dice = foreground_dice(prob > 0.5, val.mito > 0)
    logger.info("validation foreground Dice %.4f (train %.0fs)", dice, train_s)
    return {
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "iteration": config.iterations,
        "architecture": "unet3d",
        "config": config.model_config(),
        "metrics": {"val_dice": dice, "final_loss": float(np.mean(losses[-20:]))},
        "training": {
            **_plain(asdict(config)),
            "target": "mito foreground (volumes.synth)",
            "normalize": "uint8 / 255",
            "output_activation": "sigmoid",
            "loss": "1.0 BCE-with-logits + 0.5 Dice",
            "train_seconds": round(train_s, 1),
            "torch_version": str(torch.__version__),
        },
    }


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    # Checkpoints are read with weights_only=True: keep to lists, numbers and strings.
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def parse_args(argv: Sequence[str] | None) -> tuple[DemoConfig, Path]:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="python -m models.demo_training", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="checkpoint to write")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="training volume and run seed")
    parser.add_argument("--val-seed", type=int, default=defaults.val_seed)
    parser.add_argument("--volume-shape", type=int, nargs=3, default=defaults.volume_shape)
    parser.add_argument("--filters", type=int, nargs="+", default=defaults.filters)
    parser.add_argument("--patch-size", type=int, nargs=3, default=defaults.patch_size)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--iterations", type=int, default=defaults.iterations)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    args = parser.parse_args(argv)
    config = DemoConfig(
        seed=args.seed,
        val_seed=args.val_seed,
        volume_shape=tuple(args.volume_shape),
        filters=tuple(args.filters),
        patch_size=tuple(args.patch_size),
        batch_size=args.batch_size,
        iterations=args.iterations,
        lr=args.lr,
        weight_decay=args.weight_decay,
        threads=args.threads,
    )
    return config, args.out


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config, out = parse_args(argv)
    started = time.perf_counter()
    payload = train_demo(config)
    command = ["python", "-m", "models.demo_training", *(sys.argv[1:] if argv is None else argv)]
    payload["training"]["command"] = shlex.join(command)
    payload["training"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    save_checkpoint(out, payload)
    dice = payload["metrics"]["val_dice"]
    print(f"val_dice={dice:.4f} wall={payload['training']['wall_seconds']}s checkpoint={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
