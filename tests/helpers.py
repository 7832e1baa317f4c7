"""Shared test helpers: an independent in-memory reference of sliding-window blending, and the
engine's serial runner with a numpy function for the model (no Dask)."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from models.ref import ModelInfo, ModelRef
from volumes.blending import blend_weights
from volumes.box import Box
from volumes.open import open_volume
from workers.inference.job import ComputeSpec, InferenceJob, InputSpec, Normalize, OutputSpec, WindowSpec
from workers.inference.run import run_serially

Predict = Callable[[np.ndarray], np.ndarray]
NP_PAD = {"reflect": "reflect", "replicate": "edge", "constant": "constant"}


def pytc_starts(length: int, patch: int, stride: int) -> list[int]:
    if length <= patch:
        return [-((patch - length) // 2)]
    n = 1 + math.ceil((length - patch) / stride)
    return [min(i * stride, length - patch) for i in range(n)]


def reference_blend(
    volume: np.ndarray,
    roi_offset: tuple[int, ...],
    roi_shape: tuple[int, ...],
    window: WindowSpec,
    predict: Predict,
    out_channels: int,
) -> np.ndarray:
    """One in-memory pass: pad the whole (normalised, 3D) volume, run every window, blend, crop."""
    margin = 64
    padded = np.pad(volume, margin, mode=NP_PAD[window.pad_mode])  # type: ignore[call-overload]
    begin = [o - p + margin for o, p in zip(roi_offset, window.pad_size, strict=True)]
    region = padded[
        tuple(slice(b, b + n + 2 * p) for b, n, p in zip(begin, roi_shape, window.pad_size, strict=True))
    ]
    weights = blend_weights(window.patch_size, window.blending)
    num = np.zeros((out_channels, *region.shape), np.float64)
    den = np.zeros(region.shape, np.float64)
    axes = [
        pytc_starts(d, w, s) for d, w, s in zip(region.shape, window.patch_size, window.stride, strict=True)
    ]
    # An axis shorter than the patch: pad around it symmetrically so the window fits.
    extra = [max(0, -a[0]) for a in axes]
    big = np.pad(region, [(e, w) for e, w in zip(extra, window.patch_size, strict=True)], mode="constant")
    for z in axes[0]:
        for y in axes[1]:
            for x in axes[2]:
                sl = tuple(
                    slice(s + e, s + e + w)
                    for s, e, w in zip((z, y, x), extra, window.patch_size, strict=True)
                )
                pred = predict(big[sl][None, None].astype(np.float32))[0]
                tgt = tuple(
                    slice(max(s, 0), min(s + w, d))
                    for s, w, d in zip((z, y, x), window.patch_size, region.shape, strict=True)
                )
                src = tuple(slice(t.start - s, t.stop - s) for t, s in zip(tgt, (z, y, x), strict=True))
                num[(slice(None), *tgt)] += pred[(slice(None), *src)] * weights[src]
                den[tgt] += weights[src]
    out = num / den
    crop = tuple(slice(p, p + n) for p, n in zip(window.pad_size, roi_shape, strict=True))
    return out[(slice(None), *crop)].astype(np.float32)


def make_job(
    input_path: Path,
    output_path: Path,
    window: WindowSpec,
    *,
    dataset: str | None = "raw",
    roi: object = None,
    block_shape: tuple[int, int, int] | None = None,
    chunks: tuple[int, int, int] = (8, 8, 8),
    heads: tuple[int, ...] = (),
    activations: tuple[str, ...] = ("none",),
    dtype: str = "float32",
    fmt: str = "zarr3",
    normalize: Normalize | None = None,
    model: ModelRef | None = None,
) -> InferenceJob:
    return InferenceJob(
        input=InputSpec(str(input_path), dataset, roi, normalize or Normalize("none")),  # type: ignore[arg-type]
        model=model or ModelRef("torchscript", path="unused.pt"),
        window=window,
        output=OutputSpec(str(output_path), "pred", fmt, dtype, heads, activations, chunks),  # type: ignore[arg-type]
        compute=ComputeSpec(block_shape=block_shape),
        document=json.dumps({"test": True}),
    )


def run_sequential(
    job: InferenceJob, predict: Predict, out_channels: int
) -> tuple[np.ndarray, dict[str, int]]:
    """The engine's serial runner over ``job`` with ``predict`` for the model (the output is
    replaced); returns the output and counters."""
    job = replace(job, output=replace(job.output, overwrite=True))
    info = ModelInfo(1, out_channels, "test-" + uuid.uuid4().hex)
    summary = run_serially(job, info, predict=predict)
    counts = {
        "windows": summary.windows,
        "scratch_bytes": summary.scratch_bytes,
        "pass2": summary.tasks_run["pass2"],
    }
    shape = (out_channels, *open_volume(job.output.path, job.output.dataset).shape[1:])
    return open_volume(job.output.path, job.output.dataset).read(Box.of_shape(shape)), counts
