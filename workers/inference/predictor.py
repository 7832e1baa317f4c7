"""Forward passes over batches of windows: test-time augmentation, activations per head, precision.

Each TTA variant is transformed, run, activated and transformed back before the variants are
reduced, exactly as PyTC's ``TestAugmentor`` does; activations are applied per variant.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workers.inference.job import Activation, MemoryFormat, Precision, RawHeads, Reduce

# (xflip, yflip, zflip, transpose) per variant, in PyTC's order.
_TTA_OPTIONS = {
    1: ((False,), (False,), (False,), (False,)),
    4: ((False, True), (False, True), (False,), (False,)),
    8: ((False, True), (False, True), (False,), (False, True)),
    16: ((False, True), (False, True), (False, True), (False, True)),
}


def tta_variants(count: int) -> list[tuple[bool, bool, bool, bool]]:
    return list(itertools.product(*_TTA_OPTIONS[count]))


def _flip_dims(xflip: bool, yflip: bool, zflip: bool) -> list[int]:
    return [d for d, on in ((4, xflip), (3, yflip), (2, zflip)) if on]


def augment(x: torch.Tensor, variant: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    xflip, yflip, zflip, transpose = variant
    dims = _flip_dims(xflip, yflip, zflip)
    if dims:
        x = torch.flip(x, dims)
    return x.transpose(3, 4) if transpose else x


def deaugment(x: torch.Tensor, variant: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    xflip, yflip, zflip, transpose = variant
    if transpose:
        x = x.transpose(3, 4)
    dims = _flip_dims(xflip, yflip, zflip)
    return torch.flip(x, dims) if dims else x


def apply_activations(
    x: torch.Tensor, heads: Sequence[int], activations: Sequence[Activation]
) -> torch.Tensor:
    """One activation per head over its channels; tanh is mapped to [0, 1] as PyTC does."""
    parts, begin = [], 0
    for width, act in zip(heads, activations, strict=True):
        part = x[:, begin : begin + width]
        begin += width
        if act == "sigmoid":
            part = torch.sigmoid(part)
        elif act == "softmax":
            part = torch.softmax(part, dim=1)
        elif act == "tanh":
            part = (torch.tanh(part) + 1.0) / 2.0
        parts.append(part)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def prefers_channels_last(
    module: torch.nn.Module, device: torch.device, memory_format: MemoryFormat = "auto"
) -> bool:
    """Whether to run ``module`` on channels-last (NDHWC) tensors.

    oneDNN's 3D convolutions on the CPU skip a layout reorder before and after every convolution
    when activations and weights are channels-last: the demo ``unet3d`` runs a batch of 4 windows of
    17x129x129 about 15% faster on 2 cores, with outputs equal to float32 rounding (not bit for bit:
    PyTC runs contiguous tensors, and its uint8 truncation turns the last bits into a grey level in
    a few voxels). So only under ``compute.memory_format: auto`` (``contiguous`` never), on a CPU,
    and only eager modules that hold ``Conv3d`` layers (TorchScript and exported programs keep the
    layout they were made with); ``PYTC_CHANNELS_LAST=0`` in a worker's environment makes ``auto``
    contiguous there too.
    """
    if memory_format != "auto" or os.environ.get("PYTC_CHANNELS_LAST", "1") == "0" or device.type != "cpu":
        return False
    return any(isinstance(m, torch.nn.Conv3d) for m in module.modules())


@dataclass
class WindowPredictor:
    """Runs one model over batches of windows and returns float32 predictions (N, C, *patch)."""

    module: torch.nn.Module
    device: torch.device
    heads: tuple[int, ...]
    activations: tuple[Activation, ...]
    tta_count: int = 1
    tta_reduce: Reduce = "mean"
    precision: Precision = "float32"
    fixed_batch: int | None = None  # an exported program traced for one batch size only
    channels_last: bool = False  # the module's weights are channels-last: feed it so
    targets: tuple[str, ...] = ()  # per head; "affinity" heads are realigned under TTA
    # "pytc": as PyTC v1's Trainer.test, the TTA minimum starts from ones and the maximum from
    # zeros, and each window's prediction is clipped at 0 before blending (what changes only heads
    # without activation); "keep": neither
    raw_heads: RawHeads = "keep"

    def _realign_affinities(self, y: torch.Tensor, variant: tuple[bool, bool, bool, bool]) -> torch.Tensor:
        """Put affinity channels back where the unaugmented input has them (PyTC v2's fix).

        Channel a (z, y, x) at voxel p is the affinity of p and its predecessor along a. On an input
        flipped along a, the model's predecessor is the original successor, so after the inverse
        flip the channel holds the affinity of p and p + e_a: it is shifted one voxel along a (the
        first plane, whose predecessor no variant sees, keeps its value). A yx transpose swaps the
        y and x channels; deaugment has already transposed the spatial axes back.
        """
        xflip, yflip, zflip, transpose = variant
        if not any(variant) or "affinity" not in self.targets:
            return y
        y = y.clone()
        begin = 0
        for width, target in zip(self.heads, self.targets, strict=False):
            if target == "affinity":
                aff = y[:, begin : begin + 3]
                if transpose:  # the model saw x as y: its y channel is the x affinity and back
                    aff[:, [1, 2]] = aff[:, [2, 1]].clone()
                for channel, (axis, flipped) in enumerate(((2, zflip), (3, yflip), (4, xflip))):
                    if flipped:
                        plane = aff[:, channel]  # (N, Z, Y, X); the spatial axis is axis - 1
                        moved = plane.narrow(axis - 1, 0, plane.shape[axis - 1] - 1).clone()
                        plane.narrow(axis - 1, 1, plane.shape[axis - 1] - 1).copy_(moved)
            begin += width
        return y

    def _pad_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Fill a short last batch up to a fixed traced batch size; the filler's outputs are dropped."""
        if self.fixed_batch is None or x.shape[0] >= self.fixed_batch:
            return x
        filler = x[-1:].expand(self.fixed_batch - x.shape[0], *x.shape[1:])
        return torch.cat([x, filler])

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "float32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with self._autocast():
            y = self.module(x)
        if y.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"the model returned spatial shape {tuple(y.shape[2:])} for input {tuple(x.shape[2:])}; "
                "the engine needs outputs the size of their windows"
            )
        return apply_activations(y.float(), self.heads, self.activations)

    def _first(self, y: torch.Tensor) -> torch.Tensor:
        """The running reduction after the first variant: PyTC starts a minimum from ones and a
        maximum from zeros (``TestAugmentor._update_output``), so with ``raw_heads: pytc`` one
        variant alone is folded into those."""
        if self.raw_heads == "pytc" and self.tta_reduce == "min":
            return torch.minimum(torch.ones_like(y), y)
        if self.raw_heads == "pytc" and self.tta_reduce == "max":
            return torch.maximum(torch.zeros_like(y), y)
        return y.clone() if self.tta_reduce == "mean" else y

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        count = batch.shape[0]
        host = torch.from_numpy(batch)
        if self.device.type == "cuda":
            host = host.pin_memory()  # page-locked, so the copy below is asynchronous
        x = self._pad_batch(host.to(self.device, non_blocking=True))
        result: torch.Tensor | None = None
        variants = tta_variants(self.tta_count)
        for variant in variants:
            y = self._realign_affinities(deaugment(self._forward(augment(x, variant)), variant), variant)
            if result is None:
                result = self._first(y)
            elif self.tta_reduce == "mean":
                result += y
            elif self.tta_reduce == "min":
                result = torch.minimum(result, y)
            else:
                result = torch.maximum(result, y)
        assert result is not None  # at least one variant
        if self.tta_reduce == "mean" and len(variants) > 1:
            result /= len(variants)
        if self.raw_heads == "pytc":
            result = result.clamp_min(0.0)  # PyTC: out_block[out_block < 0] = 0, window by window
        # contiguous: a channels-last result would otherwise reach numpy with strided channels
        return result[:count].contiguous().cpu().numpy().astype(np.float32, copy=False)
