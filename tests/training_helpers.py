"""Shared pieces of the training tests: a small synthetic data set on disk and job documents."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from volumes.synth import generate_em_volume, write_synth

TINY_CONFIG: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 1,
    "filters": [2, 4],
    "isotropy": [False, False],
}


def write_data(root: Path, shape: tuple[int, int, int] = (12, 48, 48), seed: int = 1) -> Path:
    """``em.zarr`` with ``raw`` (uint8), ``mito`` (0/1) and ``cells`` (instance ids), plus ``empty``
    (a label without foreground) and ``short`` (a label of another shape)."""
    path = root / "em.zarr"
    if not path.exists():
        write_synth(path, generate_em_volume(shape, seed=seed), chunks=(8, 32, 32))
        group = zarr.open_group(str(path), mode="a")
        group.create_array("empty", data=np.zeros(shape, np.uint8), chunks=(8, 32, 32))
        group.create_array("short", data=np.zeros((shape[0], shape[1] - 1, shape[2]), np.uint8))
    return path


def training_doc(**changes: Any) -> dict[str, Any]:
    """A tiny training job; ``changes`` set dotted fields (``solver.iterations=4``)."""
    doc: dict[str, Any] = {
        "kind": "training",
        "data": {
            "image": {"path": "em.zarr", "dataset": "raw"},
            "label": {"path": "em.zarr", "dataset": "mito"},
        },
        "model": {"architecture": "unet3d", "config": copy.deepcopy(TINY_CONFIG)},
        "targets": ["binary"],
        "solver": {"iterations": 6, "batch_size": 1, "save_every": 2, "seed": 0, "lr": 0.01},
        "sampling": {"patch_size": [3, 17, 17], "prefetch": {"threads": 2, "depth": 3}},
        "checkpoint": {"dir": "runs/a"},
        "compute": {"threads": 1},
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


def weights(path: Path | str) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return state


def same_weights(a: Path | str, b: Path | str) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
