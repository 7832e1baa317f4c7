"""Job documents the tests share: the contract's examples, as users write them, and small ones."""

from __future__ import annotations

from typing import Any

# The contract's inference example, the commented-out alternatives left out.
CONTRACT_INFERENCE = """
kind: inference
input:
  path: data/em.zarr
  dataset: raw
  roi: {offset: [0, 0, 0], shape: [64, 512, 512]}
  normalize: auto
model:
  torchscript: models/net.pt
window:
  patch_size: [17, 129, 129]
  stride: [8, 64, 64]
  blending: gaussian
  pad_size: [0, 0, 0]
  pad_mode: reflect
  batch_size: 4
  tta: {variants: 1, reduce: mean}
output:
  path: out/pred.zarr
  dataset: pred
  format: zarr3
  dtype: float32
  heads: [2]
  activation: [sigmoid]
  chunks: [32, 256, 256]
  overwrite: false
compute:
  block_shape: [64, 512, 512]
  device: auto
  precision: float32
"""

# The contract's training example, less ``checkpoint.resume_from``: a run starts from ``model.init``
# (fine-tune) or resumes, not both, so the parser refuses the two together (the schema cannot say so).
CONTRACT_TRAINING = """
kind: training
data:
  image: {path: data/train.zarr, dataset: raw}
  label: {path: data/train.zarr, dataset: mito}
  valid_mask: {path: data/train.zarr, dataset: mask}
  roi: {offset: [0, 0, 0], shape: [64, 512, 512]}
model:
  architecture: unet3d
  config: {in_channels: 1, out_channels: 1}
  init: runs/old/checkpoint_05000.pth.tar
targets: [binary]
solver:
  optimizer: adamw
  lr: 0.001
  iterations: 2000
  batch_size: 2
  save_every: 500
  seed: 0
sampling:
  patch_size: [17, 129, 129]
checkpoint:
  dir: runs/mito
  restart: false
register_as: mito-v2
"""


def minimal() -> dict[str, Any]:
    """The smallest inference document: every field left out that may be."""
    return {
        "input": {"path": "em.zarr"},
        "model": {"torchscript": "net.pt"},
        "window": {"patch_size": [17, 129, 129]},
        "output": {"path": "out.zarr"},
    }


def minimal_training() -> dict[str, Any]:
    """The smallest training document."""
    return {
        "kind": "training",
        "data": {
            "image": {"path": "t.zarr", "dataset": "raw"},
            "label": {"path": "t.zarr", "dataset": "mito"},
        },
        "model": {"architecture": "unet3d", "config": {"in_channels": 1, "out_channels": 1}},
        "targets": ["binary"],
        "solver": {"iterations": 10},
        "sampling": {"patch_size": [17, 129, 129]},
        "checkpoint": {"dir": "runs/mito"},
    }
