"""Checks of an inference job against what it names: the input volume, the model, an existing output.

They run before anything is written, so an invalid job leaves no trace, and each raises a
:class:`~workers.errors.SpecError` naming the field to change; none of them modifies data. They
take the volume already opened, so one phase (admitting a job, starting its run) opens the input
once::

    source = open_input(job)
    check_input(job, source)
    check_model(job, info, source)                       # info: the model's channels, from a worker
    check_precision(job, info)                           # and what the job's device runs natively
    output_state(job, info.sha256, roi_shape(job, source))   # absent | resume, else OutputExistsError
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from models.errors import ModelConfigError
from models.ref import ModelInfo, ModelRef
from volumes.backends.precomputed import sharding_for, valid_shards
from volumes.blocks import DEFAULT_BLOCK_VOXELS, default_block_shape
from volumes.box import Box
from volumes.errors import VolumeError, VolumeFormatError, VolumeNotFoundError
from volumes.open import open_volume
from volumes.output import level_path
from volumes.volume import Volume
from workers.errors import OutputExistsError, SpecError
from workers.inference.job import OUTPUT_ATTRS_KEY, InferenceJob
from workers.inference.mask import check_mask
from workers.limits import (
    Limits,
    check_axis_counts,
    check_block_counts,
    check_chunk_bytes,
    check_input_shape,
    check_task_memory,
    task_memory,
)

log = logging.getLogger(__name__)

OutputState = Literal["absent", "resume"]


def open_input(job: InferenceJob) -> Volume:
    """The job's input volume, or a SpecError naming ``input.path`` or ``input.dataset``."""
    path, dataset = job.input.path, job.input.dataset
    try:
        return open_volume(path, dataset)
    except VolumeNotFoundError as err:
        if not Path(path).exists():
            raise SpecError("input.path", f"{path} does not exist") from err
        if dataset is None:
            raise SpecError("input.dataset", f"{path} is a container, not an array; name one: {err}") from err
        raise SpecError("input.dataset", str(err)) from err
    except VolumeFormatError as err:
        raise SpecError("input.path", f"not a readable volume: {err}") from err
    except (VolumeError, OSError) as err:
        field = "input.dataset" if dataset else "input.path"
        raise SpecError(field, f"cannot open {path} (dataset {dataset!r}): {err}") from err


def check_input(job: InferenceJob, source: Volume, limits: Limits | None = None) -> None:
    """The input is a 3D (z, y, x) or 4D (c, z, y, x) numeric array, and holds the ROI. With
    ``limits`` (admission; a run does not check again what was admitted), its claimed shape and the
    windows, chunks and blocks along each axis of the ROI are within them."""
    field = "input.dataset" if job.input.dataset else "input.path"
    if source.ndim not in (3, 4):
        raise SpecError(
            field, f"expected a 3D (z, y, x) or 4D (c, z, y, x) array, got shape {list(source.shape)}"
        )
    if source.dtype.kind not in "biuf":
        raise SpecError(field, f"expected a numeric array, got dtype {source.dtype}")
    if limits is not None:
        where = (
            job.input.path
            if job.input.dataset is None
            else f"{job.input.path} (dataset {job.input.dataset!r})"
        )
        check_input_shape(source.shape, limits, field, where)
    spatial = tuple(source.shape[-3:])
    roi = job.input.roi
    if roi is not None and not Box.of_shape(spatial).contains(roi):
        raise SpecError(
            "input.roi",
            f"box offset {list(roi.offset)} shape {list(roi.shape)} (end {list(roi.end)}) reaches "
            f"outside the volume of shape {list(spatial)} (z, y, x)",
        )
    if job.input.mask is not None:
        check_mask(job, source)
    if job.output.format == "precomputed":
        check_precomputed_output(job, source)
    if limits is not None:
        region = roi.shape if roi is not None else spatial
        w = job.window
        check_axis_counts(region, w.patch_size, w.stride, w.pad_size, job.output.write_unit, limits)
        check_block_counts(region, block_shape(job, region), limits, _block_field(job))


def check_precomputed_output(job: InferenceJob, source: Volume) -> None:
    """A precomputed output's shards are boxes of its chunk grid (compressed Morton order decides
    which), and its origin is a whole number of voxels (precomputed's ``voxel_offset``)."""
    spatial = roi_shape(job, source)
    chunks = [min(c, s) for c, s in zip(job.output.chunks, spatial, strict=True)]
    if job.output.shards is not None:
        grid = [-(-s // c) for s, c in zip(spatial[::-1], chunks[::-1], strict=True)]
        factors = [s // c for s, c in zip(job.output.shards[::-1], chunks[::-1], strict=True)]
        if sharding_for(grid, factors) is None:
            raise SpecError(
                "output.shards",
                f"{list(job.output.shards)} is not a shard of a precomputed volume of {list(spatial)} "
                f"voxels in chunks of {list(job.output.chunks)} (its chunks are grouped in compressed "
                f"Morton order); possible shards: {valid_shards(grid, chunks[::-1])}",
            )
    base, voxel = source.translation, source.voxel_size or (1.0, 1.0, 1.0)
    if base is not None:
        for axis, t, v in zip("zyx", base, voxel, strict=True):
            if abs(t / v - round(t / v)) > 1e-6 * max(1.0, abs(t / v)):
                raise SpecError(
                    "output.format",
                    f"precomputed places a volume by whole voxels, and the input's translation "
                    f"{list(base)} nm is not a whole number of its voxels {list(voxel)} (axis {axis}); "
                    "write zarr3, zarr2 or n5",
                )


def block_shape(job: InferenceJob, region: tuple[int, ...]) -> tuple[int, ...]:
    """The job's block: ``compute.block_shape``, or the planner's choice for this region."""
    if job.compute.block_shape is not None:
        return job.compute.block_shape
    return default_block_shape(region, job.output.write_unit, job.window.patch_size, DEFAULT_BLOCK_VOXELS)


def check_task(job: InferenceJob, info: ModelInfo, region: tuple[int, ...], limits: Limits) -> None:
    """A block task with the model's channels fits a worker's memory, and so does an output chunk."""
    check_chunk_bytes(job.output.write_unit, limits, info.out_channels)
    block = block_shape(job, region)
    memory = task_memory(
        job.window.patch_size, block, job.window.batch_size, info.in_channels, info.out_channels
    )
    channels = f"{info.in_channels} channel(s) in, {info.out_channels} out"
    check_task_memory(memory, limits, block_field=_block_field(job), channels=channels)


def _block_field(job: InferenceJob) -> str:
    """The field that sets the block: its own, or the chunks the planner builds it from."""
    return "compute.block_shape" if job.compute.block_shape is not None else "output.chunks"


def check_model(job: InferenceJob, info: ModelInfo, source: Volume) -> None:
    """The input's channels match the model's, and the heads split exactly the model's outputs."""
    channels = source.shape[0] if source.ndim == 4 else 1
    if channels != info.in_channels:
        raise SpecError(
            "model",
            f"the model takes {info.in_channels} input channel(s), the input has {channels} "
            f"(shape {list(source.shape)})",
        )
    heads = job.output.heads or (info.out_channels,)
    if job.output.heads and sum(heads) != info.out_channels:
        raise SpecError(
            "output.heads",
            f"heads {list(heads)} add up to {sum(heads)} channel(s), the model gives {info.out_channels}",
        )
    for index, (size, target) in enumerate(zip(heads, job.output.targets, strict=False)):
        if target == "affinity" and size != 3:
            raise SpecError(
                "output.targets",
                f"head {index} is an affinity head with {size} channel(s); affinities are 3 (z, y, x)",
            )
    for index, (size, activation) in enumerate(zip(heads, job.output.activations, strict=True)):
        if activation == "softmax" and size == 1:
            log.warning(
                "output.activation[%d]: softmax over a 1-channel head is always 1.0; "
                "sigmoid is probably meant",
                index,
            )


def check_precision(job: InferenceJob, info: ModelInfo) -> None:
    """``compute.precision`` runs natively on the device the worker found for the job (else it
    would be emulated, several times slower than float32: :mod:`workers.runtime.precision`)."""
    reason = dict(info.unsupported_precisions).get(job.compute.precision)
    if reason is not None:
        raise SpecError("compute.precision", reason)


def model_field(ref: ModelRef, error: Exception | None = None) -> str:
    """The field of the job document a problem with the model ``ref`` is about: ``model.name``
    for a registered model, the file's field for the other forms, and for an architecture
    ``model.config`` (``error`` a :class:`ModelConfigError`) or else its ``model.checkpoint``."""
    if ref.name is not None:
        return "model.name"
    if ref.kind != "architecture":
        return f"model.{ref.kind}"
    return "model.config" if isinstance(error, ModelConfigError) else "model.checkpoint"


def roi_shape(job: InferenceJob, source: Volume) -> tuple[int, ...]:
    """The output's spatial shape: the ROI's, or the whole input's."""
    return job.input.roi.shape if job.input.roi is not None else tuple(source.shape[-3:])


def output_state(job: InferenceJob, model_sha256: str, spatial_shape: tuple[int, ...]) -> OutputState:
    """What to do with the output dataset: create it (``absent``) or continue it (``resume``).

    An existing output made by this same job (same layout key, same ROI shape) is resumed. Any
    other existing output is an :class:`OutputExistsError` unless ``overwrite`` is set, in which
    case it counts as absent and the run replaces it. Nothing is modified here.
    """
    path, dataset = job.output.path, job.output.dataset
    try:
        existing = open_volume(path, dataset)
    except VolumeNotFoundError:
        return "absent"
    except VolumeFormatError as err:
        if job.output.overwrite:
            return "absent"
        raise OutputExistsError(
            "output.path",
            f"{path} exists and is not a volume this job can resume ({err}); "
            "set overwrite: true to replace it, or choose another output.path",
        ) from err
    if made_by(job, existing, model_sha256, spatial_shape):
        return "resume"
    if job.output.overwrite:
        return "absent"
    raise OutputExistsError(
        "output.path",
        f"{path} (dataset {dataset!r}) exists and was not made by this job; set overwrite: true "
        "to replace it, or choose another output.path or output.dataset",
    )


def made_by(job: InferenceJob, existing: Volume, model_sha256: str, spatial_shape: tuple[int, ...]) -> bool:
    """Whether ``existing`` is this job's output. The layout key holds the ROI, not the input's
    shape: a whole-volume job over an input that has since changed size must not resume into an
    output of the old size."""
    if existing.dataset != level_path(job.output.format, job.output.dataset, 0):
        return False  # an array where the image should be: written before outputs had levels
    record = existing.attrs.get(OUTPUT_ATTRS_KEY)
    if not isinstance(record, dict) or record.get("layout_key") != job.layout_key(model_sha256):
        return False
    return existing.ndim == 4 and tuple(existing.shape[1:]) == tuple(spatial_shape)
