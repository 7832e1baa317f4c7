"""Training throughput: our training task against a plain PyTorch loop over in-memory tensors.

    python tests/benchmarks/bench_training.py [--iterations 40] [--repeats 2]

Both sides train the same ``unet3d`` (same init, config, batch, patch, loss, AdamW, thread count):

- plain: batches cut from the volume held in memory, made before timing, as tensors; the loop is
  zero_grad, forward, BCE + Dice, backward, step, schedule step;
- ours: the training task's body (:func:`workers.training.session.train`) in this process: crops
  read from zarr, augmented, targets made, by the prefetch threads; progress and a final checkpoint
  written. The Dask hop (one task for the whole run) adds seconds once, not per iteration.

Reported: iterations per second of each (median over ``--repeats``, alternating), the ratio (goal
>= 0.9), the share of the step time the model waited for data, and what making one batch costs on
a loader thread (with and without elastic warps). Prints a table and appends it, with the command
and the machine's load, to tests/benchmarks/RESULTS.md. Timings on a shared machine are noisy:
the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.losses import heads_loss
from models.optim import build_optimizer, build_scheduler
from models.trainer import seed_everything
from models.training_config import HeadSpec, OptimizerSpec, ScheduleSpec
from models.unet3d import build_unet3d
from service.documents.training import parse_training
from volumes.synth import generate_em_volume, write_synth
from workers.runtime.allocator import tune_allocator
from workers.training.session import train
from workers.training.setup import batch_maker

RESULTS = Path(__file__).with_name("RESULTS.md")
SHAPE = (32, 128, 128)


def job_document(args: argparse.Namespace, run: str, elastic: float = 0.0) -> dict[str, Any]:
    return {
        "kind": "training",
        "data": {
            "image": {"path": "em.zarr", "dataset": "raw"},
            "label": {"path": "em.zarr", "dataset": "mito"},
        },
        "model": {"architecture": "unet3d", "config": model_config(args)},
        "targets": ["binary"],
        "solver": {"iterations": args.iterations, "batch_size": args.batch, "lr": 1e-3, "seed": 0},
        "sampling": {"patch_size": list(args.patch), "augment": {"elastic": elastic}},
        "checkpoint": {"dir": f"runs/{run}"},
        "compute": {"threads": args.threads},
    }


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "in_channels": 1,
        "out_channels": 1,
        "filters": list(args.filters),
        "isotropy": [False] * len(args.filters),
    }


def plain_loop(args: argparse.Namespace, image: np.ndarray, label: np.ndarray) -> float:
    """Iterations per second of the textbook loop over ready tensors."""
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    pz, py, px = args.patch
    batches = []
    for _ in range(args.iterations):
        starts = [
            (
                rng.integers(0, SHAPE[0] - pz + 1),
                rng.integers(0, SHAPE[1] - py + 1),
                rng.integers(0, SHAPE[2] - px + 1),
            )
            for _ in range(args.batch)
        ]
        crops = [
            (image[z : z + pz, y : y + py, x : x + px], label[z : z + pz, y : y + py, x : x + px])
            for z, y, x in starts
        ]
        x_t = torch.from_numpy(np.stack([c[0] for c in crops])[:, None].astype(np.float32) / 255)
        y_t = torch.from_numpy((np.stack([c[1] for c in crops])[:, None] > 0).astype(np.float32))
        batches.append((x_t, y_t))
    seed_everything(0)
    model = build_unet3d(model_config(args)).train()
    optimizer = build_optimizer(model, OptimizerSpec("adamw", lr=1e-3))
    scheduler = build_scheduler(optimizer, ScheduleSpec(), args.iterations)
    heads = (HeadSpec("binary"),)
    started = time.perf_counter()
    for x_t, y_t in batches:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = heads_loss(model(x_t), y_t, heads)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        scheduler.step()
        float(loss.detach())  # the task reads the loss every step too
    return args.iterations / (time.perf_counter() - started)


def ours(args: argparse.Namespace, root: Path, run: str) -> tuple[float, float]:
    job = parse_training(job_document(args, run), [root])
    outcome = train(job)
    if outcome.status != "finished":
        raise SystemExit(f"training failed: {outcome.error}")
    return outcome.iterations_per_second, outcome.loader_wait_fraction


def batch_cost_ms(args: argparse.Namespace, root: Path, elastic: float) -> float:
    job = parse_training(job_document(args, "cost", elastic), [root])
    maker = batch_maker(job, margin=0)
    started = time.perf_counter()
    for i in range(10):
        maker.make(i)
    return (time.perf_counter() - started) / 10 * 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", type=int, nargs=3, default=[9, 65, 65])
    parser.add_argument("--filters", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-append", action="store_true", help="print only; leave RESULTS.md alone")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Our task sets the allocator for big buffers (workers.runtime.allocator) in its process, which is this
    # one: set it before the first plain loop too, so every run of both compares like with like.
    tune_allocator()
    root = Path(tempfile.mkdtemp(prefix="bench-training-"))
    synth = generate_em_volume(SHAPE, seed=1)
    write_synth(root / "em.zarr", synth, chunks=(16, 64, 64))
    load_before = os.getloadavg()[0]
    plain_rates, our_rates, waits = [], [], []
    for repeat in range(args.repeats):
        plain_rates.append(plain_loop(args, synth.raw, synth.mito))
        rate, wait = ours(args, root, f"r{repeat}")
        our_rates.append(rate)
        waits.append(wait)
    plain, mine = statistics.median(plain_rates), statistics.median(our_rates)
    step_ms = 1000 / mine
    rows = [
        (
            "setup",
            f"unet3d filters {args.filters}, batch {args.batch}, patch {tuple(args.patch)}, "
            f"{args.threads} threads",
        ),
        ("iterations per run x repeats", f"{args.iterations} x {args.repeats}"),
        (
            "plain PyTorch loop, in-memory tensors (it/s)",
            f"{plain:.2f}  {[round(r, 2) for r in plain_rates]}",
        ),
        ("our training task, zarr + prefetch (it/s)", f"{mine:.2f}  {[round(r, 2) for r in our_rates]}"),
        ("ours / plain (goal >= 0.9)", f"{mine / plain:.2f}"),
        ("share of step time waiting for data", f"{100 * statistics.median(waits):.1f}%"),
        (
            "one batch on a loader thread, default augment (ms)",
            f"{batch_cost_ms(args, root, 0.0):.1f} (step {step_ms:.0f} ms)",
        ),
        ("  with elastic warp on every crop (ms)", f"{batch_cost_ms(args, root, 1.0):.1f}"),
        ("load average before / after", f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    table = "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in rows)
    print(table)
    if not args.no_append:
        command = "python tests/benchmarks/bench_training.py " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        header = (
            f"\n## Training task, {datetime.date.today()} ({platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, CPU)\n\n`{command.strip()}`\n\n| figure | value |\n|---|---|\n"
        )
        with RESULTS.open("a") as handle:
            handle.write(header + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
