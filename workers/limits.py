"""Admission bounds: what a job may ask of a worker, checked from the job alone before anything is
allocated.

A job names sizes (patch, pad, stride, chunks, block, batch) and an input whose metadata claims a
shape. Left unbounded, one number can make a process allocate without end: a ``pad_size`` of 10^11
makes a window grid of billions of starts, a ``patch_size`` of 128x1024x1024 a batch of tens of
gigabytes. These checks are arithmetic on the job's numbers (per axis, never a loop over windows or
blocks), so admitting a legal petascale job costs microseconds, and each refusal is a
:class:`~workers.errors.SpecError` naming the field to change.

What one block task holds in memory, in float32 (the engine's working type)::

    task_bytes = 4 * ( (in_c + out_c + 1) * prod(block + patch)        input slab, accumulator, weight sums
                     + batch * prod(patch) * (in_c + out_c + ACTIVATION_CHANNELS) )    one batch of windows

``block + patch`` is the block's extent (the hull of the windows it owns); ``ACTIVATION_CHANNELS``
stands for the network's feature maps at full resolution, which no file tells before it is run.
A task must fit :attr:`Limits.task_bytes`, half of the worker memory the operator declares
(``PYTC_WORKER_MEMORY_BYTES``): the read-ahead holds the next block's input beside it.

Where channels are not known yet (parsing, before a worker has looked at the model) they count as
one, so parsing refuses only what no model could run; admission checks again with the model's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from models.torch_files import MAX_MODEL_BYTES_VARIABLE, max_model_bytes
from workers.errors import SpecError

GIB = 1 << 30
BYTES_PER_VALUE = 4  # float32: inputs after normalisation, predictions, partial sums
ACTIVATION_CHANNELS = 64  # feature maps per window voxel, an estimate for a U-Net's first stage
TRAINING_FACTOR = 3  # training keeps activations for the backward pass and their gradients
AXES = ("z", "y", "x")

DEFAULT_WORKER_MEMORY_BYTES = 32 * GIB
DEFAULT_MAX_INPUT_VOXELS = 10**16  # H01 is ~10^15; a petascale volume fits with room
DEFAULT_MAX_AXIS_COUNT = 1 << 17  # windows, blocks or chunks along one axis (H01: ~10^4)
DEFAULT_MAX_CHUNK_BYTES = 1 * GIB  # one output chunk, all channels, float32; codecs cap near 2 GiB
DEFAULT_MAX_MODEL_PARAMETERS = 100_000_000  # 400 MB of float32 weights; nnU-Net has ~30M, PyTC unet3d 1M


@dataclass(frozen=True)
class Limits:
    """The bounds a job is admitted under (``service.settings`` reads them from ``PYTC_*``)."""

    worker_memory_bytes: int = DEFAULT_WORKER_MEMORY_BYTES
    max_input_voxels: int = DEFAULT_MAX_INPUT_VOXELS
    max_axis_count: int = DEFAULT_MAX_AXIS_COUNT
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
    max_model_parameters: int = DEFAULT_MAX_MODEL_PARAMETERS

    @property
    def task_bytes(self) -> int:
        """What one task may hold: half the worker's memory (the next block's input is read ahead)."""
        return self.worker_memory_bytes // 2


DEFAULT_LIMITS = Limits()


def limits_from_env(environ: Mapping[str, str]) -> Limits:
    """The limits from ``PYTC_WORKER_MEMORY_BYTES``, ``PYTC_MAX_INPUT_VOXELS`` and so on (each
    field's name, upper case), as ``service.settings.LimitSettings`` reads them for ``pytc-serve``;
    here without pydantic-settings, which ``pytc run`` would otherwise import only for this. A value
    that is not a positive integer is a SpecError naming the variable. ``PYTC_MAX_MODEL_BYTES``,
    which every process reads where it looks at a model file, is checked here too."""
    try:
        max_model_bytes(environ)
    except ValueError as err:
        raise SpecError(MAX_MODEL_BYTES_VARIABLE, str(err)) from None
    values: dict[str, int] = {}
    for name in (f.name for f in fields(Limits)):
        variable = f"PYTC_{name.upper()}"
        text = environ.get(variable)
        if text is None:
            continue
        try:
            values[name] = int(text.strip())
        except ValueError:
            values[name] = 0
        if values[name] <= 0:
            raise SpecError(variable, f"expected a positive integer, got {text!r}")
    return Limits(**values)


@dataclass(frozen=True)
class TaskMemory:
    """The estimate of one inference block task, in bytes, split as it is refused."""

    extent_bytes: int  # input slab, accumulator and weight sums over the block's extent
    window_bytes: int  # one window in the batch: input, output and the network's feature maps
    batch_size: int

    @property
    def total(self) -> int:
        return self.extent_bytes + self.batch_size * self.window_bytes


def task_memory(
    patch: Sequence[int], block: Sequence[int], batch_size: int, in_channels: int = 1, out_channels: int = 1
) -> TaskMemory:
    """The float32 bytes a block task of ``block`` voxels holds (see the module docstring)."""
    extent = math.prod(b + p for b, p in zip(block, patch, strict=True))
    extent_bytes = BYTES_PER_VALUE * (in_channels + out_channels + 1) * extent
    window_bytes = BYTES_PER_VALUE * math.prod(patch) * (in_channels + out_channels + ACTIVATION_CHANNELS)
    return TaskMemory(extent_bytes, window_bytes, batch_size)


def check_task_memory(
    memory: TaskMemory, limits: Limits, *, block_field: str, channels: str = "one channel in and out"
) -> None:
    """The task fits :attr:`Limits.task_bytes`; else a SpecError on the field whose size is to blame:
    the patch when one window alone does not fit, the block when its extent takes over half, the
    batch otherwise (naming the batch that would fit)."""
    budget = limits.task_bytes
    if memory.total <= budget:
        return
    shown = (
        f"a block task would hold about {_gib(memory.total)} ({_gib(memory.extent_bytes)} over the "
        f"block's extent, {memory.batch_size} x {_gib(memory.window_bytes)} per window of the batch, "
        f"float32, {channels}); the limit is {_gib(budget)}, half of PYTC_WORKER_MEMORY_BYTES "
        f"({_gib(limits.worker_memory_bytes)})"
    )
    if memory.window_bytes > budget // 2:
        raise SpecError("window.patch_size", f"too large: {shown}")
    if memory.extent_bytes > budget // 2:
        raise SpecError(block_field, f"too large: {shown}")
    fits = max(1, (budget - memory.extent_bytes) // memory.window_bytes)
    raise SpecError("window.batch_size", f"too large: {shown}; a batch of {fits} fits")


def check_pad(pad: Sequence[int], patch: Sequence[int]) -> None:
    """A pad wider than the patch only adds windows that see nothing but padding."""
    for axis, p, w in zip(AXES, pad, patch, strict=True):
        if p > w:
            raise SpecError(
                "window.pad_size",
                f"{list(pad)} is wider than patch_size {list(patch)} on axis {axis} ({p} > {w}); "
                "windows beyond one patch of padding would see padding alone",
            )


def check_chunk_bytes(chunks: Sequence[int], limits: Limits, out_channels: int = 1) -> None:
    """One output chunk (all channels, float32) is at most :attr:`Limits.max_chunk_bytes`."""
    size = BYTES_PER_VALUE * out_channels * math.prod(chunks)
    if size > limits.max_chunk_bytes:
        raise SpecError(
            "output.chunks",
            f"{list(chunks)} with {out_channels} channel(s) makes chunks of {_gib(size)} in float32; "
            f"the limit is {_gib(limits.max_chunk_bytes)} (PYTC_MAX_CHUNK_BYTES)",
        )


def check_input_shape(shape: Sequence[int], limits: Limits, field: str, where: str) -> None:
    """The input's claimed shape (its metadata, not its data) holds at most
    :attr:`Limits.max_input_voxels` voxels."""
    voxels = math.prod(int(s) for s in shape)
    if voxels > limits.max_input_voxels:
        raise SpecError(
            field,
            f"{where} claims shape {list(shape)}, {voxels:.3g} voxels; the limit is "
            f"{limits.max_input_voxels:.3g} (PYTC_MAX_INPUT_VOXELS)",
        )


def windows_along(length: int, patch: int, stride: int, pad: int) -> int:
    """How many windows the grid has along one axis (:func:`volumes.windows.window_starts`'s count),
    without listing them."""
    padded = length + 2 * pad
    return 1 if padded <= patch else 1 + -(-(padded - patch) // stride)


def check_axis_counts(
    roi_shape: Sequence[int],
    patch: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    chunks: Sequence[int],
    limits: Limits,
) -> None:
    """Windows and output chunks along each axis of the ROI stay at most
    :attr:`Limits.max_axis_count`: the engine keeps a few values per window, chunk and block of each
    axis, and counting them is all that is done here."""
    for a in range(len(AXES)):
        windows = windows_along(roi_shape[a], patch[a], stride[a], pad[a])
        _check_count("window.stride", "windows", windows, a, roi_shape, limits)
        _check_count("output.chunks", "chunks", -(-roi_shape[a] // chunks[a]), a, roi_shape, limits)


def check_block_counts(roi_shape: Sequence[int], block: Sequence[int], limits: Limits, field: str) -> None:
    """Blocks along each axis of the ROI stay at most :attr:`Limits.max_axis_count`."""
    for a in range(len(AXES)):
        _check_count(field, "blocks", -(-roi_shape[a] // block[a]), a, roi_shape, limits)


def _check_count(
    field: str, what: str, count: int, axis: int, roi_shape: Sequence[int], limits: Limits
) -> None:
    if count > limits.max_axis_count:
        raise SpecError(
            field,
            f"{count} {what} along axis {AXES[axis]} of a region of shape {list(roi_shape)}; the limit is "
            f"{limits.max_axis_count} per axis (PYTC_MAX_AXIS_COUNT): make them larger or the region smaller",
        )


def check_training_memory(
    patch: Sequence[int], batch_size: int, in_channels: int, out_channels: int, limits: Limits
) -> None:
    """A training batch with its feature maps, kept for the backward pass, fits a task's memory."""
    per_sample = (
        TRAINING_FACTOR
        * BYTES_PER_VALUE
        * math.prod(patch)
        * (in_channels + out_channels + ACTIVATION_CHANNELS)
    )
    total = batch_size * per_sample
    if total <= limits.task_bytes:
        return
    shown = (
        f"a training batch would hold about {_gib(total)} ({batch_size} x {_gib(per_sample)} per "
        f"sample with its feature maps and gradients); the limit is {_gib(limits.task_bytes)}, "
        f"half of PYTC_WORKER_MEMORY_BYTES"
    )
    if per_sample > limits.task_bytes // 2:
        raise SpecError("sampling.patch_size", f"too large: {shown}")
    fits = max(1, limits.task_bytes // per_sample)
    raise SpecError("solver.batch_size", f"too large: {shown}; a batch of {fits} fits")


def check_model_parameters(parameters: int | None, limits: Limits, field: str = "model.config") -> None:
    """A network built from a config has at most :attr:`Limits.max_model_parameters` weights."""
    if parameters is not None and parameters > limits.max_model_parameters:
        raise SpecError(
            field,
            f"the network would have {parameters:.3g} parameters ({_gib(BYTES_PER_VALUE * parameters)} "
            f"in float32); the limit is {limits.max_model_parameters:.3g} (PYTC_MAX_MODEL_PARAMETERS)",
        )


def _gib(size: int) -> str:
    return f"{size / GIB:.3g} GiB" if size >= GIB // 10 else f"{size / (1 << 20):.3g} MiB"
